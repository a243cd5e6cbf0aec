"""Convolution, NumPy backend: ``fast`` against the ``naive`` definition, the contract's
adjointness, finite-difference gradient checks, and PyTorch as an outside oracle."""
import numpy as np
import pytest

from kernels import get_backend
from kernels.testing import (assert_gradient_close, assert_op_close, numerical_gradient)

be = get_backend("numpy")

# (N, C, H, W, F, KH, KW): odd sizes, N=1, C=1, non-square kernels, kernel == input.
SHAPES = [
    (1, 1, 5, 5, 1, 3, 3),
    (2, 3, 7, 6, 4, 3, 2),
    (3, 1, 9, 11, 5, 5, 5),
    (1, 4, 4, 4, 3, 4, 4),
    (2, 2, 8, 3, 3, 1, 3),
    (1, 3, 6, 7, 2, 2, 5),
]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_fast_matches_naive(shape, dtype, rng):
    n, c, h, w_, f, kh, kw = shape
    x = rng.standard_normal((n, c, h, w_)).astype(dtype)
    w = rng.standard_normal((f, c, kh, kw)).astype(dtype)
    b = rng.standard_normal(f).astype(dtype)
    y = be.conv2d_forward(x, w, b)
    assert y.shape == (n, f, h - kh + 1, w_ - kw + 1) and y.dtype == dtype
    assert y.flags.c_contiguous
    assert_op_close("conv2d_forward", y, be.conv2d_forward(x, w, b, version="naive"), x, w, b)
    dy = rng.standard_normal(y.shape).astype(dtype)
    dx = be.conv2d_backward_input(dy, w)
    assert dx.shape == x.shape and dx.dtype == dtype
    assert_op_close("conv2d_backward_input", dx,
                    be.conv2d_backward_input(dy, w, version="naive"), dy, w)
    dw = be.conv2d_backward_weight(x, dy)
    assert dw.shape == w.shape and dw.dtype == dtype
    assert_op_close("conv2d_backward_weight", dw,
                    be.conv2d_backward_weight(x, dy, version="naive"), x, dy)
    db = be.conv2d_backward_bias(dy)
    assert db.shape == b.shape and db.dtype == dtype
    assert_op_close("conv2d_backward_bias", db, be.conv2d_backward_bias(dy, version="naive"), dy)


def test_forward_by_hand():
    x = np.arange(16, dtype=np.float64).reshape(1, 1, 4, 4)
    w = np.array([[[[1.0, 0.0], [0.0, -1.0]]]])
    y = be.conv2d_forward(x, w, np.array([0.5]))
    # x[i,j] - x[i+1,j+1] = -5 everywhere, plus the bias
    np.testing.assert_array_equal(y, np.full((1, 1, 3, 3), -4.5))


def test_backward_input_is_full_correlation_with_flipped_kernel(rng):
    """The CAE decoder identity: backward_input(dy, w) == forward(pad(dy), flip(w)^T)."""
    dy = rng.standard_normal((2, 3, 4, 5))
    w = rng.standard_normal((3, 2, 3, 2))
    pad = np.pad(dy, ((0, 0), (0, 0), (2, 2), (1, 1)))
    wt = np.ascontiguousarray(w[:, :, ::-1, ::-1].transpose(1, 0, 2, 3))
    np.testing.assert_allclose(be.conv2d_backward_input(dy, w),
                               be.conv2d_forward(pad, wt, np.zeros(2)), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("shape", SHAPES[:4], ids=str)
def test_adjointness(shape, rng):
    """<conv(x), dy> == <x, backward_input(dy)> (no bias): the decoder is the transpose."""
    n, c, h, w_, f, kh, kw = shape
    x = rng.standard_normal((n, c, h, w_))
    w = rng.standard_normal((f, c, kh, kw))
    dy = rng.standard_normal((n, f, h - kh + 1, w_ - kw + 1))
    lhs = np.vdot(be.conv2d_forward(x, w, np.zeros(f)), dy)
    rhs = np.vdot(x, be.conv2d_backward_input(dy, w))
    assert abs(lhs - rhs) <= 1e-10 * max(abs(lhs), 1.0)
    # and the weight gradient is the adjoint w.r.t. w
    lhs_w = np.vdot(be.conv2d_backward_weight(x, dy), w)
    assert abs(lhs_w - lhs) <= 1e-10 * max(abs(lhs), 1.0)


@pytest.mark.parametrize("version", ["naive", "fast"])
def test_gradients_by_finite_differences(version, rng):
    x = rng.standard_normal((2, 2, 6, 5))
    w = rng.standard_normal((3, 2, 3, 2))
    b = rng.standard_normal(3)
    dy = rng.standard_normal((2, 3, 4, 4))

    def fwd_x(xv):
        return be.conv2d_forward(xv, w, b, version=version)

    def fwd_w(wv):
        return be.conv2d_forward(x, wv, b, version=version)

    def fwd_b(bv):
        return be.conv2d_forward(x, w, bv, version=version)

    assert_gradient_close(be.conv2d_backward_input(dy, w, version=version),
                          numerical_gradient(fwd_x, x.copy(), dy), name="dx")
    assert_gradient_close(be.conv2d_backward_weight(x, dy, version=version),
                          numerical_gradient(fwd_w, w.copy(), dy), name="dw")
    assert_gradient_close(be.conv2d_backward_bias(dy, version=version),
                          numerical_gradient(fwd_b, b.copy(), dy), name="db")


def test_matches_pytorch(rng):
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    x = rng.standard_normal((3, 4, 11, 9)).astype(np.float32)
    w = rng.standard_normal((5, 4, 3, 4)).astype(np.float32)
    b = rng.standard_normal(5).astype(np.float32)
    xt = torch.tensor(x, requires_grad=True)
    wt = torch.tensor(w, requires_grad=True)
    bt = torch.tensor(b, requires_grad=True)
    yt = F.conv2d(xt, wt, bt)
    dy = rng.standard_normal(tuple(yt.shape)).astype(np.float32)
    yt.backward(torch.tensor(dy))
    assert_op_close("conv2d_forward", be.conv2d_forward(x, w, b), yt.detach().numpy(), x, w, b)
    assert_op_close("conv2d_backward_input", be.conv2d_backward_input(dy, w),
                    xt.grad.numpy(), dy, w)
    assert_op_close("conv2d_backward_weight", be.conv2d_backward_weight(x, dy),
                    wt.grad.numpy(), x, dy)
    assert_op_close("conv2d_backward_bias", be.conv2d_backward_bias(dy), bt.grad.numpy(), dy)


def test_tolerance_catches_a_wrong_answer(rng):
    """The comparison used everywhere is not vacuous: a one-ulp-scale bug is tolerated,
    a real bug (one missing term) is not."""
    x = rng.standard_normal((1, 2, 5, 5)).astype(np.float32)
    w = rng.standard_normal((2, 2, 3, 3)).astype(np.float32)
    b = np.zeros(2, np.float32)
    ref = be.conv2d_forward(x, w, b, version="naive")
    wrong = ref.copy()
    wrong[0, 1, 2, 2] -= x[0, 1, 4, 4] * w[1, 1, 2, 2]
    with pytest.raises(AssertionError, match="outside tolerance"):
        assert_op_close("conv2d_forward", wrong, ref, x, w, b)
    assert_op_close("conv2d_forward", np.nextafter(ref, np.inf), ref, x, w, b)
