"""pytest-benchmark configuration for ``pytest --benchmark-only`` (run from the repo root).

* Records the machine (lscpu model, cores), NumPy + its BLAS (config, core type, threads),
  torch (+ its threads, oneDNN/MKL), the GPU if any, the date and the load average before
  and after the run in the JSON's ``machine_info``.
* Without ``--benchmark-json``, writes the JSON to ``bench/results/local/benchmark.json``
  (git-ignored) so that ``python bench/report.py`` has something to read.
* The normal ``pytest`` run skips everything here (root conftest.py).
"""
from __future__ import annotations

import datetime
import os
import platform

import pytest

import benchlib

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_JSON = os.path.join(HERE, "results", "local", "benchmark.json")
_START = {}


@pytest.fixture(scope="session", autouse=True)
def _benchmark_session_setup(request):
    """Default JSON path, start date/load, torch threads: before the first benchmark."""
    config = request.config
    _START.setdefault("load", benchlib.loadavg())
    _START.setdefault("date", datetime.datetime.now(datetime.timezone.utc)
                      .isoformat(timespec="seconds"))
    bs = getattr(config, "_benchmarksession", None)
    if (config.getoption("benchmark_only", default=False) and bs is not None
            and not bs.json and not bs.save and not bs.autosave):
        os.makedirs(os.path.dirname(DEFAULT_JSON), exist_ok=True)
        bs.json = open(DEFAULT_JSON, "wb")
    benchlib.torch_module()          # sets torch's threads before anything is timed


def pytest_benchmark_update_machine_info(config, machine_info):
    import numpy as np
    info = {
        "date_utc": _START.get("date"),
        "loadavg_start": _START.get("load"),
        "loadavg_end": benchlib.loadavg(),
        "lscpu": benchlib.lscpu(),
        "cpus_usable": len(os.sched_getaffinity(0)),
        "numpy": np.__version__,
        "blas": benchlib.blas_info(),
        "python": platform.python_version(),
    }
    torch = benchlib.torch_module()
    if torch is not None:
        info["torch"] = torch.__version__
        info["torch_threads"] = torch.get_num_threads()
        info["torch_mkldnn"] = bool(torch.backends.mkldnn.is_available())
        info["torch_mkl"] = bool(torch.backends.mkl.is_available())
    ok, why = benchlib.gpu_available()
    info["gpu"] = why if ok else None
    info["gpu_note"] = None if ok else why
    for mod in ("cupy", "numba", "numba_cuda"):
        try:
            m = __import__(mod)
            info[mod] = getattr(m, "__version__", "?")
        except Exception:  # noqa: BLE001
            info[mod] = None
    machine_info["scae_np"] = info


@pytest.fixture(scope="session")
def torch_peer():
    """torch (threads = NumPy's BLAS threads) or skip."""
    torch = benchlib.torch_module()
    if torch is None:
        pytest.skip("torch is not installed (pip install -e '.[peer]')")
    return torch
