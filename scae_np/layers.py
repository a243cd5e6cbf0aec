"""Layers built only from the backend's eight ops and its array module ``backend.xp``.

The same code runs on every backend (``numpy``, ``cupy``, ``numba``, and their CPU
emulators): convolutions and pooling go through ``backend.<op>`` (the hand-written kernels),
everything elementwise (tanh, softmax, the SGD update) through ``backend.xp`` ufuncs.

Conventions
-----------
* Arrays are C-contiguous NCHW in the backend's dtype (float32 in production, float64 for
  the finite-difference tests on NumPy). Nothing here converts dtypes behind your back.
* A layer's ``forward(x)`` keeps what its backward pass needs; ``backward(dy)`` returns
  ``dx`` and stores the parameter gradients in ``layer.grads`` (same names as
  ``layer.params``). Gradients are the arrays the backend returned (no extra copies).
* Elementwise work is done in place where the input is owned by the layer (a conv output
  is turned into ``tanh`` of itself, the gradient arrays are scaled in place by the SGD
  update).

Nonlinearities
--------------
* Hidden layers: LeCun's scaled tanh ``f(a) = 1.7159 tanh(2a/3)`` (``f(1) ~ 1``, maximal
  second derivative near |a| = 1). Its derivative written with the output ``y = f(a)``:
  ``f'(a) = (2/3)/1.7159 * (1.7159^2 - y^2)``, so no input needs to be kept.
* CAE output (inputs in [0, 1]): the logistic ``s(a) = (1 + tanh(a/2)) / 2`` -- the tanh
  rescaled and shifted to (0, 1), so a reconstruction spans the pixel range exactly and
  cannot overshoot it. Derivative ``s(1 - s)``. See ``scae_np.models.CAE``.
"""
from __future__ import annotations

import math

import numpy as np

#: LeCun's scaled tanh constants: f(a) = A * tanh(S * a).
TANH_A = 1.7159
TANH_S = 2.0 / 3.0


def _uniform(rng, shape, bound, dtype):
    return rng.uniform(-bound, bound, size=shape).astype(dtype)


def lecun_uniform(rng, shape, fan_in, dtype=np.float32):
    """Uniform in ``+-sqrt(3 / fan_in)``: variance ``1/fan_in`` (LeCun et al. 1998, "Efficient
    BackProp"), so scaled-tanh units start in their linear range."""
    return _uniform(rng, shape, math.sqrt(3.0 / fan_in), dtype)


class Layer:
    """Base class: ``params`` and ``grads`` are dicts of backend arrays."""

    def __init__(self, backend):
        self.be = backend
        self.xp = backend.xp
        self.params: dict = {}
        self.grads: dict = {}

    def forward(self, x):  # pragma: no cover - abstract
        raise NotImplementedError

    def backward(self, dy):  # pragma: no cover - abstract
        """``dx`` for ``dy``; the layers with parameters (Conv2D, Dense) also take
        ``need_dx=False`` to skip ``dx`` (the first layer's input needs no gradient)."""
        raise NotImplementedError


class Conv2D(Layer):
    """Valid cross-correlation, stride 1: ``y = conv2d_forward(x, W, b)``.

    ``W`` (F, C, K, K), ``b`` (F,) -- one bias per output map.
    """

    def __init__(self, backend, in_channels, out_channels, kernel, rng, dtype=np.float32):
        super().__init__(backend)
        k = int(kernel)
        self.kernel = k
        fan_in = in_channels * k * k
        self.params["W"] = backend.to_device(
            lecun_uniform(rng, (out_channels, in_channels, k, k), fan_in, dtype))
        self.params["b"] = backend.to_device(np.zeros(out_channels, dtype=dtype))
        self.x = None

    def forward(self, x):
        self.x = x
        return self.be.conv2d_forward(x, self.params["W"], self.params["b"])

    def backward(self, dy, need_dx=True):
        be = self.be
        self.grads["W"] = be.conv2d_backward_weight(self.x, dy)
        self.grads["b"] = be.conv2d_backward_bias(dy)
        dx = be.conv2d_backward_input(dy, self.params["W"]) if need_dx else None
        self.x = None
        return dx


class MaxPool2D(Layer):
    """k x k max-pooling, stride k, keeping the switches (flat in-plane argmax indices)."""

    def __init__(self, backend, k=2):
        super().__init__(backend)
        self.k = int(k)
        self.switches = None
        self.input_hw = None

    def forward(self, x):
        self.input_hw = (int(x.shape[2]), int(x.shape[3]))
        y, self.switches = self.be.maxpool2d_forward(x, self.k)
        return y

    def backward(self, dy):
        dx = self.be.maxpool2d_backward(dy, self.switches, self.input_hw)
        self.switches = None
        return dx


class Unpool2D(Layer):
    """Switch unpooling: pooled values back at their switches, zeros elsewhere.

    ``forward(y, switches, output_hw)``; ``backward(dx)`` gathers at the same switches.
    """

    def forward(self, y, switches, output_hw):
        self.switches = switches
        return self.be.unpool2d_forward(y, switches, output_hw)

    def backward(self, dx):
        return self.be.unpool2d_backward(dx, self.switches)


class ScaledTanh(Layer):
    """``y = 1.7159 tanh(2x/3)``, computed in place on ``x`` when ``inplace`` (the default:
    callers pass arrays they own, e.g. a fresh conv output)."""

    def __init__(self, backend, inplace=True):
        super().__init__(backend)
        self.inplace = inplace
        self.y = None

    def forward(self, x):
        self.y = scaled_tanh_(x if self.inplace else x.copy(), self.xp)
        return self.y

    def backward(self, dy):
        d = scaled_tanh_grad_from_output(self.y)
        d *= dy
        self.y = None
        return d


def scaled_tanh_(a, xp):
    """In place: ``a <- f(a) = A tanh(S a)``, LeCun's scaled tanh (the one place it is
    written; ``ScaledTanh`` and ``scae_np.models.CAE`` call it)."""
    a *= TANH_S
    xp.tanh(a, out=a)
    a *= TANH_A
    return a


def scaled_tanh_grad_from_output(y):
    """``f'(a) = S/A (A^2 - y^2)`` written with the output ``y = f(a)`` (a new array)."""
    d = y * y
    d *= -(TANH_S / TANH_A)
    d += TANH_S * TANH_A
    return d


def logistic_(a, xp):
    """In place: ``a <- (1 + tanh(a/2)) / 2`` (the logistic function, overflow-free)."""
    a *= 0.5
    xp.tanh(a, out=a)
    a += 1.0
    a *= 0.5
    return a


class Dense(Layer):
    """Fully connected: ``y = x W^T + b`` with ``W`` (out, in) (PyTorch's layout), x (N, in)."""

    def __init__(self, backend, in_features, out_features, rng, dtype=np.float32):
        super().__init__(backend)
        self.params["W"] = backend.to_device(
            lecun_uniform(rng, (out_features, in_features), in_features, dtype))
        self.params["b"] = backend.to_device(np.zeros(out_features, dtype=dtype))
        self.x = None

    def forward(self, x):
        self.x = x
        y = self.be.matmul(x, self.params["W"].T)
        y += self.params["b"]
        return y

    def backward(self, dy, need_dx=True):
        xp = self.xp
        self.grads["W"] = self.be.matmul(dy.T, self.x)
        self.grads["b"] = xp.sum(dy, axis=0)
        dx = self.be.matmul(dy, self.params["W"]) if need_dx else None
        self.x = None
        return dx


def softmax_cross_entropy(logits, labels, xp):
    """Mean cross-entropy of softmax(logits) against integer labels, and d loss / d logits.

    ``logits`` (N, K) float, ``labels`` (N,) int on the same device. Returns
    ``(loss, dlogits)`` with ``loss`` a 0-d backend array (no host sync here).
    """
    n = logits.shape[0]
    z = logits - xp.max(logits, axis=1, keepdims=True)
    e = xp.exp(z)
    s = xp.sum(e, axis=1, keepdims=True)
    rows = xp.arange(n)
    logp_true = z[rows, labels] - xp.log(s[:, 0])
    loss = -xp.mean(logp_true)
    e /= s                                   # softmax probabilities
    e[rows, labels] -= 1.0
    e *= 1.0 / n
    return loss, e


def half_squared_error(r, target, xp):
    """``L = sum((r - t)^2) / (2N)``: half the squared error per image, mean over the batch.

    Returns ``(loss, dr)`` with ``dr = (r - t) / N``; ``loss`` a 0-d backend array. (The
    per-pixel mean squared error is ``2 L / (C H W)``.)
    """
    n = r.shape[0]
    d = r - target
    loss = xp.sum(d * d) * (0.5 / n)
    d *= 1.0 / n
    return loss, d


def sgd_update(params, grads, velocity, lr, momentum, xp):
    """In-place SGD: ``v <- m v - lr g; p <- p + v`` (or ``p <- p - lr g`` when m = 0).

    ``grads`` are consumed (scaled in place). ``velocity`` is a dict of buffers created on
    first use with momentum > 0.
    """
    for name, p in params.items():
        g = grads[name]
        g *= lr
        if momentum:
            v = velocity.get(name)
            if v is None:
                v = velocity[name] = xp.zeros_like(p)
            v *= momentum
            v -= g
            p += v
        else:
            p -= g
