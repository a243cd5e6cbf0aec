import os
import sys
import zlib

import numpy as np
import pytest

# numba chooses between the GPU and its CUDA simulator once, when it is first imported
# (kernels/numba_backend.py explains the trap). Decide for the whole pytest session here,
# before any test module can import numba: the simulator (the `simulator` tests) unless
# SCAE_NP_GPU_TESTS=1 asks for a GPU session (`SCAE_NP_GPU_TESTS=1 pytest -m gpu`).
# In a GPU session NUMBA_ENABLE_CUDASIM=0 keeps a stray get_backend("numba", emulate=True)
# from switching the session to the simulator (it raises instead).
if "numba" not in sys.modules:
    if os.environ.get("SCAE_NP_GPU_TESTS") == "1":
        os.environ["NUMBA_ENABLE_CUDASIM"] = "0"
    else:
        os.environ.setdefault("NUMBA_ENABLE_CUDASIM", "1")


@pytest.fixture
def rng(request):
    """A generator seeded from the test's id: different per test, the same on every run."""
    return np.random.default_rng(zlib.crc32(request.node.nodeid.encode()))


@pytest.fixture(scope="module", params=[
    pytest.param("emulator", marks=pytest.mark.emulator),
    pytest.param("gpu", marks=pytest.mark.gpu),
])
def cupy_be(request):
    """The cupy backend twice: its CUDA C kernels on the CPU emulator (default tier) and on a
    real GPU (`gpu` tier, skipped with the reason where there is none)."""
    from kernels import BackendUnavailableError, get_backend
    if request.param == "emulator":
        return get_backend("cupy", emulate=True)
    try:
        return get_backend("cupy")
    except BackendUnavailableError as e:
        pytest.skip(f"gpu tier needs a CUDA GPU with CuPy: {e}")
