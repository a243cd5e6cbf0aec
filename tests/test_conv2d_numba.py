"""Convolution, numba backend: every kernel version of every op against the NumPy reference,
in numba's CUDA simulator (marker ``simulator``, default tier) and on a GPU (``gpu``).

Run:  ``pytest tests/test_conv2d_numba.py`` (simulator; no GPU needed) --
``SCAE_NP_GPU_TESTS=1 pytest -m gpu tests/test_conv2d_numba.py`` on a GPU machine --
``pytest -m "slow and simulator" tests/test_conv2d_numba.py`` for the full-size layers in
the simulator (tens of minutes).

The reference is the NumPy backend's ``fast`` op in float64 on the same float32 inputs;
``kernels.testing.assert_op_close`` allows 8*sqrt(T)*eps32 times the sum of |terms|.

Why the paper's layers are sliced in the simulator: the simulator runs every CUDA thread as
a Python thread and every ``syncthreads`` costs ~20-70 ms for a 256-thread block on this
2-core machine, so its cost is (threads x kernel-loop length) + (blocks x barriers). The
layers of the paper (Masci et al. 2011: MNIST 1->100 5x5 on 28x28, 100->150 5x5 on 12x12,
150->200 3x3 on 4x4; CIFAR 3->100 5x5 on 32x32, 100->150 5x5 on 14x14, 150->200 3x3 on 5x5)
keep their spatial size and kernel size -- what decides the tiling, the halos, the GEMM M
and the tile remainders -- but run at batch 1 with 1-3 filters and channels (the GEMM tests
that need several column blocks have their own shapes with F or C = 70); the few GEMM cases
still too slow for the default tier are listed in ``SIM_SLOW`` and run under ``slow``, with
a wider slice (batch 2, 8 filters, 8 channels: ~10 min). The full-size layers do not run in
the simulator: the 150x100x5x5 weight gradient alone is 375,000 outputs, i.e. 47,000 blocks
of the ``reduce`` version, ~280,000 simulated barriers -- hours. They run on a GPU (``gpu``
tier, batch 2).
"""
import numpy as np
import pytest

from kernels import get_backend
from kernels.testing import assert_op_close

from gpu_ladders import CONV_LADDER, check_ladder
from numba_backends import GPU, KINDS, SIM, SIM_SLOW_TIER, numba_backend, tier_params

ref = get_backend("numpy")

#: The version ladder the CUDA C backend shares (written out in tests/gpu_ladders.py); a test
#: checks the backend has exactly these, so no version can go untested.
LADDER = CONV_LADDER

# (N, C, H, W, F, KH, KW)
ODD = {
    # tiny, non-square kernel, N=2: every index decode, remainders of every tile
    "odd_2x3x7x6_f4_k3x2": (2, 3, 7, 6, 4, 3, 2),
    # OH=OW=17: 2x2 tiles of 16 with a 1-wide remainder; GEMM M=289 = 4*64 + 33
    "odd_1x1x19x18_f2_k3x2": (1, 1, 19, 18, 2, 3, 2),
    # kernel == input (1x1 output), N=3, C=F=1
    "odd_3x1x5x5_f1_k5x5": (3, 1, 5, 5, 1, 5, 5),
}
# Several GEMM column blocks (64 + 6): F=70 for the forward GEMM (N=F) and the weight GEMM
# (M=F); C=70 for the input GEMM (N=C) and the weight GEMM (N=C*KH*KW=280). Run by the
# implicit_gemm and splitk versions only: the one-block-per-plane versions would pay 70x in
# the simulator for nothing new.
GEMM_WIDE = {
    "gemm_f70": (1, 3, 4, 5, 70, 2, 2),
    "gemm_c70": (1, 70, 4, 5, 3, 2, 2),
}
# The paper's layers: name -> (full shape at batch 1, `slow` simulator slice, default
# simulator slice). Spatial and kernel sizes are always the paper's.


def _paper_layer(c, hw, f, k, sim_cf):
    """(N, C, H, W, F, KH, KW) of a paper layer at batch 1; the slow tier's slice (batch 2, at
    most 8 channels and filters); the default tier's (batch 1, ``sim_cf`` = (C, F))."""
    return ((1, c, hw, hw, f, k, k), (2, min(c, 8), hw, hw, min(f, 8), k, k),
            (1, sim_cf[0], hw, hw, sim_cf[1], k, k))


PAPER = {
    "mnist1_1to100_5x5_28": _paper_layer(1, 28, 100, 5, (1, 2)),
    "mnist2_100to150_5x5_12": _paper_layer(100, 12, 150, 5, (2, 1)),
    "mnist3_150to200_3x3_4": _paper_layer(150, 4, 200, 3, (2, 2)),
    "cifar1_3to100_5x5_32": _paper_layer(3, 32, 100, 5, (3, 1)),
    "cifar2_100to150_5x5_14": _paper_layer(100, 14, 150, 5, (2, 1)),
    "cifar3_150to200_3x3_5": _paper_layer(150, 5, 200, 3, (2, 2)),
}

# (op, version, shape name) too slow for the default simulator tier (measured 5-30 s each on
# this machine): they run under `slow`. Why they cost so much in the simulator: the weight
# GEMM walks K = N*OH*OW (289 .. 784) in steps of 8 with 2 barriers per step, and the
# forward/input GEMMs on the 28x28 and 32x32 planes need 13-16 blocks of 256 threads. What
# they test is covered in the default tier by the same kernels on the other shapes (every
# tile remainder, several M and N blocks, K not a multiple of 8).
# The split-K versions (splitk) run the same tiles over slices of K in more blocks, so the
# same cases are slow for them (measured 3-34 s each): they are listed for both.
SIM_SLOW = {(op, v, name) for v in ("implicit_gemm", "splitk") for op, name in (
    ("conv2d_backward_weight", "odd_1x1x19x18_f2_k3x2"),
    ("conv2d_forward", "mnist1_1to100_5x5_28"),
    ("conv2d_forward", "cifar1_3to100_5x5_32"),
    ("conv2d_backward_input", "mnist1_1to100_5x5_28"),
    ("conv2d_backward_input", "cifar1_3to100_5x5_32"),
    ("conv2d_backward_weight", "mnist1_1to100_5x5_28"),
    ("conv2d_backward_weight", "cifar1_3to100_5x5_32"),
    ("conv2d_backward_weight", "cifar2_100to150_5x5_14"),
)} | {(op, "splitk", name) for op, name in (     # 8-12 s each loaded; the same tile function
    ("conv2d_forward", "cifar2_100to150_5x5_14"),  # runs there as implicit_gemm, and splitk at
    ("conv2d_backward_input", "cifar2_100to150_5x5_14"),   # odd shapes and in test_splitk.py
    ("conv2d_backward_input", "mnist2_100to150_5x5_12"),
)}


def _cases(shapes, gemm_extra=None, sim_slow=()):
    out = []

    def add(op, v, name, shape):
        marks = [pytest.mark.slow] if (op, v, name) in sim_slow else []
        out.append(pytest.param(op, v, shape, id=f"{op}-{v}-{name}", marks=marks))

    for op, versions in LADDER.items():
        for v in versions:
            for name, shape in shapes.items():
                add(op, v, name, shape)
            if gemm_extra and v in ("implicit_gemm", "splitk"):
                for name, shape in gemm_extra.items():
                    if op == "conv2d_backward_input" and shape[4] == 70:
                        continue        # F=70 widens only K here: nothing new for dx
                    if op == "conv2d_forward" and shape[1] == 70:
                        continue        # C=70 widens only K here
                    add(op, v, name, shape)
    return out


def _inputs(rng, op, shape):
    n, c, h, w_, f, kh, kw = shape
    oh, ow = h - kh + 1, w_ - kw + 1
    x = rng.standard_normal((n, c, h, w_)).astype(np.float32)
    w = rng.standard_normal((f, c, kh, kw)).astype(np.float32)
    b = rng.standard_normal(f).astype(np.float32)
    dy = rng.standard_normal((n, f, oh, ow)).astype(np.float32)
    return {"conv2d_forward": (x, w, b), "conv2d_backward_input": (dy, w),
            "conv2d_backward_weight": (x, dy), "conv2d_backward_bias": (dy,)}[op]


def check_version(be, op, version, shape, rng):
    args = _inputs(rng, op, shape)
    out = be.to_host(getattr(be, op)(*[be.to_device(a) for a in args], version=version))
    args64 = [a.astype(np.float64) for a in args]
    expected = getattr(ref, op)(*args64)
    assert out.dtype == np.float32 and out.shape == expected.shape
    assert_op_close(op, out, expected, *args64, dtype=np.float32)


@pytest.mark.parametrize("kind", KINDS)
def test_version_ladder(kind):
    check_ladder(numba_backend(kind), CONV_LADDER)


@pytest.mark.parametrize("op,version,shape", _cases(ODD, GEMM_WIDE, SIM_SLOW))
@pytest.mark.parametrize("kind", KINDS)
def test_odd_shapes(kind, op, version, shape, rng):
    check_version(numba_backend(kind), op, version, shape, rng)


_SLICED = _cases({k: v[2] for k, v in PAPER.items()}, sim_slow=SIM_SLOW)


@pytest.mark.parametrize("kind,op,version,shape", tier_params(
    ("sliced", "sim", _SLICED, SIM), ("sliced", "gpu", _SLICED, GPU),
    ("wider", "sim", _cases({k: v[1] for k, v in PAPER.items()}), SIM_SLOW_TIER),
    ("full", "gpu", _cases({k: (2,) + v[0][1:] for k, v in PAPER.items()}), GPU)))
def test_paper_layers(kind, op, version, shape, rng):
    """The paper's layers (spatial and kernel sizes always the paper's): sliced to 1-3
    channels and filters in the default tier; batch 2, 8 filters and 8 channels (the
    layer's own C when smaller) in the slow simulator tier; whole at batch 2 on a GPU."""
    check_version(numba_backend(kind), op, version, shape, rng)


@pytest.mark.parametrize("version", ["naive", "reduce", "warp", "implicit_gemm"])
@pytest.mark.parametrize("kind", KINDS)
def test_weight_gradient_deterministic(kind, version, rng):
    """The versions documented as deterministic give the same bits on every run."""
    be = numba_backend(kind)
    x, dy = (be.to_device(a) for a in _inputs(rng, "conv2d_backward_weight", (1, 2, 5, 6, 2, 3, 2)))
    a = be.to_host(be.conv2d_backward_weight(x, dy, version=version))
    b = be.to_host(be.conv2d_backward_weight(x, dy, version=version))
    assert np.array_equal(a, b)


@pytest.mark.parametrize("kind", KINDS)
def test_weight_gradient_warp_equals_reduce_bitwise(kind, rng):
    """The warp version adds the T partial sums in reduce's tree order (shuffles instead of
    shared memory): the same bits, here with T = 4 (R = 30) and T = 32 (R = 289)."""
    be = numba_backend(kind)
    for shape in ((2, 3, 7, 6, 4, 3, 2), (1, 1, 19, 18, 2, 3, 2)):
        x, dy = (be.to_device(a) for a in _inputs(rng, "conv2d_backward_weight", shape))
        a = be.to_host(be.conv2d_backward_weight(x, dy, version="warp"))
        b = be.to_host(be.conv2d_backward_weight(x, dy, version="reduce"))
        assert np.array_equal(a, b), shape


@pytest.mark.parametrize("kind", KINDS)
def test_float32_only(kind):
    be = numba_backend(kind)
    x = be.to_device(np.zeros((1, 1, 4, 4)))                 # float64
    w = be.to_device(np.zeros((1, 1, 2, 2)))
    with pytest.raises(TypeError, match="float32"):
        be.conv2d_forward(x, w, be.to_device(np.zeros(1)))
