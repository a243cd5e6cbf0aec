"""The op contract shared by every backend, and the input checks that enforce it.

Every backend (``numpy``, ``cupy``, ``numba``) exposes the same eight functions with the
same signatures, shapes, dtypes and semantics. This module owns:

* ``OPS``: the names of the eight ops, in the order the README documents them;
* the output-shape rules (``conv2d_output_hw`` ...);
* ``check_*`` functions, called by :class:`kernels.backend.Backend` before any kernel
  runs, so that bad input fails *here*, with a message that names the argument, what it
  got and what it needed -- never as an ``IndexError`` deep inside a kernel, and never as
  a silently wrong answer.

The contract (arrays are C-contiguous NCHW; float32 in production, float64 also accepted
by the NumPy backend for gradient checks):

``conv2d_forward(x, w, b) -> y``
    x (N,C,H,W), w (F,C,KH,KW), b (F,) -> y (N,F,H-KH+1,W-KW+1);
    ``y[n,f,i,j] = b[f] + sum_{c,p,q} x[n,c,i+p,j+q] * w[f,c,p,q]``
    (cross-correlation, stride 1, no padding).
``conv2d_backward_input(dy, w) -> dx``
    The "full" correlation of dy with w flipped in both spatial dimensions:
    dx (N,C,OH+KH-1,OW+KW-1), ``dx[n,c,h,v] = sum_{f,p,q} dy[n,f,h-p,v-q] * w[f,c,p,q]``.
    This is also the tied-weight CAE decoder: ``y = sigma(sum_k h_k * W~_k + c)``.
``conv2d_backward_weight(x, dy) -> dw``
    dw (F,C,KH,KW), ``dw[f,c,p,q] = sum_{n,i,j} dy[n,f,i,j] * x[n,c,i+p,j+q]``.
``conv2d_backward_bias(dy) -> db``
    db (F,), ``db[f] = sum_{n,i,j} dy[n,f,i,j]``.
``maxpool2d_forward(x, k=2) -> (y, switches)``
    Non-overlapping k x k windows, stride k, remainder rows/columns dropped:
    y (N,C,H//k,W//k). ``switches`` is int32, same shape as y, holding the flat index
    ``h*W + w`` of the maximum inside its input plane (PyTorch's ``return_indices``
    convention). Ties go to the first element in row-major window order.

    NaN and infinities: values are ordered ``-Inf < finite < +Inf < NaN`` (NaN is the
    largest value) and ties -- several NaNs included -- go to the first in row-major
    order. So a window holding a NaN pools to NaN and its switch points at the window's
    first NaN; a window of -Inf pools to -Inf with its switch at the window's first entry.
    PyTorch's ``max_pool2d`` also propagates NaN and points its index at the NaN; for a
    window with *several* NaNs PyTorch (2.x, CPU and CUDA kernels: ``val > max ||
    isnan(val)``) points at the last one, we at the first, the rule ties follow (the
    difference is pinned in tests/test_pool2d_nan.py against torch).
``maxpool2d_backward(dy, switches, input_hw) -> dx``
    dx (N,C,H,W) with ``input_hw = (H, W)``: each dy value goes to its switch, zeros
    elsewhere.
``unpool2d_forward(y, switches, output_hw) -> x``
    y placed at its switches, zeros elsewhere (Zeiler-style switch unpooling). Equal, by
    definition, to ``maxpool2d_backward(y, switches, output_hw)``.
``unpool2d_backward(dx, switches) -> dy``
    dx gathered at the switches: ``dy[n,c,i,j] = dx[n,c].flat[switches[n,c,i,j]]``.

Switches: which are legal, what is checked, what happens otherwise
    *Legal* switches are the ones ``maxpool2d_forward`` returns: each lies inside its own
    window, ``switches[n,c,i,j] = h*W + v`` with ``i*k <= h < (i+1)*k`` and
    ``j*k <= v < (j+1)*k``, for one window size k with ``H//k == OH`` and ``W//k == OW``
    (the backward ops are not told k). Legal switches are in range ``[0, H*W)`` and never
    repeat within a plane. :func:`check_switch_windows` checks this whole rule (a few passes
    over the switches: for tests and debugging, not run per call).

    Checked on every call, identically, by every backend whose arrays live on the host (the
    NumPy backend, the emulated cupy backend, the numba simulator): the range, by
    :func:`check_switch_values` -- a ValueError. On a GPU nothing is checked (it would cost
    a device-to-host read per call); the kernels skip an out-of-range switch instead of
    touching memory outside the plane (the scatters drop its value, ``unpool2d_backward``
    reads it as 0).

    In range but illegal (outside its window, or repeated), the result is outside the
    contract; what each version does (pinned by tests/test_pool2d_nan.py):

    ======================  =========================  =========================
    version                 switch outside its window  switch repeated in a plane
    ======================  =========================  =========================
    NumPy naive/argmax/fast the value lands there      the last pooled position
                                                       (row-major) wins
    CUDA C/numba ``naive``  the value lands there      one of them, unspecified
    scatter                                            (a write race on a GPU)
    CUDA C/numba ``gather`` dropped, unless the pixel  the last window in the
                            is in a window the gather  gather's scan order wins
                            scans ([kmin, kmax])
    ``unpool2d_backward``   reads dx there             every copy reads dx there
    ======================  =========================  =========================

    For a plane that no window size k fits (``kernels/launch_spec.py``), the ``gather``
    versions have no window to scan and run the ``naive`` scatter instead (its column).
"""
from __future__ import annotations

import numpy as np

from .launch_spec import pool_window_sizes   # the pooling window rule, written once there

OPS = (
    "conv2d_forward",
    "conv2d_backward_input",
    "conv2d_backward_weight",
    "conv2d_backward_bias",
    "maxpool2d_forward",
    "maxpool2d_backward",
    "unpool2d_forward",
    "unpool2d_backward",
)

#: dtypes every backend accepts for data arrays.
FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))
#: dtype of the pooling switches.
SWITCH_DTYPE = np.dtype(np.int32)


def conv2d_output_hw(hw, khw):
    """Spatial size of a valid (no padding, stride 1) correlation."""
    return hw[0] - khw[0] + 1, hw[1] - khw[1] + 1


def conv2d_input_hw(ohw, khw):
    """Spatial size of the full correlation (``conv2d_backward_input``)."""
    return ohw[0] + khw[0] - 1, ohw[1] + khw[1] - 1


def maxpool2d_output_hw(hw, k):
    """Spatial size after a k x k, stride-k pooling (remainders dropped)."""
    return hw[0] // k, hw[1] // k


# ----------------------------------------------------------------------------- checks
def _shape(a):
    return tuple(int(s) for s in a.shape)


def check_array(name, a, ndim, array_types, dtypes=FLOAT_DTYPES, hint=""):
    """Type, rank, dtype and contiguity of one argument.

    ``array_types`` is the tuple of array classes the backend computes on; ``hint``
    tells the user how to move an array to the right place.
    """
    if not isinstance(a, array_types):
        kinds = " or ".join(f"{t.__module__}.{t.__name__}" for t in array_types)
        raise TypeError(
            f"{name} must be a {kinds}, got {type(a).__module__}.{type(a).__name__}"
            + (f"; {hint}" if hint else "")
        )
    if a.ndim != ndim:
        layout = {4: "(N, C, H, W)", 1: "(F,)"}.get(ndim, f"{ndim}-D")
        raise ValueError(f"{name} must be {ndim}-D {layout}, got shape {_shape(a)}")
    if np.dtype(a.dtype) not in dtypes:
        want = " or ".join(str(d) for d in dtypes)
        raise TypeError(
            f"{name} must have dtype {want}, got {a.dtype}; convert it with "
            f"{name}.astype({'numpy.int32' if dtypes == (SWITCH_DTYPE,) else 'numpy.float32'})"
        )
    if not a.flags.c_contiguous:
        raise ValueError(
            f"{name} must be C-contiguous (shape {_shape(a)}, strides {tuple(a.strides)}); "
            f"pass xp.ascontiguousarray({name})"
        )
    if 0 in a.shape:
        raise ValueError(f"{name} must not be empty, got shape {_shape(a)}")


def _same_dtype(names_arrays):
    (n0, a0), *rest = names_arrays
    for n, a in rest:
        if a.dtype != a0.dtype:
            raise TypeError(
                f"{n} has dtype {a.dtype} but {n0} has dtype {a0.dtype}; "
                f"all float arguments of one op must share a dtype"
            )


def check_conv2d_forward(x, w, b, array_types, hint=""):
    check_array("x", x, 4, array_types, hint=hint)
    check_array("w", w, 4, array_types, hint=hint)
    check_array("b", b, 1, array_types, hint=hint)
    _same_dtype([("x", x), ("w", w), ("b", b)])
    n, c, h, wd = _shape(x)
    f, cw, kh, kw = _shape(w)
    if cw != c:
        raise ValueError(
            f"w has {cw} input channels (shape {_shape(w)}) but x has {c} (shape "
            f"{_shape(x)}); w must have shape ({f}, {c}, KH, KW)"
        )
    if kh > h or kw > wd:
        raise ValueError(
            f"kernel {kh}x{kw} (w shape {_shape(w)}) is larger than the input plane "
            f"{h}x{wd} (x shape {_shape(x)}); the kernel must fit: KH <= H and KW <= W"
        )
    if _shape(b) != (f,):
        raise ValueError(f"b must have shape ({f},) (one bias per output map), got {_shape(b)}")


def check_conv2d_backward_input(dy, w, array_types, hint=""):
    check_array("dy", dy, 4, array_types, hint=hint)
    check_array("w", w, 4, array_types, hint=hint)
    _same_dtype([("dy", dy), ("w", w)])
    if dy.shape[1] != w.shape[0]:
        raise ValueError(
            f"dy has {dy.shape[1]} maps (shape {_shape(dy)}) but w has {w.shape[0]} filters "
            f"(shape {_shape(w)}); dy must have shape (N, {w.shape[0]}, OH, OW)"
        )


def check_conv2d_backward_weight(x, dy, array_types, hint=""):
    check_array("x", x, 4, array_types, hint=hint)
    check_array("dy", dy, 4, array_types, hint=hint)
    _same_dtype([("x", x), ("dy", dy)])
    n, c, h, wd = _shape(x)
    if dy.shape[0] != n:
        raise ValueError(
            f"dy has batch size {dy.shape[0]} (shape {_shape(dy)}) but x has {n} "
            f"(shape {_shape(x)}); they must match"
        )
    oh, ow = dy.shape[2], dy.shape[3]
    if oh > h or ow > wd:
        raise ValueError(
            f"dy plane {oh}x{ow} (shape {_shape(dy)}) is larger than the x plane {h}x{wd} "
            f"(shape {_shape(x)}); dy must be the gradient of a valid correlation of x"
        )


def check_conv2d_backward_bias(dy, array_types, hint=""):
    check_array("dy", dy, 4, array_types, hint=hint)


def check_pool_k(k):
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k must be a positive int (the pooling window side), got {k!r}")
    return int(k)


def check_maxpool2d_forward(x, k, array_types, hint=""):
    check_array("x", x, 4, array_types, hint=hint)
    k = check_pool_k(k)
    h, wd = x.shape[2], x.shape[3]
    if h < k or wd < k:
        raise ValueError(
            f"pooling window {k}x{k} is larger than the input plane {h}x{wd} "
            f"(x shape {_shape(x)}); use k <= min(H, W)"
        )
    return k


def check_hw(name, hw):
    try:
        h, w = (int(v) for v in hw)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a pair of ints (H, W), got {hw!r}") from None
    if h < 1 or w < 1:
        raise ValueError(f"{name} must be positive (H, W), got {hw!r}")
    return h, w


def _check_switched(vname, v, switches, hw_name, hw, array_types, hint):
    check_array(vname, v, 4, array_types, hint=hint)
    check_array("switches", switches, 4, array_types, dtypes=(SWITCH_DTYPE,), hint=hint)
    if _shape(switches) != _shape(v):
        raise ValueError(
            f"switches has shape {_shape(switches)} but {vname} has shape {_shape(v)}; "
            f"switches must have the shape of the pooled maps, as returned by maxpool2d_forward"
        )
    if hw is not None:
        h, w = check_hw(hw_name, hw)
        if h < v.shape[2] or w < v.shape[3]:
            raise ValueError(
                f"{hw_name}={(h, w)} is smaller than the pooled plane {v.shape[2]}x{v.shape[3]} "
                f"({vname} shape {_shape(v)}); pass the (H, W) of the maps that were pooled"
            )
        return h, w
    return None


def check_maxpool2d_backward(dy, switches, input_hw, array_types, hint=""):
    return _check_switched("dy", dy, switches, "input_hw", input_hw, array_types, hint)


def check_unpool2d_forward(y, switches, output_hw, array_types, hint=""):
    return _check_switched("y", y, switches, "output_hw", output_hw, array_types, hint)


def check_unpool2d_backward(dx, switches, array_types, hint=""):
    check_array("dx", dx, 4, array_types, hint=hint)
    check_array("switches", switches, 4, array_types, dtypes=(SWITCH_DTYPE,), hint=hint)
    if switches.shape[:2] != dx.shape[:2]:
        raise ValueError(
            f"switches has shape {_shape(switches)} but dx has shape {_shape(dx)}; their "
            f"first two dimensions (N, C) must match"
        )
    if switches.shape[2] > dx.shape[2] or switches.shape[3] > dx.shape[3]:
        raise ValueError(
            f"switches plane {switches.shape[2]}x{switches.shape[3]} is larger than the dx "
            f"plane {dx.shape[2]}x{dx.shape[3]}; dx must be the unpooled (larger) maps"
        )


def check_switch_values(switches, hw, xp=np):
    """Range check of switch values: every backend runs it on host arrays before a
    switch-driven op (two reductions); GPU backends skip it (see the module docstring)."""
    lo, hi = int(switches.min()), int(switches.max())
    limit = hw[0] * hw[1]
    if lo < 0 or hi >= limit:
        raise ValueError(
            f"switches hold flat in-plane indices in [{lo}, {hi}] but the plane {hw[0]}x{hw[1]} "
            f"has indices 0..{limit - 1}; pass the switches maxpool2d_forward returned for maps "
            f"of that size"
        )


def check_switch_windows(switches, hw):
    """The whole legality rule of the module docstring, on host arrays: for one window size
    k that pools ``hw`` to the switches' plane, every switch lies inside its own k x k
    window (so it is in range and unique in its plane). Raises ValueError naming the first
    offending switch; returns k."""
    switches = np.asarray(switches)
    h, w = check_hw("hw", hw)
    oh, ow = switches.shape[2], switches.shape[3]
    ks = pool_window_sizes((oh, ow), (h, w))
    if not ks:
        raise ValueError(f"no pooling window size k turns a {h}x{w} plane into the "
                         f"{oh}x{ow} plane of the switches (need H//k == {oh} and W//k == {ow})")
    s = switches.astype(np.int64)
    rows, cols = np.divmod(s, w)
    i = np.arange(oh).reshape(oh, 1)
    j = np.arange(ow).reshape(1, ow)
    bad = None
    for k in ks:
        ok = (s >= 0) & (s < h * w) & (rows // k == i) & (cols // k == j)
        if ok.all():
            return k
        if bad is None:
            bad = tuple(int(v) for v in np.argwhere(~ok)[0])
    n, c, bi, bj = bad
    raise ValueError(
        f"switches[{n}, {c}, {bi}, {bj}] = {int(switches[bad])} (row {int(rows[bad])}, column "
        f"{int(cols[bad])} of the {h}x{w} plane) is not inside its own pooling window "
        f"(window size k in {list(ks)}); pass the switches maxpool2d_forward returned")
