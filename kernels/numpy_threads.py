"""Threads, BLAS threads and scratch buffers for the NumPy backend's ``fast`` versions.

NumPy runs one ufunc / copy loop on one core, and BLAS threads each GEMM on its own: for the
many small or skinny GEMMs of a convolution, BLAS's thread team mostly synchronises (and
spins badly when the machine is busy), while the copies around them (im2col, col2im,
layout transposes) run on one core. The ``fast`` versions therefore split an op over the
*batch* into tasks of a few images, each doing its whole pipeline (im2col -> GEMM ->
col2im) on data that stays in the caches, and run the tasks on a small thread pool with
BLAS pinned to one thread for the duration (``batch_tasks``). NumPy and BLAS release the
GIL inside their loops, so the tasks run concurrently on all cores. Plain Python threads,
no JIT: the code stays NumPy.

* ``SCAE_NP_THREADS`` sets the number of threads (default: the CPUs this process may use);
  ``set_threads(n)`` / ``with using_threads(n):`` override it in the program.
* The slicing of a batch into tasks depends on the batch and the op's working set only,
  never on the thread count, so every result (partial sums included) is bit-identical at
  any number of threads; one thread runs the same tasks one after the other.
* glibc only: ``mallopt`` keeps freed memory in the process (no trimming, big blocks from
  the heap rather than fresh mmaps), so the big temporaries of every step reuse pages that
  are already mapped instead of faulting new ones in (``keep_freed_memory``).
* BLAS never threads inside a backend op: every GEMM of the backend -- the convolution
  plans' (im2col and ``dft``) and the fully connected layers' (``matmul``) -- runs in batch
  tasks with BLAS pinned to one thread. Not only because one task per core beats BLAS's
  own team on these shapes: OpenBLAS's idle workers busy-wait about 0.1 s after every
  threaded call (measured: 52 ms of CPU during a 50 ms sleep right after a 2-thread sgemm,
  0.1 ms half a second later; ``openblas_set_num_threads(1)`` does not put them back to sleep),
  so one threaded GEMM per layer kept a core spinning through the pooling and activations
  that followed it. Pinned through OpenBLAS's ``*_set_num_threads`` (found with ctypes, as
  threadpoolctl does); with another BLAS the tasks run one after the other and BLAS keeps
  its own threading. The pinning is process-wide while an op runs.
* ``batch_tasks`` hands its slices out from a shared counter: the calling thread and
  ``t - 1`` pool workers each take the next slice until none is left (one hand-off per
  worker per op, not per slice). Workers run in a copy of the caller's context, so
  ``np.errstate`` set by the caller holds inside the tasks.
* ``scratch`` hands out per-thread reusable buffers for big temporaries: a fresh large
  ``np.empty`` is a new mmap whose pages fault in on first touch, every call; a reused
  buffer is already mapped. Scratch memory is never returned to callers.
"""
from __future__ import annotations

import contextlib
import contextvars
import ctypes
import math
import os
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np

#: below this many elements per call, splitting costs more than it saves.
MIN_PARALLEL_ELEMENTS = 1 << 16
#: bytes of working set (columns + output) one task aims at: a few MB stay in L2/L3.
TASK_BYTES = 4 << 20

#: a batch is cut into at least this many tasks (when it has as many items), whatever the
#: thread count: enough to balance 2-8 threads, and results independent of the count.
MIN_TASKS = 8

_pool = None
_pool_lock = threading.Lock()
_local = threading.local()
_override = None


def set_threads(n):
    """Use ``n`` threads: the project's pool runs every backend op's tasks on ``n``
    threads, BLAS runs single-threaded inside them (every GEMM of the backend is in a
    task; see the module docstring) and with ``n`` threads for code outside the backend;
    ``None`` goes back to ``SCAE_NP_THREADS`` / the CPU count."""
    global _override
    if n is not None and (int(n) != n or n < 1):
        raise ValueError(f"set_threads needs a positive whole number of threads, got {n!r}")
    _override = None if n is None else int(n)
    ctl = blas_controls()
    if ctl is not None:
        ctl[1](num_threads())


@contextlib.contextmanager
def using_threads(n):
    """``set_threads(n)`` inside the block, the previous setting after it."""
    old = _override
    set_threads(n)
    try:
        yield
    finally:
        set_threads(old)


def keep_freed_memory():
    """glibc: never trim the heap and serve big blocks from it (mallopt M_TRIM_THRESHOLD,
    M_MMAP_THRESHOLD, M_TOP_PAD), so a step's freed temporaries are reused next step
    without page faults. Returns True when applied, False elsewhere (musl, macOS, ...).
    Off with SCAE_NP_MALLOPT=0."""
    if os.environ.get("SCAE_NP_MALLOPT", "1") == "0":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    m_trim_threshold, m_top_pad, m_mmap_threshold = -1, -2, -3
    ok = mallopt(m_mmap_threshold, 1 << 30) == 1           # glibc caps it at 32 MiB
    ok &= mallopt(m_trim_threshold, 1 << 30) == 1
    ok &= mallopt(m_top_pad, 64 << 20) == 1
    return bool(ok)


MALLOPT = keep_freed_memory()


def num_threads():
    if _override is not None:
        return _override
    env = os.environ.get("SCAE_NP_THREADS")
    if env:
        return max(1, int(env))
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def _executor(t):
    global _pool
    with _pool_lock:
        if _pool is None or _pool._max_workers < t:
            _pool = ThreadPoolExecutor(max_workers=t, thread_name_prefix="scae-np")
        return _pool


# ------------------------------------------------------------------------- BLAS threads
def _find_blas_controls():
    """(get, set) of OpenBLAS's thread count in this process, or None."""
    try:
        with open("/proc/self/maps") as f:
            paths = {line.split()[-1] for line in f if "openblas" in line.lower()}
    except OSError:
        return None
    for path in sorted(paths):
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for prefix in ("scipy_openblas", "openblas"):
            for suffix in ("64_", ""):
                get = getattr(lib, f"{prefix}_get_num_threads{suffix}", None)
                put = getattr(lib, f"{prefix}_set_num_threads{suffix}", None)
                if get is not None and put is not None:
                    get.restype = ctypes.c_int
                    put.argtypes = [ctypes.c_int]
                    return get, put
    return None


_BLAS = None
_BLAS_FOUND = False


def blas_controls():
    global _BLAS, _BLAS_FOUND
    if not _BLAS_FOUND:
        _BLAS, _BLAS_FOUND = _find_blas_controls(), True
    return _BLAS


@contextlib.contextmanager
def blas_single_thread():
    """BLAS runs single-threaded inside the block (no-op if it cannot be controlled)."""
    ctl = blas_controls()
    if ctl is None:
        yield
        return
    get, put = ctl
    old = get()
    if old != 1:
        put(1)
    try:
        yield
    finally:
        if old != 1:
            put(old)


# ------------------------------------------------------------------------------- maps
def batch_tasks(fn, n, bytes_per_item, target=TASK_BYTES, blas=True):
    """Call ``fn(lo, hi)`` on consecutive slices of ``range(n)`` of about ``target`` bytes
    of working set each (``bytes_per_item`` per batch item), on the thread pool; with
    ``blas`` (the tasks call BLAS) BLAS is pinned to one thread meanwhile. Returns the list
    of results in slice order.

    The slices depend on ``n``, ``bytes_per_item`` and ``target`` only (at least
    ``MIN_TASKS`` of them), not on the thread count, so results are bit-identical at any
    count. With one thread, or (``blas``) a BLAS whose threads cannot be pinned, the same
    slices run one after the other in this thread."""
    if n * bytes_per_item < 4 * MIN_PARALLEL_ELEMENTS:
        with blas_single_thread() if blas else contextlib.nullcontext():
            return [fn(0, n)]
    step = max(1, min(math.ceil(n / MIN_TASKS), target // max(1, bytes_per_item)))
    bounds = list(range(0, n, step)) + [n]
    t = min(num_threads(), len(bounds) - 1)
    if t <= 1 or (blas and blas_controls() is None):
        with blas_single_thread() if blas else contextlib.nullcontext():
            return [fn(lo, hi) for lo, hi in zip(bounds[:-1], bounds[1:])]
    slices = list(zip(bounds[:-1], bounds[1:]))
    with blas_single_thread() if blas else contextlib.nullcontext():
        return _share(fn, slices, t)


def _share(fn, slices, t):
    """Run ``fn(lo, hi)`` for every slice on ``t`` threads: the caller and ``t - 1`` pool
    workers take the next slice from a shared counter until none is left (one hand-off
    per worker, not per task; the caller never sits idle). Each worker runs in a copy of
    the caller's context, so ``np.errstate`` (a context variable) holds in it too. The
    first exception stops the hand-out; it is raised once every thread has stopped."""
    results = [None] * len(slices)
    nxt = iter(range(len(slices)))
    lock = threading.Lock()
    failed = []

    def drain():
        while not failed:
            with lock:
                i = next(nxt, None)
            if i is None:
                return
            try:
                results[i] = fn(*slices[i])
            except BaseException as e:     # noqa: BLE001 - re-raised in the caller
                failed.append(e)
                return

    pool = _executor(t - 1)
    futures = [pool.submit(contextvars.copy_context().run, drain) for _ in range(t - 1)]
    try:
        drain()
    finally:
        for f in futures:
            f.result()
    if failed:
        raise failed[0]
    return results


#: ``matmul``'s GEMM (a module attribute, so tests can watch it).
_gemm = np.matmul


def matmul(a, b):
    """``a @ b`` for 2-D ``a`` (M, K) and ``b`` (K, P) -- either may be a transposed view --
    as a new (M, P) array: the rows of ``a`` cut into batch tasks on the pool, BLAS on one
    thread (so its own workers stay asleep; see the module docstring)."""
    out = np.empty((a.shape[0], b.shape[1]), dtype=np.result_type(a, b))

    def task(lo, hi):
        _gemm(a[lo:hi], b, out=out[lo:hi])

    batch_tasks(task, a.shape[0], (a.shape[1] + b.shape[1]) * out.itemsize)
    return out


def scratch(key, shape, dtype):
    """A reusable C-contiguous buffer of ``shape``/``dtype`` for temporaries, one per
    (thread, key); its contents are garbage. Never return it (or a view) to a caller."""
    dtype = np.dtype(dtype)
    size = math.prod(int(s) for s in shape)
    bufs = getattr(_local, "bufs", None)
    if bufs is None:
        bufs = _local.bufs = {}
    buf = bufs.get((key, dtype))
    if buf is None or buf.size < size:
        buf = bufs[(key, dtype)] = np.empty(size, dtype=dtype)
    return buf[:size].reshape(shape)
