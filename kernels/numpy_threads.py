"""Batch-parallel helper and scratch buffers for the NumPy backend's memory-bound loops.

NumPy runs one ufunc / copy loop on one core, while BLAS (the GEMMs) already uses every
core.  The ``fast`` versions therefore split their *non-GEMM* work (im2col copies, col2im
adds, layout transposes, pooling passes) over the batch axis and run the slices in a small
thread pool: NumPy releases the GIL inside its loops, so the slices run concurrently.
Plain Python threads, no JIT: the code stays NumPy.

``scratch`` hands out per-thread reusable buffers for big temporaries (the im2col
columns): a fresh 80 MB ``np.empty`` is a new mmap whose pages fault in on first touch,
every call; a reused buffer is already mapped. Scratch memory is never returned to callers.

``SCAE_NP_THREADS`` sets the number of threads (default: the CPUs this process may use).
"""
from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np

#: below this many elements per call, splitting costs more than it saves.
MIN_PARALLEL_ELEMENTS = 1 << 16

_pool = None


def num_threads():
    env = os.environ.get("SCAE_NP_THREADS")
    if env:
        return max(1, int(env))
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def batch_map(fn, n, elements):
    """Call ``fn(lo, hi)`` on disjoint slices ``[lo, hi)`` covering ``range(n)``, in parallel.

    ``elements`` is the total work size (array elements touched), used to skip threading
    for small calls. Returns when every slice is done; re-raises the first exception."""
    global _pool
    t = min(num_threads(), n)
    if t <= 1 or elements < MIN_PARALLEL_ELEMENTS:
        fn(0, n)
        return
    if _pool is None or _pool._max_workers < t - 1:
        _pool = ThreadPoolExecutor(max_workers=t - 1, thread_name_prefix="scae-np")
    bounds = [n * i // t for i in range(t + 1)]
    futures = [_pool.submit(fn, bounds[i], bounds[i + 1]) for i in range(1, t)]
    fn(bounds[0], bounds[1])
    for f in futures:
        f.result()


_local = threading.local()


def scratch(key, shape, dtype):
    """A reusable C-contiguous buffer of ``shape``/``dtype`` for temporaries, one per
    (thread, key); its contents are garbage. Never return it (or a view) to a caller."""
    dtype = np.dtype(dtype)
    size = 1
    for s in shape:
        size *= int(s)
    bufs = getattr(_local, "bufs", None)
    if bufs is None:
        bufs = _local.bufs = {}
    buf = bufs.get((key, dtype))
    if buf is None or buf.size < size:
        buf = bufs[(key, dtype)] = np.empty(size, dtype=dtype)
    return buf[:size].reshape(shape)
