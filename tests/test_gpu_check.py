"""bench/gpu_check.sh, the prepared GPU check, rehearsed on the CPU.

The default tier runs a fast subset of ``--rehearse`` (the environment facts, the op script
on the CUDA C emulator, the GPU-only steps recorded as skipped, the runs skipped for want of
MNIST) and checks summary.json; ``pytest -m slow`` runs the whole rehearsal (a few minutes:
the GPU program tier's emulated tests and both runs on MNIST). The op script's validation is
checked on a deliberately broken backend, and the summary's verdict on failed steps.
"""
import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "bench" / "gpu_check.sh"
sys.path.insert(0, str(ROOT / "bench"))
import gpu_check  # noqa: E402

SANITIZER_STEPS = [f"sanitizer-{t}-{b}" for t in ("memcheck", "racecheck", "synccheck")
                   for b in ("cupy", "numba")]


def _check(out, *args, timeout=600):
    env = {**os.environ, "PYTHON": sys.executable}
    env.pop("SCAE_NP_GPU_TESTS", None)
    return subprocess.run(["bash", str(SCRIPT), str(out), "--rehearse", *args], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=timeout)


def _summary(out):
    doc = json.loads((out / "summary.json").read_text())
    lines = [json.loads(ln) for ln in (out / "steps.jsonl").read_text().splitlines() if ln]
    assert [s["step"] for s in doc["steps"]] == [s["step"] for s in lines]
    for s in doc["steps"]:
        assert isinstance(s["seconds"], float) and s["seconds"] >= 0.0, s
    return doc, {s["step"]: s for s in doc["steps"]}


def test_rehearsal_subset_writes_summary_and_skips_the_gpu_steps(tmp_path):
    out = tmp_path / "check"
    p = _check(out, "--only", "env,ops-emulated-cupy,sanitizer,run,bench",
               "--data-dir", str(tmp_path / "no-mnist"))
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    doc, steps = _summary(out)
    assert doc["mode"] == "rehearse" and doc["ok"] and doc["failed"] == []
    assert doc["device"] == "none (CPU rehearsal)"
    assert list(steps) == (["env", "ops-emulated-cupy"] + SANITIZER_STEPS
                           + ["run-cupy", "run-numba", "bench-train-step", "bench-ops"])
    assert steps["env"]["status"] == "ok" and steps["ops-emulated-cupy"]["status"] == "ok"
    for name in SANITIZER_STEPS + ["bench-train-step", "bench-ops"]:
        assert steps[name]["status"] == "skipped: no GPU", steps[name]
    for name in ("run-cupy", "run-numba"):
        assert steps[name]["status"].startswith("skipped: no MNIST in "), steps[name]
    env = json.loads((out / "env.json").read_text())
    assert env["mode"] == "rehearse" and env["python"] and "numpy" in env["packages"]
    assert env["device_model"]["sms"] == 132
    log = (out / "ops_cupy.log").read_text()
    assert "ok    cupy conv2d_backward_weight implicit_gemm" in log
    assert " launches checked, 0 wrong or failed" in log


def test_summary_fails_on_a_failed_or_timed_out_step(tmp_path, capsys):
    recs = [{"step": "env", "status": "ok", "seconds": 1.0},
            {"step": "gpu-tier", "status": "fail (rc 1)", "seconds": 3.0},
            {"step": "bench", "status": "timeout (110 s)", "seconds": 110.0},
            {"step": "sanitizer-memcheck-cupy", "status": "skipped: no GPU", "seconds": 0.0}]
    (tmp_path / "steps.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    assert gpu_check.summary(str(tmp_path), "gpu", 114.0) == 1
    doc = json.loads((tmp_path / "summary.json").read_text())
    assert doc["ok"] is False and doc["failed"] == ["gpu-tier", "bench"]
    assert doc["device"] is None and doc["total_seconds"] == 114.0
    assert "FAILED: gpu-tier, bench" in capsys.readouterr().out


class _Broken:
    """The NumPy backend with one wrong op: the unpooling drops its last plane."""

    def __init__(self):
        import kernels
        self._be = kernels.get_backend("numpy")

    def __getattr__(self, name):
        return getattr(self._be, name)

    def __repr__(self):
        return "<broken numpy backend>"

    def unpool2d_forward(self, y, s, hw, version=None):
        x = self._be.unpool2d_forward(y, s, hw, version=version)
        x[:, -1] = 0
        return x


def test_the_op_script_names_a_wrong_version(monkeypatch, capsys):
    import kernels
    real = kernels.get_backend
    monkeypatch.setattr(kernels, "get_backend",
                        lambda name, emulate=False: _Broken() if name == "broken"
                        else real(name, emulate=emulate))
    assert gpu_check.run_ops(["broken"], False, "default", small=True) == 1
    out = capsys.readouterr().out
    assert "WRONG broken unpool2d_forward fast" in out
    assert "ok    broken conv2d_forward fast" in out and "1 wrong or failed" in out


def _mnist_dir():
    for d in (os.environ.get("SCAE_NP_DATA_DIR"), ROOT / "data" / "mnist",
              ROOT.parent / "shared" / "data" / "mnist"):
        if d and (pathlib.Path(d) / "t10k-labels-idx1-ubyte.gz").exists():
            return pathlib.Path(d)
    return None


@pytest.mark.slow
def test_whole_rehearsal(tmp_path):
    data = _mnist_dir()
    if data is None:
        pytest.skip("no MNIST files (data/mnist, $SCAE_NP_DATA_DIR or ../shared/data/mnist)")
    out = tmp_path / "check"
    p = _check(out, "--data-dir", str(data), timeout=1200)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    doc, steps = _summary(out)
    assert doc["ok"]
    for name in ("env", "gpu-tier", "ops-emulated-cupy", "ops-simulated-numba", "run-cupy",
                 "run-numba"):
        assert steps[name]["status"] == "ok", steps[name]
    res = json.loads((out / "run-cupy" / "results.json").read_text())
    assert np.isfinite(res["table"][0]["cae"]["mean"])


def test_counts_fail_when_nothing_ran(tmp_path, capsys):
    """A GPU tier in which every test skipped (no usable GPU) or a benchmark run that timed
    nothing is a failed step, not an "ok"."""
    xml = tmp_path / "t.xml"
    xml.write_text('<testsuites><testsuite name="pytest" tests="5" failures="0" errors="0" '
                   'skipped="5"/></testsuites>')
    assert gpu_check.counts(junit=str(xml)) == 1
    xml.write_text('<testsuites><testsuite name="pytest" tests="5" failures="1" errors="0" '
                   'skipped="2"/></testsuites>')
    assert gpu_check.counts(junit=str(xml)) == 0
    assert "2 passed, 1 failed, 0 errors, 2 skipped" in capsys.readouterr().out
    js = tmp_path / "b.json"
    js.write_text(json.dumps({"benchmarks": []}))
    assert gpu_check.counts(bench=str(js)) == 1
    js.write_text(json.dumps({"benchmarks": [{"name": "x"}]}))
    assert gpu_check.counts(bench=str(js)) == 0
    assert gpu_check.counts(bench=str(tmp_path / "missing.json")) == 1
