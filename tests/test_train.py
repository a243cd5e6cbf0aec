"""scae_np.train: early stopping keeps the best epoch, lr decay, checkpoints, diverging loss."""
import json

import numpy as np
import pytest

from kernels import get_backend
from scae_np.models import CNN, load_npz
from scae_np.train import SGD, Trainer, TrainingError


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
    with pytest.raises(TrainingError, match="diverged: lower the learning rate"):
        tr.fit("d", model, "cnn", x, y, SGD(lr=0.1, epochs=3, batch_size=4), seed=0)
