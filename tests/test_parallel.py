"""``--jobs N`` (scae_np/parallel.py): the same numbers as one process, stopping and resuming,
Ctrl-C, divergence in a worker, bad values; on the tiny MNIST files of tests/test_run.py.

Bit-identical numbers need the same threads per stage (the NumPy backend sums per-thread
partial weight gradients): the sequential references run with ``SCAE_NP_THREADS=1``, what
each of two workers gets on this 2-CPU machine (``--threads 2`` makes that so anywhere).
"""
import json
import os
import pathlib
import signal
import subprocess
import time

import pytest

from scae_np import parallel as P
from test_reliability import boot_cmd, env, no_partial_files, run_sub, same_run
from test_run import TINY, read_metrics, run_main, tiny  # noqa: F401  (tiny: a fixture)

TABLE2 = [*TINY, "-e", "table", "--seeds", "0,1"]   # two stacks, each before its CAE-init CNN
JOBS2 = ["--jobs", "2", "--threads", "2"]


@pytest.fixture
def one_thread(monkeypatch):
    monkeypatch.setenv("SCAE_NP_THREADS", "1")


def _run(capsys, tiny, out, *argv):
    return run_main(capsys, "mnist", "--data-dir", tiny, "--out", out, *argv)


def test_the_plan_lists_the_sequential_order_with_what_each_job_needs():
    cfg = {"experiment": "table", "seeds": [0, 1], "sizes": [30, 40], "maps": [4, 5, 6],
           "init": "cae"}
    jobs = P.plan(cfg)
    assert [j.name for j in jobs] == [
        "stack-s0", "embedding-s0", "cnn-random-n30-s0", "cnn-cae-n30-s0", "cnn-random-n40-s0",
        "cnn-cae-n40-s0", "stack-s1", "cnn-random-n30-s1", "cnn-cae-n30-s1",
        "cnn-random-n40-s1", "cnn-cae-n40-s1"]
    need = {j.name: j.needs for j in jobs}
    assert need["cnn-cae-n40-s1"] == ("stack-s1",) and need["cnn-random-n40-s1"] == ()
    assert need["embedding-s0"] == ("stack-s0",)
    assert jobs[0].stages == ("stack-s0-cae1", "stack-s0-cae2", "stack-s0-cae3")
    assert P.width(jobs) == 6            # two stacks and four random-init CNNs at once
    fig = P.plan(dict(cfg, experiment="default", seeds=[0], sizes=[30]))
    assert [j.name for j in fig][:4] == ["fig1-plain", "fig1-noise50", "fig1-pool",
                                        "fig1-pool-noise30"]
    cnn = P.plan(dict(cfg, experiment="cnn"))                     # the stack, then its CNN
    assert [j.name for j in cnn] == ["stack-s0", "embedding-s0", "cnn-cae-n30-s0"]
    assert P.width(cnn) == 2 and P.width(P.plan(dict(cfg, experiment="cnn",
                                                     init="random"))) == 1


@pytest.mark.parametrize("argv", [TINY, TABLE2], ids=["default", "table-2-seeds"])
def test_jobs_2_gives_the_numbers_of_jobs_1(tiny, tmp_path, capsys, one_thread, argv):
    seq, par = tmp_path / "seq", tmp_path / "par"
    rc, _, err = _run(capsys, tiny, seq, *argv)
    assert rc == 0, err
    rc, stdout, err = _run(capsys, tiny, par, *argv, *JOBS2)
    assert rc == 0, err
    assert "in 2 worker processes, 1 thread(s) each" in stdout
    same_run(seq, par)                     # results, metrics.jsonl in the same order, weights
    a, b = (json.loads((d / "results.json").read_text()) for d in (seq, par))
    assert a["figures"] == b["figures"] and list(a["cnn"]) == list(b["cnn"])
    assert (a["embedding"] or {}).get("accuracy_1nn") == (b["embedding"] or {}).get(
        "accuracy_1nn")
    strip = lambda md: [ln for ln in md.splitlines() if "Wall time" not in ln
                        and not ln.startswith("| cnn-")]     # training times differ
    assert strip((seq / "results.md").read_text()) == strip((par / "results.md").read_text())
    # one line per epoch and per job, led by the stage's name
    for r in read_metrics(par):
        assert f"[{r['stage']}] epoch {r['epoch']}:" in stdout
    assert "[cnn-cae-n30-s0] done (" in stdout
    assert no_partial_files(par)


def test_stop_after_epochs_counts_all_workers_and_resume_gives_the_same_run(
        tiny, tmp_path, capsys, one_thread):
    ref, cut = tmp_path / "ref", tmp_path / "cut"
    assert _run(capsys, tiny, ref, *TABLE2)[0] == 0
    rc, _, err = _run(capsys, tiny, cut, *TABLE2, *JOBS2, "--stop-after-epochs", "3")
    assert rc == 3 and "stopped after" in err and "--resume" in err, err
    assert not (cut / "results.json").exists()
    assert 3 <= len(read_metrics(cut)) <= 4       # the other worker stops at its next epoch
    rc, stdout, err = run_main(capsys, "mnist", "--out", cut, "--resume", "--no-progress",
                               *JOBS2)
    assert rc == 0, err
    same_run(ref, cut)


def test_a_diverging_worker_stops_the_run_with_exit_1_and_resume_continues(
        tiny, tmp_path, capsys):
    out = tmp_path / "run"
    rc, _, err = _run(capsys, tiny, out, *TINY, "-e", "table", "--seeds", "0", "--lr", "1e6",
                      *JOBS2)
    assert rc == 1, err
    assert "diverged in epoch 1" in err and "Lower --lr" in err and "Traceback" not in err
    assert "--resume" in err
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["sessions"][-1]["outcome"] == "diverged"
    rc, _, err = run_main(capsys, "mnist", "--out", out, "--resume", "--no-progress",
                          "--lr", "0.01", *JOBS2)
    assert rc == 0, err
    assert set(json.loads((out / "results.json").read_text())["cnn"]) == {
        "cnn-random-n30-s0", "cnn-cae-n30-s0"}


def _processes_with(marker):
    """PIDs of the spawned worker processes whose environment holds ``marker`` (the test's
    own cache dir)."""
    pids = []
    for p in pathlib.Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                if (marker.encode() in (p / "environ").read_bytes()
                        and b"spawn_main" in (p / "cmdline").read_bytes()):
                    pids.append(int(p.name))
            except OSError:
                pass
    return pids


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="needs /proc to find the workers")
def test_ctrl_c_stops_every_worker_and_resume_completes_to_the_same_run(
        tiny, tmp_path, capsys, one_thread):
    argv = [*TABLE2, "--epochs", "25", "--cae-epochs", "6"]
    ref, out = tmp_path / "ref", tmp_path / "run"
    assert _run(capsys, tiny, ref, *argv)[0] == 0
    p = subprocess.Popen(boot_cmd(tiny, *argv, *JOBS2, "--out", out), cwd=P.__file__.rsplit(
        "/scae_np/", 1)[0], env=env(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True)
    marker = str(tmp_path / "cache")
    for line in p.stdout:
        if "[cnn-random-n30-s1] epoch 2:" in line:
            break
    workers = _processes_with(marker)
    assert len(workers) == 2, workers               # the parent's two spawned workers
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=120)
    assert p.returncode == 130, err
    assert f"interrupted; continue with: python -m scae_np.run mnist --resume --out {out}" in err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err
    for _ in range(50):                             # every worker is gone
        if not [w for w in workers if w in _processes_with(marker)]:
            break
        time.sleep(0.1)
    assert not [w for w in workers if w in _processes_with(marker)]
    assert not (out / "results.json").exists() and no_partial_files(out)
    r = run_sub(tmp_path, tiny, "--out", out, "--resume", "--no-progress", *JOBS2)
    assert r.returncode == 0, r.stderr
    assert "resuming after epoch" in r.stdout or "done in an earlier run" in r.stdout
    same_run(ref, out)


def test_bad_jobs_values_exit_2_and_too_many_are_clamped(tiny, tmp_path, capsys):
    for bad in ("0", "-1", "two"):
        with pytest.raises(SystemExit) as e:
            _run(capsys, tiny, tmp_path / "x", *TINY, "--jobs", bad)
        assert e.value.code == 2
        assert "--jobs: expected a positive integer" in capsys.readouterr().err
    # more workers than stages that can run at once: clamped, with a note
    rc, stdout, err = _run(capsys, tiny, tmp_path / "a", *TINY, "-e", "table", "--seeds", "0",
                           "--jobs", "9", "--threads", "2")
    assert rc == 0, err
    assert "note: --jobs 9 is more than the 2 stage(s) of this run that can run at once; " \
           "using 2 worker processes" in err
    assert "in 2 worker processes" in stdout
    # one stage at a time: this process runs them, as --jobs 1
    rc, stdout, err = _run(capsys, tiny, tmp_path / "b", *TINY, "-e", "cnn", "--init", "random",
                           "--jobs", "2")
    assert rc == 0, err
    assert "running them one after the other in this process" in err
    assert "worker processes" not in stdout
