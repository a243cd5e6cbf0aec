"""The test oracle (kernels/testing.py) cannot pass NaN: every comparison helper fails on a
NaN, an Inf, or a single wrong element where the reference has a number -- and still passes
a correct result, including NaN/Inf exactly where the reference has them (pooling moves
values, NaN included)."""
import numpy as np
import pytest

from kernels import get_backend
from kernels.testing import assert_gradient_close, assert_op_close, op_tolerance

ref = get_backend("numpy")


@pytest.fixture
def conv():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 7, 6))
    w = rng.standard_normal((4, 3, 3, 2))
    b = rng.standard_normal(4)
    y = ref.conv2d_forward(x, w, b)
    return y, (x, w, b)


@pytest.fixture
def pool():
    x = np.random.default_rng(1).standard_normal((2, 3, 6, 6)).astype(np.float32)
    return ref.maxpool2d_forward(x, 2)


def spoil(a, value, where=(0, 1, 2, 2)):
    a = np.array(a, copy=True)
    a[where[:a.ndim]] = value
    return a


BAD = [pytest.param(np.nan, id="nan"), pytest.param(np.inf, id="inf"),
       pytest.param(-np.inf, id="-inf"), pytest.param("wrong", id="one-wrong-element")]


def _value(a, bad):
    return a.reshape(-1)[0] + 1.0 if isinstance(bad, str) else bad


def test_conv_oracle_passes_a_correct_float32_result(conv):
    y, inputs = conv
    assert_op_close("conv2d_forward", y.astype(np.float32), y, *inputs, dtype=np.float32)


@pytest.mark.parametrize("bad", BAD)
def test_conv_oracle_catches_one_bad_element(conv, bad):
    y, inputs = conv
    got = spoil(y.astype(np.float32), _value(y, bad))
    with pytest.raises(AssertionError, match=r"conv2d_forward .* 1 of 200 elements outside"):
        assert_op_close("conv2d_forward", got, y, *inputs, dtype=np.float32)


def test_conv_oracle_catches_an_all_nan_result(conv):
    y, inputs = conv
    with pytest.raises(AssertionError, match=r"200 of 200 elements outside tolerance \(200 of "
                                             r"them NaN/Inf"):
        assert_op_close("conv2d_forward", np.full_like(y, np.nan), y, *inputs)


def test_conv_oracle_catches_nan_in_the_reference(conv):
    y, inputs = conv
    with pytest.raises(AssertionError, match="1 of 200"):
        assert_op_close("conv2d_forward", y, spoil(y, np.nan), *inputs)


def test_conv_oracle_accepts_identical_infinities():
    """Inf exactly where the reference has it (same sign) is the same value, not an error."""
    x = np.full((1, 1, 2, 2), np.inf)
    w = np.ones((1, 1, 1, 1))
    b = np.zeros(1)
    y = ref.conv2d_forward(x, w, b)
    assert_op_close("conv2d_forward", y.copy(), y, x, w, b)
    with pytest.raises(AssertionError):
        assert_op_close("conv2d_forward", -y, y, x, w, b)


@pytest.mark.parametrize("bad", BAD)
def test_pool_oracle_catches_one_bad_element(pool, bad):
    y, sw = pool
    with pytest.raises(AssertionError, match=r"maxpool2d_forward: 1 of 54 elements differ"):
        assert_op_close("maxpool2d_forward", spoil(y, _value(y, bad), (1, 2, 0, 1)), y)


def test_pool_oracle_catches_a_wrong_switch(pool):
    _, sw = pool
    with pytest.raises(AssertionError, match="1 of 54 elements differ"):
        assert_op_close("maxpool2d_forward", spoil(sw, sw[0, 0, 0, 0] + 1, (0, 0, 0, 0)), sw)


def test_pool_oracle_passes_nan_where_the_reference_has_nan(pool):
    y, _ = pool
    y = spoil(y, np.nan)
    assert_op_close("maxpool2d_forward", y.copy(), y)


@pytest.mark.parametrize("bad", BAD)
def test_gradient_oracle_catches_one_bad_element(bad):
    g = np.random.default_rng(2).standard_normal((3, 4))
    with pytest.raises(AssertionError, match=r"dW: 1 of 12 elements differ"):
        assert_gradient_close(spoil(g, _value(g, bad), (1, 2)), g, name="dW")
    with pytest.raises(AssertionError, match=r"dW: 1 of 12 elements differ"):
        assert_gradient_close(g, spoil(g, _value(g, bad), (1, 2)), name="dW")


def test_gradient_oracle_passes_close_and_fails_nan_on_both_sides():
    g = np.random.default_rng(3).standard_normal(10)
    assert_gradient_close(g * (1 + 1e-9), g)
    with pytest.raises(AssertionError, match="10 of 10"):
        assert_gradient_close(np.full(10, np.nan), np.full(10, np.nan))


def test_tolerance_is_finite_and_positive(conv):
    y, inputs = conv
    tol = op_tolerance("conv2d_forward", *inputs, dtype=np.float32)
    assert tol.shape == y.shape and np.isfinite(tol).all() and (tol > 0).all()
    assert op_tolerance("maxpool2d_forward") == 0.0


def test_mixed_tolerance_still_rejects_wrong_answers_and_nan(rng):
    """The transform plans' wider bound (``mixed``) accepts their rounding but not a wrong
    element or a NaN."""
    from kernels.conv2d import numpy_ops as conv_ops
    x = rng.standard_normal((2, 3, 8, 8))
    w = rng.standard_normal((4, 3, 5, 5))
    b = rng.standard_normal(4)
    want = conv_ops.conv2d_forward_naive(x, w, b)
    got = conv_ops.conv2d_forward_dft(x.astype(np.float32), w.astype(np.float32),
                                      b.astype(np.float32))
    assert_op_close("conv2d_forward", got, want, x, w, b, dtype=np.float32, mixed=True)
    wrong = got.copy()
    wrong[1, 2, 3, 1] += 1e-3 * np.abs(want).max()
    with pytest.raises(AssertionError):
        assert_op_close("conv2d_forward", wrong, want, x, w, b, dtype=np.float32, mixed=True)
    wrong = got.copy()
    wrong[0, 0, 0, 0] = np.nan
    with pytest.raises(AssertionError):
        assert_op_close("conv2d_forward", wrong, want, x, w, b, dtype=np.float32, mixed=True)
