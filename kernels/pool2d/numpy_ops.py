"""NumPy versions of max-pooling with switches and switch unpooling.

Versions, ladder order (see ``kernels/contract.py`` for the contract):

* ``naive`` -- explicit loops, written to be read: the definition every other version is
  tested against. Ties go to the first maximum in row-major window order because the scan
  only replaces the running maximum on a value that beats it (``_beats``: strictly larger,
  or NaN over a number -- NaN counts as the largest value, so the first NaN wins).
* ``argmax`` -- the k x k windows copied to (N,C,OH,OW,k*k), ``argmax`` over the last axis
  (first maximum wins, the same tie rule; NumPy's argmax also returns the first NaN), and
  ``put``/``take_along_axis`` along each plane for the switch-driven ops. Simple; the
  window copy and the argmax over a tiny axis are slow.
* ``fast`` (default) -- no window copy: the maximum by ``np.maximum`` over strided views
  (rows, then columns), the switch by equality with the maximum scanned in row-major
  order; a flat index assignment / ``take`` for the switch-driven ops; cache-sized batch
  tasks on all cores. ``np.maximum`` propagates NaN into y, but the equality scan cannot
  find a NaN, so windows whose maximum is NaN (found by one ``isnan`` over y, the pooled
  size) get their switch from a slow path pointed at their first NaN (``_nan_switches``):
  NaN-free input pays one ``isnan`` pass. ``bench/bench_pool2d.py`` times every version
  at the paper's shapes.

NaN and infinities (the contract, kernels/contract.py): NaN is the largest value, so a window
holding a NaN pools to NaN and its switch points at the window's first NaN in row-major
order; +-Inf are ordinary values (a window of -Inf pools to -Inf, switch at its first entry).

Switches are int32 flat in-plane indices ``h*W + w`` (PyTorch's ``return_indices``).
``maxpool2d_backward`` and ``unpool2d_forward`` are the same scatter; ``unpool2d_backward``
is the matching gather. Windows never overlap, so no two values land on one pixel.
Illegal switches (in range but outside their own window, or duplicated; see the contract):
every NumPy version puts each value where its switch points, and for a duplicated switch the
last pooled position in row-major order wins (a plain assignment, as ``np.put`` does).
"""
from __future__ import annotations

import numpy as np

from ..numpy_threads import batch_tasks

#: working set of one pooling task (measured: 4 MB beats 1, 2, 8 and 64 MB on 2 cores).
POOL_TASK_BYTES = 4 << 20


# ============================================================================ naive
def _beats(v, best):
    """True if ``v`` replaces the running maximum ``best``: larger, or NaN over a number
    (NaN is the largest value; between NaNs, as between equal values, the first one stays)."""
    return v > best or (v != v and best == best)


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
                            if best is None or _beats(v, best):
                                best, arg = v, hh * wd + vv
                    y[n, c, i, j] = best
                    sw[n, c, i, j] = arg
    return y, sw


def _switch_pairs(switches, wd):
    """Every pooled position (n, c, i, j), in row-major order, with the pixel (n, c, h, v)
    of its plane (width ``wd``) that its switch h*wd + v points at."""
    n_, c_, oh, ow = switches.shape
    for n in range(n_):
        for c in range(c_):
            for i in range(oh):
                for j in range(ow):
                    s = int(switches[n, c, i, j])
                    yield (n, c, i, j), (n, c, s // wd, s % wd)


def maxpool2d_backward_naive(dy, switches, input_hw):
    h, wd = input_hw
    dx = np.zeros(dy.shape[:2] + (h, wd), dtype=dy.dtype)
    for pooled, pixel in _switch_pairs(switches, wd):
        dx[pixel] = dy[pooled]          # a scatter; for a repeated switch the last one wins
    return dx


def unpool2d_forward_naive(y, switches, output_hw):
    # By the contract, unpooling *is* the max-pool backward scatter.
    return maxpool2d_backward_naive(y, switches, output_hw)


def unpool2d_backward_naive(dx, switches):
    dy = np.empty(switches.shape, dtype=dx.dtype)
    for pooled, pixel in _switch_pairs(switches, dx.shape[3]):
        dy[pooled] = dx[pixel]          # the gather: the scatter's adjoint
    return dy


# =========================================================================== argmax
def maxpool2d_forward_argmax(x, k):
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


def maxpool2d_backward_argmax(dy, switches, input_hw):
    n_, c_, oh, ow = dy.shape
    h, wd = input_hw
    dx = np.zeros((n_ * c_, h * wd), dtype=dy.dtype)
    np.put_along_axis(dx, switches.reshape(n_ * c_, oh * ow),
                      dy.reshape(n_ * c_, oh * ow), axis=1)
    return dx.reshape(n_, c_, h, wd)


def unpool2d_forward_argmax(y, switches, output_hw):
    return maxpool2d_backward_argmax(y, switches, output_hw)


def unpool2d_backward_argmax(dx, switches):
    n_, c_, oh, ow = switches.shape
    h, wd = dx.shape[2:]
    dy = np.take_along_axis(dx.reshape(n_ * c_, h * wd),
                            switches.reshape(n_ * c_, oh * ow), axis=1)
    return dy.reshape(n_, c_, oh, ow)


# ============================================================================= fast
# Strided views instead of a window copy, comparisons instead of argmax over a tiny axis,
# flat index assignment / take for the switch-driven ops; each op split over the batch into
# cache-sized tasks run on all cores (``batch_tasks``, kernels/numpy_threads.py: NumPy
# releases the GIL).
def _maxpool_slice(x, k, y, sw):
    """Pool one batch slice into ``y``/``sw`` (both (n,C,OH,OW), preallocated)."""
    wd = x.shape[3]
    oh, ow = y.shape[2:]
    xc = x[:, :, :oh * k, :ow * k]
    # the maximum: first over the k rows of each window (whole contiguous rows), then over
    # the k columns of the row-maxima
    r = xc[:, :, 0::k, :].copy()
    for p in range(1, k):
        np.maximum(r, xc[:, :, p::k, :], out=r)
    np.copyto(y, r[..., 0::k])
    for q in range(1, k):
        np.maximum(y, r[..., q::k], out=y)
    # the switch: the first window position, in row-major order, that holds the maximum.
    # ``missing`` marks windows whose maximum was not found yet; each later position adds
    # its code step (p*W + q minus the previous code) to the windows still missing.
    missing = np.not_equal(xc[:, :, 0::k, 0::k], y)
    hit = np.empty(y.shape, dtype=bool)
    step = np.empty(y.shape, dtype=np.int32)
    sw.fill(0)
    prev = 0
    for p in range(k):
        for q in range(k):
            if p == 0 and q == 0:
                continue
            code = p * wd + q
            np.multiply(missing, np.int32(code - prev), out=step)
            sw += step
            prev = code
            np.not_equal(xc[:, :, p::k, q::k], y, out=hit)
            missing &= hit
    sw += (np.arange(oh, dtype=np.int32).reshape(oh, 1) * np.int32(k * wd)
           + np.arange(ow, dtype=np.int32) * np.int32(k))      # window origin i*k*W + j*k
    _nan_switches(x, k, y, sw)


def _nan_switches(x, k, y, sw):
    """Point the switch of every window whose maximum is NaN at its first NaN (row-major):
    the comparisons above never find a NaN. One ``isnan`` over y when there is none."""
    nan = np.isnan(y)
    if not nan.any():
        return
    n, c, i, j = np.nonzero(nan)
    p, q = np.divmod(np.arange(k * k), k)                       # window positions, row-major
    rows = i[:, None] * k + p                                   # (windows, k*k)
    cols = j[:, None] * k + q
    first = np.argmax(np.isnan(x[n[:, None], c[:, None], rows, cols]), axis=1)
    pick = np.arange(len(first))
    sw[n, c, i, j] = (rows[pick, first] * x.shape[3] + cols[pick, first]).astype(np.int32)


def _maxpool2x2_slice(x, y, sw):
    """k = 2, the paper's pooling, in fewer passes: with a, b / c, d the window's rows,
    top = max(a, b), bottom = max(c, d), y = max(top, bottom); the winner is in the bottom
    row only if bottom > top (strictly), and inside a row the right one only if it is
    strictly larger -- the first maximum in row-major order, as in the naive scan."""
    wd = x.shape[3]
    oh, ow = y.shape[2:]
    a, b = x[:, :, 0:2 * oh:2, 0:2 * ow:2], x[:, :, 0:2 * oh:2, 1:2 * ow:2]
    c, d = x[:, :, 1:2 * oh:2, 0:2 * ow:2], x[:, :, 1:2 * oh:2, 1:2 * ow:2]
    top = np.maximum(a, b)
    bot = np.maximum(c, d)
    np.maximum(top, bot, out=y)
    right_top = np.greater(b, a)
    right_bot = np.greater(d, c)
    below = np.greater(bot, top)
    # in-window offset: below ? W + right_bot : right_top   (as int32 arithmetic)
    np.add(right_bot, np.int32(wd), out=sw, dtype=np.int32)
    sw -= right_top
    sw *= below
    sw += right_top
    sw += (np.arange(oh, dtype=np.int32).reshape(oh, 1) * np.int32(2 * wd)
           + np.arange(ow, dtype=np.int32) * np.int32(2))      # window origin 2i*W + 2j
    _nan_switches(x, 2, y, sw)


def maxpool2d_forward_fast(x, k):
    """Max by two passes of ``np.maximum`` on strided views (rows, then columns); switch
    by equality with the max, scanning window positions in row-major order so the first
    maximum wins ties (the naive rule). NaN: y is NaN where a window holds a NaN, and its
    switch points at the window's first NaN (``_nan_switches``)."""
    n_, c_, h, wd = x.shape
    oh, ow = h // k, wd // k
    y = np.empty((n_, c_, oh, ow), dtype=x.dtype)
    sw = np.empty((n_, c_, oh, ow), dtype=np.int32)
    if k == 2:
        def task(lo, hi):
            _maxpool2x2_slice(x[lo:hi], y[lo:hi], sw[lo:hi])
    else:
        def task(lo, hi):
            _maxpool_slice(x[lo:hi], k, y[lo:hi], sw[lo:hi])
    batch_tasks(task, n_,
                x[0].nbytes * 2, target=POOL_TASK_BYTES, blas=False)
    return y, sw


def _flat_index(switches, plane):
    """Switches as indices into the flattened (N*C*H*W) array: plane offset + in-plane."""
    n_, c_ = switches.shape[:2]
    base = np.arange(0, n_ * c_ * plane, plane, dtype=np.intp).reshape(n_, c_, 1, 1)
    return (switches + base).reshape(-1)


def maxpool2d_backward_fast(dy, switches, input_hw):
    """Scatter: dy assigned into a zeroed dx at plane offset + switch, by one flat fancy-index
    assignment (measured 1.9x faster than the ``np.put`` it replaced: 322 against 603 us
    per 16 images of 100x24x24). A 1-D index assignment runs in index
    order, so a repeated switch keeps the last value, as ``put`` does (tests/
    test_pool2d_nan.py pins it)."""
    n_, c_ = dy.shape[:2]
    h, wd = input_hw
    dx = np.empty((n_, c_, h, wd), dtype=dy.dtype)

    def work(lo, hi):
        d = dx[lo:hi]
        d.fill(0)
        d.reshape(-1)[_flat_index(switches[lo:hi], h * wd)] = dy[lo:hi].reshape(-1)

    batch_tasks(work, n_, dx[0].nbytes * 2, target=POOL_TASK_BYTES, blas=False)
    return dx


def unpool2d_forward_fast(y, switches, output_hw):
    return maxpool2d_backward_fast(y, switches, output_hw)


def unpool2d_backward_fast(dx, switches):
    """Gather: one flat ``take`` of dx at plane offset + switch."""
    h, wd = dx.shape[2:]
    dy = np.empty(switches.shape, dtype=dx.dtype)

    def work(lo, hi):
        np.take(dx[lo:hi], _flat_index(switches[lo:hi], h * wd), out=dy[lo:hi].reshape(-1))

    batch_tasks(work, switches.shape[0], dx[0].nbytes, target=POOL_TASK_BYTES, blas=False)
    return dy


VERSIONS = {
    op: {"naive": globals()[f"{op}_naive"], "argmax": globals()[f"{op}_argmax"],
         "fast": globals()[f"{op}_fast"]}
    for op in ("maxpool2d_forward", "maxpool2d_backward", "unpool2d_forward",
               "unpool2d_backward")
}
