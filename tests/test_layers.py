"""The layers of scae_np.layers on the NumPy backend: values against their definitions and
gradients against central finite differences in float64 (kernels.testing's tolerances)."""
import numpy as np
import pytest

from kernels import get_backend
from kernels.testing import assert_gradient_close, distinct_values, numerical_gradient
from scae_np import layers as L


@pytest.fixture(scope="module")
def be():
    return get_backend("numpy")


def test_scaled_tanh_values_and_gradient(be, rng):
    x = distinct_values(rng, (2, 3, 4, 5), scale=3.0)
    act = L.ScaledTanh(be, inplace=False)
    y = act.forward(x)
    np.testing.assert_allclose(y, 1.7159 * np.tanh(2.0 * x / 3.0), rtol=1e-14)
    assert act.forward(np.ones((1, 1, 1, 1)))[0, 0, 0, 0] == pytest.approx(1.0, abs=2e-4)
    act.forward(x)
    dy = rng.standard_normal(x.shape)
    dx = act.backward(dy)
    num = numerical_gradient(lambda v: L.ScaledTanh(be, inplace=False).forward(v), x.copy(), dy)
    assert_gradient_close(dx, num, name="scaled tanh")


def test_scaled_tanh_inplace_reuses_the_input(be, rng):
    x = rng.standard_normal((2, 2, 3, 3)).astype(np.float32)
    y = L.ScaledTanh(be).forward(x)
    assert y is x and y.dtype == np.float32


def test_logistic_matches_definition_and_does_not_overflow():
    a = np.array([-1000.0, -20.0, -1.0, 0.0, 0.5, 30.0, 1000.0])
    with np.errstate(all="raise"):
        s = L.logistic_(a.copy(), np)
    ref = np.where(a >= 0, 1 / (1 + np.exp(-np.abs(a))), np.exp(-np.abs(a)) / (1 + np.exp(-np.abs(a))))
    np.testing.assert_allclose(s, ref, rtol=1e-12, atol=1e-15)  # absolute: pixels live in [0, 1]


def test_conv2d_layer_gradients(be, rng):
    conv = L.Conv2D(be, 2, 3, 3, rng, np.float64)
    conv.params["b"][:] = rng.standard_normal(3)
    x = distinct_values(rng, (2, 2, 6, 5))
    dy = rng.standard_normal((2, 3, 4, 3))
    conv.forward(x)
    dx = conv.backward(dy)

    def f(v):
        return L.Conv2D.forward(conv, v)
    assert_gradient_close(dx, numerical_gradient(f, x.copy(), dy), name="dx")
    for name in ("W", "b"):
        num = numerical_gradient(lambda _: be.conv2d_forward(x, conv.params["W"], conv.params["b"]),
                                 conv.params[name], dy)
        assert_gradient_close(conv.grads[name], num, name=name)
    conv.forward(x)
    assert conv.backward(dy, need_dx=False) is None


def test_conv2d_init_is_lecun_uniform(be):
    conv = L.Conv2D(be, 4, 50, 5, np.random.default_rng(0), np.float32)
    W = conv.params["W"]
    assert W.dtype == np.float32 and W.shape == (50, 4, 5, 5)
    bound = np.sqrt(3.0 / (4 * 25))
    assert np.abs(W).max() <= bound and np.abs(W).max() > 0.9 * bound
    assert W.var() == pytest.approx(1.0 / 100, rel=0.15)
    assert not conv.params["b"].any()


def test_maxpool_and_unpool_layers(be, rng):
    x = distinct_values(rng, (2, 3, 5, 6))
    pool = L.MaxPool2D(be, 2)
    y = pool.forward(x)
    assert y.shape == (2, 3, 2, 3)
    np.testing.assert_array_equal(y, x[:, :, :4, :].reshape(2, 3, 2, 2, 3, 2).max(axis=(3, 5)))
    sw = pool.switches
    un = L.Unpool2D(be)
    u = un.forward(y, sw, (5, 6))
    # unpooling keeps only the maxima, in place
    mask = u != 0
    assert mask.sum() == y.size
    np.testing.assert_array_equal(u[mask], x[mask])
    dy = rng.standard_normal(y.shape)
    dx = pool.backward(dy)
    num = numerical_gradient(lambda v: be.maxpool2d_forward(v, 2)[0], x.copy(), dy)
    assert_gradient_close(dx, num, name="maxpool dx")
    g = rng.standard_normal(u.shape)
    np.testing.assert_array_equal(un.backward(g), g.reshape(2, 3, -1)[
        np.arange(2)[:, None, None], np.arange(3)[None, :, None], sw.reshape(2, 3, -1)].reshape(y.shape))


def test_dense_gradients(be, rng):
    d = L.Dense(be, 7, 4, rng, np.float64)
    d.params["b"][:] = rng.standard_normal(4)
    x = rng.standard_normal((3, 7))
    dy = rng.standard_normal((3, 4))
    y = d.forward(x)
    np.testing.assert_allclose(y, x @ d.params["W"].T + d.params["b"])
    dx = d.backward(dy)
    f = lambda _: x @ d.params["W"].T + d.params["b"]
    assert_gradient_close(dx, numerical_gradient(lambda v: v @ d.params["W"].T, x.copy(), dy))
    for name in ("W", "b"):
        assert_gradient_close(d.grads[name], numerical_gradient(f, d.params[name], dy), name=name)


def test_softmax_cross_entropy_value_and_gradient(rng):
    logits = rng.standard_normal((5, 4)) * 3
    labels = np.array([0, 3, 1, 1, 2])
    loss, d = L.softmax_cross_entropy(logits, labels, np)
    p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    assert float(loss) == pytest.approx(-np.mean(np.log(p[np.arange(5), labels])), rel=1e-12)
    num = numerical_gradient(lambda v: np.array(L.softmax_cross_entropy(v, labels, np)[0]),
                             logits.copy(), np.array(1.0))
    assert_gradient_close(d, num)
    # huge logits stay finite
    loss, d = L.softmax_cross_entropy(np.array([[1e4, 0.0], [0.0, 1e4]]), np.array([0, 0]), np)
    assert np.isfinite(float(loss)) and float(loss) == pytest.approx(5e3)


def test_half_squared_error(rng):
    r, t = rng.random((3, 2, 4, 4)), rng.random((3, 2, 4, 4))
    loss, d = L.half_squared_error(r, t, np)
    assert float(loss) == pytest.approx(((r - t) ** 2).sum() / 6)
    num = numerical_gradient(lambda v: np.array(L.half_squared_error(v, t, np)[0]), r.copy(),
                             np.array(1.0))
    assert_gradient_close(d, num)


def test_sgd_update_plain_and_momentum():
    p = {"a": np.array([1.0, 2.0])}
    L.sgd_update(p, {"a": np.array([0.5, -1.0])}, {}, lr=0.1, momentum=0.0, xp=np)
    np.testing.assert_allclose(p["a"], [0.95, 2.1])
    vel = {}
    L.sgd_update(p, {"a": np.array([1.0, 1.0])}, vel, lr=0.1, momentum=0.5, xp=np)
    np.testing.assert_allclose(vel["a"], [-0.1, -0.1])
    L.sgd_update(p, {"a": np.array([1.0, 0.0])}, vel, lr=0.1, momentum=0.5, xp=np)
    np.testing.assert_allclose(vel["a"], [-0.15, -0.05])
    np.testing.assert_allclose(p["a"], [0.95 - 0.25, 2.1 - 0.15])
