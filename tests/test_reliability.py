"""A run that cannot be corrupted (issue 16): the output folder's lock, stage completion and
its repair, kills at chosen moments, divergence, --resume with options, errors of the machine
(a read-only folder, a file as --out, a full disk), Ctrl-C, and the smaller fixes.

Fault injection, all on the tiny MNIST files of tests/test_run.py:

* kill points: a subprocess whose bootstrap (``BOOT`` below) wraps the file writers of
  ``scae_np.train`` and SIGKILLs itself right after (or in the middle of) a chosen write;
* a second process: a subprocess holding the folder's lock, or a real second run;
* Ctrl-C: SIGINT to a subprocess slowed down (``--slow``: a sleep per mini-batch) so the
  signal lands mid-training;
* a full disk: a real 16-64 KiB tmpfs mounted in a private mount namespace (``unshare -rm``;
  skipped where that is not allowed), and everywhere a simulated one (``scae_np._atomic``'s
  ``_fdopen`` replaced by a writer that fails with ENOSPC);
* a read-only folder: a read-only tmpfs (unshare) when running as root, chmod otherwise.
"""
import errno
import hashlib
import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import textwrap
import time
import warnings

import numpy as np
import pytest

from scae_np import _atomic
from scae_np import data as D
from test_run import (BOOT_ACCEPT, ROOT, TINY, read_metrics, run_main, strip_times,
                      tiny)  # noqa: F401  (tiny: a fixture)

CNN = [*TINY, "-e", "cnn", "--init", "random"]          # one stage: cnn-random-n30-s0
STAGE = "cnn-random-n30-s0"
TABLE = [*TINY, "-e", "table", "--seeds", "0"]                       # stack-s0-cae1..3, then two CNNs

# A subprocess running the command on the tiny files, with optional fault injection:
#   --slow S        sleep S seconds in every CNN/CAE training step
#   --kill POINT    SIGKILL this process at POINT of stage STAGE (see KILL_POINTS)
BOOT = BOOT_ACCEPT + textwrap.dedent("""
    import os, signal, time
    from scae_np import models, train
    argv = sys.argv[2:]
    def option(name):
        if name in argv:
            i = argv.index(name)
            value = argv[i + 1]
            del argv[i:i + 2]
            return value
    slow, kill = option("--slow"), option("--kill")
    if slow:
        for cls in (models.CNN, models.CAE):
            def step(self, *a, _orig=cls.train_step, **k):
                time.sleep(float(slow))
                return _orig(self, *a, **k)
            cls.train_step = step
    if kill:
        point, stage = kill.split("@")
        def die():
            sys.stdout.flush()
            os.kill(os.getpid(), signal.SIGKILL)
        ckpt = os.sep + os.path.join("checkpoints", stage + ".npz")
        weights = os.sep + os.path.join("weights", stage + ".npz")
        def save(path, arrays, _orig=train.save_npz):
            p = str(path)
            done = p.endswith(ckpt) and json.loads(str(arrays["meta"]))["state"]["done"]
            if point == "mid-checkpoint" and p.endswith(ckpt):
                from scae_np._atomic import atomic_open
                with atomic_open(path) as f:      # half a file under the temporary name
                    f.write(b"PK\\x03\\x04" + b"x" * 100)
                    f.flush()
                    die()
            _orig(path, arrays)
            if point == "epoch-checkpoint" and p.endswith(ckpt) and not done:
                meta = json.loads(str(arrays["meta"]))
                if meta["state"]["epoch"] == meta["sgd"]["epochs"]:
                    die()                         # the last epoch's, before completion
            if point == "done-checkpoint" and done:
                die()
        def save_weights(path, arrays, _orig=models.save_npz):
            _orig(path, arrays)
            if point == "weights" and str(path).endswith(weights):
                die()
        train.save_npz = save
        models.save_npz = save_weights
    from scae_np.run import main
    sys.exit(main(argv))
""")

KILL_POINTS = ("mid-checkpoint", "epoch-checkpoint", "weights", "done-checkpoint")

LOCK_HOLDER = textwrap.dedent("""
    import sys
    from scae_np._lock import RunLock
    lock = RunLock(sys.argv[1], command="a test holding the lock").acquire()
    print("locked", flush=True)
    sys.stdin.read()
""")


def md5s_of(folder):
    return {p.name: hashlib.md5(p.read_bytes()).hexdigest() for p in pathlib.Path(folder).iterdir()}


def env(tmp_path):
    e = {**os.environ, "PYTHONPATH": str(ROOT), "XDG_CACHE_HOME": str(tmp_path / "cache")}
    e.pop(D.ENV_VAR, None)
    return e


def boot_cmd(data, *argv):
    return [sys.executable, "-c", BOOT, json.dumps(md5s_of(data)), "mnist", "--data-dir",
            str(data), *[str(a) for a in argv]]


def run_sub(tmp_path, data, *argv, timeout=300):
    return subprocess.run(boot_cmd(data, *argv), cwd=ROOT, env=env(tmp_path),
                          capture_output=True, text=True, timeout=timeout)


def _untimed(obj):
    """A results.json part without its timings (they differ between runs)."""
    if isinstance(obj, dict):
        return {k: _untimed(v) for k, v in obj.items() if k != "train_time_s"}
    if isinstance(obj, list):
        return [_untimed(v) for v in obj]
    return obj


def same_run(a, b):
    """Two run folders hold the same numbers: results (timings aside), metrics (times aside),
    every weight."""
    ra = json.loads((a / "results.json").read_text())
    rb = json.loads((b / "results.json").read_text())
    for k in ("table", "cnn", "fig1", "stacks", "cae"):
        assert _untimed(ra[k]) == _untimed(rb[k]), k
    assert strip_times(read_metrics(a)) == strip_times(read_metrics(b))
    names = sorted(p.name for p in (a / "weights").iterdir())
    assert names == sorted(p.name for p in (b / "weights").iterdir())
    for n in names:
        with np.load(a / "weights" / n) as wa, np.load(b / "weights" / n) as wb:
            assert sorted(wa.files) == sorted(wb.files)
            for k in wa.files:
                np.testing.assert_array_equal(wa[k], wb[k], err_msg=f"{n}:{k}")


def no_partial_files(out):
    return not [p for p in out.rglob("*.part")]


@pytest.fixture
def reference(tiny, tmp_path, capsys):
    """run(argv) -> the folder of an uninterrupted in-process run of ``argv`` (cached)."""
    cache = {}

    def make(*argv):
        key = tuple(map(str, argv))
        if key not in cache:
            out = tmp_path / f"ref{len(cache)}"
            rc, _, err = run_main(capsys, "mnist", "--data-dir", tiny, "--out", out, *argv)
            assert rc == 0, err
            cache[key] = out
        return cache[key]
    return make


# ----------------------------------------------------------------------------- the lock
def test_a_locked_folder_is_refused_naming_the_holders_pid(tiny, tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", LOCK_HOLDER, str(out)], cwd=ROOT,
                              env=env(tmp_path), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        rc, _, err = run_main(capsys, "mnist", "--data-dir", tiny, "--out", out, *CNN)
        assert rc == 2 and f"in use by another run (PID {holder.pid}" in err, err
        assert "a test holding the lock" in err and "Traceback" not in err
        assert len(err.strip().splitlines()) == 1
        assert not (out / "config.json").exists()
    finally:
        holder.stdin.close()
        holder.wait(30)
    rc, _, err = run_main(capsys, "mnist", "--data-dir", tiny, "--out", out, *CNN)
    assert rc == 0, err                  # the holder exited: its lock went with it
    holder = subprocess.Popen([sys.executable, "-c", LOCK_HOLDER, str(out)], cwd=ROOT,
                              env=env(tmp_path), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        rc, _, err = run_main(capsys, "mnist", "--out", out, "--resume", "--no-progress")
        assert rc == 2 and f"PID {holder.pid}" in err, err
    finally:
        holder.stdin.close()
        holder.wait(30)


def test_two_runs_at_once_then_a_kill_9_then_resume(tiny, tmp_path, reference):
    """Run A is working on D; run B and a --resume of D are refused (exit 2, A's PID); A is
    killed with SIGKILL mid-training; the lock goes with it and --resume finishes D to the
    numbers of an uninterrupted run."""
    out = tmp_path / "run"
    argv = [*CNN, "--epochs", "6", "--out", out]
    a = subprocess.Popen(boot_cmd(tiny, *argv, "--slow", "0.05"), cwd=ROOT, env=env(tmp_path),
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        for line in a.stdout:                 # A holds the lock and is training
            if f"[{STAGE}] epoch 1" in line:
                break
        b = run_sub(tmp_path, tiny, *argv, "--lr", "0.03")
        assert b.returncode == 2 and f"in use by another run (PID {a.pid}" in b.stderr, b.stderr
        c = run_sub(tmp_path, tiny, "--out", out, "--resume")
        assert c.returncode == 2 and f"PID {a.pid}" in c.stderr, c.stderr
        assert a.poll() is None, "run A ended before the others were tried: slow it down more"
    finally:
        a.kill()
        a.wait(30)
    assert a.returncode == -signal.SIGKILL
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["config"]["lr"] == 0.01                  # B never wrote anything
    r = run_sub(tmp_path, tiny, "--out", out, "--resume", "--no-progress")
    assert r.returncode == 0, r.stderr
    same_run(out, reference(*argv[:-2]))
    assert no_partial_files(out)


# --------------------------------------------------------------- completion and kill points
@pytest.mark.parametrize("point", KILL_POINTS)
def test_a_kill_at_any_moment_of_stage_completion_resumes_to_the_same_run(
        tiny, tmp_path, reference, point):
    out = tmp_path / "run"
    r = run_sub(tmp_path, tiny, *CNN, "--out", out, "--kill", f"{point}@{STAGE}")
    assert r.returncode == -signal.SIGKILL, (point, r.returncode, r.stderr[-2000:])
    if point == "mid-checkpoint":
        assert list((out / "checkpoints").glob(f".{STAGE}.npz.*.part"))
    r = run_sub(tmp_path, tiny, "--out", out, "--resume", "--no-progress")
    assert r.returncode == 0, r.stderr
    same_run(out, reference(*CNN))
    assert no_partial_files(out)
    if point == "mid-checkpoint":
        assert "removed" in r.stderr and ".part" in r.stderr


def test_a_done_stage_with_missing_files_is_repaired_on_resume(tiny, tmp_path, capsys,
                                                               reference):
    """Weights file deleted (or truncated) and metrics lines lost after the stage was recorded
    as done: --resume rewrites both from the checkpoint instead of claiming 'wrote weights/'
    over a missing file."""
    out = tmp_path / "run"
    rc, _, err = run_main(capsys, "mnist", "--data-dir", tiny, "--out", out, *CNN)
    assert rc == 0, err
    (out / "weights" / f"{STAGE}.npz").unlink()
    (out / "metrics.jsonl").write_text("")
    rc, stdout, err = run_main(capsys, "mnist", "--out", out, "--resume", "--no-progress")
    assert rc == 0, err
    assert f"[{STAGE}] repaired: wrote" in stdout and "it was missing" in stdout
    same_run(out, reference(*CNN))
    w = out / "weights" / f"{STAGE}.npz"
    w.write_bytes(w.read_bytes()[:100])
    rc, stdout, err = run_main(capsys, "mnist", "--out", out, "--resume", "--no-progress")
    assert rc == 0 and "repaired" in stdout and "it differed" in stdout
    same_run(out, reference(*CNN))


# ------------------------------------------------------------------------------ divergence
@pytest.mark.parametrize("lr", ["1e6", "1e30"])
def test_lr_1e6_and_1e30_exit_1_as_diverged(tiny, tmp_path, capsys, lr):
    rc, _, err = run_main(capsys, "mnist", "--data-dir", tiny, "--out", tmp_path / "run", *CNN,
                          "--lr", lr)
    assert rc == 1 and f"stage {STAGE} diverged in epoch 1" in err, err
    assert "more than 10 x chance level, ln(10) = 2.303" in err
    assert not (tmp_path / "run" / "results.json").exists()


def test_a_diverging_run_exits_1_says_what_to_change_and_resumes_with_a_lower_lr(
        tiny, tmp_path, capsys, reference, lr="1e6"):
    out = tmp_path / "run"
    rc, _, err = run_main(capsys, "mnist", "--data-dir", tiny, "--out", out, *TABLE, "--lr", lr)
    assert rc == 1, err
    assert "diverged in epoch 1" in err and f"Lower --lr (now {float(lr):g})" in err, err
    assert f"python -m scae_np.run mnist --resume --out {out} --lr" in err
    assert "Traceback" not in err
    # the stack's checkpoints and weights are kept; nothing of the diverged CNN was recorded
    for i in (1, 2, 3):
        assert (out / "checkpoints" / f"stack-s0-cae{i}.npz").exists()
        assert (out / "weights" / f"stack-s0-cae{i}.npz").exists()
    assert not (out / "results.json").exists()
    rc, stdout, err = run_main(capsys, "mnist", "--out", out, "--resume", "--lr", "0.01",
                               "--no-progress")
    assert rc == 0, err
    assert "--lr 0.01 (was" in err and "done in an earlier run" in stdout
    same_run(out, reference(*TABLE))          # the table run with lr 0.01 from the start
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["config"]["lr"] == 0.01
    assert cfg["resumes"][-1]["changed"] == {"lr": {"was": float(lr), "now": 0.01}}


def test_a_diverged_stage_with_checkpoints_starts_again_with_the_new_rate(
        tiny, tmp_path, capsys, reference):
    """Divergence in epoch 2: the stage's epoch-1 checkpoint is moved aside (kept), so the
    resume with a lower rate trains that stage from the start."""
    from scae_np import train
    out = tmp_path / "run"
    calls = []
    real = train.Trainer._reference_loss

    def late(self, kind, model, x, state):     # epoch 1 passes, epoch 2 is 'diverging'
        calls.append(state["epoch"])
        return real(self, kind, model, x, state) if state["epoch"] == 0 else 1e-9
    train.Trainer._reference_loss, saved = late, train.Trainer._reference_loss
    try:
        rc, _, err = run_main(capsys, "mnist", "--data-dir", tiny, "--out", out, *CNN,
                              "--stop-after-epochs", "1")
        assert rc == 3
        rc, _, err = run_main(capsys, "mnist", "--out", out, "--resume", "--no-progress")
    finally:
        train.Trainer._reference_loss = saved
    assert rc == 1 and "diverged in epoch 2" in err, err
    assert (out / "checkpoints" / f"{STAGE}.diverged.npz").exists()
    assert not (out / "checkpoints" / f"{STAGE}.npz").exists()
    assert "its last checkpoint is kept" in err
    rc, _, err = run_main(capsys, "mnist", "--out", out, "--resume", "--no-progress")
    assert rc == 0, err
    same_run(out, reference(*CNN))


# ---------------------------------------------------------------- --resume with options
def test_resume_extends_the_epochs_to_the_run_a_larger_count_makes(tiny, tmp_path, capsys,
                                                                   reference):
    out = tmp_path / "run"
    rc, _, err = run_main(capsys, "mnist", "--data-dir", tiny, "--out", out, *CNN)
    assert rc == 0, err
    rc, stdout, err = run_main(capsys, "mnist", "--out", out, "--resume", "--epochs", "4",
                               "--patience", "3", "--no-progress")
    assert rc == 0, err
    assert "--epochs 4 (was 2)" in err and f"extends the finished ones: {STAGE}" in err
    assert "--patience 3 (was 8)" in err and "recorded in" in err
    assert f"[{STAGE}] epoch 4" in stdout
    same_run(out, reference(*CNN, "--epochs", "4", "--patience", "3"))
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["config"]["epochs"] == 4 and cfg["config"]["patience"] == 3
    assert cfg["resumes"][0]["changed"]["epochs"] == {"was": 2, "now": 4}


def test_resume_with_a_new_lr_applies_it_to_the_stages_not_started(tiny, tmp_path, capsys):
    out = tmp_path / "run"
    # stack (3 epochs) + the first CNN's first epoch, then stop
    rc, _, err = run_main(capsys, "mnist", "--data-dir", tiny, "--out", out, *TABLE,
                          "--stop-after-epochs", "4")
    assert rc == 3
    rc, stdout, err = run_main(capsys, "mnist", "--out", out, "--resume", "--lr", "0.02",
                               "--no-progress")
    assert rc == 0, err
    assert "--lr 0.02 (was 0.01) applies to the stages not started yet" in err
    assert "those started keep 0.01: cnn-random-n30-s0" in err
    assert "keeps the learning rate it started with, 0.01" in stdout
    lrs = {(r["stage"], r["epoch"]): r["lr"] for r in read_metrics(out)}
    assert lrs[("cnn-random-n30-s0", 2)] == pytest.approx(0.01 * 0.95)
    assert lrs[("cnn-cae-n30-s0", 1)] == 0.02 and lrs[("cnn-cae-n30-s0", 2)] == pytest.approx(0.02 * 0.95)
    res = json.loads((out / "results.json").read_text())
    assert res["cnn"]["cnn-random-n30-s0"]["lr"] == 0.01 and res["cnn"]["cnn-cae-n30-s0"]["lr"] == 0.02


def test_resume_refuses_options_that_change_what_was_trained(tiny, tmp_path, capsys):
    out = tmp_path / "run"
    rc, _, err = run_main(capsys, "mnist", "--data-dir", tiny, "--out", out, *TABLE)
    assert rc == 0, err
    before = (out / "config.json").read_text()
    rc, _, err = run_main(capsys, "mnist", "--out", out, "--resume", "--sizes", "20",
                          "--seeds", "1", "--maps", "3,4,5", "--no-progress")
    assert rc == 2 and "Traceback" not in err
    for part in ("--sizes 20 (saved: 30)", "--seeds 1 (saved: 0)", "--maps 3,4,5 (saved: 4,5,6)"):
        assert part in err, err
    rc, _, err = run_main(capsys, "mnist", "-e", "cae", "--out", out, "--resume")
    assert rc == 2 and "-e/--experiment cae (saved: table)" in err, err
    rc, _, err = run_main(capsys, "mnist", "--out", out, "--resume", "--epochs", "1")
    assert rc == 2 and "--epochs 1 (saved: 2): fewer epochs than already trained by " \
                       "cnn-cae-n30-s0 (2)" in err, err
    rc, _, err = run_main(capsys, "mnist", "--out", out, "--resume", "--cae-epochs", "2")
    assert rc == 2 and "--cae-epochs 2 (saved: 1): cannot extend stack-s0-cae1, stack-s0-cae2, " \
                       "stack-s0-cae3, since stack-s0-cae2, stack-s0-cae3, cnn-cae-n30-s0 " \
                       "already trained on their output" in err, err
    assert (out / "config.json").read_text() == before


def test_resuming_a_finished_run_keeps_its_wall_time(tiny, tmp_path, capsys):
    out = tmp_path / "run"
    rc, _, err = run_main(capsys, "mnist", "--data-dir", tiny, "--out", out, *CNN)
    assert rc == 0, err
    # as if the run had taken 1234.5 s (results.json, and the session config.json records)
    res = json.loads((out / "results.json").read_text())
    res["wall_time_s"] = 1234.5
    (out / "results.json").write_text(json.dumps(res))
    cfg = json.loads((out / "config.json").read_text())
    for s in cfg.get("sessions", []):
        s["wall_s"] = 1234.5
    (out / "config.json").write_text(json.dumps(cfg))
    rc, _, err = run_main(capsys, "mnist", "--out", out, "--resume", "--no-progress")
    assert rc == 0, err
    res = json.loads((out / "results.json").read_text())
    assert res["wall_time_s"] == 1234.5
    assert 0 < res["wall_time_this_session_s"] < 1234.5
    cfg = json.loads((out / "config.json").read_text())
    assert [(s["trained"], s["outcome"]) for s in cfg["sessions"]] == [(True, "done"),
                                                                      (False, "done")]


# ----------------------------------------------------------------- errors of the machine
def _one_line_error(err):
    lines = [ln for ln in err.strip().splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_out_naming_an_existing_file_exits_2(tiny, tmp_path, capsys):
    f = tmp_path / "a-file"
    f.write_text("not a folder")
    rc, _, err = run_main(capsys, "mnist", "--data-dir", tiny, "--out", f, *CNN)
    assert rc == 2 and "is a file, not a folder" in _one_line_error(err)
    rc, _, err = run_main(capsys, "mnist", "--data-dir", tiny, "--out", f / "sub", *CNN)
    assert rc == 2 and "a part of that path is a file" in _one_line_error(err)


def _unshare_works():
    if not shutil.which("unshare"):
        return False
    p = subprocess.run(["unshare", "-rm", "sh", "-c", "mount -t tmpfs -o size=64k none /mnt"],
                       capture_output=True, timeout=30)
    return p.returncode == 0


def _in_private_mount(tmp_path, script, timeout=300):
    """Run a shell script in a private mount namespace (mounts vanish with it)."""
    return subprocess.run(["unshare", "-rm", "sh", "-ec", script], cwd=ROOT, env=env(tmp_path),
                          capture_output=True, text=True, timeout=timeout)


def _sh(cmd):
    import shlex
    return " ".join(shlex.quote(c) for c in cmd)


def test_a_read_only_out_exits_2(tiny, tmp_path, capsys):
    out = tmp_path / "ro"
    out.mkdir()
    if os.geteuid() != 0:
        out.chmod(0o555)
        try:
            rc, _, err = run_main(capsys, "mnist", "--data-dir", tiny, "--out", out, *CNN)
            line = _one_line_error(err)
        finally:
            out.chmod(0o755)
        assert rc == 2 and "cannot write" in line and "Permission denied" in line
        return
    if not _unshare_works():
        pytest.skip("running as root (permissions do not stop root) and no private mount "
                    "namespace (unshare -rm) to mount a read-only folder")
    p = _in_private_mount(tmp_path, f"mount -t tmpfs -o ro,size=64k none {out}\n"
                                    + _sh(boot_cmd(tiny, *CNN, "--out", out)))
    assert p.returncode == 2, p.stderr
    line = _one_line_error(p.stderr)
    assert "cannot write" in line and "Read-only file system" in line and str(out) in line


@pytest.mark.skipif(not _unshare_works(), reason="needs a private mount namespace "
                    "(unshare -rm) to mount a tiny tmpfs")
def test_a_really_full_disk_exits_2_and_resume_continues_once_there_is_room(
        tiny, tmp_path, reference):
    """A 48 KiB tmpfs: config.json fits, the checkpoints do not. Exit 2 with the message;
    then the tmpfs is grown (remount) and --resume finishes the run."""
    out = tmp_path / "full"
    out.mkdir()
    first = _sh(boot_cmd(tiny, *CNN, "--out", out))
    again = _sh(boot_cmd(tiny, "--out", out, "--resume", "--no-progress"))
    p = _in_private_mount(tmp_path, textwrap.dedent(f"""
        mount -t tmpfs -o size=48k none {out}
        set +e
        {first} > {tmp_path}/first.out 2> {tmp_path}/first.err
        echo "first=$?"
        mount -o remount,size=10m {out}
        {again} > {tmp_path}/again.out 2> {tmp_path}/again.err
        echo "again=$?"
        cp -r {out} {tmp_path}/copy
    """))
    assert p.returncode == 0, p.stderr
    first_err = (tmp_path / "first.err").read_text()
    assert "first=2" in p.stdout, (p.stdout, first_err)
    line = _one_line_error(first_err)
    assert "the disk is full" in line and str(out) in line
    assert f"python -m scae_np.run mnist --resume --out {out} continues the run" in line
    assert "again=0" in p.stdout, (tmp_path / "again.err").read_text()
    copy = tmp_path / "copy"
    same_run(copy, reference(*CNN))
    assert no_partial_files(copy)


class _FullDisk:
    """``_atomic._fdopen`` for a disk that fills up after ``budget`` bytes written through
    atomic writes whose path contains ``where``."""

    def __init__(self, budget, where):
        self.budget, self.where, self.real = budget, where, os.fdopen

    def __call__(self, fd, mode="r", *a, **k):
        f = self.real(fd, mode, *a, **k)
        path = os.readlink(f"/proc/self/fd/{fd}")
        if self.where not in path:
            return f
        disk = self

        class Writer:
            def __getattr__(self, name):
                return getattr(f, name)

            def __enter__(self):
                return self

            def __exit__(self, *exc):
                return f.__exit__(*exc)

            def write(self, b):
                disk.budget -= len(b)
                if disk.budget < 0:
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
                return f.write(b)
        return Writer()


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc/self/fd")
def test_a_simulated_full_disk_exits_2_and_leaves_a_resumable_run(tiny, tmp_path, capsys,
                                                                  monkeypatch, reference):
    out = tmp_path / "run"
    monkeypatch.setattr(_atomic, "_fdopen", _FullDisk(budget=6000, where="checkpoints"))
    rc, _, err = run_main(capsys, "mnist", "--data-dir", tiny, "--out", out, *CNN)
    assert rc == 2
    line = _one_line_error(err)
    assert "the disk is full" in line and str(out / "checkpoints") in line
    assert f"--resume --out {out}" in line
    assert no_partial_files(out)
    monkeypatch.setattr(_atomic, "_fdopen", os.fdopen)
    rc, _, err = run_main(capsys, "mnist", "--out", out, "--resume", "--no-progress")
    assert rc == 0, err
    same_run(out, reference(*CNN))


# ------------------------------------------------------------------------------ Ctrl-C
def test_ctrl_c_exits_130_with_the_resume_command_and_no_traceback(tiny, tmp_path, reference):
    out = tmp_path / "run"
    argv = [*CNN, "--epochs", "6", "--out", out]
    p = subprocess.Popen(boot_cmd(tiny, *argv, "--slow", "0.05"), cwd=ROOT, env=env(tmp_path),
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for line in p.stdout:
        if f"[{STAGE}] epoch 2" in line:
            break
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=60)
    assert p.returncode == 130, err
    assert f"interrupted; continue with: python -m scae_np.run mnist --resume --out {out}" in err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["sessions"][-1]["outcome"] == "interrupted"
    r = run_sub(tmp_path, tiny, "--out", out, "--resume", "--no-progress")
    assert r.returncode == 0, r.stderr
    same_run(out, reference(*argv[:-2]))
    assert no_partial_files(out)


# ------------------------------------------------------------------------ smaller fixes
def test_stale_part_files_are_removed_on_resume(tiny, tmp_path, capsys):
    out = tmp_path / "run"
    rc, _, _ = run_main(capsys, "mnist", "--data-dir", tiny, "--out", out, *CNN,
                        "--stop-after-epochs", "1")
    assert rc == 3
    stale = [out / "checkpoints" / f".{STAGE}.npz.k2j3h4.part", out / ".metrics.jsonl.x1.part"]
    for p in stale:
        p.write_bytes(b"half a file")
    rc, _, err = run_main(capsys, "mnist", "--out", out, "--resume", "--no-progress")
    assert rc == 0, err
    assert not any(p.exists() for p in stale) and no_partial_files(out)
    assert f"removed {stale[0]}" in err


def test_zero_epochs_reports_no_test_error_for_the_untrained_cnn(tiny, tmp_path, capsys):
    out = tmp_path / "run"
    rc, stdout, err = run_main(capsys, "mnist", "--data-dir", tiny, "--out", out, *CNN,
                               "--epochs", "0")
    assert rc == 0, err
    res = json.loads((out / "results.json").read_text())
    r = res["cnn"][STAGE]
    assert r["untrained"] and "test_error" not in r and r["epochs"] == 0
    assert res["table"] == []
    md = (out / "results.md").read_text()
    assert "The CNN was not trained" in md and "ours: random init" not in md
    assert "| — (not trained) |" in md
    assert f"[{STAGE}] not trained (--epochs 0)" in stdout
    assert f"[{STAGE}] test error" not in stdout
    assert (out / "weights" / f"{STAGE}.npz").exists()


def test_emulator_loader_leaves_no_file_open(tmp_path, monkeypatch):
    from kernels import emulator
    from kernels.emulator import loader
    if not emulator.gxx_available():
        pytest.skip("no g++ for the emulator")
    monkeypatch.setenv("SCAE_NP_EMU_CACHE", str(tmp_path / "emu-cache"))
    src = 'extern "C" __global__ void k(float* y) { y[threadIdx.x] = 1.0f; }\n'
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always", ResourceWarning)
        loader.build(src, "probe.cu")
        import gc
        gc.collect()
    assert not [x for x in w if issubclass(x.category, ResourceWarning)], \
        [str(x.message) for x in w]


# --------------------------------------------------------------------- real MNIST (slow)
def _real_mnist():
    from test_data import real_mnist_dir
    return real_mnist_dir()


@pytest.mark.slow
@pytest.mark.skipif(_real_mnist() is None, reason="real MNIST not found at ../shared/data/mnist")
def test_real_mnist_divergence_rule_lets_healthy_runs_through_and_stops_lr_1e6(tmp_path, capsys):
    """The paper's CNN on 1,000 real images at the presets' lr 0.01, and the stack's CAEs
    (whose losses start small: ~0.1 and ~1e-3 per image): no divergence. lr 1e6: exit 1."""
    common = ["mnist", "--data-dir", _real_mnist(), "--backend", "numpy", "--no-progress",
              "--sizes", "1000", "--val-images", "500", "--test-images", "500"]
    rc, stdout, err = run_main(capsys, *common, "-e", "cnn", "--init", "cae", "--epochs", "3",
                               "--cae-images", "1000", "--cae-epochs", "1",
                               "--out", tmp_path / "ok")
    assert rc == 0, err
    assert "diverged" not in err
    rc, _, err = run_main(capsys, *common, "-e", "cnn", "--init", "random", "--epochs", "1",
                          "--lr", "1e6", "--out", tmp_path / "bad")
    assert rc == 1 and "diverged in epoch 1" in err, err
