"""Does this machine's BLAS keep cores busy after a threaded call? (Why the NumPy backend never
lets BLAS thread inside an op: kernels/numpy_threads.py.)

    python bench/blas_spin.py [--threads 2] [--size 1024] [--sleep-ms 50]

Runs one sgemm with BLAS on ``--threads`` threads, then sleeps ``--sleep-ms`` and reports the
process's CPU time during the sleep: a sleeping process with idle BLAS workers should use
~0 ms; OpenBLAS's workers busy-wait for a while after each call (about 0.1 s in its default
build) and show up as ~1 core-ms per ms of sleep per worker. The same sleep again after the
workers have gone to sleep (``--settle-ms`` later), and after a GEMM with BLAS pinned to one
thread, for comparison.
"""
from __future__ import annotations

import argparse
import os
import resource
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from kernels import numpy_threads  # noqa: E402


def _cpu_s():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def cpu_during_sleep(sleep_s):
    """CPU seconds this process uses while its main thread sleeps ``sleep_s``."""
    c0 = _cpu_s()
    time.sleep(sleep_s)
    return _cpu_s() - c0


def measure(threads=2, size=1024, sleep_ms=50.0, settle_ms=500.0):
    """CPU ms during a ``sleep_ms`` sleep: right after a ``threads``-thread sgemm, after
    ``settle_ms`` more, and right after the same sgemm with BLAS pinned to one thread."""
    ctl = numpy_threads.blas_controls()
    if ctl is None:
        raise SystemExit("no OpenBLAS found in this process: nothing to measure")
    get, set_ = ctl
    a = np.ones((size, size), np.float32)
    old = get()
    time.sleep(settle_ms / 1e3)        # the workers OpenBLAS starts at import also spin a while
    try:
        set_(threads)
        a @ a
        out = {"after threaded gemm": cpu_during_sleep(sleep_ms / 1e3)}
        time.sleep(settle_ms / 1e3)
        out[f"{settle_ms:g} ms later"] = cpu_during_sleep(sleep_ms / 1e3)
        with numpy_threads.blas_single_thread():
            a @ a
            out["after 1-thread gemm"] = cpu_during_sleep(sleep_ms / 1e3)
    finally:
        set_(old)
    return {k: v * 1e3 for k, v in out.items()}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2, help="BLAS threads for the first GEMM")
    ap.add_argument("--size", type=int, default=1024, help="square sgemm size")
    ap.add_argument("--sleep-ms", type=float, default=50.0)
    ap.add_argument("--settle-ms", type=float, default=500.0)
    args = ap.parse_args(argv)
    if args.threads < 1 or args.size < 1 or args.sleep_ms <= 0 or args.settle_ms < 0:
        ap.error("--threads and --size need positive values, --sleep-ms > 0, --settle-ms >= 0")
    res = measure(args.threads, args.size, args.sleep_ms, args.settle_ms)
    print(f"CPU ms of this process during a {args.sleep_ms:g} ms sleep "
          f"({args.size}^2 sgemm, BLAS {args.threads} threads):")
    for k, v in res.items():
        print(f"  {k:>24}: {v:6.1f} ms")


if __name__ == "__main__":
    main()
