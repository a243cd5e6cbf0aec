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


# ============================================================================= fast
def _im2col(x, kh, kw):
    """Columns of x as a (N*OH*OW, C*KH*KW) matrix, row (n,i,j), column (c,p,q).

    A zero-copy sliding-window view, materialised once by the reshape (the only copy)."""
    n_, c_, h, wd = x.shape
    oh, ow = h - kh + 1, wd - kw + 1
    win = sliding_window_view(x, (kh, kw), axis=(2, 3))        # (N,C,OH,OW,KH,KW) view
    return win.transpose(0, 2, 3, 1, 4, 5).reshape(n_ * oh * ow, c_ * kh * kw)


def conv2d_forward_fast(x, w, b):
    """im2col, then y_cols = cols @ W^T + b: one GEMM of (N*OH*OW, CKK) x (CKK, F)."""
    n_, c_, h, wd = x.shape
    f_, _, kh, kw = w.shape
    oh, ow = h - kh + 1, wd - kw + 1
    cols = _im2col(x, kh, kw)
    y = cols @ w.reshape(f_, -1).T                              # (N*OH*OW, F)
    y += b
    return np.ascontiguousarray(y.reshape(n_, oh, ow, f_).transpose(0, 3, 1, 2))


def conv2d_backward_input_fast(dy, w):
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


def conv2d_backward_weight_fast(x, dy):
    """dW = dy_rows^T @ cols: one GEMM of (F, N*OH*OW) x (N*OH*OW, C*KH*KW)."""
    n_, c_, h, wd = x.shape
    _, f_, oh, ow = dy.shape
    kh, kw = h - oh + 1, wd - ow + 1
    cols = _im2col(x, kh, kw)
    dy_rows = dy.transpose(0, 2, 3, 1).reshape(n_ * oh * ow, f_)
    return np.ascontiguousarray((dy_rows.T @ cols).reshape(f_, c_, kh, kw))


def conv2d_backward_bias_fast(dy):
    """db = sum of dy over batch and plane."""
    return np.ascontiguousarray(dy.sum(axis=(0, 2, 3), dtype=dy.dtype))


VERSIONS = {
    "conv2d_forward": {"naive": conv2d_forward_naive, "fast": conv2d_forward_fast},
    "conv2d_backward_input": {"naive": conv2d_backward_input_naive,
                              "fast": conv2d_backward_input_fast},
    "conv2d_backward_weight": {"naive": conv2d_backward_weight_naive,
                               "fast": conv2d_backward_weight_fast},
    "conv2d_backward_bias": {"naive": conv2d_backward_bias_naive,
                             "fast": conv2d_backward_bias_fast},
}
