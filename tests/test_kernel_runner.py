"""``python -m kernels OP`` (kernels/runner.py): every version validated, then timed, on the
CPU emulator and in numba's simulator; a wrong version makes it exit 1 naming it; bad usage
exits 2 with a message that says what to do. The shapes and napkin maths it prints are the
ones of kernels/workloads.py, checked here against the models and the contract."""
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

import kernels
from kernels import runner as R
from kernels import workloads as W
from kernels.testing import CONV_OPS, POOL_OPS, conv_terms

ROOT = pathlib.Path(__file__).resolve().parents[1]


def run_main(capsys, *argv):
    rc = R.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def version_lines(out, versions):
    """The result line of each version (the first line starting with its name)."""
    lines = {}
    for line in out.splitlines():
        word = line.split(" ", 1)[0]
        if word in versions and word not in lines:
            lines[word] = line
    return lines


def with_extra_version(monkeypatch, op, name, fn_of_good, *, emulate=True, backend="cupy"):
    """Make the runner's backend carry one more version of ``op``: ``fn_of_good(good)``
    wraps the backend's default version."""
    real = R.get_backend

    def patched(bname, *, emulate=False, **kw):
        be = real(bname, emulate=emulate, **kw)
        if bname == backend:
            good = be.get_op(op, be.default_version(op))
            be._versions[op] = dict(be._versions[op], **{name: fn_of_good(good)})
        return be
    monkeypatch.setattr(R, "get_backend", patched)


# ------------------------------------------------------------------ runs that pass
@pytest.mark.emulator
@pytest.mark.parametrize("op,shape", [("conv2d_backward_weight", "tiny-conv"),
                                      ("conv2d_forward", "tiny-conv"),
                                      ("maxpool2d_backward", "tiny-pool")])
def test_emulator_validates_and_times_every_version(capsys, op, shape):
    rc, out, err = run_main(capsys, op, "--backend", "cupy", "--emulate", "--shape", shape,
                            "--repeat", "1")
    assert rc == 0, err
    versions = kernels.get_backend("cupy", emulate=True).versions(op)
    lines = version_lines(out, versions)
    assert list(lines) == list(versions)                     # every version, ladder order
    assert W.metric(op) in out and "NOT a GPU speed" in out and "CPU emulator" in out
    for v, line in lines.items():
        assert "FAILED" not in line and ("ms" in line or "µs" in line or " s " in line)
    assert lines["naive"].split()[4] == "1.00x"              # speed-up over naive
    if op in CONV_OPS:                                       # max|err| and err/tol columns
        assert all(0 <= float(line.split()[-1]) <= 1 for line in lines.values())
    else:
        assert all(line.endswith("exact") for line in lines.values())
    assert "every version run matches the reference" in out


@pytest.mark.simulator
def test_simulator_runs_in_process(capsys):
    rc, out, err = run_main(capsys, "conv2d_backward_bias", "--backend", "numba", "--emulate",
                            "--sizes", "1,2,5,5,3,3")
    assert rc == 0, err
    assert "numba's CUDA simulator" in out and "GB/s" in out
    be = kernels.get_backend("numba", emulate=True)
    assert list(version_lines(out, be.versions("conv2d_backward_bias"))) == list(
        be.versions("conv2d_backward_bias"))


@pytest.mark.simulator
def test_simulator_in_a_fresh_process_sets_numba_mode_itself():
    """No NUMBA_ENABLE_CUDASIM in the environment: --backend numba --emulate must still get
    the simulator (the runner never imports numba before the backend chooses)."""
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"}
    p = subprocess.run([sys.executable, "-m", "kernels", "maxpool2d_backward", "--backend",
                        "numba", "--emulate", "--shape", "tiny-pool", "--repeat", "1"],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    assert "GB/s" in p.stdout and "simulator" in p.stdout and "NOT a GPU speed" in p.stdout
    assert {"naive", "gather"} <= set(version_lines(p.stdout, ("naive", "gather")))


def test_numpy_backend_skips_slow_naive_unless_named(capsys):
    rc, out, err = run_main(capsys, "conv2d_forward", "--backend", "numpy", "--shape",
                            "mnist-conv2", "--batch", "1", "--repeat", "1")
    assert rc == 0, err
    lines = version_lines(out, ("naive", "im2col", "fast"))
    assert "skipped" in lines["naive"] and "--version naive" in lines["naive"]
    assert lines["fast"].split()[4] == "—"                   # no naive time: no speed-up
    assert "numpy fast is checked against numpy im2col" in out
    rc, out, _ = run_main(capsys, "conv2d_forward", "--backend", "numpy", "--shape",
                          "tiny-conv", "--version", "fast", "naive")
    assert rc == 0 and list(version_lines(out, ("naive", "fast"))) == ["fast", "naive"]


# ------------------------------------------------------------------ wrong versions fail
@pytest.mark.emulator
@pytest.mark.parametrize("op,make", [
    ("conv2d_backward_weight", lambda good: lambda x, dy: good(x, dy) * np.float32(1.001)),
    ("conv2d_forward", lambda good: lambda x, w, b: np.where(
        np.arange(good(x, w, b).size).reshape(good(x, w, b).shape) == 7, np.float32(np.nan),
        good(x, w, b)).astype(np.float32)),
    ("maxpool2d_forward", lambda good: lambda x, k: (good(x, k)[0], np.roll(good(x, k)[1], 1))),
])
def test_a_wrong_version_exits_1_naming_it(capsys, monkeypatch, op, make):
    with_extra_version(monkeypatch, op, "broken", make)
    shape = "tiny-conv" if op in CONV_OPS else "tiny-pool"
    rc, out, err = run_main(capsys, op, "--backend", "cupy", "--emulate", "--shape", shape,
                            "--repeat", "1")
    assert rc == 1
    assert "failed validation: broken" in err and op in err
    lines = version_lines(out, ("naive", "broken"))
    assert "FAILED validation" in lines["broken"]
    assert "FAILED" not in lines["naive"]                    # the others still ran


@pytest.mark.emulator
def test_a_wrong_existing_version_is_named(capsys, monkeypatch):
    real = R.get_backend

    def patched(name, *, emulate=False, **kw):
        be = real(name, emulate=emulate, **kw)
        good = be.get_op("conv2d_backward_input", "tiled")
        be._versions["conv2d_backward_input"]["tiled"] = lambda dy, w: good(dy, w)[:, :, ::-1].copy()
        return be
    monkeypatch.setattr(R, "get_backend", patched)
    rc, _, err = run_main(capsys, "conv2d_backward_input", "--backend", "cupy", "--emulate",
                          "--shape", "tiny-conv", "--version", "naive", "tiled")
    assert rc == 1 and "failed validation: tiled" in err


# ------------------------------------------------------------------ bad usage: exit 2
@pytest.mark.parametrize("argv,match", [
    ([], "name an op"),
    (["conv2d_sideways", "--backend", "numpy"], "unknown op 'conv2d_sideways'"),
    (["conv2d_forward", "--backend", "numpy", "--version", "warp9"],
     "no version 'warp9' of conv2d_forward; its versions are: naive, im2col, fast"),
    (["conv2d_forward", "--backend", "numpy", "--shape", "mnist-conv9"], "unknown shape"),
    (["conv2d_forward", "--backend", "numpy", "--shape", "mnist-pool1"],
     "mnist-pool1 is a pool shape"),
    (["maxpool2d_forward", "--backend", "numpy", "--shape", "mnist-conv1"],
     "mnist-conv1 is a conv shape"),
    (["conv2d_forward", "--backend", "numpy", "--sizes", "1,2,3"], "takes N,C,H,W,F,K, got 3"),
    (["conv2d_forward", "--backend", "numpy", "--sizes", "1,2,a,4,5,6"], "expected integers"),
    (["conv2d_forward", "--backend", "numpy", "--sizes", "1,2,4,4,3,5"], "does not fit"),
    (["conv2d_forward", "--backend", "numpy", "--sizes", "1,0,4,4,3,3"], "must be positive"),
    (["unpool2d_forward", "--backend", "numpy", "--sizes", "1,2,4,4,3,3"], "N,C,H,W or"),
    (["conv2d_forward", "--backend", "numpy", "--sizes", "1,2,4,4,3,3", "--batch", "4"],
     "--batch and --sizes"),
    (["conv2d_forward", "--backend", "numpy", "--emulate"], "drop --emulate"),
])
def test_bad_usage_exits_2_with_a_clear_message(capsys, argv, match):
    rc, _, err = run_main(capsys, *argv)
    assert rc == 2 and match in err, err


def test_unavailable_gpu_backend_suggests_emulate(capsys):
    try:
        kernels.get_backend("cupy")
        pytest.skip("a GPU works here: the cupy backend is available")
    except kernels.BackendUnavailableError:
        pass
    rc, _, err = run_main(capsys, "conv2d_forward", "--backend", "cupy")
    assert rc == 2 and "cannot run here" in err and "--emulate" in err
    assert "get_backend(" not in err                  # the command's flag, not the Python call


def test_argparse_refuses_bad_numbers(capsys):
    with pytest.raises(SystemExit) as e:
        R.main(["conv2d_forward", "--repeat", "0"])
    assert e.value.code == 2 and "positive integer" in capsys.readouterr().err


# ------------------------------------------------------------------ --list
@pytest.mark.emulator
def test_list_shows_ops_versions_from_the_backends_and_shapes(capsys, monkeypatch):
    with_extra_version(monkeypatch, "conv2d_backward_bias", "warp_shuffle",
                       lambda good: good)            # a version the backend grew: listed
    rc, out, _ = run_main(capsys, "--list", "--backend", "cupy", "--emulate")
    assert rc == 0
    be = kernels.get_backend("cupy", emulate=True)
    for op in kernels.OPS:
        assert f"  {op}\n" in out
        vs = [v + ("*" if v == be.default_version(op) else "") for v in be.versions(op)]
        assert "cupy (emulated):  " + " ".join(vs) in out or " ".join(vs) in out
    assert "warp_shuffle" in out
    for name in W.named_shapes():
        assert name in out
    rc, out, _ = run_main(capsys, "--list")                  # every backend
    assert rc == 0 and "numpy:" in out and "naive im2col fast*" in out


# ------------------------------------------------------------------ shapes and napkin maths
def test_named_shapes_are_the_models_layers():
    from scae_np.models import CNN
    be = kernels.get_backend("numpy")
    named = W.named_shapes()
    for prefix, chw in (("mnist", (1, 28, 28)), ("cifar", (3, 32, 32))):
        cnn = CNN(be, chw[0], chw[1:], 10)
        for i, ((c, h, w), f, k) in enumerate(zip(cnn.shapes, cnn.maps, cnn.kernels), 1):
            L = named[f"{prefix}-conv{i}"]
            assert (L.c, L.h, L.w, L.f, L.k, L.n) == (c, h, w, f, k, W.BATCH)
            if cnn.pools[i - 1] > 1:
                P = named[f"{prefix}-pool{i}"]
                assert (P.c, P.h, P.w, P.k) == (f, h - k + 1, w - k + 1, cnn.pools[i - 1])
                assert P.y_shape()[1:] == cnn.shapes[i]
    assert named["mnist-conv2"].describe() == "100->150 5x5 on 12x12, N=128"
    assert (named["fig1-cae"].c, named["fig1-cae"].f, named["fig1-cae"].k) == (1, 20, 7)
    assert named["fig1-pool"].x_shape() == (128, 20, 22, 22)


def test_napkin_flop_counts_the_contracts_terms():
    L = W.ConvLayer("t", 3, 5, 9, 7, 3, n=2)
    fwd_terms = conv_terms("conv2d_forward", *W.conv_inputs("conv2d_forward", L)) * \
        int(np.prod(L.y_shape()))
    for op in CONV_OPS:
        args = W.conv_inputs(op, L)
        out = W.compute_reference(op, args, "fast")
        flop, nbytes = W.conv_napkin(op, L)
        if op == "conv2d_backward_input":    # the adjoint: the forward's products, no more
            assert flop == 2 * fwd_terms < 2 * conv_terms(op, *args) * out.size
        else:
            per_term = 1 if op == "conv2d_backward_bias" else 2
            assert flop == per_term * conv_terms(op, *args) * out.size
        assert nbytes == 4 * (sum(a.size for a in args) + out.size)   # each read/written once
    P = W.PoolLayer("p", 3, 6, 8, 2, n=2)
    x, _ = W.pool_inputs("maxpool2d_forward", P)
    assert np.unique(x).size == x.size                       # tie-free
    assert W.pool_napkin("maxpool2d_forward", P) == (0, x.size * 4 + x.size // 4 * 8)


def test_reference_is_never_the_version_under_test():
    big = W.named_shapes()["mnist-conv2"]
    small = W.named_shapes()["tiny-conv"]
    assert W.reference_version("conv2d_forward", small) == "naive"
    assert W.reference_version("conv2d_forward", big) == "fast"
    assert W.reference_version("conv2d_forward", big, ("numpy", "fast")) == "im2col"
    assert W.reference_version("maxpool2d_forward", W.named_shapes()["mnist-pool1"],
                               ("numpy", "fast")) == "argmax"
    assert set(POOL_OPS) | set(CONV_OPS) == set(kernels.OPS)


# ------------------------------------------------------------------ the commands
@pytest.mark.slow
@pytest.mark.parametrize("argv,metric", [
    (["conv2d_backward_weight", "--backend", "cupy", "--emulate", "--shape", "mnist-conv2",
      "--batch", "2"], "GFLOP/s"),
    (["maxpool2d_backward", "--backend", "numba", "--emulate", "--batch", "2"], "GB/s"),
])
def test_done_when_commands(argv, metric):
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"}
    p = subprocess.run([sys.executable, "-m", "kernels", *argv], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, p.stderr
    assert metric in p.stdout and "every version run matches the reference" in p.stdout


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["cupy", "numba"])
def test_runner_on_a_gpu(backend):
    """CUDA-event timing on a real device (the gpu tier)."""
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="0")
    p = subprocess.run([sys.executable, "-m", "kernels", "conv2d_forward", "--backend",
                        backend, "--shape", "mnist-conv2"], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=900)
    if p.returncode == 2 and "cannot run here" in p.stderr:
        pytest.skip(p.stderr.strip().splitlines()[0])
    assert p.returncode == 0, p.stderr
    assert "CUDA events" in p.stdout and "GFLOP/s" in p.stdout
