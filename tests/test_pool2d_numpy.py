"""Max-pooling with switches and unpooling, NumPy backend: ``fast`` against ``naive``,
the tie rule, duality, gradient checks, and PyTorch's ``return_indices`` as oracle."""
import numpy as np
import pytest

from kernels import get_backend
from kernels.testing import (assert_gradient_close, assert_op_close, distinct_values,
                             numerical_gradient)

be = get_backend("numpy")

# (N, C, H, W, k): sizes that do not divide by k, N=1, C=1, k=1 and k=3.
SHAPES = [(1, 1, 4, 4, 2), (2, 3, 7, 5, 2), (3, 1, 9, 9, 3), (1, 2, 6, 11, 2),
          (2, 2, 5, 5, 1), (1, 1, 2, 3, 2)]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_fast_matches_naive(shape, dtype, rng):
    n, c, h, w, k = shape
    x = rng.standard_normal((n, c, h, w)).astype(dtype)
    y, sw = be.maxpool2d_forward(x, k)
    yn, swn = be.maxpool2d_forward(x, k, version="naive")
    assert y.shape == (n, c, h // k, w // k) and y.dtype == dtype and sw.dtype == np.int32
    assert_op_close("maxpool2d_forward", y, yn)
    assert_op_close("maxpool2d_forward", sw, swn)
    dy = rng.standard_normal(y.shape).astype(dtype)
    dx = be.maxpool2d_backward(dy, sw, (h, w))
    assert dx.shape == x.shape and dx.dtype == dtype
    assert_op_close("maxpool2d_backward", dx, be.maxpool2d_backward(dy, sw, (h, w), version="naive"))
    u = be.unpool2d_forward(dy, sw, (h, w))
    assert_op_close("unpool2d_forward", u, be.unpool2d_forward(dy, sw, (h, w), version="naive"))
    g = be.unpool2d_backward(x, sw)
    assert g.shape == y.shape
    assert_op_close("unpool2d_backward", g, be.unpool2d_backward(x, sw, version="naive"))
    # gathering the input at the switches gives back the pooled maxima
    np.testing.assert_array_equal(g, y)


@pytest.mark.parametrize("version", ["naive", "fast"])
def test_switches_by_hand_and_ties(version):
    x = np.array([[[[1, 5, 2, 2, 9],
                    [3, 0, 2, 2, 9],
                    [7, 7, 0, 1, 9],
                    [7, 7, 4, 0, 9],
                    [9, 9, 9, 9, 9]]]], dtype=np.float32)
    y, sw = be.maxpool2d_forward(x, 2, version=version)
    np.testing.assert_array_equal(y, [[[[5, 2], [7, 4]]]])
    # flat h*W+w in the 5x5 plane; ties -> first in row-major window order
    np.testing.assert_array_equal(sw, [[[[1, 2], [10, 17]]]])


@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_duality_unpool_equals_maxpool_backward(shape, rng):
    n, c, h, w, k = shape
    x = rng.standard_normal((n, c, h, w))
    y, sw = be.maxpool2d_forward(x, k)
    v = rng.standard_normal(y.shape)
    np.testing.assert_array_equal(be.unpool2d_forward(v, sw, (h, w)),
                                  be.maxpool2d_backward(v, sw, (h, w)))
    # and the unpool backward is its adjoint: <unpool(v), d> == <v, unpool_backward(d)>
    d = rng.standard_normal((n, c, h, w))
    assert np.isclose(np.vdot(be.unpool2d_forward(v, sw, (h, w)), d),
                      np.vdot(v, be.unpool2d_backward(d, sw)), rtol=1e-12)


def test_unpool_keeps_only_the_maxima(rng):
    x = distinct_values(rng, (2, 3, 6, 6))
    y, sw = be.maxpool2d_forward(x, 2)
    u = be.unpool2d_forward(y, sw, (6, 6))
    assert np.count_nonzero(u) == y.size
    np.testing.assert_array_equal(u[u != 0], x[u != 0])
    np.testing.assert_array_equal(be.maxpool2d_forward(u + (u == 0) * -100, 2)[0], y)


@pytest.mark.parametrize("version", ["naive", "fast"])
def test_gradients_by_finite_differences(version, rng):
    x = distinct_values(rng, (2, 2, 7, 6))
    y, sw = be.maxpool2d_forward(x, 2, version=version)
    dy = rng.standard_normal(y.shape)
    num = numerical_gradient(lambda v: be.maxpool2d_forward(v, 2, version=version)[0], x.copy(), dy)
    assert_gradient_close(be.maxpool2d_backward(dy, sw, (7, 6), version=version), num, name="dx")
    # unpooling is linear in y with fixed switches
    d = rng.standard_normal((2, 2, 7, 6))
    num_u = numerical_gradient(lambda v: be.unpool2d_forward(v, sw, (7, 6), version=version),
                               y.copy(), d)
    assert_gradient_close(be.unpool2d_backward(d, sw, version=version), num_u, name="dy")


def test_matches_pytorch_return_indices(rng):
    torch = pytest.importorskip("torch")
    x = rng.standard_normal((2, 3, 9, 7)).astype(np.float32)
    yt, it = torch.nn.functional.max_pool2d(torch.tensor(x), 2, return_indices=True)
    y, sw = be.maxpool2d_forward(x, 2)
    np.testing.assert_array_equal(y, yt.numpy())
    np.testing.assert_array_equal(sw, it.numpy().astype(np.int32))
    u = torch.nn.functional.max_unpool2d(yt, it, 2, output_size=(9, 7))
    np.testing.assert_array_equal(be.unpool2d_forward(y, sw, (9, 7)), u.numpy())
