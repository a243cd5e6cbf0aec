"""The command ``python -m scae_np.run`` end to end, on tiny MNIST-format files written here.

The tiny files are real gzip IDX files (28x28 images of three stroke shapes, so there is
something to learn); ``scae_np.data`` is told to accept their md5s and counts the way
tests/test_data.py does (a patched ``SPECS`` entry). In-process runs call
``scae_np.run.main``; runs that need a fresh interpreter (numba's simulator must be chosen
before numba is imported) use a small bootstrap that applies the same patch.
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

from scae_np import data as D
from scae_np import run as R

ROOT = pathlib.Path(__file__).resolve().parents[1]
IDX = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
       "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")
N_TRAIN, N_TEST = 90, 24

# A small network and small CAEs: every stage of the pipeline runs, in seconds.
TINY = ["--maps", "4,5,6", "--kernels", "5,5,3", "--hidden", "8", "--cae-maps", "3",
        "--cae-kernel", "5", "--sizes", "30", "--val-images", "12", "--cae-images", "24",
        "--fig-images", "24", "--epochs", "2", "--cae-epochs", "1", "--fig-epochs", "1",
        "--batch-size", "5", "--cae-batch-size", "6", "--lr", "0.01", "--no-progress",
        "--backend", "numpy", "--lr-schedule", "decay", "--lr-decay", "0.95",
        "--cae-rescale", "none", "--cae-init-scale", "0.1"]


def _strokes(rng, labels):
    x = (rng.random((len(labels), 28, 28)) * 60).astype(np.uint8)
    for i, y in enumerate(labels):
        a, b = rng.integers(4, 16, 2)
        if y % 3 == 0:
            x[i, a, b:b + 10] = 255
        elif y % 3 == 1:
            x[i, a:a + 10, b] = 255
        else:
            x[i, np.arange(a, a + 10), np.arange(b, b + 10)] = 255
    return x


def _idx(arr):
    arr = np.ascontiguousarray(arr, dtype=np.uint8)
    return gzip.compress(bytes([0, 0, 8, arr.ndim]) + np.array(arr.shape, ">u4").tobytes()
                         + arr.tobytes(), mtime=0)


def write_tiny_mnist(folder, seed=0):
    """Four gzip IDX files in MNIST's format; returns {file name: md5}."""
    rng = np.random.default_rng(seed)
    ytr = rng.permutation(np.arange(N_TRAIN) % 10).astype(np.uint8)
    yte = (np.arange(N_TEST) % 10).astype(np.uint8)
    arrays = {IDX[0]: _strokes(rng, ytr), IDX[1]: ytr, IDX[2]: _strokes(rng, yte), IDX[3]: yte}
    folder = pathlib.Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    md5s = {}
    for name, a in arrays.items():
        b = _idx(a)
        (folder / name).write_bytes(b)
        md5s[name] = hashlib.md5(b).hexdigest()
    return md5s


def accept_spec(md5s):
    """The MNIST spec, accepting the tiny files."""
    spec = D.SPECS["mnist"]
    return dataclasses.replace(spec, files=tuple((f, (md5s[f],)) for f in spec.file_names),
                               n_train=N_TRAIN, n_test=N_TEST)


@pytest.fixture
def tiny(tmp_path, monkeypatch):
    """A folder with tiny MNIST files that scae_np.data accepts; no network, no cache."""
    d = tmp_path / "data"
    md5s = write_tiny_mnist(d)
    monkeypatch.setitem(D.SPECS, "mnist", accept_spec(md5s))
    monkeypatch.delenv(D.ENV_VAR, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))

    def no_network(url, timeout=None):
        raise AssertionError(f"test tried to download {url}")
    monkeypatch.setattr(D, "_urlopen", no_network)
    return d


def run_main(capsys, *argv):
    rc = R.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def strip_times(recs):
    return [{k: v for k, v in r.items() if k not in ("time_s", "images_per_s")} for r in recs]


def read_metrics(out):
    with open(out / "metrics.jsonl") as f:
        return [json.loads(line) for line in f if line.strip()]


# ------------------------------------------------------------------------- end to end
def test_default_pipeline_end_to_end(tiny, tmp_path, capsys):
    out = tmp_path / "run"
    rc, stdout, err = run_main(capsys, "mnist", "--data-dir", tiny, "--out", out, *TINY)
    assert rc == 0, err
    # the table beside the paper's, printed and written
    assert "ours: random init" in stdout and "paper: CAE init" in stdout
    assert "from memory" in stdout
    md = (out / "results.md").read_text()
    assert "| 30 |" in md and "from memory" in md
    res = json.loads((out / "results.json").read_text())
    (row,) = res["table"]
    assert row["size"] == 30 and row["random"]["n"] == 1 and row["cae"]["n"] == 1
    for init in ("random", "cae"):                  # the table is the runs' test errors
        cnn = res["cnn"][f"cnn-{init}-n30-s0"]
        assert row[init]["mean"] == pytest.approx(cnn["test_error"])
    assert set(res["fig1"]) == {"plain", "noise50", "pool", "pool-noise30"}
    assert res["cnn"]["cnn-cae-n30-s0"]["test_images"] == N_TEST
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["config"]["sizes"] == [30] and cfg["config"]["maps"] == [4, 5, 6]
    # one metrics line per epoch of every stage: 4 fig CAEs + 3 stack CAEs (1 epoch) + 2 CNNs
    recs = read_metrics(out)
    stages = {r["stage"] for r in recs}
    assert len(stages) == 9 and len(recs) == 7 + 2 * 2
    assert all(r["images_per_s"] > 0 for r in recs)
    assert "val_error" in recs[-1] and "[cnn-cae-n30-s0] epoch 2" in stdout
    # figures
    figs = out / "figures"
    for name in ("fig1_filters.png", "filters_fig1-pool.png", "reconstructions_fig1-pool.png",
                 "filters_stack-s0-cae1.png", "curves_cnn-random-n30-s0.png"):
        assert (figs / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    # plain .npz weights with documented names, no project code needed to read them
    with np.load(out / "weights" / "cnn-cae-n30-s0.npz") as z:
        assert sorted(z.files) == ["conv1.W", "conv1.b", "conv2.W", "conv2.b", "conv3.W",
                                   "conv3.b", "fc1.W", "fc1.b", "fc2.W", "fc2.b"]
        assert z["conv1.W"].shape == (4, 1, 5, 5) and z["conv1.W"].dtype == np.float32
    with np.load(out / "weights" / "fig1-pool.npz") as z:
        assert sorted(z.files) == ["W", "b", "c"] and z["W"].shape == (3, 1, 5, 5)
    assert (out / "checkpoints" / "cnn-cae-n30-s0.npz").exists()
    assert not [p for p in out.rglob(".tmp*")]


def test_cae_init_copies_the_stack_into_the_cnn(tiny, tmp_path, capsys):
    out = tmp_path / "run"
    rc, _, err = run_main(capsys, "mnist", "--data-dir", tiny, "--out", out, *TINY,
                          "-e", "cnn", "--init", "cae", "--epochs", "0")
    assert rc == 0, err
    cnn = dict(np.load(out / "weights" / "cnn-cae-n30-s0.npz"))
    for i in (1, 2, 3):
        cae = dict(np.load(out / "weights" / f"stack-s0-cae{i}.npz"))
        np.testing.assert_array_equal(cnn[f"conv{i}.W"], cae["W"])
        np.testing.assert_array_equal(cnn[f"conv{i}.b"], cae["b"])


def test_same_seed_same_numbers_and_resume_equals_uninterrupted(tiny, tmp_path, capsys):
    args = ["mnist", "--data-dir", tiny, *TINY, "-e", "table", "--seeds", "3",
            "--epochs", "3", "--cae-epochs", "2"]
    full = tmp_path / "full"
    rc, _, err = run_main(capsys, *args, "--out", full)
    assert rc == 0, err
    # interrupted twice: inside the CAE stack, then inside the first CNN
    cut = tmp_path / "cut"
    rc, _, err = run_main(capsys, *args, "--out", cut, "--stop-after-epochs", "3")
    assert rc == 3 and "--resume" in err
    # a kill during an epoch leaves the last checkpoint and possibly a partial metrics line
    with open(cut / "metrics.jsonl", "a") as f:
        f.write('{"stage": "stack-s3-cae2", "epoch": 2, "train_lo')
    rc, _, err = run_main(capsys, "mnist", "--data-dir", tiny, "--out", cut, "--resume",
                          "--stop-after-epochs", "4", "--no-progress")
    assert rc == 3
    rc, stdout, err = run_main(capsys, "mnist", "--out", cut, "--resume", "--no-progress")
    # (the data folder and the backend come from the saved config.json)
    assert rc == 0, err
    assert "done in an earlier run" in stdout
    a = json.loads((full / "results.json").read_text())
    b = json.loads((cut / "results.json").read_text())
    assert a["table"] == b["table"]
    assert strip_times(read_metrics(full)) == strip_times(read_metrics(cut))
    for w in sorted((full / "weights").iterdir()):
        wa, wb = np.load(w), np.load(cut / "weights" / w.name)
        for k in wa.files:
            np.testing.assert_array_equal(wa[k], wb[k], err_msg=f"{w.name}:{k}")


def test_cifar10_pipeline_end_to_end(tmp_path, monkeypatch, capsys):
    """Three input maps: RGB filters, the 3-channel CAE, the CNN on 32x32 images."""
    import pickle
    rng = np.random.default_rng(0)
    folder = tmp_path / "cifar"
    folder.mkdir()
    md5s, per_batch, n_test = {}, 12, 10
    batches = {f"data_batch_{i}": per_batch for i in range(1, 6)}
    batches["test_batch"] = n_test
    for name, n in batches.items():
        obj = {"labels": [int(v) for v in np.arange(n) % 10],
               "data": rng.integers(0, 256, (n, 3072), dtype=np.uint8)}
        b = pickle.dumps(obj, protocol=2)
        (folder / name).write_bytes(b)
        md5s[name] = hashlib.md5(b).hexdigest()
    b = pickle.dumps({"label_names": list(D.SPECS["cifar10"].classes)}, protocol=2)
    (folder / "batches.meta").write_bytes(b)
    md5s["batches.meta"] = hashlib.md5(b).hexdigest()
    spec = D.SPECS["cifar10"]
    monkeypatch.setitem(D.SPECS, "cifar10", dataclasses.replace(
        spec, files=tuple((f, (md5s[f],)) for f in spec.file_names), n_train=5 * per_batch,
        n_test=n_test))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    out = tmp_path / "run"
    argv = [a if a != "12" else "10" for a in TINY]          # --val-images 10 of 60 images
    rc, stdout, err = run_main(capsys, "cifar10", "--data-dir", folder, "--out", out, *argv)
    assert rc == 0, err
    assert "Table 2 (CIFAR-10)" in stdout and "| 30 |" in stdout
    with np.load(out / "weights" / "cnn-cae-n30-s0.npz") as z:
        assert z["conv1.W"].shape == (4, 3, 5, 5) and z["fc1.W"].shape == (8, 6 * 3 * 3)
    assert (out / "figures" / "fig1_filters.png").exists()


# ------------------------------------------------------------------------- bad input
def _fails(capsys, *argv, match):
    with pytest.raises(SystemExit) as e:     # argparse errors
        R.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert e.value.code == 2
    assert match in err, err
    assert "Traceback" not in err


def test_bad_command_lines_exit_2_with_a_message(capsys, tmp_path):
    _fails(capsys, "svhn", match="invalid choice: 'svhn'")
    _fails(capsys, "mnist", "--sizes", "1k", match="comma-separated integers")
    _fails(capsys, "mnist", "--epochs", "-1", match="integer >= 0")
    _fails(capsys, "mnist", "--batch-size", "0", match="positive integer")
    _fails(capsys, "mnist", "--backend", "opencl", match="invalid choice: 'opencl'")
    _fails(capsys, "mnist", "-e", "fig2", match="invalid choice: 'fig2'")


@pytest.mark.parametrize("extra,match", [
    (["--sizes", "0"], "--sizes must be positive"),
    (["--sizes", "80", "--val-images", "20"], "more than the 90 training images"),
    (["--maps", "4,5", "--kernels", "5,5,3"], "give one kernel size per convolution"),
    (["--kernels", "5,5,9"], "does not fit"),
    (["--lr", "-0.1"], "--lr must be > 0"),
    (["--momentum", "1"], "--momentum must be in [0, 1)"),
    (["--cae-noise", "1.5"], "--cae-noise must be a share"),
    (["--lr-decay", "0"], "--lr-decay must be in (0, 1]"),
    (["--seeds", "1,1"], "duplicates"),
    (["--backend", "numpy", "--emulate"], "--emulate runs a GPU backend"),
    (["--val-images", "0"], "--val-images 0 leaves the CNNs without validation images"),
])
def test_bad_settings_exit_2_with_a_message(tiny, tmp_path, capsys, extra, match):
    argv = ["mnist", "--data-dir", tiny, "--out", tmp_path / "o", *TINY, *extra]
    rc, out, err = run_main(capsys, *argv)
    assert rc == 2 and match in err, err
    assert "Traceback" not in err


def test_missing_data_exits_2_with_the_data_modules_message(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv(D.ENV_VAR, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    (tmp_path / "empty").mkdir()
    rc, _, err = run_main(capsys, "mnist", "--data-dir", tmp_path / "empty", "--no-download",
                          "--backend", "numpy", "--out", tmp_path / "o")
    assert rc == 2
    assert "missing train-images-idx3-ubyte.gz" in err and "downloading is off" in err
    rc, _, err = run_main(capsys, "mnist", "--data-dir", tmp_path / "nowhere", "--backend",
                          "numpy", "--out", tmp_path / "o")
    assert rc == 2 and "is not a folder" in err


def test_corrupt_data_exits_2(tiny, tmp_path, capsys):
    p = tiny / IDX[0]
    p.write_bytes(p.read_bytes()[:200])
    rc, _, err = run_main(capsys, "mnist", "--data-dir", tiny, "--out", tmp_path / "o", *TINY)
    assert rc == 2 and "train-images-idx3-ubyte.gz" in err and "truncated" in err


def test_unavailable_backend_exits_2_with_its_message(tiny, tmp_path, capsys):
    from kernels import BackendUnavailableError, get_backend
    try:
        get_backend("cupy")
        pytest.skip("a GPU works here: the cupy backend is available")
    except BackendUnavailableError as e:
        reason = str(e)
    rc, _, err = run_main(capsys, "mnist", "--data-dir", tiny, "--out", tmp_path / "o",
                          *TINY, "--backend", "cupy")
    assert rc == 2 and "the cupy backend is not available here" in err
    assert reason[:40] in err


def test_resume_and_out_errors(tiny, tmp_path, capsys):
    rc, _, err = run_main(capsys, "mnist", "--resume", "--backend", "numpy")
    assert rc == 2 and "--resume needs --out" in err
    rc, _, err = run_main(capsys, "mnist", "--resume", "--out", tmp_path / "none")
    assert rc == 2 and "nothing to continue" in err
    out = tmp_path / "o"
    rc, _, err = run_main(capsys, "mnist", "--data-dir", tiny, "--out", out, *TINY, "-e", "cnn",
                          "--init", "random", "--epochs", "1")
    assert rc == 0, err
    rc, _, err = run_main(capsys, "mnist", "--data-dir", tiny, "--out", out, *TINY)
    assert rc == 2 and "already holds a run" in err
    rc, _, err = run_main(capsys, "fashion-mnist", "--out", out, "--resume")
    assert rc == 2 and "is on mnist" in err


def test_help_explains_every_option():
    text = R.build_parser().format_help()
    for action in R.build_parser()._actions:
        for opt in action.option_strings:
            assert opt in text
        if action.option_strings:
            assert action.help, action.option_strings
    assert "from memory" in text


def test_default_backend_falls_back_to_numpy(monkeypatch):
    """With no GPU backend working, the default is NumPy, with each one's reason kept; a
    backend that breaks with another error does not stop the run either."""
    import kernels
    real = kernels.get_backend

    def no_gpu(name, **kw):
        if name == "cupy":
            raise kernels.BackendUnavailableError("cupy: no CUDA device (test)")
        if name == "numba":
            raise RuntimeError("numba: driver crashed (test)")
        return real(name, **kw)
    monkeypatch.setattr(kernels, "get_backend", no_gpu)
    be, why = R.pick_backend(None, False)
    assert be.name == "numpy"
    assert why == {"cupy": "cupy: no CUDA device (test)",
                   "numba": "RuntimeError: numba: driver crashed (test)"}


# ------------------------------------------------------------------ emulated backends
#: the first lines of a bootstrap: make scae_np.data accept the tiny files (md5s in argv[1])
BOOT_ACCEPT = textwrap.dedent("""
    import dataclasses, json, sys
    from scae_np import data as D
    spec = D.SPECS["mnist"]
    md5s = json.loads(sys.argv[1])
    D.SPECS["mnist"] = dataclasses.replace(
        spec, files=tuple((f, (md5s[f],)) for f in spec.file_names), n_train={n_train},
        n_test={n_test})
""").format(n_train=N_TRAIN, n_test=N_TEST)
BOOT = BOOT_ACCEPT + "from scae_np.run import main\nsys.exit(main(sys.argv[2:]))\n"

# The smallest run that still goes through every op of the backend: a 2-layer CAE stack
# (conv, pool with switches, unpool, the tied decoder) and the CNN it initialises; two epochs
# each, so that learning shows (a CAE's one step per epoch lowers its loss).
EMU = ["-e", "cnn", "--init", "cae", "--maps", "2,2", "--kernels", "5,5", "--hidden", "4",
       "--sizes", "6", "--val-images", "3", "--test-images", "4", "--cae-images", "4",
       "--epochs", "2", "--cae-epochs", "2", "--batch-size", "3", "--cae-batch-size", "4",
       "--eval-batch-size", "4", "--no-progress"]


def _emulated(name):
    """Skip unless the backend exists and can be emulated; probe in a fresh process."""
    probe = subprocess.run(
        [sys.executable, "-c", f"from kernels import get_backend; get_backend({name!r}, "
                               f"emulate=True)"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
        env={**os.environ, "PYTHONPATH": str(ROOT)})
    if probe.returncode != 0:
        last = (probe.stderr.strip().splitlines() or ["?"])[-1]
        pytest.skip(f"get_backend({name!r}, emulate=True) is not available here: {last}")


def _tiny_run(tmp_path, name, *backend_args):
    """Run EMU on the tiny MNIST in a fresh process; (stdout, metrics records by (stage,
    epoch), results.json)."""
    d = tmp_path / "data"
    md5s = write_tiny_mnist(d)
    out = tmp_path / f"run-{name}"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "XDG_CACHE_HOME": str(tmp_path / "cache")}
    env.pop(D.ENV_VAR, None)
    p = subprocess.run([sys.executable, "-c", BOOT, json.dumps(md5s), "mnist", "--data-dir",
                        str(d), "--out", str(out), "--backend", name, *backend_args, *EMU],
                       cwd=ROOT, capture_output=True, text=True, env=env, timeout=1200)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    recs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return p.stdout, {(r["stage"], r["epoch"]): r for r in recs}, \
        json.loads((out / "results.json").read_text())


@pytest.mark.parametrize("name", [
    pytest.param("cupy", marks=pytest.mark.emulator),
    # numba's simulator runs one Python thread per CUDA thread: this tiny run takes ~15 min
    # on a 2-core machine, so it is in the slow tier (pytest -m slow).
    pytest.param("numba", marks=[pytest.mark.simulator, pytest.mark.slow]),
])
def test_end_to_end_on_emulated_gpu_backends(name, tmp_path):
    """The whole program on an emulated GPU backend learns, and agrees with the NumPy
    backend's run of the same command epoch by epoch (float32, other summation orders)."""
    _emulated(name)
    stdout, recs, res = _tiny_run(tmp_path, name, "--emulate")
    assert f"backend {name} (emulated)" in stdout
    _, ref, ref_res = _tiny_run(tmp_path, "numpy")
    stages = sorted({s for s, _ in ref})
    assert sorted(recs) == sorted(ref) and len(stages) == 3       # cae1, cae2, the CNN
    for key, r in ref.items():
        for m in ("train_loss", "val_loss"):
            assert recs[key][m] == pytest.approx(r[m], rel=1e-4, abs=1e-6), (key, m)
    for stage in stages:                                            # it learned
        assert recs[(stage, 2)]["train_loss"] < recs[(stage, 1)]["train_loss"], stage
    (row,) = res["table"]
    (ref_row,) = ref_res["table"]
    assert row["size"] == 6 and row["cae"]["mean"] == ref_row["cae"]["mean"]


def test_the_module_entry_points(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for mod in ("scae_np.run", "scae_np"):
        p = subprocess.run([sys.executable, "-m", mod, "--help"], cwd=ROOT, env=env,
                           capture_output=True, text=True, timeout=120)
        assert p.returncode == 0 and "usage: python -m scae_np.run" in p.stdout
    p = subprocess.run([sys.executable, "-m", "scae_np.run", "mnist", "--threads", "1",
                        "--backend", "numpy", "--data-dir", str(tmp_path / "nowhere")],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert p.returncode == 2 and "is not a folder" in p.stderr
    assert "Traceback" not in p.stderr and "no effect" not in p.stderr


def test_make_splits_paper_sizes_with_a_rare_class():
    """MNIST's class 5 is too rare for a balanced 50k subset: small sizes stay balanced, the
    largest falls back to the training set's own frequencies; validation stays disjoint."""
    import numpy as np
    from scae_np.run import make_splits
    counts = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]   # MNIST train
    labels = np.repeat(np.arange(10), counts)
    np.random.default_rng(0).shuffle(labels)
    val, train, cae = make_splits(labels, 5000, [1000, 10000, 50000], 10000, seed=0)
    assert {k: len(v) for k, v in train.items()} == {1000: 1000, 10000: 10000, 50000: 50000}
    assert (np.bincount(labels[train[1000]], minlength=10) == 100).all()
    assert (np.bincount(labels[train[10000]], minlength=10) == 1000).all()
    for idx in train.values():
        assert len(np.intersect1d(idx, val)) == 0
    assert len(np.intersect1d(cae, val)) == 0
