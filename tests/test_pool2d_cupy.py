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


SWITCH_OPS = [pytest.param(op, v, id=f"{op}-{v}")
              for op in ("maxpool2d_backward", "unpool2d_forward", "unpool2d_backward")
              for v in POOL_LADDER[op]]


@pytest.mark.parametrize("op, version", SWITCH_OPS)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_switch_driven_ops(be, shape, op, version):
    """The three ops the switches drive, each against the NumPy loops: the backward pass on
    switches of a tie-rich input, the unpooling pair on switches of distinct values."""
    x, _, sw, dy, dx = inputs(shape, ties=(op == "maxpool2d_backward"))
    if op == "unpool2d_backward":
        args, hw = (dx, sw), ()
    else:           # maxpool2d_backward(dy, sw, hw), unpool2d_forward(y, sw, hw)
        args, hw = (dy, sw), (x.shape[2:],)
    expect = getattr(ref, op)(*args, *hw, version="naive")
    got = getattr(be, op)(*dev(be, *args), *hw, version=version)
    assert_op_close(op, be.to_host(got), expect)


def test_versions_and_defaults(be):
    check_ladder(be, POOL_LADDER)


@pytest.mark.emulator
def test_emulated_backend_checks_switch_range():
    be = get_backend("cupy", emulate=True)
    bad = np.full((1, 1, 2, 2), 16, np.int32)
    with pytest.raises(ValueError, match=r"switches hold flat in-plane indices in \[16, 16\]"):
        be.unpool2d_forward(np.zeros((1, 1, 2, 2), np.float32), bad, (4, 4))
