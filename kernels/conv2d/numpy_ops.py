"""NumPy versions of the convolution ops.

Versions, ladder order (see ``kernels/contract.py`` for the contract):

* ``naive`` -- one Python loop nest per op, written to be read: the definition of each op
  that every other version (CUDA C, numba, ``fast``) is tested against. Slow: use it on
  small shapes only.
* ``im2col`` -- im2col through a zero-copy sliding-window view of NCHW x, then one BLAS
  GEMM per op; ``conv2d_backward_input`` does its GEMM first and then a col2im of KH*KW
  strided adds. Simple, but its column copy gathers C with a stride of H*W, and its col2im
  reads every cache line of the columns KH*KW times.
* ``fast`` (default) -- the same GEMMs with the layouts BLAS and the copies want, and the
  work cut into cache-sized batch tasks run on all cores (see the block comment above
  ``conv2d_forward_fast``): channels-last columns for the deep layers (contiguous C-runs in
  im2col and col2im), per-image NCHW columns for the first layers (the big output comes
  out of the GEMM already NCHW; the bias rides in the GEMM as a row of ones).
  For the deep layers whose kernel covers much of a small plane it takes the ``dft`` plan.
  ``bench/bench_conv2d.py`` times every version at the paper's shapes.
* ``dft`` -- the convolution theorem with the 2-D DFT written as real matrices: every
  plane is transformed by one GEMM with a (2*bins, pixels) DFT matrix, the channel sums
  become three real GEMMs per frequency bin (a complex product by Gauss's trick), and one
  more GEMM transforms back; every stage runs in batch tasks on all cores.
  The transforms are circular, and with the transform size = the input plane no output
  wraps around. At the paper's conv2 (100->150 5x5 on 12x12) it needs 2.9x fewer
  multiply-adds than the im2col GEMM (see ``_dft_plan``); a NaN or Inf spreads over the
  whole image (every output mixes every pixel), so ``fast`` checks the result and falls
  back to its GEMM plans for non-finite data, where they stay local.

All functions take arguments that already passed the contract checks, and return new
C-contiguous arrays of the input dtype.
"""
from __future__ import annotations

import functools
import math

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from ..numpy_threads import batch_tasks, scratch


# ============================================================================ naive
def conv2d_forward_naive(x, w, b):
    """y[n,f,i,j] = b[f] + sum_{c,p,q} x[n,c,i+p,j+q] * w[f,c,p,q]."""
    n_, c_, h, wd = x.shape
    f_, _, kh, kw = w.shape
    oh, ow = h - kh + 1, wd - kw + 1
    y = np.empty((n_, f_, oh, ow), dtype=x.dtype)
    for n in range(n_):
        for f in range(f_):
            for i in range(oh):
                for j in range(ow):
                    acc = b[f]
                    for c in range(c_):
                        for p in range(kh):
                            for q in range(kw):
                                acc += x[n, c, i + p, j + q] * w[f, c, p, q]
                    y[n, f, i, j] = acc
    return y


def conv2d_backward_input_naive(dy, w):
    """dx[n,c,h,v] = sum_{f,p,q} dy[n,f,h-p,v-q] * w[f,c,p,q] (terms inside dy only).

    Read as: the full correlation of dy with w flipped in both spatial dimensions, which
    is also the tied-weight CAE decoder.
    """
    n_, f_, oh, ow = dy.shape
    _, c_, kh, kw = w.shape
    h, wd = oh + kh - 1, ow + kw - 1
    dx = np.zeros((n_, c_, h, wd), dtype=dy.dtype)
    for n in range(n_):
        for c in range(c_):
            for hh in range(h):
                for vv in range(wd):
                    acc = dx.dtype.type(0)
                    for f in range(f_):
                        for p in range(kh):
                            for q in range(kw):
                                i, j = hh - p, vv - q
                                if 0 <= i < oh and 0 <= j < ow:
                                    acc += dy[n, f, i, j] * w[f, c, p, q]
                    dx[n, c, hh, vv] = acc
    return dx


def conv2d_backward_weight_naive(x, dy):
    """dw[f,c,p,q] = sum_{n,i,j} dy[n,f,i,j] * x[n,c,i+p,j+q]."""
    n_, c_, h, wd = x.shape
    _, f_, oh, ow = dy.shape
    kh, kw = h - oh + 1, wd - ow + 1
    dw = np.zeros((f_, c_, kh, kw), dtype=x.dtype)
    for f in range(f_):
        for c in range(c_):
            for p in range(kh):
                for q in range(kw):
                    acc = dw.dtype.type(0)
                    for n in range(n_):
                        for i in range(oh):
                            for j in range(ow):
                                acc += dy[n, f, i, j] * x[n, c, i + p, j + q]
                    dw[f, c, p, q] = acc
    return dw


def conv2d_backward_bias_naive(dy):
    """db[f] = sum_{n,i,j} dy[n,f,i,j]."""
    n_, f_, oh, ow = dy.shape
    db = np.zeros((f_,), dtype=dy.dtype)
    for f in range(f_):
        acc = db.dtype.type(0)
        for n in range(n_):
            for i in range(oh):
                for j in range(ow):
                    acc += dy[n, f, i, j]
        db[f] = acc
    return db


# =========================================================================== im2col
def _im2col(x, kh, kw):
    """Columns of x as a (N*OH*OW, C*KH*KW) matrix, row (n,i,j), column (c,p,q).

    A zero-copy sliding-window view, materialised once by the reshape (the only copy)."""
    n_, c_, h, wd = x.shape
    oh, ow = h - kh + 1, wd - kw + 1
    win = sliding_window_view(x, (kh, kw), axis=(2, 3))        # (N,C,OH,OW,KH,KW) view
    return win.transpose(0, 2, 3, 1, 4, 5).reshape(n_ * oh * ow, c_ * kh * kw)


def conv2d_forward_im2col(x, w, b):
    """im2col, then y_cols = cols @ W^T + b: one GEMM of (N*OH*OW, CKK) x (CKK, F)."""
    n_, c_, h, wd = x.shape
    f_, _, kh, kw = w.shape
    oh, ow = h - kh + 1, wd - kw + 1
    cols = _im2col(x, kh, kw)
    y = cols @ w.reshape(f_, -1).T                              # (N*OH*OW, F)
    y += b
    return np.ascontiguousarray(y.reshape(n_, oh, ow, f_).transpose(0, 3, 1, 2))


def conv2d_backward_input_im2col(dy, w):
    """GEMM first, then col2im: cols = dy_rows @ W, scattered back by KH*KW strided adds.

    dy_rows is dy as an (N*OH*OW, F) matrix; cols (N,OH,OW,C,KH,KW) holds, for every output
    position, its contribution to the KH*KW input pixels under the kernel; col2im adds
    cols[..., p, q] into dx shifted by (p, q), accumulating in channels-last (N,H,W,C) so
    each add walks contiguous memory."""
    n_, f_, oh, ow = dy.shape
    _, c_, kh, kw = w.shape
    h, wd = oh + kh - 1, ow + kw - 1
    dy_rows = dy.transpose(0, 2, 3, 1).reshape(n_ * oh * ow, f_)
    cols = (dy_rows @ w.reshape(f_, c_ * kh * kw)).reshape(n_, oh, ow, c_, kh, kw)
    dx = np.zeros((n_, h, wd, c_), dtype=dy.dtype)
    for p in range(kh):
        for q in range(kw):
            dx[:, p:p + oh, q:q + ow, :] += cols[:, :, :, :, p, q]
    return np.ascontiguousarray(dx.transpose(0, 3, 1, 2))


def conv2d_backward_weight_im2col(x, dy):
    """dW = dy_rows^T @ cols: one GEMM of (F, N*OH*OW) x (N*OH*OW, C*KH*KW)."""
    n_, c_, h, wd = x.shape
    _, f_, oh, ow = dy.shape
    kh, kw = h - oh + 1, wd - ow + 1
    cols = _im2col(x, kh, kw)
    dy_rows = dy.transpose(0, 2, 3, 1).reshape(n_ * oh * ow, f_)
    return np.ascontiguousarray((dy_rows.T @ cols).reshape(f_, c_, kh, kw))


def conv2d_backward_bias_im2col(dy):
    """db = sum of dy over batch and plane."""
    return np.ascontiguousarray(dy.sum(axis=(0, 2, 3), dtype=dy.dtype))


# ============================================================================= fast
# Two GEMM plans, picked per call by the shape (``_plane_plan``):
#
# * rows plan (deep layers: many channels, small planes, e.g. 100->150 5x5 on 12x12): a
#   batch slice is one matrix of n*OH*OW rows.  x is copied to channels-last (N,H,W,C) so
#   an im2col row is KH*KW runs of C contiguous values (column order (p,q,c)), and the
#   col2im of the input gradient adds KH*KW blocks of contiguous C-runs.
# * plane plan (first layers: few channels, large planes, e.g. 1->100 5x5 on 28x28): each
#   image is a (C*KH*KW, OH*OW) column matrix in NCHW order, and a stacked matmul produces
#   the (n,F,OH*OW) = NCHW result directly, with no transpose of the (large) output.
#
# Either way the batch is cut into tasks of a few images whose whole pipeline (im2col ->
# GEMM -> col2im / transpose) runs on data that stays in the caches; the tasks run on all
# cores with single-threaded BLAS (``batch_tasks``, kernels/numpy_threads.py), the
# temporaries are per-thread ``scratch`` buffers, and float32 stays float32 throughout.


def _plane_plan(c, kh, kw, oh, ow):
    """True when an image's output plane (OH*OW) is at least as long as a column
    (C*KH*KW): per-image GEMMs in NCHW then beat channels-last GEMMs + transposes."""
    return oh * ow >= c * kh * kw


def _view(a, shape):
    """``a`` seen with ``shape`` without copying (raises instead of silently copying)."""
    v = a.view()
    v.shape = shape
    return v


def _cols_rows(x, kh, kw):
    """im2col rows of a batch slice (scratch): (n*OH*OW, KH*KW*C), column order (p,q,c)."""
    n_, c_, h, wd = x.shape
    oh, ow = h - kh + 1, wd - kw + 1
    xh = scratch("x_nhwc", (n_, h, wd, c_), x.dtype)
    np.copyto(xh, x.transpose(0, 2, 3, 1))
    cols = scratch("cols", (n_, oh, ow, kh, kw, c_), x.dtype)
    win = sliding_window_view(xh, (kh, kw), axis=(1, 2))                 # (n,OH,OW,C,KH,KW)
    np.copyto(cols, win.transpose(0, 1, 2, 4, 5, 3))
    return cols.reshape(n_ * oh * ow, kh * kw * c_)


def _cols_planes(x, kh, kw, ones_row=False):
    """Per-image columns of a batch slice (scratch): (n, C*KH*KW [+1], OH*OW), row (c,p,q);
    with ``ones_row`` a last row of ones, so a GEMM with [W | b] adds the bias."""
    n_, c_, h, wd = x.shape
    oh, ow = h - kh + 1, wd - kw + 1
    k = c_ * kh * kw
    cols = scratch("cols", (n_, k + ones_row, oh * ow), x.dtype)
    if ones_row:
        cols[:, k] = 1
    win = sliding_window_view(x, (kh, kw), axis=(2, 3))                  # (n,C,OH,OW,KH,KW)
    np.copyto(_view(cols[:, :k], (n_, c_, kh, kw, oh, ow)), win.transpose(0, 1, 4, 5, 2, 3))
    return cols


#: the fast versions' GEMM (a module attribute, so bench/profile_step.py can time it).
_gemm = np.matmul


def _col2im_planes(cols, d, oh, ow):
    """col2im into an NCHW slice ``d`` (zeroed here): ``cols`` (n,C,KH,KW,OH,OW) added in
    KH*KW shifted row-runs of OW values."""
    kh, kw = cols.shape[2:4]
    d.fill(0)
    for p in range(kh):
        for q in range(kw):
            d[:, :, p:p + oh, q:q + ow] += cols[:, :, p, q]


def _col2im_rows(cols, dxh, oh, ow):
    """col2im into a channels-last slice ``dxh`` (zeroed here): ``cols`` (n,OH,OW,KH,KW,C)
    added in KH*KW shifted blocks of contiguous C-runs."""
    kh, kw = cols.shape[3:5]
    dxh.fill(0)
    for p in range(kh):
        for q in range(kw):
            dxh[:, p:p + oh, q:q + ow, :] += cols[:, :, :, p, q, :]


def _nhwc_to_nchw(src, out, bias=None):
    """``out`` (n,C,H,W) <- ``src`` (n,H,W,C) [+ bias (C,1,1)]: the layout copy back."""
    if bias is None:
        np.copyto(out, src.transpose(0, 3, 1, 2))
    else:
        np.add(src.transpose(0, 3, 1, 2), bias, out=out)


def _dy_rows(dy):
    """A batch slice of dy as an (n*OH*OW, F) matrix (scratch, channels-last copy)."""
    n_, f_, oh, ow = dy.shape
    rows = scratch("dy_rows", (n_, oh, ow, f_), dy.dtype)
    np.copyto(rows, dy.transpose(0, 2, 3, 1))
    return rows.reshape(n_ * oh * ow, f_)


def conv2d_forward_fast(x, w, b):
    """Per task of images: plane plan y_n = [W | b] @ [cols_n ; 1] (stacked GEMM, NCHW out,
    bias inside the GEMM); rows plan y_rows = cols @ W^T, then one pass that transposes
    the slice to NCHW and adds the bias. The ``dft`` plan where ``_dft_plan`` picks it."""
    n_, c_, h, wd = x.shape
    f_, _, kh, kw = w.shape
    if _dft_plan(n_, c_, f_, h, wd, kh, kw):
        y = _try_dft(conv2d_forward_dft, x, w, b)
        if y is not None:
            return y
    oh, ow = h - kh + 1, wd - kw + 1
    k = c_ * kh * kw
    y = np.empty((n_, f_, oh, ow), dtype=x.dtype)
    isz = x.dtype.itemsize
    if _plane_plan(c_, kh, kw, oh, ow):
        wb = np.empty((f_, k + 1), dtype=x.dtype)
        wb[:, :k] = w.reshape(f_, k)
        wb[:, k] = b
        y3 = y.reshape(n_, f_, oh * ow)

        def task(lo, hi):
            _gemm(wb, _cols_planes(x[lo:hi], kh, kw, ones_row=True), out=y3[lo:hi])
    else:
        wt = np.ascontiguousarray(w.transpose(2, 3, 1, 0)).reshape(k, f_)  # (K, F), (p,q,c)
        b3 = b.reshape(f_, 1, 1)

        def task(lo, hi):
            cols = _cols_rows(x[lo:hi], kh, kw)
            y_rows = _gemm(cols, wt, out=scratch("y_rows", (cols.shape[0], f_), x.dtype))
            _nhwc_to_nchw(y_rows.reshape(hi - lo, oh, ow, f_), y[lo:hi], b3)
    batch_tasks(task, n_, (k + f_) * oh * ow * isz)
    return y


def conv2d_backward_input_fast(dy, w):
    """Per task of images: GEMM, then col2im of KH*KW shifted adds.

    Rows plan: cols = dy_rows @ W (columns (p,q,c)), added into a channels-last dx slice so
    each add walks contiguous C-runs, then transposed into the NCHW result.
    Plane plan: cols_n = W^T @ dy_n (stacked GEMM on NCHW dy, no transpose), added into
    the NCHW result in row-runs of OW values. The ``dft`` plan where ``_dft_plan`` picks it."""
    n_, f_, oh, ow = dy.shape
    _, c_, kh, kw = w.shape
    h, wd = oh + kh - 1, ow + kw - 1
    if _dft_plan(n_, c_, f_, h, wd, kh, kw):
        dx = _try_dft(conv2d_backward_input_dft, dy, w)
        if dx is not None:
            return dx
    k = c_ * kh * kw
    dx = np.empty((n_, c_, h, wd), dtype=dy.dtype)
    if _plane_plan(c_, kh, kw, oh, ow):
        wT = np.ascontiguousarray(w.reshape(f_, k).T)                   # (CKK, F)

        def task(lo, hi):
            m = hi - lo
            cols = scratch("cols", (m, k, oh * ow), dy.dtype)
            _gemm(wT, dy[lo:hi].reshape(m, f_, oh * ow), out=cols)
            _col2im_planes(cols.reshape(m, c_, kh, kw, oh, ow), dx[lo:hi], oh, ow)
    else:
        wm = np.ascontiguousarray(w.transpose(0, 2, 3, 1)).reshape(f_, k)  # (F, K), (p,q,c)

        def task(lo, hi):
            m = hi - lo
            dyr = _dy_rows(dy[lo:hi])
            cols = _gemm(dyr, wm, out=scratch("cols", (dyr.shape[0], k), dy.dtype))
            dxh = scratch("dx_nhwc", (m, h, wd, c_), dy.dtype)
            _col2im_rows(cols.reshape(m, oh, ow, kh, kw, c_), dxh, oh, ow)
            _nhwc_to_nchw(dxh, dx[lo:hi])
    batch_tasks(task, n_, (k + f_) * oh * ow * dy.dtype.itemsize)
    return dx


def conv2d_backward_weight_fast(x, dy):
    """Per task of images a partial dW, summed at the end: rows plan dy_rows^T @ cols
    (reordered (p,q,c) -> (c,p,q) once at the end); plane plan sum_n dy_n @ cols_n^T. The
    ``dft`` plan where ``_dft_plan`` picks it."""
    n_, c_, h, wd = x.shape
    _, f_, oh, ow = dy.shape
    kh, kw = h - oh + 1, wd - ow + 1
    if _dft_plan(n_, c_, f_, h, wd, kh, kw):
        dw = _try_dft(conv2d_backward_weight_dft, x, dy)
        if dw is not None:
            return dw
    k = c_ * kh * kw
    plane = _plane_plan(c_, kh, kw, oh, ow)

    def task(lo, hi):
        m = hi - lo
        if plane:
            cols = _cols_planes(x[lo:hi], kh, kw)                       # (m, CKK, OH*OW)
            part = _gemm(dy[lo:hi].reshape(m, f_, oh * ow), cols.transpose(0, 2, 1))
            return part.sum(axis=0)
        return _gemm(_dy_rows(dy[lo:hi]).T, _cols_rows(x[lo:hi], kh, kw))  # (F, (p,q,c))
    parts = batch_tasks(task, n_, (k + f_) * oh * ow * x.dtype.itemsize)
    dw = parts[0]
    for part in parts[1:]:
        dw += part
    if plane:
        return dw.reshape(f_, c_, kh, kw)
    return np.ascontiguousarray(dw.reshape(f_, kh, kw, c_).transpose(0, 3, 1, 2))


def conv2d_backward_bias_fast(dy):
    """db = sum of dy over batch and plane (contiguous plane sums first)."""
    n_, f_ = dy.shape[:2]
    return dy.reshape(n_, f_, -1).sum(axis=2).sum(axis=0)


# ============================================================================== dft
# Convolution theorem, with the DFT as real matrices and the channel sums as real GEMMs.
#
# For an H x W plane a, its half spectrum A[k,l] = sum_{h,v} a[h,v] e^{-2 pi i (kh/H + lv/W)}
# (k < H, l <= W//2: the other half is conjugate-symmetric) is one GEMM with the matrix
# ``T`` (2*NB, H*W), rows (bin, re/im); the inverse of a symmetric spectrum is one GEMM with
# ``Ti`` (2*NB, H*W) (the l = 0 and l = W/2 bins counted once, the others twice, / H*W).
# A signal with a smaller support (a kernel, an output plane) uses only the columns of
# its pixels (``_dft_columns``). Then, circularly on H x W planes (no wrap-around: the
# valid outputs never reach past the plane):
#
#   forward   y = x (*) w  (correlation)   Y = sum_c X_c conj(W_fc)
#   input     dx = dy * w  (convolution)   DX = sum_f DY_f W_fc
#   weight    dw = x (*) dy                DW = sum_n X_nc conj(DY_nf)
#
# Spectra are stored (NB, 2, rows, channels) -- bin, re/im, batch, channel. Each bin's
# complex matrix product is three real GEMMs, not four (Gauss's trick, ``_products``).
# Cost in multiply-adds (``_dft_plan``): 2*NB*(N*C*HW + F*C*KK + N*F*OHOW) for the
# transforms + 3*NB*N*C*F for the products, against N*F*C*OHOW*KK for the direct GEMM.
# Every stage is cut into batch tasks (rows of the transforms, bins of the products) on the
# project's pool with BLAS on one thread (kernels/numpy_threads.py says why); the cut
# depends on the shapes only, there is no cross-call state, and every sum has a fixed
# order, so results do not depend on the thread count.

@functools.lru_cache(maxsize=32)
def _dft_matrices(h, w, dtype):
    """(T, Ti) for h x w planes, both (2*NB, h*w) in ``dtype``, read-only (cached)."""
    wf = w // 2 + 1
    k = np.arange(h).reshape(h, 1, 1, 1)
    l = np.arange(wf).reshape(1, wf, 1, 1)
    hh = np.arange(h).reshape(1, 1, h, 1)
    vv = np.arange(w).reshape(1, 1, 1, w)
    theta = (2 * np.pi * (k * hh / h + l * vv / w)).reshape(h * wf, h * w)
    twice = np.where((np.arange(wf) == 0) | (2 * np.arange(wf) == w), 1.0, 2.0)
    weight = np.tile(twice, h).reshape(h * wf, 1) / (h * w)
    t = np.stack([np.cos(theta), -np.sin(theta)], axis=1).reshape(2 * h * wf, h * w)
    ti = np.stack([weight * np.cos(theta), -weight * np.sin(theta)], axis=1)
    out = (t.astype(dtype), ti.reshape(2 * h * wf, h * w).astype(dtype))
    for m in out:
        m.flags.writeable = False
    return out


@functools.lru_cache(maxsize=64)
def _dft_columns(h, w, dtype, inverse, sh, sw):
    """The columns of T (or Ti) for the pixels of an sh x sw support at the plane's corner."""
    m = _dft_matrices(h, w, dtype)[inverse]
    cols = np.ascontiguousarray(m[:, (np.arange(sh)[:, None] * w + np.arange(sw)).ravel()])
    cols.flags.writeable = False
    return cols


def _dft_plan(n, c, f, h, w, kh, kw):
    """True when the ``dft`` plan needs at most half the multiply-adds of the direct GEMM
    (it pays for the transforms' memory traffic; measured ~2x faster at the paper's conv2)."""
    nb = h * (w // 2 + 1)
    oh, ow = h - kh + 1, w - kw + 1
    transforms = 2 * nb * (n * c * h * w + f * c * kh * kw + n * f * oh * ow)
    return 2 * (transforms + 3 * nb * n * c * f) <= n * f * c * oh * ow * kh * kw


def _try_dft(fn, *args):
    """``fn(*args)`` (a ``dft`` version), or None when its result holds a NaN or Inf: the
    caller then computes the op with a GEMM plan, which keeps them local. One fast sum
    checks; a sum that overflows also says None, which only costs a recomputation."""
    with np.errstate(over="ignore", invalid="ignore"):
        out = fn(*args)
        return out if math.isfinite(float(np.add.reduce(out, axis=None))) else None


#: working set of one dft task (a slice of rows, or of bins, with its outputs).
DFT_TASK_BYTES = 2 << 20


def _spectrum(a, h, w, support):
    """Half spectra of the planes of ``a`` (rows, channels, sh, sw) on h x w: (NB, 2, rows,
    channels). One GEMM ``T @ a^T``, its columns cut into tasks of a few rows."""
    r, c = a.shape[:2]
    t = _dft_columns(h, w, a.dtype, 0, *support)
    flat = a.reshape(r * c, -1)
    out = np.empty((t.shape[0], r * c), dtype=a.dtype)

    def task(lo, hi):
        _gemm(t, flat[lo * c:hi * c].T, out=out[:, lo * c:hi * c])

    batch_tasks(task, r, c * (t.shape[0] + t.shape[1]) * a.itemsize, target=DFT_TASK_BYTES)
    return out.reshape(-1, 2, r, c)


def _planes(spec, h, w, support):
    """Inverse of ``_spectrum`` on the pixels of ``support``: (rows, channels, sh, sw).
    One GEMM ``spec^T @ Ti``, its rows cut into tasks of a few rows."""
    nb, _, r, c = spec.shape
    ti = _dft_columns(h, w, spec.dtype, 1, *support)
    flat = spec.reshape(2 * nb, r * c)
    out = np.empty((r * c, ti.shape[1]), dtype=spec.dtype)

    def task(lo, hi):
        _gemm(flat[:, lo * c:hi * c].T, ti, out=out[lo * c:hi * c])

    batch_tasks(task, r, c * (ti.shape[0] + ti.shape[1]) * spec.itemsize,
                target=DFT_TASK_BYTES)
    return out.reshape(r, c, *support)


def _products(a, b, conj_b):
    """Per bin, the complex products sum_k A[.,k] (conj) B[k,.] of spectra a (NB, 2, M, K)
    and b (NB, 2, K, P) -- either may be a transposed view -- as (NB, 2, M, P), by three
    real GEMMs per bin instead of four (Gauss): with k1 = (A_re + A_im) B_re,

        A B        = (k1 - A_im (B_re + B_im)) + i (k1 + A_re (B_im - B_re))
        A conj(B)  = (k1 - A_im (B_re - B_im)) + i (k1 - A_re (B_re + B_im))

    The bins are cut into tasks."""
    nb, _, m, k = a.shape
    p = b.shape[3]
    out = np.empty((nb, 2, m, p), dtype=a.dtype)

    def task(lo, hi):
        a_re, a_im, b_re, b_im = a[lo:hi, 0], a[lo:hi, 1], b[lo:hi, 0], b[lo:hi, 1]
        o_re, o_im = out[lo:hi, 0], out[lo:hi, 1]
        k1 = _gemm(np.add(a_re, a_im), b_re)
        both = np.add(b_re, b_im)
        if conj_b:
            t = _gemm(a_im, np.subtract(b_re, b_im))
            np.subtract(k1, t, out=o_re)
            _gemm(a_re, both, out=t)
            np.subtract(k1, t, out=o_im)
        else:
            t = _gemm(a_im, both)
            np.subtract(k1, t, out=o_re)
            _gemm(a_re, np.subtract(b_im, b_re), out=t)
            np.add(k1, t, out=o_im)

    batch_tasks(task, nb, (2 * m * k + 2 * k * p + 3 * m * p) * a.itemsize,
                target=DFT_TASK_BYTES)
    return out


def conv2d_forward_dft(x, w, b):
    """Y = sum_c X_c conj(W_fc) on the input planes; the bias rides in the DC bin (b*H*W
    there is b at every pixel after the inverse's 1/(H*W))."""
    _, _, h, wd = x.shape
    _, _, kh, kw = w.shape
    xs = _spectrum(x, h, wd, (h, wd))                              # (NB, 2, N, C)
    ws = _spectrum(w, h, wd, (kh, kw))                             # (NB, 2, F, C)
    ys = _products(xs, ws.transpose(0, 1, 3, 2), conj_b=True)      # (NB, 2, N, F)
    ys[0, 0] += b * (h * wd)
    return _planes(ys, h, wd, (h - kh + 1, wd - kw + 1))


def conv2d_backward_input_dft(dy, w):
    """DX = sum_f DY_f W_fc: the full convolution, on planes of the input's size."""
    _, _, oh, ow = dy.shape
    _, _, kh, kw = w.shape
    h, wd = oh + kh - 1, ow + kw - 1
    ds = _spectrum(dy, h, wd, (oh, ow))                            # (NB, 2, N, F)
    ws = _spectrum(w, h, wd, (kh, kw))                             # (NB, 2, F, C)
    return _planes(_products(ds, ws, conj_b=False), h, wd, (h, wd))


def conv2d_backward_weight_dft(x, dy):
    """DW = sum_n conj(DY_nf) X_nc, i.e. conj of sum_n DY_nf conj(X_nc): the products of
    DY^T and X over the batch, conjugated by negating their imaginary part."""
    _, _, h, wd = x.shape
    _, _, oh, ow = dy.shape
    xs = _spectrum(x, h, wd, (h, wd))                              # (NB, 2, N, C)
    ds = _spectrum(dy, h, wd, (oh, ow))                            # (NB, 2, N, F)
    gs = _products(ds.transpose(0, 1, 3, 2), xs, conj_b=True)      # (NB, 2, F, C)
    np.negative(gs[:, 1], out=gs[:, 1])
    return _planes(gs, h, wd, (h - oh + 1, wd - ow + 1))


conv2d_backward_bias_dft = conv2d_backward_bias_fast


VERSIONS = {
    op: {"naive": globals()[f"{op}_naive"], "im2col": globals()[f"{op}_im2col"],
         "fast": globals()[f"{op}_fast"], "dft": globals()[f"{op}_dft"]}
    for op in ("conv2d_forward", "conv2d_backward_input", "conv2d_backward_weight",
               "conv2d_backward_bias")
}
