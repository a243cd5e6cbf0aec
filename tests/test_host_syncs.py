"""No host sync per training step on a device backend (issue 12, item 4).

The trainer runs on :class:`tests.fake_device.FakeDevice`, a pretend GPU that counts every
device->host read (``to_host``, ``float(a)``, ``f"{a:.4f}"``, ...) and every host->device
upload. An epoch of 4 steps and one of 16 must cost the same number of transfers: the
data is resident, batches are gathered on the device, the CAE's noise is drawn there and
the losses are read once per epoch. (The code before the change read ``float(loss)`` and
uploaded the batch -- and the CAE's mask -- every step.)
"""
import json

import numpy as np
import pytest

from fake_device import COUNTS, DeviceArray, FakeDevice
from kernels import get_backend
from scae_np import train
from scae_np.models import CAE, CNN
from scae_np.train import SGD, Diverged, Trainer

EPOCHS = 2


def _data(n, rng):
    x = rng.random((n, 1, 10, 9), dtype=np.float32)
    y = rng.integers(0, 3, n)
    return x, y


def _cnn(be):
    return CNN(be, 1, (10, 9), 3, maps=(3,), kernels=(3,), pools=(2,), hidden=5, seed=3)


def _cae(be):
    return CAE(be, 1, n_maps=3, kernel=3, pool=2, noise=0.25, seed=3)


def _fit(be, kind, steps, tmp_path, progress=False, bs=4, val=True, **kw):
    """Train 2 epochs of ``steps`` mini-batches; the (reads, uploads) of the fit."""
    rng = np.random.default_rng(0)
    x, y = _data(steps * bs, rng)
    xv, yv = _data(6, rng) if val else (None, None)
    model = _cnn(be) if kind == "cnn" else _cae(be)
    tr = Trainer(be, str(tmp_path), progress=progress, echo=lambda m: None, **kw)
    COUNTS.reset()
    tr.fit("s", model, kind, x, y if kind == "cnn" else None,
           SGD(lr=0.05, epochs=EPOCHS, batch_size=bs, momentum=0.5), seed=1,
           x_val=xv, y_val=yv if kind == "cnn" else None)
    return model, (COUNTS.reads, COUNTS.uploads)


@pytest.mark.parametrize("kind", ["cnn", "cae"])
def test_transfers_per_epoch_do_not_grow_with_the_steps(tmp_path, kind):
    be = FakeDevice()
    _, few = _fit(be, kind, 4, tmp_path / "a", val=False)
    _, many = _fit(be, kind, 16, tmp_path / "b", val=False)
    assert few == many, f"{kind}: (reads, uploads) {few} with 4 steps/epoch, {many} with 16"
    # uploads: the images and the labels (a CAE: the images and the batch its starting loss
    # is measured on) once per stage, the permutation once per epoch; reads: the loss
    # buffer once per epoch, the rest is the checkpoints' parameters
    assert many[1] == 2 + EPOCHS, many


@pytest.mark.parametrize("kind", ["cnn", "cae"])
def test_evaluation_reads_once_whatever_the_batches(kind):
    be = FakeDevice()
    x, y = _data(12, np.random.default_rng(0))
    model = _cnn(be) if kind == "cnn" else _cae(be)
    reads = []
    for batch in (12, 5, 1):
        COUNTS.reset()
        if kind == "cnn":
            train.evaluate_classifier(be, model, x, y, batch)
        else:
            train.evaluate_reconstruction(be, model, x, batch)
        reads.append(COUNTS.reads)
    assert reads[0] == reads[1] == reads[2] <= 2, reads


def test_the_progress_bar_reads_the_loss_only_every_LOSS_READ_S(tmp_path, monkeypatch):
    be = FakeDevice()
    monkeypatch.setattr(train, "LOSS_READ_S", 1e9)
    _, few = _fit(be, "cae", 4, tmp_path / "a", progress=True, val=False)
    _, many = _fit(be, "cae", 16, tmp_path / "b", progress=True, val=False)
    assert few == many
    monkeypatch.setattr(train, "LOSS_READ_S", 0.0)     # a read after every step
    _, every = _fit(be, "cae", 16, tmp_path / "c", progress=True, val=False)
    # 16 reads per epoch instead of the one at its end
    assert every[0] == many[0] + (16 - 1) * EPOCHS, (every, many)


def test_a_step_returns_the_loss_on_the_device():
    be = FakeDevice()
    rng = np.random.default_rng(0)
    x, y = _data(4, rng)
    COUNTS.reset()
    loss = _cnn(be).train_step(be.to_device(x), be.to_device(y), 0.1)
    assert isinstance(loss, DeviceArray) and loss.ndim == 0
    cae = _cae(be)
    assert isinstance(cae.train_step(be.to_device(x), 0.1), DeviceArray)
    assert COUNTS.reads == 0


def test_device_results_equal_numpy_results(tmp_path):
    """Without noise the device path (resident data, device gather, loss buffer) computes the
    numpy backend's numbers bit for bit: same parameters, same metrics."""
    out = {}
    for name, be in (("numpy", get_backend("numpy")), ("device", FakeDevice())):
        model, _ = _fit(be, "cnn", 5, tmp_path / name)
        out[name] = ({k: np.asarray(v) for k, v in model.state_dict().items()},
                     [json.loads(ln) for ln in open(tmp_path / name / "metrics.jsonl")])
    (pn, mn), (pd, md) = out["numpy"], out["device"]
    for k in pn:
        np.testing.assert_array_equal(pn[k], pd[k], err_msg=k)
    strip = lambda ms: [{k: v for k, v in m.items() if k not in ("time_s", "images_per_s")}
                        for m in ms]
    assert strip(mn) == strip(md)


def test_device_noise_is_drawn_on_the_device_and_resumes_exactly(tmp_path):
    """The CAE's masks come from xp.random on a device (no upload per step), reseeded per
    epoch from the model's RNG: a run stopped after epoch 1 and resumed ends where an
    uninterrupted one does."""
    be = FakeDevice()
    whole, _ = _fit(be, "cae", 5, tmp_path / "whole")
    with pytest.raises(train.Interrupted):
        _fit(be, "cae", 5, tmp_path / "cut", stop_after_epochs=1)
    resumed, _ = _fit(be, "cae", 5, tmp_path / "cut", resume=True)
    for k, v in whole.state_dict().items():
        np.testing.assert_array_equal(v, resumed.state_dict()[k], err_msg=k)
    # and the masks differ from the host RNG's (they are the device generator's)
    host, _ = _fit(get_backend("numpy"), "cae", 5, tmp_path / "host")
    assert not np.array_equal(host.state_dict()["W"], whole.state_dict()["W"])


def test_divergence_on_a_device_names_the_first_bad_batch(tmp_path):
    """The losses are read at the end of the epoch, but the rule still sees them in order."""
    be = FakeDevice()

    class Bad(CNN):
        steps = 0

        def train_step(self, x, y, lr, momentum=0.0):
            loss = super().train_step(x, y, lr, momentum)
            Bad.steps += 1
            return loss * np.float32("nan") if Bad.steps == 3 else loss

    rng = np.random.default_rng(0)
    x, y = _data(24, rng)
    model = Bad(be, 1, (10, 9), 3, maps=(3,), kernels=(3,), pools=(2,), hidden=5, seed=3)
    tr = Trainer(be, str(tmp_path), progress=False, echo=lambda m: None)
    with pytest.raises(Diverged, match="the loss of mini-batch 3 became nan"):
        tr.fit("s", model, "cnn", x, y, SGD(lr=0.05, epochs=2, batch_size=4), seed=0)
    assert Bad.steps == 6          # the epoch ran out: one read, at its end
