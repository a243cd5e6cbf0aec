"""Root pytest configuration: keeps benchmarks out of the normal test run.

``pytest`` runs ``tests/``; ``pytest --benchmark-only`` runs the pytest-benchmark suite in
``bench/`` (pytest-benchmark itself then skips everything that is not a benchmark).
"""
import os
import sys


ROOT = os.path.dirname(os.path.abspath(__file__))
BENCH = os.path.join(ROOT, "bench")


def pytest_collection_modifyitems(config, items):
    if config.getoption("benchmark_only", default=False):
        return
    # Deselect (not skip) so the normal run's summary is not flooded with benchmark items.
    bench = [it for it in items if str(it.fspath).startswith(BENCH + os.sep)]
    if bench:
        config.hook.pytest_deselected(items=bench)
        items[:] = [it for it in items if not str(it.fspath).startswith(BENCH + os.sep)]


def _selects_gpu(markexpr):
    """True when a -m expression asks for `gpu` tests (and not as `not gpu`)."""
    toks = (markexpr or "").replace("(", " ( ").replace(")", " ) ").split()
    return any(t == "gpu" and (i == 0 or toks[i - 1] != "not") for i, t in enumerate(toks))


def pytest_configure(config):
    """numba picks the GPU or its CUDA simulator once, at its first import, for the whole
    process (see kernels/numba_backend.py). Benchmark runs and `-m gpu` runs need the real
    GPU target; every other run uses the simulator (set in tests/conftest.py)."""
    if "numba" in sys.modules:
        return
    if config.getoption("benchmark_only", default=False) or _selects_gpu(
            config.getoption("markexpr", default="")):
        os.environ["SCAE_NP_GPU_TESTS"] = "1"
        os.environ["NUMBA_ENABLE_CUDASIM"] = "0"
