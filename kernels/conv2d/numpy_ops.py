"""NumPy versions of the convolution ops.

Versions, ladder order (see ``kernels/contract.py`` for the contract):

* ``naive`` -- one Python loop nest per op, written to be read: the definition of each op
  that every other version (CUDA C, numba, ``fast``) is tested against. Slow: use it on
  small shapes only.
* ``fast``  -- im2col through a zero-copy sliding-window view, then one BLAS GEMM per op;
  the weight/input gradients reuse the same column layout. ``conv2d_backward_input`` does
  its GEMM first and then a col2im of KH*KW strided adds (so col2im is O(N*C*H*W*KH*KW)
  cheap additions, never the bottleneck).

All functions take arguments that already passed the contract checks, and return new
C-contiguous arrays of the input dtype.
"""
from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from ..numpy_threads import batch_map, scratch


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
# * rows plan (deep layers: many channels, small planes, e.g. 100->150 5x5 on 12x12): the
#   batch is one matrix of N*OH*OW rows.  x is copied to channels-last (N,H,W,C) so an
#   im2col row is KH*KW runs of C contiguous values (column order (p,q,c)), and the
#   col2im of the input gradient adds KH*KW blocks of contiguous C-runs.  One GEMM per op.
# * plane plan (first layers: few channels, large planes, e.g. 1->100 5x5 on 28x28): each
#   image is a (C*KH*KW, OH*OW) column matrix in NCHW order, and a stacked matmul produces
#   the (N,F,OH*OW) = NCHW result directly, with no transpose of the (large) output.
#
# The GEMMs run on every core (BLAS); the copies and adds around them are split over the
# batch across threads (``batch_map``), and the big temporaries are reused ``scratch``
# buffers (see kernels/numpy_threads.py).  Float32 stays float32 throughout.


def _plane_plan(c, kh, kw, oh, ow):
    """True when an image's output plane (OH*OW) is at least as long as a column
    (C*KH*KW): per-image GEMMs in NCHW then beat one channels-last GEMM + transposes."""
    return oh * ow >= c * kh * kw


def _view(a, shape):
    """``a`` seen with ``shape`` without copying (raises instead of silently copying)."""
    v = a.view()
    v.shape = shape
    return v


def _cols_rows(x, kh, kw):
    """im2col rows (scratch): (N*OH*OW, KH*KW*C), row (n,i,j), column (p,q,c)."""
    n_, c_, h, wd = x.shape
    oh, ow = h - kh + 1, wd - kw + 1
    cols = scratch("cols", (n_, oh, ow, kh, kw, c_), x.dtype)

    def work(lo, hi):
        xh = np.ascontiguousarray(x[lo:hi].transpose(0, 2, 3, 1))       # (n,H,W,C)
        win = sliding_window_view(xh, (kh, kw), axis=(1, 2))             # (n,OH,OW,C,KH,KW)
        np.copyto(cols[lo:hi], win.transpose(0, 1, 2, 4, 5, 3))

    batch_map(work, n_, cols.size)
    return cols.reshape(n_ * oh * ow, kh * kw * c_)


def _cols_planes(x, kh, kw, ones_row=False):
    """Per-image columns (scratch): (N, C*KH*KW [+1], OH*OW), row (c,p,q), column (i,j);
    with ``ones_row`` a last row of ones, so a GEMM with [W | b] adds the bias."""
    n_, c_, h, wd = x.shape
    oh, ow = h - kh + 1, wd - kw + 1
    k = c_ * kh * kw
    cols = scratch("cols", (n_, k + ones_row, oh * ow), x.dtype)
    win = sliding_window_view(x, (kh, kw), axis=(2, 3))                  # (N,C,OH,OW,KH,KW)

    def work(lo, hi):
        if ones_row:
            cols[lo:hi, k] = 1
        np.copyto(_view(cols[lo:hi, :k], (hi - lo, c_, kh, kw, oh, ow)),
                  win[lo:hi].transpose(0, 1, 4, 5, 2, 3))

    batch_map(work, n_, cols.size)
    return cols


def _dy_rows(dy):
    """dy as an (N*OH*OW, F) matrix (scratch, channels-last copy)."""
    n_, f_, oh, ow = dy.shape
    rows = scratch("dy_rows", (n_, oh, ow, f_), dy.dtype)

    def work(lo, hi):
        np.copyto(rows[lo:hi], dy[lo:hi].transpose(0, 2, 3, 1))

    batch_map(work, n_, rows.size)
    return rows.reshape(n_ * oh * ow, f_)


def conv2d_forward_fast(x, w, b):
    """Plane plan: y_n = [W | b] @ [cols_n ; 1] (stacked GEMM, NCHW out, bias in the GEMM).
    Rows plan: y_rows = cols @ W^T (one GEMM), then one pass that transposes to NCHW and
    adds the bias."""
    n_, c_, h, wd = x.shape
    f_, _, kh, kw = w.shape
    oh, ow = h - kh + 1, wd - kw + 1
    if _plane_plan(c_, kh, kw, oh, ow):
        k = c_ * kh * kw
        wb = np.empty((f_, k + 1), dtype=x.dtype)
        wb[:, :k] = w.reshape(f_, k)
        wb[:, k] = b
        y = np.matmul(wb, _cols_planes(x, kh, kw, ones_row=True))        # (N,F,OH*OW)
        return y.reshape(n_, f_, oh, ow)
    cols = _cols_rows(x, kh, kw)                                         # (N*OH*OW, K)
    wt = np.ascontiguousarray(w.transpose(2, 3, 1, 0)).reshape(-1, f_)   # (K, F), K=(p,q,c)
    y_rows = np.matmul(cols, wt, out=scratch("y_rows", (cols.shape[0], f_), x.dtype))
    y_rows = y_rows.reshape(n_, oh, ow, f_)
    y = np.empty((n_, f_, oh, ow), dtype=x.dtype)
    b3 = b.reshape(f_, 1, 1)

    def work(lo, hi):
        np.add(y_rows[lo:hi].transpose(0, 3, 1, 2), b3, out=y[lo:hi])

    batch_map(work, n_, y.size)
    return y


def conv2d_backward_input_fast(dy, w):
    """GEMM, then col2im of KH*KW shifted adds.

    Rows plan: cols = dy_rows @ W (one GEMM, columns (p,q,c)), added into a channels-last
    dx so each add walks contiguous C-runs, then transposed to NCHW (per batch slice).
    Plane plan: cols_n = W^T @ dy_n (stacked GEMM on NCHW dy, no transpose), added into
    NCHW dx in row-runs of OW values."""
    n_, f_, oh, ow = dy.shape
    _, c_, kh, kw = w.shape
    h, wd = oh + kh - 1, ow + kw - 1
    dx = np.empty((n_, c_, h, wd), dtype=dy.dtype)
    if _plane_plan(c_, kh, kw, oh, ow):
        cols = scratch("cols", (n_, c_ * kh * kw, oh * ow), dy.dtype)
        np.matmul(w.reshape(f_, -1).T, dy.reshape(n_, f_, oh * ow), out=cols)
        cols = cols.reshape(n_, c_, kh, kw, oh, ow)

        def work(lo, hi):
            d = dx[lo:hi]
            d.fill(0)
            for p in range(kh):
                for q in range(kw):
                    d[:, :, p:p + oh, q:q + ow] += cols[lo:hi, :, p, q]
    else:
        wm = np.ascontiguousarray(w.transpose(0, 2, 3, 1)).reshape(f_, -1)  # (F, K), (p,q,c)
        dyr = _dy_rows(dy)
        cols = np.matmul(dyr, wm, out=scratch("cols", (dyr.shape[0], wm.shape[1]), dy.dtype))
        cols = cols.reshape(n_, oh, ow, kh, kw, c_)

        def work(lo, hi):
            dxh = np.zeros((hi - lo, h, wd, c_), dtype=dy.dtype)
            for p in range(kh):
                for q in range(kw):
                    dxh[:, p:p + oh, q:q + ow, :] += cols[lo:hi, :, :, p, q, :]
            np.copyto(dx[lo:hi], dxh.transpose(0, 3, 1, 2))

    batch_map(work, n_, dx.size * kh * kw)
    return dx


def conv2d_backward_weight_fast(x, dy):
    """Rows plan: dW = dy_rows^T @ cols (one GEMM over N*OH*OW), reordered (p,q,c)->(c,p,q).
    Plane plan: dW = sum_n dy_n @ cols_n^T (stacked GEMM on NCHW dy, then a small sum)."""
    n_, c_, h, wd = x.shape
    _, f_, oh, ow = dy.shape
    kh, kw = h - oh + 1, wd - ow + 1
    if _plane_plan(c_, kh, kw, oh, ow):
        cols = _cols_planes(x, kh, kw)                                   # (N, CKK, OH*OW)
        dw = np.matmul(dy.reshape(n_, f_, oh * ow), cols.transpose(0, 2, 1)).sum(axis=0)
        return dw.reshape(f_, c_, kh, kw)
    dyr = _dy_rows(dy)
    dw = dyr.T @ _cols_rows(x, kh, kw)                                   # (F, KH*KW*C)
    return np.ascontiguousarray(dw.reshape(f_, kh, kw, c_).transpose(0, 3, 1, 2))


def conv2d_backward_bias_fast(dy):
    """db = sum of dy over batch and plane (contiguous plane sums first)."""
    n_, f_ = dy.shape[:2]
    return dy.reshape(n_, f_, -1).sum(axis=2).sum(axis=0)


VERSIONS = {
    op: {"naive": globals()[f"{op}_naive"], "im2col": globals()[f"{op}_im2col"],
         "fast": globals()[f"{op}_fast"]}
    for op in ("conv2d_forward", "conv2d_backward_input", "conv2d_backward_weight",
               "conv2d_backward_bias")
}
