"""Convolution, cupy backend: every version of every CUDA C kernel against the NumPy reference.

Each test runs twice: ``emulator`` (the .cu files compiled by g++ and run by the CPU emulator,
default tier, no GPU needed) and ``gpu`` (the same launches through CuPy on a real device;
skipped with the reason where there is none). References are NumPy in float64, computed on
the same float32 inputs; ``assert_op_close`` allows float32 summation error only.
"""
import sys

import numpy as np
import pytest

from kernels import get_backend
from kernels import cupy_backend
from kernels.testing import CONV_OPS, assert_op_close

from gpu_ladders import CONV_LADDER, check_ladder

ref = get_backend("numpy")


@pytest.fixture(scope="module")
def be(cupy_be):
    """The cupy backend on the emulator, and on a GPU (tests/conftest.py: cupy_be)."""
    return cupy_be


# (N, C, H, W, F, KH, KW). None is a multiple of the 16x16 tiles, the 64x64 GEMM tiles, the
# GEMM K step of 8 or the 256-position chunks: every kernel meets partial tiles and chunks.
SMALL = [
    (2, 3, 19, 21, 5, 3, 4),     # several 16x16 tiles, non-square kernel
    (2, 5, 13, 11, 70, 3, 3),    # F=70: two GEMM column tiles; M=198, K=45
    (1, 67, 6, 5, 3, 2, 2),      # C=67: two GEMM tiles in backward_input; K=268
    (3, 2, 17, 18, 4, 3, 3),     # R=720 positions: three atomic chunks, the last partial
    (1, 4, 4, 4, 3, 4, 4),       # kernel == input: a 1x1 output
    (2, 1, 5, 9, 1, 1, 1),       # 1x1 kernel, one filter
]
# The paper's layers (Masci et al. 2011) at batch 1: MNIST 1->100 5x5 on 28x28,
# 100->150 5x5 on 12x12, 150->200 3x3 on 4x4; CIFAR 3->100 5x5 on 32x32,
# 100->150 5x5 on 14x14, 150->200 3x3 on 5x5.
PAPER_MNIST = [(1, 1, 28, 28, 100, 5, 5), (1, 100, 12, 12, 150, 5, 5), (1, 150, 4, 4, 200, 3, 3)]
PAPER_CIFAR = [(1, 3, 32, 32, 100, 5, 5), (1, 100, 14, 14, 150, 5, 5), (1, 150, 5, 5, 200, 3, 3)]

_cache = {}


def case(shape, small=None):
    """float32 inputs and float64 NumPy references for all four ops (computed once per shape).
    The reference is the NumPy loop definition (``naive``) on small shapes, im2col (``fast``)
    on the paper's layers, where the loops would take minutes."""
    if shape not in _cache:
        n, c, h, w_, f, kh, kw = shape
        rng = np.random.default_rng(sum(shape) * 7919 + len(_cache))
        x = rng.standard_normal((n, c, h, w_)).astype(np.float32)
        w = rng.standard_normal((f, c, kh, kw)).astype(np.float32)
        b = rng.standard_normal(f).astype(np.float32)
        dy = rng.standard_normal((n, f, h - kh + 1, w_ - kw + 1)).astype(np.float32)
        x64, w64, b64, dy64 = (a.astype(np.float64) for a in (x, w, b, dy))
        small = shape in SMALL if small is None else small
        ver = "naive" if small else "fast"       # the loop definition where it is affordable
        args32 = {"conv2d_forward": (x, w, b), "conv2d_backward_input": (dy, w),
                  "conv2d_backward_weight": (x, dy), "conv2d_backward_bias": (dy,)}
        args64 = {"conv2d_forward": (x64, w64, b64), "conv2d_backward_input": (dy64, w64),
                  "conv2d_backward_weight": (x64, dy64), "conv2d_backward_bias": (dy64,)}
        expect = {op: getattr(ref, op)(*args64[op], version=ver) for op in CONV_OPS}
        _cache[shape] = (args32, args64, expect)
    return _cache[shape]


def check(be, op, version, shape, small=None):
    args32, args64, expect = case(shape, small)
    dev = [be.to_device(a) for a in args32[op]]
    out = getattr(be, op)(*dev, version=version)
    assert out.dtype == np.float32 and out.flags.c_contiguous
    assert_op_close(op, be.to_host(out), expect[op], *args64[op], dtype=np.float32)


VERSIONS = [(op, v) for op, versions in CONV_LADDER.items() for v in versions]


@pytest.mark.parametrize("op, version", VERSIONS, ids=lambda p: p if isinstance(p, str) else None)
@pytest.mark.parametrize("shape", SMALL, ids=str)
def test_small_shapes(be, op, version, shape):
    check(be, op, version, shape)


@pytest.mark.parametrize("op, version", VERSIONS)
@pytest.mark.parametrize("shape", PAPER_MNIST, ids=str)
def test_paper_mnist_layers(be, op, version, shape):
    check(be, op, version, shape)


@pytest.mark.parametrize("op, version", VERSIONS)
@pytest.mark.parametrize("shape", PAPER_CIFAR, ids=str)
def test_paper_cifar_layers(be, op, version, shape):
    check(be, op, version, shape)


@pytest.mark.slow
@pytest.mark.parametrize("op, version", VERSIONS)
@pytest.mark.parametrize("shape", [(4,) + s[1:] for s in PAPER_MNIST], ids=str)
def test_paper_mnist_layers_batch4(be, op, version, shape):
    check(be, op, version, shape)


def test_versions_and_defaults(be):
    check_ladder(be, CONV_LADDER)
    # the plain call runs the default version
    shape = SMALL[0]
    args32, args64, expect = case(shape)
    out = be.conv2d_forward(*[be.to_device(a) for a in args32["conv2d_forward"]])
    assert_op_close("conv2d_forward", be.to_host(out), expect["conv2d_forward"],
                    *args64["conv2d_forward"], dtype=np.float32)


def test_float64_is_refused_with_the_fix(be):
    x = be.to_device(np.zeros((1, 1, 3, 3)))
    w = be.to_device(np.zeros((1, 1, 2, 2)))
    with pytest.raises(TypeError, match=r"computes in float32.*x has dtype float64.*astype"):
        be.conv2d_forward(x, w, be.to_device(np.zeros(1)))


def test_deterministic_versions_repeat_bitwise(be):
    """naive, reduce, warp and implicit_gemm weight/bias gradients give the same bits every
    run; warp adds in reduce's tree order, so the two weight gradients agree bitwise."""
    args32, _, _ = case(SMALL[3])
    x, dy = (be.to_device(a) for a in args32["conv2d_backward_weight"])
    for v in ("naive", "reduce", "warp", "implicit_gemm"):
        a = be.to_host(be.conv2d_backward_weight(x, dy, version=v))
        b = be.to_host(be.conv2d_backward_weight(x, dy, version=v))
        assert np.array_equal(a, b), v
    assert np.array_equal(be.to_host(be.conv2d_backward_weight(x, dy, version="warp")),
                          be.to_host(be.conv2d_backward_weight(x, dy, version="reduce")))
    for v in ("naive", "reduce", "warp"):
        assert np.array_equal(be.to_host(be.conv2d_backward_bias(dy, version=v)),
                              be.to_host(be.conv2d_backward_bias(dy, version=v)))


def test_tiled_splits_batches_beyond_grid_z(be, monkeypatch):
    """The tiled kernels put N*F (N*C) planes on grid.z <= 65535; bigger batches are launched
    in slices. Shrink the limit to exercise the slicing on a small problem."""
    monkeypatch.setattr(cupy_backend, "GRID_YZ_MAX", 7)
    assert cupy_backend._batch_chunks(5, 3) == [(0, 2), (2, 4), (4, 5)]
    shape = (5, 3, 9, 8, 3, 3, 2)
    check(be, "conv2d_forward", "tiled", shape, small=True)
    check(be, "conv2d_backward_input", "tiled", shape, small=True)


def test_int32_overflow_is_refused():
    with pytest.raises(ValueError, match=r"y has 2147483648 elements.*split the batch \(N = 8\)"):
        cupy_backend._check_int32(8, y=2**31)
    # one image too large: splitting the batch cannot help, and the message must not say so
    for n, size in ((1, 2**31), (2, 2**33)):
        with pytest.raises(ValueError, match="even one image is too large") as e:
            cupy_backend._check_int32(n, y=size)
        assert "split" not in str(e.value)
    with pytest.raises(ValueError, match="even one image"):
        cupy_backend._check_int32(4, w=2**31)     # the filters do not shrink with the batch


def test_emulated_backend_is_numpy_based():
    be = get_backend("cupy", emulate=True)
    assert be.emulated and be.xp is np and be.array_types == (np.ndarray,)
    assert "emulated" in repr(be)
    with pytest.raises(TypeError, match=r"x must be a numpy.ndarray.*numpy.asarray"):
        be.conv2d_forward([[1.0]], np.zeros((1, 1, 1, 1), np.float32), np.zeros(1, np.float32))


@pytest.mark.emulator
def test_gpu_code_path_with_a_stand_in_cupy(monkeypatch):
    """The non-emulated branch of CupyBackend (module loading with NVRTC options, device
    arrays, launches) run without a GPU: a stand-in ``cupy`` module whose RawModule compiles
    the code it is given with the emulator. Checks the exact RawModule/RawKernel calls."""
    import types

    from kernels.emulator import EmuModule

    calls = []

    class RawModule:
        def __init__(self, code=None, options=()):
            calls.append(("RawModule", options))
            self._mod = EmuModule(code=code)

        def get_function(self, name):
            k = self._mod.get_function(name)

            def launch(grid, block, args, shared_mem=0):
                calls.append((name, grid, block, shared_mem))
                assert isinstance(grid, tuple) and isinstance(block, tuple)
                assert all(isinstance(a, (np.ndarray, np.int32, np.float32)) for a in args)
                k(grid, block, args, shared_mem=shared_mem)
            return launch

    fake = types.ModuleType("cupy")
    fake.ndarray = np.ndarray
    fake.asarray, fake.asnumpy = np.asarray, np.asarray
    fake.empty, fake.zeros = np.empty, np.zeros
    fake.RawModule = RawModule
    fake.cuda = types.SimpleNamespace(
        runtime=types.SimpleNamespace(getDeviceCount=lambda: 1),
        get_current_stream=lambda: types.SimpleNamespace(synchronize=lambda: None))
    monkeypatch.setitem(sys.modules, "cupy", fake)
    be = get_backend("cupy")
    assert not be.emulated and be.xp is fake
    args32, args64, expect = case(SMALL[0])
    x, w, b = (be.to_device(a) for a in args32["conv2d_forward"])
    y = be.conv2d_forward(x, w, b, version="tiled")
    be.synchronize()
    assert_op_close("conv2d_forward", be.to_host(y), expect["conv2d_forward"],
                    *args64["conv2d_forward"], dtype=np.float32)
    n, c, h, w_, f, kh, kw = SMALL[0]
    assert calls == [("RawModule", ("-std=c++17",)),
                     ("conv2d_forward_tiled", (2, 2, n * f), (16, 16),
                      ((16 + kh - 1) * (16 + kw - 1) + kh * kw) * 4)]
