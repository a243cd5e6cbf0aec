"""Max-pooling with switches and unpooling, numba backend: every kernel version against the
NumPy reference (exact equality), in numba's CUDA simulator (marker ``simulator``, default
tier) and on a GPU (``gpu``; run ``SCAE_NP_GPU_TESTS=1 pytest -m gpu`` on a GPU machine).

Shapes: planes that do not divide by k (remainder rows/columns), k = 1, 2, 3, and planes
where several k give the same pooled size (H=8 -> 2 for k=3 and k=4; H=5 -> 1 for k=3..5),
which exercise the gathers' [kmin, kmax] window bracket. The paper's pooling layers
(100x24x24 and 150x8x8 maps, k=2) run in the simulator at batch 1 with 3 channels: the
simulator runs one Python thread per CUDA thread (57,600 threads for the full 100x24x24
gather take minutes on this 2-core machine), and channels are independent planes, so 3 of
them exercise every index path; the full-size layers run under ``slow`` in the simulator
and at batch 8 on a GPU.
"""
import numpy as np
import pytest

from kernels import get_backend
from kernels.testing import assert_op_close, distinct_values

from gpu_ladders import POOL_LADDER, check_ladder
from numba_backends import GPU, KINDS, SIM, SIM_SLOW_TIER, numba_backend, tier_params

ref = get_backend("numpy")

# (N, C, H, W, k)
ODD = {
    "2x3x7x9_k2": (2, 3, 7, 9, 2),
    "1x2x9x10_k3": (1, 2, 9, 10, 3),
    "1x2x8x8_k3_ambiguous": (1, 2, 8, 8, 3),       # 8//3 == 8//4 == 2
    "2x1x5x5_k5_ambiguous": (2, 1, 5, 5, 5),       # 5//k == 1 for k = 3, 4, 5
    "1x2x3x4_k1": (1, 2, 3, 4, 1),
}
PAPER = {   # name -> (full size at batch 1, simulator slice)
    "pool1_100x24x24_k2": ((1, 100, 24, 24, 2), (1, 3, 24, 24, 2)),
    "pool2_150x8x8_k2": ((1, 150, 8, 8, 2), (1, 3, 8, 8, 2)),
}


def _cases(shapes):
    return [pytest.param(op, v, shape, id=f"{op}-{v}-{name}")
            for op, versions in POOL_LADDER.items() for v in versions
            for name, shape in shapes.items()]


def check_version(be, op, version, shape, rng, ties=False):
    n, c, h, w, k = shape
    if ties:     # small integers: many ties inside each window
        x = rng.integers(0, 3, size=(n, c, h, w)).astype(np.float32)
    else:
        x = distinct_values(rng, (n, c, h, w), dtype=np.float32)
    y_ref, sw_ref = ref.maxpool2d_forward(x, k)
    d = be.to_device
    if op == "maxpool2d_forward":
        y, sw = be.maxpool2d_forward(d(x), k, version=version)
        y, sw = be.to_host(y), be.to_host(sw)
        assert sw.dtype == np.int32
        assert_op_close(op, y, y_ref)
        assert_op_close(op, sw, sw_ref)
        return
    if op in ("maxpool2d_backward", "unpool2d_forward"):
        v = rng.standard_normal(y_ref.shape).astype(np.float32)
        out = getattr(be, op)(d(v), d(sw_ref), (h, w), version=version)
        expected = getattr(ref, op)(v, sw_ref, (h, w))
    else:   # unpool2d_backward
        dx = rng.standard_normal((n, c, h, w)).astype(np.float32)
        out = be.unpool2d_backward(d(dx), d(sw_ref), version=version)
        expected = ref.unpool2d_backward(dx, sw_ref)
    out = be.to_host(out)
    assert out.dtype == np.float32
    assert_op_close(op, out, expected)


@pytest.mark.parametrize("kind", KINDS)
def test_version_ladder(kind):
    check_ladder(numba_backend(kind), POOL_LADDER)


@pytest.mark.parametrize("op,version,shape", _cases(ODD))
@pytest.mark.parametrize("kind", KINDS)
def test_odd_shapes(kind, op, version, shape, rng):
    check_version(numba_backend(kind), op, version, shape, rng)


@pytest.mark.parametrize("op,version,shape", _cases({"ties_2x2x6x7_k2": (2, 2, 6, 7, 2),
                                                     "ties_1x1x9x9_k3": (1, 1, 9, 9, 3)}))
@pytest.mark.parametrize("kind", KINDS)
def test_ties_go_to_first_in_window(kind, op, version, shape, rng):
    """Many equal values per window: switches must name the first maximum in row-major
    window order, exactly as the NumPy reference does, and the switch-driven ops follow."""
    check_version(numba_backend(kind), op, version, shape, rng, ties=True)


_SLICED = _cases({k: v[1] for k, v in PAPER.items()})


@pytest.mark.parametrize("kind,op,version,shape", tier_params(
    ("sliced", "sim", _SLICED, SIM), ("sliced", "gpu", _SLICED, GPU),
    ("full", "sim", _cases({k: v[0] for k, v in PAPER.items()}), SIM_SLOW_TIER),
    ("full", "gpu", _cases({k: (8,) + v[0][1:] for k, v in PAPER.items()}), GPU)))
def test_paper_layers(kind, op, version, shape, rng):
    """The paper's pooling layers: sliced in the default tier; whole at batch 1 in the slow
    simulator tier and at batch 8 on a GPU."""
    check_version(numba_backend(kind), op, version, shape, rng)


@pytest.mark.parametrize("kind", KINDS)
def test_switch_range_checked_in_simulator(kind):
    be = numba_backend(kind)
    if not be.emulated:
        pytest.skip("on the GPU the switch range check is skipped by design (no sync per call)")
    v = np.ones((1, 1, 2, 2), np.float32)
    sw = np.full((1, 1, 2, 2), 16, np.int32)       # a 4x4 plane has indices 0..15
    with pytest.raises(ValueError, match="switches hold flat in-plane indices"):
        be.unpool2d_forward(v, sw, (4, 4))
