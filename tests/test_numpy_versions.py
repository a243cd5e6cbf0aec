"""Every rung of the NumPy version ladders (``im2col``/``argmax`` and the default ``fast``,
with both of its GEMM plans) against the ``naive`` definition, including batch sizes that
split unevenly over the worker threads of ``kernels/numpy_threads.py``."""
import numpy as np
import pytest

from kernels import numpy_threads
from kernels.conv2d import numpy_ops as conv_ops
from kernels.pool2d import numpy_ops as pool_ops
from kernels.testing import assert_op_close

# (N, C, H, W, F, KH, KW): the first two take the rows plan (plane < column), the others
# the plane plan; N=5 splits unevenly over 2 or 4 threads.
CONV_SHAPES = [(5, 6, 6, 5, 4, 3, 3), (3, 4, 4, 4, 3, 4, 4), (5, 1, 9, 11, 5, 5, 5),
               (2, 2, 10, 9, 3, 2, 3)]


@pytest.fixture(params=[1, 3], ids=["1thread", "3threads"])
def threads(request, monkeypatch):
    monkeypatch.setenv("SCAE_NP_THREADS", str(request.param))
    monkeypatch.setattr(numpy_threads, "MIN_PARALLEL_ELEMENTS", 0)
    return request.param


@pytest.mark.parametrize("version", ["im2col", "fast", "dft"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", CONV_SHAPES, ids=str)
def test_conv_versions_match_naive(shape, dtype, version, threads, rng):
    n, c, h, w_, f, kh, kw = shape
    x = rng.standard_normal((n, c, h, w_)).astype(dtype)
    w = rng.standard_normal((f, c, kh, kw)).astype(dtype)
    b = rng.standard_normal(f).astype(dtype)
    dy = rng.standard_normal((n, f, h - kh + 1, w_ - kw + 1)).astype(dtype)
    for op, args in (("conv2d_forward", (x, w, b)), ("conv2d_backward_input", (dy, w)),
                     ("conv2d_backward_weight", (x, dy)), ("conv2d_backward_bias", (dy,))):
        got = conv_ops.VERSIONS[op][version](*args)
        assert got.dtype == dtype and got.flags.c_contiguous
        assert_op_close(op, got, conv_ops.VERSIONS[op]["naive"](*args), *args,
                        mixed=version == "dft")


def test_both_plans_are_covered():
    plans = {conv_ops._plane_plan(c, kh, kw, h - kh + 1, w_ - kw + 1)
             for (_, c, h, w_, _, kh, kw) in CONV_SHAPES}
    assert plans == {True, False}


def test_fast_takes_the_dft_plan_at_the_paper_conv2_only():
    """The paper's conv2 (and CIFAR's) take the transform plan; conv1 and conv3 do not."""
    assert conv_ops._dft_plan(128, 100, 150, 12, 12, 5, 5)
    assert conv_ops._dft_plan(128, 100, 150, 14, 14, 5, 5)
    assert not conv_ops._dft_plan(128, 1, 100, 28, 28, 5, 5)
    assert not conv_ops._dft_plan(128, 150, 200, 4, 4, 3, 3)


DFT_SHAPE = (32, 100, 12, 12, 150, 5, 5)        # N, C, H, W, F, KH, KW: a dft-plan shape


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_fast_keeps_non_finite_values_local(bad, rng):
    """At a dft-plan shape ``fast`` matches the GEMM plan, and for NaN/Inf input it falls
    back to it: non-finite outputs stay where the definition puts them (the transform would
    spread them over the whole image)."""
    n, c, h, w_, f, kh, kw = DFT_SHAPE
    assert conv_ops._dft_plan(n, c, f, h, w_, kh, kw)
    x = rng.standard_normal((n, c, h, w_)).astype(np.float32)
    w = (0.05 * rng.standard_normal((f, c, kh, kw))).astype(np.float32)
    b = rng.standard_normal(f).astype(np.float32)
    dy = rng.standard_normal((n, f, h - kh + 1, w_ - kw + 1)).astype(np.float32)
    calls = (("conv2d_forward", (x, w, b)), ("conv2d_backward_input", (dy, w)),
             ("conv2d_backward_weight", (x, dy)))
    for op, args in calls:
        assert_op_close(op, conv_ops.VERSIONS[op]["fast"](*args),
                        conv_ops.VERSIONS[op]["im2col"](*args), *args, mixed=True)
    x[3, 5, 2, 7] = bad
    dy[1, 4, 0, 3] = bad
    for op, args in calls:
        got = conv_ops.VERSIONS[op]["fast"](*args)
        want = conv_ops.VERSIONS[op]["im2col"](*args)
        assert (~np.isfinite(want)).any() and not (~np.isfinite(want)).all()
        np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
        np.testing.assert_array_equal(np.isinf(got), np.isinf(want))
        ok = np.isfinite(want)
        np.testing.assert_allclose(got[ok], want[ok], rtol=1e-4, atol=1e-4)


def test_scratch_is_not_returned(rng):
    """Two calls must not share output memory (scratch buffers stay internal)."""
    x = rng.standard_normal((2, 8, 6, 6)).astype(np.float32)
    w = rng.standard_normal((3, 8, 3, 3)).astype(np.float32)
    b = np.zeros(3, np.float32)
    y1 = conv_ops.conv2d_forward_fast(x, w, b)
    y1c = y1.copy()
    conv_ops.conv2d_forward_fast(2 * x, w, b)
    np.testing.assert_array_equal(y1, y1c)


@pytest.mark.parametrize("version", ["argmax", "fast"])
@pytest.mark.parametrize("shape", [(5, 3, 7, 5, 2), (3, 2, 9, 9, 3), (5, 1, 6, 11, 2),
                                   (2, 2, 5, 5, 1)], ids=str)
def test_pool_versions_match_naive(shape, version, threads, rng):
    n, c, h, w, k = shape
    x = rng.standard_normal((n, c, h, w)).astype(np.float32)
    y, sw = pool_ops.VERSIONS["maxpool2d_forward"][version](x, k)
    yn, swn = pool_ops.maxpool2d_forward_naive(x, k)
    assert_op_close("maxpool2d_forward", y, yn)
    assert_op_close("maxpool2d_forward", sw, swn)
    assert sw.dtype == np.int32
    dy = rng.standard_normal(y.shape).astype(np.float32)
    for op, args in (("maxpool2d_backward", (dy, swn, (h, w))),
                     ("unpool2d_forward", (dy, swn, (h, w))),
                     ("unpool2d_backward", (x, swn))):
        assert_op_close(op, pool_ops.VERSIONS[op][version](*args),
                        pool_ops.VERSIONS[op]["naive"](*args))


def test_pool_fast_ties_first_in_row_major_order():
    """Ties across rows and columns of a window: the first in row-major order wins."""
    x = np.array([[[[0., 5.], [5., 5.]]], [[[1., 2.], [7., 7.]]],
                  [[[3., 3.], [3., 1.]]], [[[0., 4.], [4., 0.]]]], dtype=np.float32)
    y, sw = pool_ops.maxpool2d_forward_fast(x, 2)
    assert y.ravel().tolist() == [5, 7, 3, 4]
    assert sw.ravel().tolist() == [1, 2, 0, 1]
