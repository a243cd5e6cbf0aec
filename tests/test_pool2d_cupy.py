"""Max-pooling with switches and switch unpooling, cupy backend: every version of every CUDA C
kernel against the NumPy reference, exactly (these ops only move values).

Runs under the CPU emulator (default tier) and on a GPU (``gpu`` tier, skipped without one).
"""
import numpy as np
import pytest

from kernels import get_backend
from kernels.testing import assert_op_close

from gpu_ladders import POOL_LADDER, check_ladder

ref = get_backend("numpy")


@pytest.fixture(scope="module")
def be(cupy_be):
    """The cupy backend on the emulator, and on a GPU (tests/conftest.py: cupy_be)."""
    return cupy_be


# (N, C, H, W, k): remainder rows/columns, k = 1 and 3, a single window, sizes that are not
# multiples of the 256-thread blocks; then the paper's pooled maps (100x24x24, 150x8x8) at batch 2.
SHAPES = [
    (2, 3, 9, 11, 2),
    (1, 2, 10, 7, 3),
    (3, 1, 5, 5, 1),
    (1, 1, 5, 5, 5),
    (2, 5, 5, 7, 3),      # OH=1: the window size is ambiguous from the shapes alone (k=3..5)
    (2, 100, 24, 24, 2),
    (2, 150, 8, 8, 2),
]


def inputs(shape, ties):
    n, c, h, w_, k = shape
    rng = np.random.default_rng(sum(shape) * 31 + ties)
    if ties:   # few distinct values: many ties, which must go to the first in row-major order
        x = rng.integers(-2, 2, size=(n, c, h, w_)).astype(np.float32)
    else:
        x = rng.standard_normal((n, c, h, w_)).astype(np.float32)
    y, sw = ref.maxpool2d_forward(x, k, version="naive")
    dy = rng.standard_normal(y.shape).astype(np.float32)
    dx = rng.standard_normal(x.shape).astype(np.float32)
    return x, y, sw, dy, dx


def dev(be, *arrays):
    return [be.to_device(a) for a in arrays]


@pytest.mark.parametrize("ties", [False, True], ids=["distinct", "ties"])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_maxpool2d_forward(be, shape, ties):
    x, y, sw, _, _ = inputs(shape, ties)
    for v in POOL_LADDER["maxpool2d_forward"]:
        got_y, got_sw = be.maxpool2d_forward(*dev(be, x), shape[-1], version=v)
        assert got_sw.dtype == np.int32
        assert_op_close("maxpool2d_forward", be.to_host(got_y), y)
        assert_op_close("maxpool2d_forward", be.to_host(got_sw), sw)


@pytest.mark.parametrize("version", POOL_LADDER["maxpool2d_backward"])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_maxpool2d_backward(be, shape, version):
    x, _, sw, dy, _ = inputs(shape, ties=True)
    hw = x.shape[2:]
    expect = ref.maxpool2d_backward(dy, sw, hw, version="naive")
    got = be.maxpool2d_backward(*dev(be, dy, sw), hw, version=version)
    assert_op_close("maxpool2d_backward", be.to_host(got), expect)


@pytest.mark.parametrize("version", POOL_LADDER["unpool2d_forward"])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_unpool2d_forward(be, shape, version):
    x, y, sw, _, _ = inputs(shape, ties=False)
    hw = x.shape[2:]
    expect = ref.unpool2d_forward(y, sw, hw, version="naive")
    got = be.unpool2d_forward(*dev(be, y, sw), hw, version=version)
    assert_op_close("unpool2d_forward", be.to_host(got), expect)


@pytest.mark.parametrize("version", POOL_LADDER["unpool2d_backward"])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_unpool2d_backward(be, shape, version):
    _, _, sw, _, dx = inputs(shape, ties=False)
    expect = ref.unpool2d_backward(dx, sw, version="naive")
    got = be.unpool2d_backward(*dev(be, dx, sw), version=version)
    assert_op_close("unpool2d_backward", be.to_host(got), expect)


def test_versions_and_defaults(be):
    check_ladder(be, POOL_LADDER)


@pytest.mark.emulator
def test_emulated_backend_checks_switch_range():
    be = get_backend("cupy", emulate=True)
    bad = np.full((1, 1, 2, 2), 16, np.int32)
    with pytest.raises(ValueError, match=r"switches hold flat in-plane indices in \[16, 16\]"):
        be.unpool2d_forward(np.zeros((1, 1, 2, 2), np.float32), bad, (4, 4))
