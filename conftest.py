"""Root pytest configuration: keeps benchmarks out of the normal test run.

``pytest`` runs ``tests/``; ``pytest --benchmark-only`` runs the pytest-benchmark suite in
``bench/`` (pytest-benchmark itself then skips everything that is not a benchmark).
"""
import os

import pytest

ROOT = os.path.dirname(os.path.abspath(__file__))
BENCH = os.path.join(ROOT, "bench")


def pytest_collection_modifyitems(config, items):
    if config.getoption("benchmark_only", default=False):
        return
    skip = pytest.mark.skip(reason="benchmark: run with  pytest --benchmark-only")
    for item in items:
        if str(item.fspath).startswith(BENCH + os.sep):
            item.add_marker(skip)
