"""Finite-difference check of the composed CAE chain, built only from the contract's ops:

    h = tanh(conv(x, W) + b);  p, s = maxpool(h);  u = unpool(p, s);
    r = backward_input(u, W) + c   (the tied-weight decoder);  L = <r, g>

The analytic gradients w.r.t. x, W, b, c are assembled by hand from the backward ops, as
the CAE layer does; W appears twice (encoder and decoder), so its gradient has two terms.
"""
import numpy as np
import pytest

from kernels import get_backend
from kernels.testing import assert_gradient_close, distinct_values, numerical_gradient


@pytest.mark.parametrize("version", ["naive", "fast"])
def test_cae_chain(version, rng):
    be = get_backend("numpy")
    for op in ("conv2d_forward", "conv2d_backward_input", "conv2d_backward_weight",
               "conv2d_backward_bias", "maxpool2d_forward", "maxpool2d_backward",
               "unpool2d_forward", "unpool2d_backward"):
        be.set_default(op, version)
    x = distinct_values(rng, (2, 2, 8, 7), scale=1.0)
    W = distinct_values(rng, (3, 2, 3, 3), scale=0.5)
    b = rng.standard_normal(3) * 0.1
    cb = rng.standard_normal(2) * 0.1
    g = rng.standard_normal((2, 2, 8, 7))

    def forward(x, W, b, cb):
        a = be.conv2d_forward(x, W, b)
        h = np.tanh(a)
        p, s = be.maxpool2d_forward(h, 2)
        u = be.unpool2d_forward(p, s, h.shape[2:])
        r = be.conv2d_backward_input(u, W) + cb[None, :, None, None]
        return r, (a, h, p, s, u)

    r, (a, h, p, s, u) = forward(x, W, b, cb)
    # distinct inputs make near-ties in h unlikely; check that every pooling window's
    # maximum beats its runner-up by far more than a finite-difference step could move it
    win = h[:, :, :6, :4].reshape(2, 3, 3, 2, 2, 2).transpose(0, 1, 2, 4, 3, 5).reshape(-1, 4)
    top2 = np.sort(win, axis=1)[:, -2:]
    assert np.all(top2[:, 1] - top2[:, 0] > 1e-4)

    # backward
    d_r = g
    d_cb = d_r.sum(axis=(0, 2, 3))
    d_u = be.conv2d_forward(d_r, W, np.zeros(3))                 # adjoint of backward_input
    d_W_dec = be.conv2d_backward_weight(d_r, u)                 # W's decoder term
    d_p = be.unpool2d_backward(d_u, s)
    d_h = be.maxpool2d_backward(d_p, s, h.shape[2:])
    d_a = d_h * (1 - h ** 2)
    d_x = be.conv2d_backward_input(d_a, W)
    d_W = be.conv2d_backward_weight(x, d_a) + d_W_dec
    d_b = be.conv2d_backward_bias(d_a)

    f = lambda **kw: forward(**{**dict(x=x, W=W, b=b, cb=cb), **kw})[0]
    assert_gradient_close(d_x, numerical_gradient(lambda v: f(x=v), x.copy(), g), name="dx")
    assert_gradient_close(d_W, numerical_gradient(lambda v: f(W=v), W.copy(), g), name="dW")
    assert_gradient_close(d_b, numerical_gradient(lambda v: f(b=v), b.copy(), g), name="db")
    assert_gradient_close(d_cb, numerical_gradient(lambda v: f(cb=v), cb.copy(), g), name="dc")
