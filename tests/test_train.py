"""scae_np.train: early stopping keeps the best epoch, lr decay, checkpoints, diverging loss."""
import json

import numpy as np
import pytest

from kernels import get_backend
from scae_np.models import CAE, CNN, load_npz
from scae_np.train import SGD, Diverged, Trainer, TrainingError


class Scripted(CNN):
    """A tiny CNN whose validation accuracy follows a script, one entry per epoch; each
    training epoch writes its number into fc1.b so the kept parameters can be identified."""

    def __init__(self, be, accuracy, n_batches):
        super().__init__(be, 1, (6, 6), 4, maps=(2,), kernels=(3,), pools=(1,), hidden=0)
        self.accuracy, self.n_batches, self.steps = accuracy, n_batches, 0

    def train_step(self, x, y, lr, momentum=0.0):
        self.steps += 1
        self.params["fc1.b"][:] = (self.steps - 1) // self.n_batches + 1
        return 1.0 / self.steps

    def forward(self, x):
        epoch = (self.steps - 1) // self.n_batches
        n = x.shape[0]
        good = int(round(self.accuracy[epoch] * n))
        logits = np.zeros((n, 4))
        logits[:good, 0] = 1.0          # labels are all 0: the first `good` are right
        logits[good:, 1] = 1.0
        return logits


def test_early_stopping_keeps_the_best_epoch(tmp_path):
    be = get_backend("numpy")
    x = np.zeros((8, 1, 6, 6), np.float32)
    y = np.zeros(8, np.int64)
    model = Scripted(be, [0.5, 0.75, 0.25, 0.5, 1.0, 1.0], n_batches=2)
    tr = Trainer(be, str(tmp_path), progress=False, echo=lambda m: None)
    res = tr.fit("s", model, "cnn", x, y, SGD(lr=0.1, epochs=6, batch_size=4, lr_decay=0.5,
                                                 patience=2),
                 seed=0, x_val=x, y_val=y, final_eval=lambda m: {"extra": 1})
    assert res["epochs"] == 4 and res["best_epoch"] == 2 and res["best_val"] == 25.0
    assert res["extra"] == 1
    assert (model.params["fc1.b"] == 2).all()           # epoch 2's parameters came back
    assert (load_npz(tmp_path / "weights" / "s.npz")["fc1.b"] == 2).all()
    recs = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
    assert [r["epoch"] for r in recs] == [1, 2, 3, 4]
    assert [r["lr"] for r in recs] == [0.1, 0.05, 0.025, 0.0125]
    assert [r["val_error"] for r in recs] == [50.0, 25.0, 75.0, 50.0]
    ck = load_npz(tmp_path / "checkpoints" / "s.npz")
    meta = json.loads(str(ck["meta"]))
    assert meta["state"]["done"] and meta["state"]["result"]["best_epoch"] == 2


def test_a_diverging_loss_stops_with_advice(tmp_path):
    be = get_backend("numpy")
    x = np.zeros((8, 1, 6, 6), np.float32)
    y = np.zeros(8, np.int64)
    model = Scripted(be, [1.0], n_batches=2)
    model.train_step = lambda *a, **k: float("nan")
    tr = Trainer(be, str(tmp_path), progress=False, echo=lambda m: None)
    with pytest.raises(TrainingError, match="training diverged in epoch 1: the loss of mini-batch 1 became nan.*lower the learning rate"):
        tr.fit("d", model, "cnn", x, y, SGD(lr=0.1, epochs=3, batch_size=4), seed=0)


class Losses(Scripted):
    """A scripted CNN whose training loss per mini-batch follows ``losses``."""

    def __init__(self, be, losses):
        super().__init__(be, [1.0] * 10, n_batches=2)
        self.losses = list(losses)

    def train_step(self, x, y, lr, momentum=0.0):
        super().train_step(x, y, lr, momentum)
        return self.losses[self.steps - 1]


@pytest.mark.parametrize("losses,diverges", [
    ([13.0, 13.8, 13.0, 13.8], False),        # at most 10 x ln(4) = 13.86: never
    ([2.0, 30.0, 1.0, 1.0], True),            # the epoch's mean 16 > 13.86 after 2 batches
    ([1.0, 1.0, 2.0, 60.0], True),            # epoch 2: (2 + 60) / 2 = 31
    ([1.0, 1.0, 1e33, 1.0], True),            # --lr 1e30's losses
    ([1.0, float("inf"), 1.0, 1.0], True),    # not finite
])
def test_divergence_rule_cnn_chance_level(tmp_path, losses, diverges):
    """CNN rule: the running epoch loss above 10 x ln(classes) (4 classes here)."""
    be = get_backend("numpy")
    x = np.zeros((8, 1, 6, 6), np.float32)
    y = np.zeros(8, np.int64)
    tr = Trainer(be, str(tmp_path), progress=False, echo=lambda m: None)
    fit = lambda: tr.fit("s", Losses(be, losses), "cnn", x, y,
                         SGD(lr=0.5, epochs=2, batch_size=4), seed=0)
    if diverges:
        with pytest.raises(Diverged, match="training diverged") as e:
            fit()
        assert e.value.stage == "s" and e.value.kind == "cnn" and e.value.lr == 0.5
    else:
        assert fit()["epochs"] == 2


def test_divergence_rule_never_fires_on_a_healthy_cae_with_a_tiny_loss(tmp_path):
    """A CAE whose inputs (and so losses, ~1e-7) are tiny trains without the ratio rule firing,
    while the same CAE pushed by a huge rate is stopped."""
    be = get_backend("numpy")
    rng = np.random.default_rng(0)
    x = (rng.random((40, 2, 10, 10)) * 1e-3).astype(np.float32)
    for lr, diverges in ((0.05, False), (1e7, True)):
        cae = CAE(be, 2, 3, 3, pool=2, output="tanh", seed=1)
        tr = Trainer(be, str(tmp_path / str(lr)), progress=False, echo=lambda m: None)
        fit = lambda: tr.fit("c", cae, "cae", x, None, SGD(lr=lr, epochs=3, batch_size=4,
                                                          momentum=0.9), seed=0)
        if diverges:
            with pytest.raises(Diverged, match="its loss at initialisation"):
                fit()
        else:
            res = fit()
            assert res["epochs"] == 3 and res["final_train_loss"] < 1e-5


# ----------------------------------------------------------------- schedules, convergence
@pytest.mark.parametrize("schedule", ["exp", "cosine"])
def test_annealed_schedules_end_at_lr_final_and_fall_monotonically(schedule):
    sgd = SGD(lr=0.1, epochs=11, schedule=schedule, lr_final=0.01).planned()
    lrs = [sgd.lr_at(e) for e in range(14)]
    assert lrs[0] == pytest.approx(0.1) and lrs[10] == pytest.approx(0.001)
    assert all(a > b for a, b in zip(lrs[:10], lrs[1:11]))
    assert lrs[11:] == [pytest.approx(0.001)] * 3        # after the horizon: the final rate
    if schedule == "exp":
        assert lrs[5] == pytest.approx(0.1 * 0.01 ** 0.5)
    else:
        assert lrs[5] == pytest.approx(0.1 * (0.01 + 0.99 * 0.5))
    one = SGD(lr=0.1, epochs=1, schedule=schedule, lr_final=0.01).planned()
    assert [one.lr_at(e) for e in range(3)] == pytest.approx([0.1, 0.001, 0.001])
    assert SGD(lr=0.1, epochs=3, lr_decay=0.5).lr_at(2) == pytest.approx(0.025)
    with pytest.raises(ValueError, match="schedule"):
        SGD(lr=0.1, schedule="linear")
    with pytest.raises(ValueError, match="lr_final"):
        SGD(lr=0.1, schedule="exp", lr_final=0.0)


def test_converged_rule():
    from scae_np.train import converged
    assert converged([5, 4, 3, 3.5], 3, 0)[0] is True             # best epoch not the last
    assert converged([9, 6, 5, 4], 4, 0)[0] is False              # still improving
    assert converged([9, 5, 5.0, 4.98, 4.95], 5, 3)[0] is True     # flat over the window
    assert converged([9, 5, 5.0, 4.98, 4.5], 5, 3)[0] is False
    assert converged([], 0, 0)[0] is None


def test_an_annealed_stage_resumes_to_the_same_numbers_and_reports_convergence(tmp_path):
    be = get_backend("numpy")
    rng = np.random.default_rng(0)
    x = rng.random((20, 1, 8, 8)).astype(np.float32)
    y = (np.arange(20) % 3).astype(np.int64)

    def net():
        return CNN(be, 1, (8, 8), 3, maps=(3,), kernels=(3,), pools=(2,), hidden=0, seed=1)
    sgd = SGD(lr=0.05, epochs=5, batch_size=4, momentum=0.9, schedule="cosine", lr_final=0.01,
              patience=2)
    a = Trainer(be, str(tmp_path / "a"), progress=False, echo=lambda m: None)
    ra = a.fit("s", net(), "cnn", x, y, sgd, 0, x_val=x, y_val=y)
    b = Trainer(be, str(tmp_path / "b"), progress=False, echo=lambda m: None,
                stop_after_epochs=2)
    with pytest.raises(Exception, match="stopped after 2"):
        b.fit("s", net(), "cnn", x, y, sgd, 0, x_val=x, y_val=y)
    b = Trainer(be, str(tmp_path / "b"), progress=False, echo=lambda m: None, resume=True)
    rb = b.fit("s", net(), "cnn", x, y, sgd, 0, x_val=x, y_val=y)
    strip = lambda r: {k: v for k, v in r.items() if k != "train_time_s"}
    assert strip(ra) == strip(rb)
    assert "converged" in ra and ra["converged"] in (True, False)
    meta = json.loads(str(load_npz(tmp_path / "b" / "checkpoints" / "s.npz")["meta"]))
    assert meta["sgd"]["horizon"] == 5 and meta["sgd"]["schedule"] == "cosine"
    lrs = [json.loads(line)["lr"] for line in open(tmp_path / "b" / "metrics.jsonl")]
    assert lrs[0] == pytest.approx(0.05) and lrs[-1] < lrs[0]
