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

**NaN and Inf never pass.** Every comparison here accepts an element only if it is identical
to the reference (the same NaN-ness, the same infinity) or both are finite and within the
tolerance: a plain ``err > tol`` test would let NaN through (every comparison with NaN is
False), so the checks are written as "not provably close" instead. An all-NaN result, a
single Inf or a single wrong element each fail (tests/test_testing.py).
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


def _not_close(actual, expected, tol):
    """Elementwise: True where ``actual`` is not provably within ``tol`` of ``expected``.
    Identical values pass (the same NaN-ness, the same infinity, equal numbers); otherwise
    both must be finite and ``|actual - expected| <= tol``. NaN in ``tol`` passes nothing."""
    a = np.asarray(actual, dtype=np.float64)
    e = np.asarray(expected, dtype=np.float64)
    same = (a == e) | (np.isnan(a) & np.isnan(e))
    with np.errstate(invalid="ignore", over="ignore"):
        close = np.isfinite(a) & np.isfinite(e) & (np.abs(a - e) <= tol)
    return ~(same | close)


def _first_bad(bad):
    return tuple(int(i) for i in np.argwhere(bad)[0])


#: Relative error of one input rounded to TF32 (10 explicit mantissa bits; 2^-10 also
#: covers a conversion that truncates), for ``input_eps`` below.
TF32_EPS = 2.0 ** -10


def op_tolerance(op, *inputs, dtype=np.float32, input_eps=0.0, mixed=False):
    """The elementwise absolute tolerance of a convolution op's result on ``inputs``, for a
    backend computing in ``dtype`` (the bound in the module doc); 0 for the pooling ops.

    ``input_eps``: the relative error of each input as the backend rounds it before
    multiplying (0: none; :data:`TF32_EPS` for TF32 tensor cores). Each product then errs
    by at most ``(2 e + e^2) |term|``, so ``(2 e + e^2) * S`` is added to the bound.

    ``mixed``: for versions whose every output mixes every pixel of its plane (the NumPy
    ``dft`` plan: a transform, channel products, an inverse transform), an output's
    rounding error scales with its whole plane, not with its own terms: ``S`` becomes the
    largest ``S`` of the output's plane and the term count grows by the three transforms'
    ``3 * H * W`` (H x W: the largest plane among the inputs and the result)."""
    if op in POOL_OPS:
        return 0.0
    dtype = np.dtype(dtype)
    terms = conv_terms(op, *inputs)
    bound = _abs_bound(op, *inputs)
    if mixed and np.ndim(bound) == 4:     # (the bias gradient is a plain sum)
        hw = max(a.shape[-2] * a.shape[-1] for a in inputs if np.ndim(a) == 4)
        terms = terms + 3 * max(hw, bound.shape[-2] * bound.shape[-1])
        bound = np.broadcast_to(bound.max(axis=(-2, -1), keepdims=True), bound.shape)
    e = float(input_eps)
    return ((8.0 * math.sqrt(terms) * np.finfo(dtype).eps + 2 * e + e * e) * bound
            + np.finfo(dtype).tiny)


def assert_op_close(op, actual, expected, *inputs, dtype=None, input_eps=0.0, mixed=False):
    """Assert that ``actual`` matches the reference ``expected`` for ``op`` on ``inputs``.

    Pooling ops must match exactly; convolution ops within the bound in the module doc.
    ``dtype`` is the dtype the tested backend computed in (default: ``actual``'s);
    ``input_eps`` the rounding of its inputs and ``mixed`` a transform plan's error
    (:func:`op_tolerance`). NaN or Inf where the reference has none fails, whatever the
    tolerance.
    """
    actual = np.asarray(actual)
    expected = np.asarray(expected)
    assert actual.shape == expected.shape, (
        f"{op}: shape {actual.shape} != reference shape {expected.shape}")
    if op in POOL_OPS:
        if actual.dtype.kind in "iu" or expected.dtype.kind in "iu":
            bad = actual != expected
        else:
            bad = _not_close(actual, expected, 0.0)
        if bad.any():
            idx = _first_bad(bad)
            raise AssertionError(
                f"{op}: {int(bad.sum())} of {bad.size} elements differ; first at {idx}: "
                f"{actual[idx]!r} != {expected[idx]!r}")
        return
    dtype = np.dtype(dtype or actual.dtype)
    terms = conv_terms(op, *inputs)
    tol = np.broadcast_to(op_tolerance(op, *inputs, dtype=dtype, input_eps=input_eps,
                                       mixed=mixed),
                          actual.shape)
    bad = _not_close(actual, expected, tol)
    if bad.any():
        idx = _first_bad(bad)
        with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
            err = np.abs(actual.astype(np.float64) - expected.astype(np.float64))
            ratio = np.where(bad, err / tol, 0.0)
        worst = float(np.nanmax(ratio)) if np.isfinite(ratio).any() else float("nan")
        nonfinite = int((bad & ~(np.isfinite(actual) & np.isfinite(expected))).sum())
        raise AssertionError(
            f"{op} ({dtype}, {terms} terms per output): {int(bad.sum())} of {bad.size} "
            f"elements outside tolerance ({nonfinite} of them NaN/Inf on one side only); "
            f"first at {idx}: {actual[idx]!r} vs {expected[idx]!r} (tol {tol[idx]:.3g}); "
            f"worst finite error/tol = {worst:.3g}")


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
    """Caffe's check: |a - n| <= rtol * max(|a|, |n|, 1), elementwise; NaN or Inf on one side
    only fails (and so does NaN on both sides: a gradient check must see numbers)."""
    analytic, numeric = np.asarray(analytic), np.asarray(numeric)
    assert analytic.shape == numeric.shape, f"{name}: {analytic.shape} vs {numeric.shape}"
    a, n = analytic.astype(np.float64), numeric.astype(np.float64)
    with np.errstate(invalid="ignore", over="ignore"):
        scale = np.maximum(np.maximum(np.abs(a), np.abs(n)), 1.0)
        err = np.abs(a - n) / scale
        bad = ~(np.isfinite(a) & np.isfinite(n) & (err <= rtol))
    if bad.any():
        idx = _first_bad(bad)
        raise AssertionError(
            f"{name}: {int(bad.sum())} of {bad.size} elements differ; first: analytic "
            f"{analytic[idx]!r} vs numeric {numeric[idx]!r} at {idx} (scaled error "
            f"{err[idx]:.3g} > {rtol}, or not finite)")
