"""NumPy versions of max-pooling with switches and switch unpooling.

Versions, ladder order (see ``kernels/contract.py`` for the contract):

* ``naive`` -- explicit loops, written to be read: the definition every other version is
  tested against. Ties go to the first maximum in row-major window order because the scan
  only replaces the running maximum on a strictly larger value.
* ``fast``  -- the k x k windows as a reshaped view (N,C,OH,OW,k*k), ``argmax`` over the last
  axis (first maximum wins, the same tie rule), and flat ``put``/``take`` along each plane
  for the switch-driven ops.

Switches are int32 flat in-plane indices ``h*W + w`` (PyTorch's ``return_indices``).
``maxpool2d_backward`` and ``unpool2d_forward`` are the same scatter; ``unpool2d_backward``
is the matching gather. Windows never overlap, so no two values land on one pixel.
"""
from __future__ import annotations

import numpy as np


# ============================================================================ naive
def maxpool2d_forward_naive(x, k):
    n_, c_, h, wd = x.shape
    oh, ow = h // k, wd // k
    y = np.empty((n_, c_, oh, ow), dtype=x.dtype)
    sw = np.empty((n_, c_, oh, ow), dtype=np.int32)
    for n in range(n_):
        for c in range(c_):
            for i in range(oh):
                for j in range(ow):
                    best, arg = None, -1
                    for p in range(k):               # row-major scan of the window
                        for q in range(k):
                            hh, vv = i * k + p, j * k + q
                            v = x[n, c, hh, vv]
                            if best is None or v > best:
                                best, arg = v, hh * wd + vv
                    y[n, c, i, j] = best
                    sw[n, c, i, j] = arg
    return y, sw


def maxpool2d_backward_naive(dy, switches, input_hw):
    n_, c_, oh, ow = dy.shape
    h, wd = input_hw
    dx = np.zeros((n_, c_, h, wd), dtype=dy.dtype)
    for n in range(n_):
        for c in range(c_):
            for i in range(oh):
                for j in range(ow):
                    s = int(switches[n, c, i, j])
                    dx[n, c, s // wd, s % wd] += dy[n, c, i, j]
    return dx


def unpool2d_forward_naive(y, switches, output_hw):
    # By the contract, unpooling *is* the max-pool backward scatter.
    return maxpool2d_backward_naive(y, switches, output_hw)


def unpool2d_backward_naive(dx, switches):
    n_, c_, oh, ow = switches.shape
    wd = dx.shape[3]
    dy = np.empty((n_, c_, oh, ow), dtype=dx.dtype)
    for n in range(n_):
        for c in range(c_):
            for i in range(oh):
                for j in range(ow):
                    s = int(switches[n, c, i, j])
                    dy[n, c, i, j] = dx[n, c, s // wd, s % wd]
    return dy


# ============================================================================= fast
def maxpool2d_forward_fast(x, k):
    n_, c_, h, wd = x.shape
    oh, ow = h // k, wd // k
    win = (x[:, :, :oh * k, :ow * k]
           .reshape(n_, c_, oh, k, ow, k)
           .transpose(0, 1, 2, 4, 3, 5)
           .reshape(n_, c_, oh, ow, k * k))                     # copy: one pass over x
    arg = win.argmax(axis=-1)                                   # first max wins ties
    y = np.take_along_axis(win, arg[..., None], axis=-1)[..., 0]
    p, q = np.divmod(arg, k)
    rows = np.arange(oh).reshape(oh, 1) * k + p
    cols = np.arange(ow).reshape(1, ow) * k + q
    switches = (rows * wd + cols).astype(np.int32)
    return np.ascontiguousarray(y), switches


def maxpool2d_backward_fast(dy, switches, input_hw):
    n_, c_, oh, ow = dy.shape
    h, wd = input_hw
    dx = np.zeros((n_ * c_, h * wd), dtype=dy.dtype)
    np.put_along_axis(dx, switches.reshape(n_ * c_, oh * ow),
                      dy.reshape(n_ * c_, oh * ow), axis=1)
    return dx.reshape(n_, c_, h, wd)


def unpool2d_forward_fast(y, switches, output_hw):
    return maxpool2d_backward_fast(y, switches, output_hw)


def unpool2d_backward_fast(dx, switches):
    n_, c_, oh, ow = switches.shape
    h, wd = dx.shape[2:]
    dy = np.take_along_axis(dx.reshape(n_ * c_, h * wd),
                            switches.reshape(n_ * c_, oh * ow), axis=1)
    return dy.reshape(n_, c_, oh, ow)


VERSIONS = {
    "maxpool2d_forward": {"naive": maxpool2d_forward_naive, "fast": maxpool2d_forward_fast},
    "maxpool2d_backward": {"naive": maxpool2d_backward_naive, "fast": maxpool2d_backward_fast},
    "unpool2d_forward": {"naive": unpool2d_forward_naive, "fast": unpool2d_forward_fast},
    "unpool2d_backward": {"naive": unpool2d_backward_naive, "fast": unpool2d_backward_fast},
}
