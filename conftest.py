"""Root pytest configuration: keeps benchmarks out of the normal test run.

``pytest`` runs ``tests/``; ``pytest --benchmark-only`` runs the pytest-benchmark suite in
``bench/`` (pytest-benchmark itself then skips everything that is not a benchmark).
"""
import os


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
