"""Testing helpers shared by every backend's tests: tolerances, gradient checks, inputs.

Tolerances (written down once, with the reason):

* **Pooling ops** (``maxpool2d_*``, ``unpool2d_*``) only select and move values: every
  backend must agree *exactly*, in any dtype (``assert_op_close`` uses rtol = 0).
* **Convolution ops** are sums of ``T`` products (T = C*KH*KW for the forward pass,
  F*KH*KW for the input gradient, N*OH*OW for the weight and bias gradients). A float sum
  in any order has an error bounded by about ``T * eps * sum|terms|`` and, for rounding
  errors that do not conspire, ``sqrt(T) * eps * sum|terms|``. We compare elementwise
  ``|actual - expected| <= 8 * sqrt(T) * eps(dtype) * S + tiny``, where ``S`` is the same
  op applied to ``|inputs|`` (an elementwise bound on ``sum|terms|``, computed in float64).
  This scales with the magnitude that actually cancels, so it is tight for large outputs
  and not fooled by outputs near zero.
* **Finite-difference gradient checks** run in float64 with central differences, step
  ``h = 1e-6``: truncation error O(h^2 f''') ~ 1e-12 and rounding error O(eps f / h) ~
  1e-10, so we accept ``|analytic - numeric| <= 1e-6 * max(|analytic|, |numeric|, 1)``
  (Caffe's scaling by max(|a|, |b|, 1)). Inputs have distinct values separated by much more
  than h, so no max-pool argmax changes under the perturbation.
"""
from __future__ import annotations

import math

import numpy as np

from .conv2d import numpy_ops as _conv
from .contract import OPS

POOL_OPS = ("maxpool2d_forward", "maxpool2d_backward", "unpool2d_forward", "unpool2d_backward")
CONV_OPS = tuple(op for op in OPS if op.startswith("conv2d"))


def conv_terms(op, *args):
    """Number of products summed into each output element of a convolution op."""
    if op == "conv2d_forward":
        x, w = args[0], args[1]
        return w.shape[1] * w.shape[2] * w.shape[3]
    if op == "conv2d_backward_input":
        dy, w = args
        return w.shape[0] * w.shape[2] * w.shape[3]
    if op == "conv2d_backward_weight":
        x, dy = args
        return dy.shape[0] * dy.shape[2] * dy.shape[3]
    if op == "conv2d_backward_bias":
        (dy,) = args
        return dy.shape[0] * dy.shape[2] * dy.shape[3]
    raise ValueError(f"not a convolution op: {op!r}")


def _abs_bound(op, *args):
    a = [np.abs(np.asarray(v, dtype=np.float64)) for v in args]
    fn = {"conv2d_forward": _conv.conv2d_forward_fast,
          "conv2d_backward_input": _conv.conv2d_backward_input_fast,
          "conv2d_backward_weight": _conv.conv2d_backward_weight_fast,
          "conv2d_backward_bias": _conv.conv2d_backward_bias_fast}[op]
    return fn(*a)


def conv_tolerance(op, *inputs, dtype=np.float32):
    """Elementwise tolerance of a convolution op's result on ``inputs`` computed in
    ``dtype``: ``8 * sqrt(T) * eps(dtype) * S + tiny`` (the module doc says why)."""
    dtype = np.dtype(dtype)
    bound = _abs_bound(op, *inputs)
    return (8.0 * math.sqrt(conv_terms(op, *inputs)) * np.finfo(dtype).eps * bound
            + np.finfo(dtype).tiny)


def assert_op_close(op, actual, expected, *inputs, dtype=None):
    """Assert that ``actual`` matches the reference ``expected`` for ``op`` on ``inputs``.

    Pooling ops must match exactly; convolution ops within the bound in the module doc.
    ``dtype`` is the dtype the tested backend computed in (default: ``actual``'s).
    """
    actual = np.asarray(actual)
    expected = np.asarray(expected)
    assert actual.shape == expected.shape, (
        f"{op}: shape {actual.shape} != reference shape {expected.shape}")
    if op in POOL_OPS:
        if actual.dtype.kind in "iu" or expected.dtype.kind in "iu":
            bad = actual != expected
        else:
            bad = ~((actual == expected) | (np.isnan(actual) & np.isnan(expected)))
        if bad.any():
            idx = tuple(int(i) for i in np.argwhere(bad)[0])
            raise AssertionError(
                f"{op}: {int(bad.sum())} of {bad.size} elements differ; first at {idx}: "
                f"{actual[idx]!r} != {expected[idx]!r}")
        return
    dtype = np.dtype(dtype or actual.dtype)
    terms = conv_terms(op, *inputs)
    tol = conv_tolerance(op, *inputs, dtype=dtype)
    err = np.abs(actual.astype(np.float64) - expected.astype(np.float64))
    bad = ~(err <= tol)                 # NaN (or inf - inf) is an error, never a pass
    if bad.any():
        idx = tuple(int(i) for i in np.argwhere(bad)[0])
        worst = float((err / tol).max())
        raise AssertionError(
            f"{op} ({dtype}, {terms} terms per output): {int(bad.sum())} of {bad.size} "
            f"elements outside tolerance; first at {idx}: {actual[idx]!r} vs "
            f"{expected[idx]!r} (tol {tol[idx]:.3g}); worst error/tol = {worst:.3g}")


def distinct_values(rng, shape, scale=1.0, dtype=np.float64):
    """Random values, all distinct and at least ~1e-3 * scale / size apart in random order,
    so an argmax never ties and survives a finite-difference step of 1e-6."""
    size = int(np.prod(shape))
    vals = (np.arange(size, dtype=np.float64) - size / 2.0) / max(size, 1) * 2.0 * scale
    rng.shuffle(vals)
    return vals.reshape(shape).astype(dtype)


def numerical_gradient(f, x, dout, h=1e-6):
    """Central-difference gradient of ``<f(x), dout>`` w.r.t. ``x`` (float64, in place)."""
    x = np.asarray(x)
    assert x.dtype == np.float64, "finite differences need float64 inputs"
    grad = np.empty_like(x)
    flat, gflat = x.reshape(-1), grad.reshape(-1)
    for i in range(flat.size):
        old = flat[i]
        flat[i] = old + h
        fp = float(np.sum(np.asarray(f(x)) * dout))
        flat[i] = old - h
        fm = float(np.sum(np.asarray(f(x)) * dout))
        flat[i] = old
        gflat[i] = (fp - fm) / (2.0 * h)
    return grad


def assert_gradient_close(analytic, numeric, rtol=1e-6, name="gradient"):
    """Caffe's check: |a - n| <= rtol * max(|a|, |n|, 1), elementwise."""
    analytic, numeric = np.asarray(analytic), np.asarray(numeric)
    assert analytic.shape == numeric.shape, f"{name}: {analytic.shape} vs {numeric.shape}"
    scale = np.maximum(np.maximum(np.abs(analytic), np.abs(numeric)), 1.0)
    err = np.abs(analytic - numeric) / scale
    if (err > rtol).any():
        idx = tuple(int(i) for i in np.argwhere(err > rtol)[0])
        raise AssertionError(
            f"{name}: analytic {analytic[idx]!r} vs numeric {numeric[idx]!r} at {idx} "
            f"(scaled error {err[idx]:.3g} > {rtol})")
