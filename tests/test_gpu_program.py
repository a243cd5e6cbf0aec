"""The program on a GPU backend, compared with the NumPy backend (issue 12, "a GPU tier that
runs the program"): the layers, the CNN and CAE (forward and gradients), one training step,
a short fit through the trainer, and ``python -m scae_np.run mnist --backend cupy|numba`` on
tiny data.

Targets (one parameter per test):

* ``cupy-gpu``, ``numba-gpu`` (marker ``gpu``): the real thing at batch 128 -- run with
  ``pytest -m gpu tests/test_gpu_program.py`` on a machine with a GPU (bench/gpu_check.sh
  does); skipped, with the reason, where there is none.
* ``cupy-emu`` (``emulator``) and ``numba-sim`` (``simulator``): the same test code in the
  default tier, on the CUDA C emulator and numba's simulator, at tiny sizes (batch 2-8: the
  simulator runs one Python thread per CUDA thread). They keep the comparisons themselves
  tested on every commit (about 10 s). The ``run`` and fit tests run on ``cupy-emu`` only (the
  simulator would take minutes); the CAE and training-step tests on ``numba-sim`` are in the
  slow tier (``pytest -m slow``: ~40 s).

Every comparison is against the NumPy backend computing in float32 from the same host
parameters and inputs (the models' initial weights are drawn on the host, so the same seed
gives the same model everywhere). Tolerances, written once:

* a convolution layer's output: ``kernels.testing.assert_op_close`` (the float32 bound of
  the op itself); pooling and unpooling: exact (inputs with distinct values, no ties);
* everything else, per array: ``|a - e| <= rtol * max|e|`` with NaN or Inf failing --
  :data:`RTOL_ONE` (1e-4) for one forward/backward pass (float32 eps is 1.2e-7; the
  longest sums, the weight and bias gradients at batch 128, have T ~ 74,000 terms, and
  rounding errors that do not conspire grow as ``sqrt(T) eps`` ~ 3e-5 of the result),
  :data:`RTOL_STEPS` (2e-3) for losses after a few dozen SGD steps (rounding differences
  are amplified by the updates; a wrong kernel changes them by far more);
* classification errors after training: at most :data:`ERROR_IMAGES` (2) images apart (an
  image near the decision boundary may flip on rounding).

On a GPU the CAE's binomial noise comes from ``cupy.random`` on the device, not from the
host generator (``scae_np.models.CAE.corrupt``), so noisy stages of ``run`` are not compared
there; on the emulators ``xp`` is NumPy and every stage is compared.
"""
import dataclasses
import gzip
import hashlib
import json
import os
import pathlib
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from kernels import BackendUnavailableError, get_backend
from kernels.testing import assert_op_close, distinct_values
from scae_np import layers as L
from scae_np.models import CAE, CNN
from scae_np.train import SGD, Trainer

from numba_backends import numba_backend

ROOT = pathlib.Path(__file__).resolve().parents[1]
REF = get_backend("numpy")

RTOL_ONE = 1e-4
RTOL_STEPS = 2e-3
ERROR_IMAGES = 2

GPU_TARGETS = ("cupy-gpu", "numba-gpu")


def _targets(sim):
    """The test's targets; ``sim``: the numba simulator's param in the default tier
    (``"default"``), in the slow tier (``"slow"``: each simulated step costs seconds) or
    not at all (None)."""
    t = [pytest.param("cupy-gpu", marks=pytest.mark.gpu, id="cupy-gpu"),
         pytest.param("numba-gpu", marks=pytest.mark.gpu, id="numba-gpu"),
         pytest.param("cupy-emu", marks=pytest.mark.emulator, id="cupy-emu")]
    if sim == "default":
        t.append(pytest.param("numba-sim", marks=pytest.mark.simulator, id="numba-sim"))
    elif sim == "slow":
        t.append(pytest.param("numba-sim", marks=[pytest.mark.simulator, pytest.mark.slow],
                              id="numba-sim"))
    return t


@dataclasses.dataclass(frozen=True)
class Size:
    """The sizes a target's tests use."""
    batch: int
    hw: int            # square input images
    maps: tuple        # two convolutions
    kernels: tuple
    hidden: int
    cae_maps: int
    cae_kernel: int


SIZES = {
    # batch 128 (the issue's), small maps: every launch is a real multi-block grid
    "gpu": Size(batch=128, hw=28, maps=(20, 30), kernels=(5, 5), hidden=40,
                cae_maps=20, cae_kernel=7),
    "cupy-emu": Size(batch=8, hw=12, maps=(3, 4), kernels=(3, 3), hidden=6,
                     cae_maps=3, cae_kernel=3),
    "numba-sim": Size(batch=2, hw=7, maps=(2, 2), kernels=(3, 2), hidden=4,
                      cae_maps=2, cae_kernel=3),
}


def size_of(target):
    return SIZES["gpu" if target in GPU_TARGETS else target]


_backends = {}


def backend_for(target):
    """The backend under test; skips with the reason when it cannot run here."""
    if target not in _backends:
        if target == "cupy-gpu":
            try:
                _backends[target] = get_backend("cupy")
            except BackendUnavailableError as e:
                pytest.skip(f"gpu tier needs a CUDA GPU with CuPy: {e}")
        elif target == "cupy-emu":
            try:
                _backends[target] = get_backend("cupy", emulate=True)
            except BackendUnavailableError as e:
                pytest.skip(f"the CUDA C emulator cannot run here: {e}")
        else:
            _backends[target] = numba_backend("gpu" if target == "numba-gpu" else "sim")
    return _backends[target]


@pytest.fixture
def target(request):
    """The target of a test parametrized (indirectly) with :func:`_targets`."""
    backend_for(request.param)
    return request.param


def host(be, a):
    return np.asarray(be.to_host(a))


def assert_close(actual, expected, rtol, name):
    """``|a - e| <= rtol * max|e|`` elementwise; NaN/Inf (on either side) fails."""
    a = np.asarray(actual, dtype=np.float64)
    e = np.asarray(expected, dtype=np.float64)
    assert a.shape == e.shape, f"{name}: shape {a.shape} != reference {e.shape}"
    assert np.isfinite(e).all(), f"{name}: the NumPy reference is not finite"
    tol = rtol * max(float(np.abs(e).max(initial=0.0)), np.finfo(np.float32).tiny)
    with np.errstate(invalid="ignore"):
        bad = ~(np.isfinite(a) & (np.abs(a - e) <= tol))
    if bad.any():
        i = tuple(int(v) for v in np.argwhere(bad)[0])
        worst = float(np.nanmax(np.where(np.isfinite(a), np.abs(a - e), np.inf)))
        raise AssertionError(f"{name}: {int(bad.sum())} of {bad.size} elements off by more "
                             f"than {rtol:g} x max|reference| = {tol:.3g}; first at {i}: "
                             f"{a[i]!r} vs {e[i]!r}; worst |error| {worst:.3g}")


# ------------------------------------------------------------------------------ layers
@pytest.mark.parametrize("target", _targets("default"), indirect=True)
def test_layers_match_numpy(target):
    be, s = backend_for(target), size_of(target)
    rng = np.random.default_rng(12)
    n, c, f, k = s.batch, 2, s.maps[0], s.kernels[0]
    x = rng.standard_normal((n, c, s.hw, s.hw)).astype(np.float32)

    # convolution: forward, then the three gradients of backward
    conv_r = L.Conv2D(REF, c, f, k, np.random.default_rng(1))
    conv_d = L.Conv2D(be, c, f, k, np.random.default_rng(1))
    conv_r.params["b"][:] = rng.standard_normal(f).astype(np.float32)
    conv_d.params["b"][...] = be.to_device(conv_r.params["b"])
    y_r = conv_r.forward(x)
    y_d = host(be, conv_d.forward(be.to_device(x)))
    assert_op_close("conv2d_forward", y_d, y_r, x, conv_r.params["W"], conv_r.params["b"])
    dy = rng.standard_normal(y_r.shape).astype(np.float32)
    dx_r = conv_r.backward(dy)
    dx_d = host(be, conv_d.backward(be.to_device(dy)))
    assert_op_close("conv2d_backward_input", dx_d, dx_r, dy, conv_r.params["W"])
    assert_op_close("conv2d_backward_weight", host(be, conv_d.grads["W"]), conv_r.grads["W"],
                    x, dy)
    assert_op_close("conv2d_backward_bias", host(be, conv_d.grads["b"]), conv_r.grads["b"], dy)

    # pooling with switches, unpooling: exact on tie-free inputs
    h = distinct_values(rng, (n, f, s.hw - k + 1, s.hw - k + 1), dtype=np.float32)
    pool_r, pool_d = L.MaxPool2D(REF, 2), L.MaxPool2D(be, 2)
    p_r, p_d = pool_r.forward(h), pool_d.forward(be.to_device(h))
    np.testing.assert_array_equal(host(be, p_d), p_r)
    np.testing.assert_array_equal(host(be, pool_d.switches), pool_r.switches)
    sw_r, sw_d = pool_r.switches, pool_d.switches
    dp = distinct_values(rng, p_r.shape, dtype=np.float32)
    np.testing.assert_array_equal(host(be, pool_d.backward(be.to_device(dp))),
                                  pool_r.backward(dp))
    un_r, un_d = L.Unpool2D(REF), L.Unpool2D(be)
    u_r = un_r.forward(dp, sw_r, h.shape[2:])
    np.testing.assert_array_equal(host(be, un_d.forward(be.to_device(dp), sw_d, h.shape[2:])),
                                  u_r)
    np.testing.assert_array_equal(host(be, un_d.backward(be.to_device(h))), un_r.backward(h))

    # scaled tanh (in place) and the dense layer
    t_r, t_d = L.ScaledTanh(REF), L.ScaledTanh(be)
    a = rng.standard_normal((n, 7)).astype(np.float32) * 2
    assert_close(host(be, t_d.forward(be.to_device(a.copy()))), t_r.forward(a.copy()),
                 RTOL_ONE, "scaled tanh forward")
    g = rng.standard_normal(a.shape).astype(np.float32)
    assert_close(host(be, t_d.backward(be.to_device(g))), t_r.backward(g), RTOL_ONE,
                 "scaled tanh backward")
    d_r = L.Dense(REF, 50, s.hidden, np.random.default_rng(2))
    d_d = L.Dense(be, 50, s.hidden, np.random.default_rng(2))
    xin = rng.standard_normal((n, 50)).astype(np.float32)
    assert_close(host(be, d_d.forward(be.to_device(xin))), d_r.forward(xin), RTOL_ONE,
                 "dense forward")
    gy = rng.standard_normal((n, s.hidden)).astype(np.float32)
    assert_close(host(be, d_d.backward(be.to_device(gy))), d_r.backward(gy), RTOL_ONE,
                 "dense dx")
    for p in ("W", "b"):
        assert_close(host(be, d_d.grads[p]), d_r.grads[p], RTOL_ONE, f"dense d{p}")


# ------------------------------------------------------------------------------ models
def _cnn(be, s, seed=3):
    return CNN(be, 1, (s.hw, s.hw), 10, maps=s.maps, kernels=s.kernels, pools=(2, 1),
               hidden=s.hidden, seed=seed)


def _cae(be, s, pool=2, seed=3):
    return CAE(be, 1, n_maps=s.cae_maps, kernel=s.cae_kernel, pool=pool, noise=0.0, seed=seed,
               init_scale=1.0)


def _images(rng, s, n=None):
    n = s.batch if n is None else n
    return rng.random((n, 1, s.hw, s.hw), dtype=np.float32), rng.integers(0, 10, n)


@pytest.mark.parametrize("target", _targets("default"), indirect=True)
def test_cnn_forward_and_gradients_match_numpy(target):
    be, s = backend_for(target), size_of(target)
    x, y = _images(np.random.default_rng(5), s)
    ref, dev = _cnn(REF, s), _cnn(be, s)
    assert_close(host(be, dev.forward(be.to_device(x))), ref.forward(x), RTOL_ONE, "logits")
    loss_r, g_r = ref.loss_and_grads(x, y)
    loss_d, g_d = dev.loss_and_grads(be.to_device(x), be.to_device(y))
    assert_close(float(loss_d), float(loss_r), RTOL_ONE, "CNN loss")
    assert set(g_d) == set(g_r) == set(ref.params)
    for name in g_r:
        assert_close(host(be, g_d[name]), g_r[name], RTOL_ONE, f"CNN d{name}")


@pytest.mark.parametrize("target", _targets("slow"), indirect=True)
@pytest.mark.parametrize("pool", [1, 2])
def test_cae_forward_and_gradients_match_numpy(target, pool):
    be, s = backend_for(target), size_of(target)
    x, _ = _images(np.random.default_rng(6), s)
    ref, dev = _cae(REF, s, pool), _cae(be, s, pool)
    xd = be.to_device(x)
    assert_close(host(be, dev.encode(xd)), ref.encode(x), RTOL_ONE, "CAE codes")
    assert_close(host(be, dev.reconstruct(xd)), ref.reconstruct(x), RTOL_ONE, "reconstruction")
    loss_r, g_r = ref.loss_and_grads(x)
    loss_d, g_d = dev.loss_and_grads(xd)
    assert_close(float(loss_d), float(loss_r), RTOL_ONE, "CAE loss")
    for name in ("W", "b", "c"):
        assert_close(host(be, g_d[name]), g_r[name], RTOL_ONE, f"CAE d{name}")


@pytest.mark.parametrize("target", _targets("slow"), indirect=True)
def test_training_steps_match_numpy(target):
    """Two SGD steps with momentum: the losses and the updated parameters."""
    be, s = backend_for(target), size_of(target)
    x, y = _images(np.random.default_rng(7), s)
    xd, yd = be.to_device(x), be.to_device(y)
    for kind in ("cnn", "cae"):
        ref = _cnn(REF, s) if kind == "cnn" else _cae(REF, s)
        dev = _cnn(be, s) if kind == "cnn" else _cae(be, s)
        for step in range(2):
            if kind == "cnn":
                l_r, l_d = ref.train_step(x, y, 0.05, 0.9), dev.train_step(xd, yd, 0.05, 0.9)
            else:
                l_r, l_d = ref.train_step(x, 0.01, 0.9), dev.train_step(xd, 0.01, 0.9)
            assert_close(float(l_d), float(l_r), RTOL_ONE, f"{kind} loss, step {step + 1}")
        sd = dev.state_dict()
        for name, p in ref.state_dict().items():
            assert_close(sd[name], p, RTOL_ONE, f"{kind} {name} after 2 steps")
        for name, v in ref.velocity_dict().items():
            # the velocity is the sum of the lr-scaled gradients: compare at its own scale
            assert_close(dev.velocity_dict()[name], v, 10 * RTOL_ONE, f"{kind} velocity {name}")


# --------------------------------------------------------------------------- a short fit
def _learnable(rng, n, hw, noise=0.3):
    """Images of 10 classes a small CNN learns in a few epochs: class c lights one of 10
    square patches (a 4x3 grid of the 12 patch places, the first 10) over uniform noise."""
    y = rng.permutation(np.arange(n) % 10)
    x = (rng.random((n, 1, hw, hw)) * noise).astype(np.float32)
    side = hw // 4
    for i, c in enumerate(y):
        r, q = divmod(int(c), 4)
        x[i, 0, r * side + side // 2: r * side + side // 2 + side,
          q * side: q * side + side] = 1.0
    return x, y


def _fit(be, s, out, kind):
    rng = np.random.default_rng(9)
    x, y = _learnable(rng, 3 * s.batch, s.hw)
    xv, yv = _learnable(rng, s.batch, s.hw)
    model = _cnn(be, s) if kind == "cnn" else _cae(be, s)
    tr = Trainer(be, str(out), progress=False, echo=lambda m: None, eval_batch=s.batch)
    tr.fit(kind, model, kind, x, y if kind == "cnn" else None,
           SGD(lr=0.03 if kind == "cnn" else 0.01, epochs=5, batch_size=s.batch, momentum=0.9),
           seed=1, x_val=xv, y_val=yv if kind == "cnn" else None)
    with open(out / "metrics.jsonl") as fh:
        return model, [json.loads(line) for line in fh]


@pytest.mark.parametrize("target", _targets(None), indirect=True)
@pytest.mark.parametrize("kind", ["cnn", "cae"])
def test_short_fit_learns_and_matches_numpy(target, kind, tmp_path):
    """Five epochs of three batches through the trainer (resident data, device batches,
    losses read once per epoch): the model learns, and every epoch's numbers are NumPy's."""
    be, s = backend_for(target), size_of(target)
    ref_model, ref = _fit(REF, s, tmp_path / "numpy", kind)
    dev_model, dev = _fit(be, s, tmp_path / "dev", kind)
    assert [r["epoch"] for r in dev] == [r["epoch"] for r in ref] == [1, 2, 3, 4, 5]
    for r_d, r_r in zip(dev, ref):
        for key in ("train_loss", "val_loss"):
            assert_close(r_d[key], r_r[key], RTOL_STEPS, f"{kind} epoch {r_r['epoch']} {key}")
        if kind == "cnn":
            assert abs(r_d["val_error"] - r_r["val_error"]) <= 100.0 * ERROR_IMAGES / s.batch
    first, last = dev[0]["train_loss"], dev[-1]["train_loss"]
    assert last < 0.8 * first, f"{kind}: training loss {first:.4g} -> {last:.4g}, not learning"
    sd = dev_model.state_dict()
    for name, p in ref_model.state_dict().items():
        assert np.isfinite(sd[name]).all(), name


# ----------------------------------------------------------------------- the command
IDX = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
       "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")


def write_mnist_like(folder, n_train, n_test, hw=28, seed=0):
    """Gzip IDX files in MNIST's format holding :func:`_learnable` images; {file: md5}."""
    rng = np.random.default_rng(seed)
    x_tr, y_tr = _learnable(rng, n_train, hw)
    x_te, y_te = _learnable(rng, n_test, hw)
    arrays = {IDX[0]: (x_tr[:, 0] * 255).astype(np.uint8), IDX[1]: y_tr.astype(np.uint8),
              IDX[2]: (x_te[:, 0] * 255).astype(np.uint8), IDX[3]: y_te.astype(np.uint8)}
    folder = pathlib.Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    md5s = {}
    for name, a in arrays.items():
        b = gzip.compress(bytes([0, 0, 8, a.ndim]) + np.array(a.shape, ">u4").tobytes()
                          + a.tobytes(), mtime=0)
        (folder / name).write_bytes(b)
        md5s[name] = hashlib.md5(b).hexdigest()
    return md5s


#: ``python -m scae_np.run`` with scae_np.data told to accept the files written above
#: (their md5s and counts in argv[1:4]); the rest of argv is the command line.
BOOT = textwrap.dedent("""
    import dataclasses, json, sys
    from scae_np import data as D
    spec = D.SPECS["mnist"]
    md5s = json.loads(sys.argv[1])
    D.SPECS["mnist"] = dataclasses.replace(
        spec, files=tuple((f, (md5s[f],)) for f in spec.file_names),
        n_train=int(sys.argv[2]), n_test=int(sys.argv[3]))
    from scae_np.run import main
    sys.exit(main(sys.argv[4:]))
""")

#: The default pipeline (Fig. 1 CAEs, a CAE stack, CNN random vs CAE init) at batch 128 on a
#: few hundred images with small maps: 18 CNN steps per init, seconds on a GPU. ``learned``:
#: the CNN stage whose training loss must fall below ``ratio`` x its first epoch's, and the
#: test error % it must end below (None: not checked). The preset's recipe otherwise (the
#: annealed rate, lr to lr/100); ``--cae-rescale activation`` (the preset's too, pinned here)
#: lets the CAE-init CNN leave its starting plateau at once: on a plateau every image gets
#: nearly the same logits, and rounding alone could flip many predictions together. NumPy
#: here: random init 2.17 -> 0.56 training loss, test error 0.3%; CAE init 11.3%.
RUN_GPU = dict(n_train=700, n_test=300, learned=("cnn-random", 0.5, 20.0), argv=[
    "--maps", "8,12,16", "--kernels", "5,5,3", "--hidden", "32", "--cae-maps", "8",
    "--cae-kernel", "5", "--sizes", "384", "--val-images", "128", "--cae-images", "256",
    "--fig-images", "256", "--epochs", "6", "--cae-epochs", "2", "--fig-epochs", "1",
    "--batch-size", "128", "--cae-batch-size", "128", "--eval-batch-size", "128",
    "--lr", "0.05", "--cae-lr", "0.02", "--cae-rescale", "activation", "--embed-images", "100"])
#: Small enough for the CUDA C emulator in the default tier (~4 s): the ``cnn`` experiment
#: (a 2-CAE stack and the CNN it initialises), batch 8, 3 and 4 maps, a constant rate.
RUN_EMU = dict(n_train=80, n_test=20, learned=("cnn-cae", 0.9, 70.0), argv=[
    "-e", "cnn", "--init", "cae", "--cae-rescale", "activation",
    "--maps", "3,4", "--kernels", "5,5", "--hidden", "6", "--sizes", "40", "--val-images",
    "10", "--cae-images", "16", "--epochs", "3", "--cae-epochs", "1", "--batch-size", "8",
    "--cae-batch-size", "8", "--eval-batch-size", "10", "--lr", "0.03", "--lr-schedule",
    "decay", "--lr-decay", "1", "--cae-lr", "0.02", "--embed-images", "0"])


class Run:
    """``python -m scae_np.run`` started in a fresh interpreter (numba picks the simulator or
    the GPU at its first import); :meth:`result` waits for it. Started side by side, the
    NumPy reference and the run under test share the wall time."""

    def __init__(self, tmp, backend, emulate, cfg, tag):
        data = tmp / "data"
        if not data.exists():
            md5s = write_mnist_like(data, cfg["n_train"], cfg["n_test"])
            (tmp / "md5s.json").write_text(json.dumps(md5s))
        self.tag, self.out = tag, tmp / f"run-{tag}"
        env = {**os.environ, "PYTHONPATH": str(ROOT), "XDG_CACHE_HOME": str(tmp / "cache")}
        env.pop("SCAE_NP_DATA_DIR", None)
        if emulate and backend == "cupy":    # the emulator's builds: this session's cache
            from kernels.emulator import cache_dir
            env["SCAE_NP_EMU_CACHE"] = cache_dir()
        if backend == "numba":
            env["NUMBA_ENABLE_CUDASIM"] = "1" if emulate else "0"
        cmd = [sys.executable, "-c", BOOT, (tmp / "md5s.json").read_text(),
               str(cfg["n_train"]), str(cfg["n_test"]), "mnist", "--data-dir", str(data),
               "--out", str(self.out), "--backend", backend, "--no-progress", "--no-download",
               *cfg["argv"]] + (["--emulate"] if emulate else [])
        self.proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True)
        self._result = None

    def result(self):
        """(metrics records, results.json, stdout); fails on a non-zero exit."""
        if self._result is None:
            try:
                stdout, stderr = self.proc.communicate(timeout=600)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                raise
            assert self.proc.returncode == 0, (
                f"{self.tag}: exit {self.proc.returncode}\n{stdout[-3000:]}\n{stderr[-3000:]}")
            with open(self.out / "metrics.jsonl") as fh:
                recs = [json.loads(line) for line in fh if line.strip()]
            self._result = (recs, json.loads((self.out / "results.json").read_text()), stdout)
        return self._result


_NUMPY_RUNS = {}


@pytest.mark.parametrize("target", _targets(None), indirect=True)
def test_run_command_learns_and_matches_numpy(target, tmp_path_factory):
    """``python -m scae_np.run mnist --backend cupy|numba`` (the default pipeline, tiny):
    every stage's per-epoch losses and errors are the NumPy backend's, within the stated
    tolerances, and the CNN learned."""
    on_gpu = target in GPU_TARGETS
    cfg = RUN_GPU if on_gpu else RUN_EMU
    name = target.split("-")[0]
    key = "gpu" if on_gpu else "emu"
    if key not in _NUMPY_RUNS:
        tmp = tmp_path_factory.mktemp(f"run-{key}")
        _NUMPY_RUNS[key] = Run(tmp, "numpy", False, cfg, "numpy")
    ref_run = _NUMPY_RUNS[key]
    dev_run = Run(ref_run.out.parent, name, not on_gpu, cfg, target)
    ref, ref_res, _ = ref_run.result()
    dev, dev_res, stdout = dev_run.result()
    assert f"backend {name}" in stdout
    noisy = {r["stage"] for r in ref if on_gpu and "noise" in r["stage"]}
    keyed = lambda recs: {(r["stage"], r["epoch"]): r for r in recs if r["stage"] not in noisy}
    ref_k, dev_k = keyed(ref), keyed(dev)
    assert sorted(dev_k) == sorted(ref_k)
    assert any(st.startswith("stack") for st, _ in ref_k) and any(
        st.startswith("cnn-cae") for st, _ in ref_k)
    n_val = int(cfg["argv"][cfg["argv"].index("--val-images") + 1])
    for k, r in ref_k.items():
        d = dev_k[k]
        for m in ("train_loss", "val_loss", "val_mse"):
            if m in r:
                assert_close(d[m], r[m], RTOL_STEPS, f"{k} {m}")
        if "val_error" in r:
            assert abs(d["val_error"] - r["val_error"]) <= 100.0 * ERROR_IMAGES / n_val, k
    (row_r,), (row_d,) = ref_res["table"], dev_res["table"]
    inits = [i for i in ("random", "cae") if row_r.get(i)]
    assert inits and [i for i in ("random", "cae") if row_d.get(i)] == inits
    for init in inits:
        assert abs(row_d[init]["mean"] - row_r[init]["mean"]) <= 100.0 * ERROR_IMAGES / cfg[
            "n_test"], (init, row_d[init], row_r[init])
    # the model learned
    stage, ratio, max_error = cfg["learned"]
    cnn = sorted((r for r in dev if r["stage"].startswith(stage)), key=lambda r: r["epoch"])
    assert len(cnn) >= 2 and cnn[-1]["train_loss"] < ratio * cnn[0]["train_loss"], (
        f"{stage}: training loss per epoch {[round(r['train_loss'], 4) for r in cnn]}")
    if max_error is not None:
        init = stage.split("-")[1]
        assert row_d[init]["mean"] < max_error, row_d
