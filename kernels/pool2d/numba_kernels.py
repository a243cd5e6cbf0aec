"""Max-pooling with switches and switch unpooling as numba-cuda kernels: the Python
translation of ``kernels/pool2d/maxpool2d.cu`` and ``kernels/pool2d/unpool2d.cu``.

Versions (ladder order; the CUDA C files carry the same names and thread mappings):

maxpool2d_forward   naive   thread per output; row-major scan, replace only on a value that beats
                            (larger, or NaN over a number: first max / first NaN wins); int32 h*W+w
maxpool2d_backward  naive   scatter: thread per dy value into a zeroed dx (windows never overlap)
maxpool2d_backward  gather  thread per dx pixel reads its window's switch (Caffe): no memset/atomics
unpool2d_forward    naive   the maxpool2d_backward naive kernel (the contract: the same op)
unpool2d_forward    gather  the maxpool2d_backward gather kernel
unpool2d_backward   naive   thread per output: dy[n,c,i,j] = dx[n,c].flat[switch] (a gather)

Four kernels serve the six (op, version) pairs: by the contract ``unpool2d_forward`` *is*
``maxpool2d_backward``, so its versions launch maxpool2d_backward's kernels, here and in CUDA C
(``kernels/launch_spec.py``: ``SHARED_KERNELS``).

Switches are int32 flat in-plane indices ``h*W + w``. Pooling windows never overlap, so the
scatter never has two values for one pixel and needs no atomics; the gather is the
deterministic form that also writes the zeros (no memset).

The gather and the pooling window size: the contract's ``maxpool2d_backward(dy, switches,
input_hw)`` does not pass k. A pixel (h, v) may only hold the maximum of a window that
covers it; for the k that produced the switches, that is window (h//k, v//k). Every k with
``H//k == OH`` and ``W//k == OW`` is possible (usually exactly one: k=2 on 24x24 -> 12x12);
the launcher computes the range [kmin, kmax] of such k (``launch_spec.gather_window_bracket``,
shared with the CUDA C launcher) and each thread checks the windows (h//kmax .. h//kmin) x
(v//kmax .. v//kmin) -- one window when k is unique, a handful otherwise. The gather therefore
needs switches that lie inside their own window, as ``maxpool2d_forward`` returns them (the
scatter takes any in-range switches). Where no k fits the plane at all, the gather's launcher
runs the scatter instead (same result by the contract's definition), as the CUDA C one does.

Illegal switches (the contract, kernels/contract.py, has the table): out-of-range ones are
refused on the host in the simulator; on a GPU nothing checks them, so the scatters skip them
and ``unpool2d_backward`` reads them as 0 -- never an access outside the plane.

Reading guide (numba here, CUDA C in the .cu files): ``cuda.grid(1)`` is
``blockIdx.x*blockDim.x + threadIdx.x``; ``nchw_of`` turns it into a 4-D position, because
``x[n, c, h, v]`` replaces the flat offset ``((n*C + c)*H + h)*W + v`` (no pointer
arithmetic: numba arrays carry their shape, CUDA C passes sizes as ints);
``dx[n, c, s // W, s % W]`` is ``dx[(size_t)plane*H*W + sw[idx]]``; ``int32(arg)`` is the
store into the ``int*`` switches; a zeroed output comes from ``rt.zeros`` (``cupy.zeros``: a
memset on the stream) before the scatter launch. Kernel names match the CUDA C files' one to
one; block size and grids are the CUDA C launcher's (``kernels/launch_spec.py``).
A simulator example is in ``kernels/conv2d/numba_kernels.py``'s module docstring.
"""
from __future__ import annotations

import numpy as np
from numba import cuda, float32, int32

from ..launch_spec import gather_window_bracket, one_thread_per


# ============================================================================ thread maps
# Every pooling kernel runs one thread per element of a 4-D array (a 1-D grid of
# launch_spec.THREADS-thread blocks, launch_spec.one_thread_per):
# these two device functions turn the thread's flat index into the element's 4-D position.
# CUDA C needs no such step: it indexes the flat arrays (plane = idx / (OH*OW)).
@cuda.jit(device=True)
def nchw_of(idx, shape):
    """(n, c, h, v) of flat index ``idx`` in a C-contiguous array of ``shape`` (N, C, H, W)."""
    _, C, H, W = shape
    return idx // (C * H * W), (idx // (H * W)) % C, (idx // W) % H, idx % W


@cuda.jit(device=True)
def pooled_switch(sw, idx, H, W):
    """For thread ``idx`` of a one-thread-per-pooled-value kernel: its pooled position
    (n, c, i, j) and the switch there, or -1 for a switch outside the H x W plane (on a GPU
    nothing checks them: the caller skips it rather than touch memory outside the plane)."""
    n, c, i, j = nchw_of(idx, sw.shape)
    s = sw[n, c, i, j]
    if s < 0 or s >= H * W:
        s = -1
    return n, c, i, j, s


# ============================================================================ maxpool forward
@cuda.jit
def maxpool2d_forward_naive(y, sw, x, k):
    """naive: one thread per output (n,c,i,j) scans its k*k window (thread idx ->
    y.flat[idx], sw.flat[idx]).

    Plan: row-major scan, replace only on a value that beats the running maximum: strictly
    larger, or NaN over a number (``val != val`` is isnan). So ties go to the first maximum
    in row-major window order and a window holding a NaN pools to its first NaN, like the
    NumPy reference (and the CUDA C kernel); write the maximum and its
    flat in-plane index h*W + v as int32. Each x value is read by exactly one thread: one
    pass over x, memory-bound, nothing to tile. Constraints: grid (ceil(N*C*OH*OW / 256)),
    block (256); remainder rows/columns (H % k, W % k) are never read.
    """
    W = x.shape[3]
    idx = cuda.grid(1)
    if idx >= y.size:
        return
    n, c, i, j = nchw_of(idx, y.shape)
    arg = (i * k) * W + j * k
    best = x[n, c, i * k, j * k]
    for p in range(k):
        for q in range(k):
            val = x[n, c, i * k + p, j * k + q]
            if val > best or (val != val and best == best):   # beats; first one wins ties
                best = val
                arg = (i * k + p) * W + j * k + q
    y[n, c, i, j] = best
    sw[n, c, i, j] = int32(arg)


def launch_maxpool2d_forward_naive(rt, x, k):
    n, c, h, w = x.shape
    y = rt.empty((n, c, h // k, w // k))
    sw = rt.empty((n, c, h // k, w // k), dtype=np.int32)
    rt.launch(maxpool2d_forward_naive, *one_thread_per(y.size), (y, sw, x, k))
    return y, sw


# ============================================================================ maxpool backward
@cuda.jit
def maxpool2d_backward_naive(dx, dy, sw):
    """naive (scatter): dx zeroed first (a memset), then one thread per dy value writes it to
    its switch (thread idx -> dy.flat[idx], stored at dx[n, c].flat[sw.flat[idx]]).

    Windows never overlap, so no two threads hit one pixel: no atomics. Costs a memset plus
    scattered (uncoalesced) stores. Constraints: dx zero before the launch; grid
    (ceil(N*C*OH*OW / 256)), block (256).
    """
    W = dx.shape[3]
    idx = cuda.grid(1)
    if idx >= dy.size:
        return
    n, c, i, j, s = pooled_switch(sw, idx, dx.shape[2], W)
    if s >= 0:                                  # -1: out of range, skipped (never written)
        dx[n, c, s // W, s % W] = dy[n, c, i, j]


def launch_maxpool2d_backward_naive(rt, dy, sw, input_hw):
    dx = rt.zeros((dy.shape[0], dy.shape[1], input_hw[0], input_hw[1]))
    rt.launch(maxpool2d_backward_naive, *one_thread_per(dy.size), (dx, dy, sw))
    return dx


@cuda.jit
def maxpool2d_backward_gather(dx, dy, sw, kmin, kmax):
    """gather: one thread per input pixel (n,c,h,v) (thread idx -> dx.flat[idx]): it reads
    the switch of the window containing it and writes dy there if the switch is itself,
    else 0 (Caffe's pooling backward).

    Every dx element written exactly once, in order: coalesced, deterministic, no memset, no
    atomics. k is not passed (see the module doc): the windows h//kmax .. h//kmin (clipped
    to the pooled plane) are checked -- one window when kmin == kmax. Constraints: grid
    (ceil(N*C*H*W / 256)), block (256); each switch must lie in its own window, as the
    forward pass makes them.
    """
    OH, OW = dy.shape[2], dy.shape[3]
    W = dx.shape[3]
    idx = cuda.grid(1)
    if idx >= dx.size:
        return
    n, c, h, v = nchw_of(idx, dx.shape)
    me = h * W + v
    val = float32(0)
    for i in range(h // kmax, min(h // kmin, OH - 1) + 1):
        for j in range(v // kmax, min(v // kmin, OW - 1) + 1):
            if sw[n, c, i, j] == me:
                val = dy[n, c, i, j]
    dx[n, c, h, v] = val


def launch_maxpool2d_backward_gather(rt, dy, sw, input_hw):
    bracket = gather_window_bracket(dy.shape[2:], input_hw)
    if bracket is None:         # no window size pools input_hw to dy's plane: the scatter
        return launch_maxpool2d_backward_naive(rt, dy, sw, input_hw)
    dx = rt.empty((dy.shape[0], dy.shape[1], input_hw[0], input_hw[1]))
    rt.launch(maxpool2d_backward_gather, *one_thread_per(dx.size), (dx, dy, sw, *bracket))
    return dx


# ============================================================================ unpool forward
# By the contract, unpool2d_forward *is* the max-pool backward: y placed at its switches, zeros
# elsewhere. So its versions launch the max-pool backward kernels above (the CUDA C backend
# does the same with maxpool2d.cu's): naive = scatter into a zeroed x, gather = one thread per
# output pixel, no memset, no atomics. See VERSIONS below.


# ============================================================================ unpool backward
@cuda.jit
def unpool2d_backward_naive(dy, dx, sw):
    """naive: one thread per pooled position (thread idx -> dy.flat[idx]): one coalesced
    read of the switch, one gathered read of dx, one coalesced write. Nothing left to save.
    Constraints: grid (ceil(N*C*OH*OW / 256)), block (256).
    """
    W = dx.shape[3]
    idx = cuda.grid(1)
    if idx >= dy.size:
        return
    n, c, i, j, s = pooled_switch(sw, idx, dx.shape[2], W)
    if s >= 0:
        dy[n, c, i, j] = dx[n, c, s // W, s % W]
    else:                                       # -1: out of range, read as 0 (never outside)
        dy[n, c, i, j] = float32(0)


def launch_unpool2d_backward_naive(rt, dx, sw):
    dy = rt.empty(sw.shape)
    rt.launch(unpool2d_backward_naive, *one_thread_per(dy.size), (dy, dx, sw))
    return dy


# ============================================================================ tables
VERSIONS = {
    "maxpool2d_forward": {"naive": launch_maxpool2d_forward_naive},
    "maxpool2d_backward": {"naive": launch_maxpool2d_backward_naive,
                           "gather": launch_maxpool2d_backward_gather},
    "unpool2d_forward": {"naive": launch_maxpool2d_backward_naive,      # the same op
                         "gather": launch_maxpool2d_backward_gather},
    "unpool2d_backward": {"naive": launch_unpool2d_backward_naive},
}

#: Default versions: the gathers (coalesced, deterministic, no memset). Not yet timed on a GPU.
DEFAULTS = {
    "maxpool2d_forward": "naive",
    "maxpool2d_backward": "gather",
    "unpool2d_forward": "gather",
    "unpool2d_backward": "naive",
}

# kernel name -> (kernel, numba signature of the arrays it is launched with), for the PTX
# compile check (tests/test_numba_compile.py).
_F4, _I4 = "float32[:, :, :, ::1]", "int32[:, :, :, ::1]"
PTX_SIGNATURES = {kernel.py_func.__name__: (kernel, sig) for kernel, sig in [
    (maxpool2d_forward_naive, f"({_F4}, {_I4}, {_F4}, int64)"),
    (maxpool2d_backward_naive, f"({_F4}, {_F4}, {_I4})"),
    (maxpool2d_backward_gather, f"({_F4}, {_F4}, {_I4}, int64, int64)"),
    (unpool2d_backward_naive, f"({_F4}, {_F4}, {_I4})"),
]}
