"""kernels/numba_simulator.py: the warp primitives it adds to numba's CUDA simulator (which
has none) follow numba's GPU semantics and the rendezvous rules, and each block's shared
memory starts as NaN. Each check is shown catching a broken kernel."""
import numpy as np
import pytest

from numba_backends import numba_backend

pytestmark = pytest.mark.simulator


@pytest.fixture(scope="module")
def kernels():
    numba_backend("sim")                 # simulator mode + kernels/numba_simulator.install()
    import numba_sim_probes
    return vars(numba_sim_probes)


def test_shuffles_follow_numba_semantics(kernels):
    rng = np.random.default_rng(0)
    x = rng.permutation(64).astype(np.float32)
    a = rng.integers(0, 64, 64).astype(np.int32)
    y = np.zeros((4, 64), np.float32)
    kernels["shuffles"][1, 64](y, x, a)
    lane, base = np.arange(64) % 32, np.arange(64) - np.arange(64) % 32
    d = a & 31
    src = [a % 32, np.where(lane >= d, lane - d, lane), np.where(lane + d <= 31, lane + d, lane),
           lane ^ d]
    for k in range(4):
        np.testing.assert_array_equal(y[k], x[base + src[k]], ["idx", "up", "down", "xor"][k])


def test_votes(kernels):
    p = (np.arange(64) % 3 == 0).astype(np.int32)
    p[32:] = 1
    y = np.zeros((4, 64), np.int64)
    kernels["votes"][1, 64](y, p)
    ballot0 = sum(1 << k for k in range(32) if k % 3 == 0)
    np.testing.assert_array_equal(y[0], [ballot0] * 32 + [2 ** 32 - 1] * 32)
    np.testing.assert_array_equal(y[1], [1] * 64)
    np.testing.assert_array_equal(y[2], [0] * 32 + [1] * 32)
    np.testing.assert_array_equal(y[3], [0] * 32 + [1] * 32)


def test_lane_that_exited(kernels):
    with pytest.raises(RuntimeError, match=r"divergent warp: lane \d+ waits in "
                                           r"cuda.shfl_down_sync .* which has exited"):
        kernels["after_return"][1, 32](np.zeros(32, np.float32), np.ones(32, np.float32), 20)


def test_calling_lane_outside_the_mask(kernels):
    with pytest.raises(RuntimeError, match=r"warp mask error: lane (1[6-9]|2\d|3[01]) calls "
                                           r"cuda.shfl_down_sync with mask 0x0000ffff"):
        kernels["wrong_mask"][1, 32](np.zeros(32, np.float32), np.ones(32, np.float32))


def test_read_from_outside_the_mask_is_nan(kernels):
    x = np.arange(32, dtype=np.float32)
    y = np.zeros(32, np.float32)
    kernels["outside_mask"][1, 32](y, x)
    assert list(np.flatnonzero(np.isnan(y))) == [12, 13, 14, 15]
    np.testing.assert_array_equal(y[:12], x[4:16])


def test_lanes_waiting_for_each_other_at_different_calls(kernels):
    with pytest.raises(RuntimeError, match=r"divergent warp: .* which waits in cuda\.shfl_"):
        kernels["cross_wait"][1, 32](np.zeros(32, np.float32), np.ones(32, np.float32))


def test_shared_memory_is_nan_in_every_block(kernels):
    """numba's simulator keeps one array per cuda.shared.array line for the whole launch:
    block 1 would read block 0's ones. Here every block starts from NaN."""
    y = np.zeros((3, 32), np.float32)
    kernels["shared_from_block0"][3, 32](y)
    assert (y[0] == 1).all() and np.isnan(y[1:]).all()
