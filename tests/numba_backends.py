"""Backends for the numba tests: the simulator (marker ``simulator``) and the GPU (``gpu``).

One pytest process is either a simulator session (the default; ``tests/conftest.py`` sets
``NUMBA_ENABLE_CUDASIM=1`` before numba is imported) or a GPU session
(``SCAE_NP_GPU_TESTS=1 pytest -m gpu``): numba cannot switch after its first import.
A simulator test in a GPU session, or a GPU test without a GPU, is skipped with the reason;
a simulator test in a session where numba was already imported for the GPU *fails* with
the backend's explanation (it must not silently not run).
"""
import os

import pytest

from kernels import BackendUnavailableError, get_backend

KINDS = [pytest.param("sim", marks=pytest.mark.simulator, id="sim"),
         pytest.param("gpu", marks=pytest.mark.gpu, id="gpu")]

_cache = {}


SIM, SIM_SLOW_TIER, GPU = ((pytest.mark.simulator,), (pytest.mark.slow, pytest.mark.simulator),
                           (pytest.mark.gpu,))


def tier_params(*tiers):
    """``(kind, op, version, shape)`` params of one test over several tiers, each tier
    ``(label, kind, cases, marks)``: ``cases`` are ``pytest.param(op, version, shape)`` (their
    ids and marks kept), run on backend ``kind`` ("sim" or "gpu") with ``marks`` added."""
    return [pytest.param(kind, *p.values, id=f"{kind}-{label}-{p.id}",
                         marks=[*p.marks, *marks])
            for label, kind, cases, marks in tiers for p in cases]




def numba_backend(kind):
    if kind not in _cache:
        if kind == "sim":
            if os.environ.get("SCAE_NP_GPU_TESTS") == "1":
                pytest.skip("this pytest session was started for the GPU (SCAE_NP_GPU_TESTS=1); "
                            "the simulator tests run in a plain `pytest`")
            _cache[kind] = get_backend("numba", emulate=True)
        else:
            try:
                _cache[kind] = get_backend("numba")
            except BackendUnavailableError as e:
                pytest.skip(f"no GPU for numba: {e}")
    return _cache[kind]
