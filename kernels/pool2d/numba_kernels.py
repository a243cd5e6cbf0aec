"""Max-pooling with switches and switch unpooling as numba-cuda kernels: the Python
translation of ``kernels/pool2d/maxpool2d.cu`` and ``kernels/pool2d/unpool2d.cu``.

Versions (ladder order; the CUDA C files carry the same names and thread mappings):

maxpool2d_forward    naive   one thread per output; row-major window scan, strict '>' (ties -> first); switch = h*W+w (int32)
maxpool2d_backward   naive   scatter: one thread per dy value, stored at its switch in a zeroed dx
maxpool2d_backward   gather  one thread per dx pixel: reads the switch of its window (Caffe); writes every dx once, no atomics
unpool2d_forward     naive   the same scatter as maxpool2d_backward (the contract says they are one op)
unpool2d_forward     gather  the same gather as maxpool2d_backward
unpool2d_backward    naive   one thread per output: dy[n,c,i,j] = dx[n,c].flat[switch] (a gather)

Switches are int32 flat in-plane indices ``h*W + w``. Pooling windows never overlap, so the
scatter never has two values for one pixel and needs no atomics; the gather is the
deterministic form that also writes the zeros (no memset).

The gather and the pooling window size: the contract's ``maxpool2d_backward(dy, switches,
input_hw)`` does not pass k. A pixel (h, v) may only hold the maximum of a window that
covers it; for the k that produced the switches, that is window (h//k, v//k). Every k with
``H//k == OH`` and ``W//k == OW`` is possible (usually exactly one: k=2 on 24x24 -> 12x12);
the launcher computes the range [kmin, kmax] of such k and each thread checks the windows
(h//kmax .. h//kmin) x (v//kmax .. v//kmin) -- one window when k is unique, a handful
otherwise. The gather therefore needs switches that lie inside their own window, as
``maxpool2d_forward`` returns them (the scatter takes any in-range switches).

Reading guide (numba here, CUDA C in the .cu files): ``cuda.grid(1)`` is
``blockIdx.x*blockDim.x + threadIdx.x``; ``x[n, c, h, v]`` replaces the flat offset
``((n*C + c)*H + h)*W + v`` (no pointer arithmetic: numba arrays carry their shape, CUDA C
passes sizes as ints); ``dx[n, c, s // W, s % W]`` is ``dx_plane[s]`` with ``dx_plane = dx +
(n*C + c)*H*W``; ``numpy.int32(...)`` is the ``(int)`` cast of the switch; a zeroed output
comes from ``rt.zeros`` (``cudaMemsetAsync`` / ``cupy.zeros``) before the scatter launch.
A simulator example is in ``kernels/conv2d/numba_kernels.py``'s module docstring.
"""
from __future__ import annotations

import numpy as np
from numba import cuda, float32, int32

BLOCK = 256                 # threads per block, all pooling kernels (1-D grids)


def _cdiv(a, b):
    return (a + b - 1) // b


# ============================================================================ maxpool forward
@cuda.jit
def maxpool2d_forward_naive_kernel(x, k, y, switches):
    """naive: one thread per output y[n,c,i,j] (flat NCHW index = cuda.grid(1)).

    Plan: scan the k x k window row by row, keep the first strictly larger value (so ties
    go to the first element in row-major window order, like the NumPy reference), write
    the maximum and its flat in-plane index h*W + v as int32. Constraints: 1-D grid over
    N*C*OH*OW; remainder rows/columns (H % k, W % k) are never read.
    """
    N, C, H, W = x.shape
    OH, OW = y.shape[2], y.shape[3]
    idx = cuda.grid(1)
    if idx >= N * C * OH * OW:
        return
    j = idx % OW
    i = (idx // OW) % OH
    c = (idx // (OW * OH)) % C
    n = idx // (OW * OH * C)
    h0, v0 = i * k, j * k
    best = x[n, c, h0, v0]
    arg = h0 * W + v0
    for p in range(k):
        for q in range(k):
            val = x[n, c, h0 + p, v0 + q]
            if val > best:                       # strict: the first maximum wins a tie
                best = val
                arg = (h0 + p) * W + v0 + q
    y[n, c, i, j] = best
    switches[n, c, i, j] = int32(arg)


def maxpool2d_forward_naive(rt, x, k):
    n, c, h, w = x.shape
    y = rt.empty((n, c, h // k, w // k))
    switches = rt.empty((n, c, h // k, w // k), dtype=np.int32)
    rt.launch(maxpool2d_forward_naive_kernel, _cdiv(y.size, BLOCK), BLOCK, (x, k, y, switches))
    return y, switches


# ============================================================== switch scatter and gather
@cuda.jit
def unpool2d_scatter_kernel(v, switches, out):
    """naive (maxpool2d_backward, unpool2d_forward): one thread per pooled value
    v[n,c,i,j], stored at out[n,c].flat[switch].

    Plan: out is zeroed before the launch; each thread does one load of its switch, one
    load and one store. Windows do not overlap, so no two threads hit one pixel and a plain
    store suffices (no atomics). Stores are scattered (uncoalesced). Constraints: 1-D grid
    over N*C*OH*OW.
    """
    N, C, OH, OW = v.shape
    W = out.shape[3]
    idx = cuda.grid(1)
    if idx >= N * C * OH * OW:
        return
    j = idx % OW
    i = (idx // OW) % OH
    c = (idx // (OW * OH)) % C
    n = idx // (OW * OH * C)
    s = switches[n, c, i, j]
    out[n, c, s // W, s % W] = v[n, c, i, j]


def _scatter(rt, v, switches, hw):
    n, c = v.shape[:2]
    out = rt.zeros((n, c, hw[0], hw[1]))
    rt.launch(unpool2d_scatter_kernel, _cdiv(v.size, BLOCK), BLOCK, (v, switches, out))
    return out


def maxpool2d_backward_naive(rt, dy, switches, input_hw):
    return _scatter(rt, dy, switches, input_hw)


def unpool2d_forward_naive(rt, y, switches, output_hw):
    return _scatter(rt, y, switches, output_hw)


@cuda.jit
def unpool2d_gather_kernel(v, switches, kmin, kmax, out):
    """gather (maxpool2d_backward, unpool2d_forward): one thread per output pixel
    out[n,c,h,w] (Caffe's MaxPoolBackward): it looks at the switch of each window that can
    cover it and copies that window's value if the switch names this pixel, else 0.

    Plan: every output element written exactly once (no memset, no atomics, coalesced
    stores); the candidate windows are rows h//kmax .. h//kmin, columns w//kmax .. w//kmin,
    clipped to the pooled plane (one window when k is known: kmin == kmax). Pixels in the
    dropped remainder rows/columns match no switch and get 0. Constraints: 1-D grid over
    N*C*H*W; switches must lie inside their own window (as maxpool2d_forward returns them).
    """
    N, C, OH, OW = v.shape
    H, W = out.shape[2], out.shape[3]
    idx = cuda.grid(1)
    if idx >= N * C * H * W:
        return
    w = idx % W
    h = (idx // W) % H
    c = (idx // (W * H)) % C
    n = idx // (W * H * C)
    flat = h * W + w
    val = float32(0)
    for i in range(h // kmax, min(h // kmin, OH - 1) + 1):     # usually exactly one window
        for j in range(w // kmax, min(w // kmin, OW - 1) + 1):
            if switches[n, c, i, j] == flat:   # switches of distinct windows never coincide
                val = v[n, c, i, j]
    out[n, c, h, w] = val


def _k_range(pooled, full):
    """All window sizes k with full // k == pooled, as (kmin, kmax)."""
    kmax = full // pooled
    kmin = full // (pooled + 1) + 1
    return kmin, kmax


def _gather(rt, v, switches, hw):
    n, c, oh, ow = v.shape
    kmin_h, kmax_h = _k_range(oh, hw[0])
    kmin_w, kmax_w = _k_range(ow, hw[1])
    kmin, kmax = max(kmin_h, kmin_w), min(kmax_h, kmax_w)
    if kmin > kmax:
        raise ValueError(
            f"no pooling window size k gives a {oh}x{ow} pooled plane from a {hw[0]}x{hw[1]} "
            f"plane (need H//k == {oh} and W//k == {ow}); pass the (H, W) of the maps that "
            f"were pooled, or use version='naive' (a scatter that takes any switches)")
    out = rt.empty((n, c, hw[0], hw[1]))
    rt.launch(unpool2d_gather_kernel, _cdiv(out.size, BLOCK), BLOCK,
              (v, switches, kmin, kmax, out))
    return out


def maxpool2d_backward_gather(rt, dy, switches, input_hw):
    return _gather(rt, dy, switches, input_hw)


def unpool2d_forward_gather(rt, y, switches, output_hw):
    return _gather(rt, y, switches, output_hw)


# ============================================================================ unpool backward
@cuda.jit
def unpool2d_backward_naive_kernel(dx, switches, dy):
    """naive: one thread per output dy[n,c,i,j] = dx[n,c].flat[switches[n,c,i,j]] (a gather:
    coalesced stores, scattered loads; no atomics). Constraints: 1-D grid over N*C*OH*OW."""
    N, C, OH, OW = dy.shape
    W = dx.shape[3]
    idx = cuda.grid(1)
    if idx >= N * C * OH * OW:
        return
    j = idx % OW
    i = (idx // OW) % OH
    c = (idx // (OW * OH)) % C
    n = idx // (OW * OH * C)
    s = switches[n, c, i, j]
    dy[n, c, i, j] = dx[n, c, s // W, s % W]


def unpool2d_backward_naive(rt, dx, switches):
    dy = rt.empty(switches.shape)
    rt.launch(unpool2d_backward_naive_kernel, _cdiv(dy.size, BLOCK), BLOCK, (dx, switches, dy))
    return dy


# ============================================================================ tables
VERSIONS = {
    "maxpool2d_forward": {"naive": maxpool2d_forward_naive},
    "maxpool2d_backward": {"naive": maxpool2d_backward_naive, "gather": maxpool2d_backward_gather},
    "unpool2d_forward": {"naive": unpool2d_forward_naive, "gather": unpool2d_forward_gather},
    "unpool2d_backward": {"naive": unpool2d_backward_naive},
}

DEFAULTS = {
    "maxpool2d_forward": "naive",
    "maxpool2d_backward": "gather",
    "unpool2d_forward": "gather",
    "unpool2d_backward": "naive",
}

_F4, _I4 = "float32[:, :, :, ::1]", "int32[:, :, :, ::1]"
PTX_SIGNATURES = {
    "maxpool2d_forward_naive_kernel": (maxpool2d_forward_naive_kernel,
                                       f"({_F4}, int64, {_F4}, {_I4})"),
    "unpool2d_scatter_kernel": (unpool2d_scatter_kernel, f"({_F4}, {_I4}, {_F4})"),
    "unpool2d_gather_kernel": (unpool2d_gather_kernel, f"({_F4}, {_I4}, int64, int64, {_F4})"),
    "unpool2d_backward_naive_kernel": (unpool2d_backward_naive_kernel, f"({_F4}, {_I4}, {_F4})"),
}
