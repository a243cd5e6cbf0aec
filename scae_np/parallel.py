"""``--jobs N``: the independent stages of a run in N worker processes.

Plan. :func:`plan` lists the run's *jobs* in the order a sequential run (``--jobs 1``) trains
them, each with the jobs it needs first:

* ``fig1-<name>``: one Fig. 1 CAE each (four, independent); the parent draws the combined
  filter figure once all four are in;
* ``cae``: the single CAE of ``-e cae``;
* ``stack-s<seed>``: the CAE stack of one seed, its layers one after the other (each layer
  trains on the codes of the one below); ``embedding-s<seed>`` (the first seed's embedding
  figure) and every ``cnn-cae-n<size>-s<seed>`` need it; ``cnn-random-*`` need nothing.

Scheduling. A :class:`concurrent.futures.ProcessPoolExecutor` with the ``spawn`` context and
N workers; a job is submitted as soon as the jobs it needs are done and a worker is free
(stacks first: CNNs wait for them). Each worker is initialised once (:func:`_init_worker`):
the backend, the parent's dataset (pickled over; no second load, no download), its share of
the CPU threads (:func:`use_threads`: ``max(1, threads // N)``, ``threads`` = ``--threads`` or
the CPUs this process may use) and a :class:`scae_np.run.Run` whose Trainer writes only its
own stages' files (checkpoints, weights, figures; each atomically). A job that needs a stack
loads it from the stack's ``weights/`` files, which hold what the sequential run passes on.

Who writes what. The parent holds the folder's lock (:mod:`scae_np._lock`; workers never
touch it) and is the only writer of ``metrics.jsonl``, ``results.*`` and ``config.json``:
workers send every metrics record and every ``sync_stage`` over a queue (:class:`_QueueLog`),
and every message line (:meth:`Trainer.echo`), which the parent prints -- one line per epoch,
stage and job, each led by its stage's name (no progress bars with N > 1). At the end the
parent puts ``metrics.jsonl`` in the sequential run's stage order and merges the jobs'
results in plan order, so the files equal a sequential run's.

Same numbers. Each stage seeds its own RNGs from the run's seed and its name, so it draws the
same numbers in any process. The NumPy backend's weight gradients sum per-thread partial sums,
so bit-identical results need the same threads per stage: ``--jobs 2`` on 2 CPUs (1 thread
per worker) equals ``SCAE_NP_THREADS=1 ... --jobs 1`` (tests/test_parallel.py).

Stopping. Workers ignore SIGINT except while they run a job, where the first one raises
KeyboardInterrupt (later ones are ignored) and the job returns ``interrupted``: the stage
keeps its last epoch's checkpoint. The parent, on Ctrl-C (or a diverged stage, or an error),
submits nothing more, sends SIGINT to its workers, waits for them (killing any that do not
stop within :data:`GRACE_S`), then raises: run.py turns it into exit 130 (Ctrl-C), 1
(diverged, with the message that says which rate to lower) or the error's own status.
``--stop-after-epochs N`` counts the epochs of all workers: each stops after its next
checkpoint once N are in (exit 3). A worker whose parent dies is killed (Linux
``PR_SET_PDEATHSIG``), so no orphan writes into a folder whose lock is gone.
"""
from __future__ import annotations

import dataclasses
import multiprocessing
import os
import queue as queue_mod
import signal
import sys
import time
from concurrent.futures import ProcessPoolExecutor

#: seconds the parent waits for interrupted workers before killing them
GRACE_S = 60.0
#: seconds between the parent's looks at its workers' messages
POLL_S = 0.1


@dataclasses.dataclass(frozen=True)
class Job:
    """One unit of work for a worker: ``kind`` (fig1, cae, stack, embedding, cnn) and its
    ``args``; ``needs``: names of jobs that must be done first; ``stages``: the trainer stages
    it runs, in order."""
    name: str
    kind: str
    args: tuple
    needs: tuple = ()
    stages: tuple = ()


def plan(cfg):
    """The run's jobs in the sequential run's order (see the module docstring)."""
    from .run import FIG1_VARIANTS
    exp, seeds = cfg["experiment"], cfg["seeds"]
    jobs = []
    if exp in ("default", "fig1"):
        for i, (name, *_) in enumerate(FIG1_VARIANTS):
            jobs.append(Job(f"fig1-{name}", "fig1", (seeds[0], i), stages=(f"fig1-{name}",)))
    if exp == "cae":
        jobs.append(Job("cae", "cae", (seeds[0],), stages=("cae",)))
    if exp in ("default", "table"):
        jobs += _table(cfg, seeds, ("random", "cae"), cfg["sizes"])
    if exp == "cnn":
        jobs += _table(cfg, seeds[:1], (cfg["init"],), cfg["sizes"][:1])
    return jobs


def _table(cfg, seeds, inits, sizes):
    """Mirrors :meth:`scae_np.run.Run.table`."""
    jobs = []
    for seed in seeds:
        stack = None
        if "cae" in inits:
            stack = f"stack-s{seed}"
            jobs.append(Job(stack, "stack", (seed, tuple(sizes)), stages=tuple(
                f"stack-s{seed}-cae{i + 1}" for i in range(len(cfg["maps"])))))
            if seed == seeds[0]:
                jobs.append(Job(f"embedding-s{seed}", "embedding", (seed,), needs=(stack,)))
        for size in sizes:
            for init in inits:
                name = f"cnn-{init}-n{size}-s{seed}"
                jobs.append(Job(name, "cnn", (seed, size, init, tuple(sizes)),
                                needs=(stack,) if init == "cae" else (), stages=(name,)))
    return jobs


def width(jobs):
    """The most jobs that can run at once: the largest level of the plan's graph (level: the
    longest chain of needs below a job)."""
    level = {}
    for j in jobs:            # plan order lists a job after what it needs
        level[j.name] = 1 + max((level[n] for n in j.needs), default=-1)
    counts = {}
    for lv in level.values():
        counts[lv] = counts.get(lv, 0) + 1
    return max(counts.values(), default=0)


def total_threads(cfg):
    """The CPU threads the run may use: ``--threads``, else ``$SCAE_NP_THREADS``, else the
    CPUs this process may run on."""
    if cfg.get("threads"):
        return int(cfg["threads"])
    env = os.environ.get("SCAE_NP_THREADS")
    if env and env.isdigit() and int(env) > 0:
        return int(env)
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def use_threads(n):
    """Make this process compute with ``n`` CPU threads: BLAS/OpenMP through the environment
    (``--threads``'s variables, scae_np/_threads.py) for libraries not loaded yet, and the
    project's pool and OpenBLAS through ``kernels.numpy_threads.set_threads``. The one place
    ``--jobs`` touches thread knobs."""
    from ._threads import early_threads
    os.environ["SCAE_NP_THREADS"] = str(n)
    early_threads(["--threads", str(n)])
    from kernels import numpy_threads
    numpy_threads.set_threads(n)


# ------------------------------------------------------------------------------ worker
_W = None       # the worker's state (a _Worker), set by _init_worker


class _QueueLog:
    """A worker's metrics log: records go to the parent (the one writer of metrics.jsonl);
    the worker keeps its own stages' records for its learning-curve figures."""

    def __init__(self, q):
        self.q, self.mine = q, {}

    def records(self):
        return [r for recs in self.mine.values() for r in recs]

    def append(self, rec):
        self.mine.setdefault(rec["stage"], []).append(rec)
        self.q.put(("append", rec))

    def sync_stage(self, stage, history):
        self.mine[stage] = list(history)
        self.q.put(("sync", stage, list(history)))


def _worker_trainer(counter, **kw):
    """A Trainer whose ``epochs_run`` is the run's count over all workers (a shared counter),
    so ``--stop-after-epochs`` stops the run, not each worker, after N epochs."""
    from .train import Trainer

    class WorkerTrainer(Trainer):
        @property
        def epochs_run(self):
            return counter.value

        @epochs_run.setter
        def epochs_run(self, value):
            if value:                          # Trainer does epochs_run += 1 after an epoch
                with counter.get_lock():
                    counter.value += 1
    return WorkerTrainer(**kw)


@dataclasses.dataclass
class _Worker:
    run: object
    q: object
    job: str = ""


def _die_with_parent(parent_pid):
    """Linux: SIGKILL this process when its parent dies (checkpoints are written atomically,
    so a kill at any moment leaves a resumable folder)."""
    try:
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, int(signal.SIGKILL))             # PR_SET_PDEATHSIG
    except (OSError, AttributeError):                  # pragma: no cover - not Linux
        return
    if os.getppid() != parent_pid:                     # died before prctl took effect
        os._exit(1)


def _init_worker(cfg, backend, emulate, ds, out, q, counter, threads, resume, parent_pid):
    global _W
    signal.signal(signal.SIGINT, signal.SIG_IGN)       # the parent decides when to stop
    _die_with_parent(parent_pid)
    use_threads(threads)
    from .run import Run, pick_backend
    be, _ = pick_backend(backend, emulate)
    state = _Worker(None, q)

    def echo(msg):
        if not msg.startswith(("[", "== ")):
            msg = f"[{state.job}] {msg}"
        q.put(("echo", msg))
    trainer = _worker_trainer(counter, backend=be, out_dir=out, progress=False,
                              stop_after_epochs=cfg["stop_after_epochs"],
                              eval_batch=cfg["eval_batch_size"], resume=resume, echo=echo,
                              log=_QueueLog(q))
    state.run = Run(cfg, be, ds, out, trainer)
    _W = state


def _on_sigint(signum, frame):
    signal.signal(signal.SIGINT, signal.SIG_IGN)       # one KeyboardInterrupt per job
    raise KeyboardInterrupt


def _run_job(job):
    """Run ``job`` in this worker; returns {status, results, figures, stages_finished} with
    status ok, interrupted (Ctrl-C), stopped (--stop-after-epochs) or diverged."""
    from .train import Diverged, Interrupted
    run = _W.run
    _W.job = job.name
    run.results = {"fig1": {}, "stacks": {}, "cnn": {}, "cae": {}, "diagnostics": {}}
    run.figures = []
    finished = run.trainer.stages_finished
    out = {"status": "ok"}
    signal.signal(signal.SIGINT, _on_sigint)
    try:
        try:
            _JOBS[job.kind](run, *job.args)
        finally:
            signal.signal(signal.SIGINT, signal.SIG_IGN)
    except KeyboardInterrupt:
        out["status"] = "interrupted"
    except Interrupted as e:
        out.update(status="stopped", message=str(e))
    except Diverged as e:          # its own __init__: pickled as fields, raised again above
        out.update(status="diverged", diverged=(e.stage, e.kind, e.epoch, e.lr, e.why))
    out.update(results=run.results, figures=run.figures,
               stages_finished=run.trainer.stages_finished - finished)
    _W.q.put(("end", job.name))    # after every message of the job
    return out


def _splits(run, seed, sizes):
    from .run import make_splits
    c = run.cfg
    return make_splits(run.ds.train_y, c["val_images"], list(sizes), c["cae_images"], seed)


def _load_stack(run, seed):
    """The trained stack of ``seed`` from its weights files (the stack job wrote them)."""
    stack = run.new_stack(seed)
    for i, cae in enumerate(stack.caes):
        cae.load(run.trainer.weights_path(f"stack-s{seed}-cae{i + 1}"))
    return stack


def _job_fig1(run, seed, i):
    run.results["fig1_panel"] = run.fig1_cae(seed, i, run.fig1_data(seed))


def _job_stack(run, seed, sizes):
    val, _, cae_idx = _splits(run, seed, sizes)
    run.stack(seed, cae_idx, val)


def _job_embedding(run, seed):
    from . import summary
    summary.embedding_figure(run, seed, _load_stack(run, seed))


def _job_cnn(run, seed, size, init, sizes):
    val, train, _ = _splits(run, seed, sizes)
    run.cnn(seed, size, init, train[size], val,
            _load_stack(run, seed) if init == "cae" else None)


_JOBS = {"fig1": _job_fig1, "cae": lambda run, seed: run.single_cae(seed),
         "stack": _job_stack, "embedding": _job_embedding, "cnn": _job_cnn}


# ------------------------------------------------------------------------------ parent
def run_parallel(run):
    """Run every stage of ``run`` (a :class:`scae_np.run.Run` in the parent) in
    ``cfg["jobs"]`` worker processes, filling ``run.results`` and ``run.figures`` as the
    sequential calls do. Returns False, having done nothing, when the run is to go on in
    this process (``--jobs 1``, or a plan with one stage at a time)."""
    cfg = run.cfg
    asked = int(cfg.get("jobs") or 1)
    if asked <= 1:
        return False
    jobs = plan(cfg)
    most = width(jobs)
    if asked > most:
        print(f"note: --jobs {asked} is more than the {most} stage(s) of this run that can "
              f"run at once; " + (f"using {most} worker processes" if most > 1 else
                                  "running them one after the other in this process"),
              file=sys.stderr, flush=True)
    n = min(asked, most)
    if n <= 1:
        return False
    threads = total_threads(cfg)
    per = max(1, threads // n)
    if n * per > threads:
        print(f"note: --jobs {n} on {threads} CPU thread(s): one thread per worker, more "
              f"threads than CPUs", file=sys.stderr, flush=True)
    run.echo(f"jobs: {len(jobs)} jobs in {n} worker processes, {per} thread(s) each: "
             + ", ".join(j.name for j in jobs))
    _Parent(run, jobs, n, per).go()
    return True


def _submit(pool, job):
    """``pool.submit``, with SIGINT ignored meanwhile: a worker starts (on the first submit
    that finds none idle) with SIGINT ignored, so a Ctrl-C while it boots cannot kill it with
    a traceback; Python keeps an inherited SIG_IGN. (A Ctrl-C in this short window is lost.)"""
    import threading
    if threading.current_thread() is not threading.main_thread():
        return pool.submit(_run_job, job)
    old = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        return pool.submit(_run_job, job)
    finally:
        signal.signal(signal.SIGINT, old)


class _Parent:
    def __init__(self, run, jobs, n, threads):
        self.run, self.jobs, self.n, self.threads = run, jobs, n, threads
        self.trainer = run.trainer
        self.done = {}              # name -> the job's result
        self.ended = set()          # jobs whose last message arrived
        self.running = {}           # future -> job
        self.failure = None         # the first (status, result or exception) that stops the run

    def go(self):
        ctx = multiprocessing.get_context("spawn")
        q = ctx.Queue()
        counter = ctx.Value("i", 0)
        be = self.run.be
        cfg = self.run.cfg
        initargs = (cfg, be.name, bool(getattr(be, "emulated", False)), self.run.ds,
                    self.run.out, q, counter, self.threads, bool(self.trainer.resume),
                    os.getpid())
        self.q = q
        pool = ProcessPoolExecutor(self.n, mp_context=ctx, initializer=_init_worker,
                                   initargs=initargs)
        try:
            try:
                self._loop(pool)
            except BaseException:
                self._stop(pool)
                raise
            if self.failure is not None:
                self._stop(pool)
                self._raise()
        finally:
            self._kill(pool)
            pool.shutdown(wait=True, cancel_futures=True)
        self._finish()

    # ------------------------------------------------------------------ the loop
    def _ready(self):
        started = {j.name for j in self.running.values()} | set(self.done)
        ready = [j for j in self.jobs if j.name not in started
                 and all(n in self.done for n in j.needs)]
        needed = {n for j in self.jobs for n in j.needs}
        return sorted(ready, key=lambda j: j.name not in needed)     # stacks first, stably

    def _loop(self, pool):
        while True:
            # a failure: the caller interrupts the running jobs at once; after
            # --stop-after-epochs they stop at their next checkpoint by themselves
            if self.failure is not None and self.failure[0] != "stopped":
                return
            if self.failure is None:
                for job in self._ready()[:self.n - len(self.running)]:
                    self.running[_submit(pool, job)] = job
            if not self.running:
                return
            self._drain(POLL_S)
            for fut in [f for f in self.running if f.done()]:
                job = self.running[fut]
                try:
                    res = fut.result()
                except BaseException as e:  # noqa: BLE001 - a bug or an OSError in the worker
                    del self.running[fut]
                    self.failure = self.failure or ("error", e)
                    continue
                if job.name not in self.ended:       # its last messages are still on the way
                    continue
                del self.running[fut]
                self._result(job, res)

    def _result(self, job, res):
        self.trainer.stages_finished += res["stages_finished"]
        if res["status"] == "ok":
            self.done[job.name] = res
            self.trainer.echo(f"[{job.name}] done ({len(self.done)}/{len(self.jobs)} jobs)")
        elif self.failure is None or self.failure[0] == "interrupted":
            self.failure = (res["status"], res)

    def _drain(self, timeout):
        """Handle the workers' messages: wait up to ``timeout`` s for the first."""
        try:
            msg = self.q.get(timeout=timeout)
        except queue_mod.Empty:
            return
        while True:
            kind = msg[0]
            if kind == "echo":
                self.trainer.echo(msg[1])
            elif kind == "append":
                self.trainer.log.append(msg[1])
                self.trainer.epochs_run += 1
            elif kind == "sync":
                self.trainer.log.sync_stage(msg[1], msg[2])
            elif kind == "end":
                self.ended.add(msg[1])
            try:
                msg = self.q.get_nowait()
            except queue_mod.Empty:
                return

    # ------------------------------------------------------------------ stopping
    def _stop(self, pool):
        """SIGINT to every worker, then wait (handling their last messages) for the running
        jobs; what they return past the first failure is noted, not raised."""
        self._signal(pool, signal.SIGINT)
        deadline = time.monotonic() + GRACE_S
        while self.running and time.monotonic() < deadline:
            self._drain(POLL_S)
            for fut in [f for f in self.running if f.done()]:
                job = self.running.pop(fut)
                try:
                    self._result(job, fut.result())
                except BaseException:  # noqa: BLE001 - stopping anyway
                    pass
        self._drain(0)

    @staticmethod
    def _signal(pool, sig):
        for p in list(getattr(pool, "_processes", None) or {}).copy():
            try:
                os.kill(p, sig)
            except (ProcessLookupError, PermissionError):
                pass

    def _kill(self, pool):
        if self.running:            # still busy after the grace time, or a second Ctrl-C
            self._signal(pool, signal.SIGKILL)

    def _raise(self):
        from .train import Diverged, Interrupted, TrainingError
        status, res = self.failure
        if status == "error":
            from concurrent.futures.process import BrokenProcessPool
            if isinstance(res, BrokenProcessPool):
                raise TrainingError(f"a worker process died ({res}); the stages it ran keep "
                                    f"their last checkpoints: --resume continues") from res
            if isinstance(res, KeyboardInterrupt):
                raise KeyboardInterrupt
            raise res
        if status == "diverged":
            raise Diverged(*res["diverged"])
        if status == "stopped":
            raise Interrupted(res["message"])
        raise KeyboardInterrupt

    # ------------------------------------------------------------------ the end
    def _finish(self):
        """Merge the jobs' results in plan order, draw the Fig. 1 figure, and put
        metrics.jsonl in the sequential run's stage order."""
        from .train import _atomic_write_text
        import json
        run = self.run
        panels = []
        for job in self.jobs:
            res = self.done[job.name]
            for k, v in res["results"].items():
                if k == "fig1_panel":
                    panels.append(v)
                elif isinstance(v, dict) and k in run.results:
                    run.results[k].update(v)
                elif v:
                    run.results[k] = v
            run.figures += res["figures"]
        if panels:
            run.fig1_figure(panels)
        order = {s: i for i, s in enumerate(s for j in self.jobs for s in j.stages)}
        log = self.trainer.log
        recs = log.records()
        ranked = sorted(range(len(recs)),
                        key=lambda i: (order.get(recs[i].get("stage"), len(order)), i))
        if ranked != list(range(len(recs))):
            from .train import _json_default
            _atomic_write_text(log.path, "".join(
                json.dumps(recs[i], default=_json_default) + "\n" for i in ranked))
