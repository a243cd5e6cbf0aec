"""The launch specification both GPU dialects share: rules that pick a launch parameter from
the shapes, written once in Python and used by ``kernels/cupy_backend.py`` (CUDA C), by the
numba-cuda launchers (``kernels/conv2d/numba_kernels.py``) and so by ``kernels.device.plan``'s
dry plans, which run the backends' own launch code.

Imports nothing outside the standard library and ``kernels.device`` (itself stdlib-only), so it
is safe to import before numba's GPU-or-simulator mode is chosen.
"""
from __future__ import annotations

# ---- conv split-K
# A GEMM whose output tiles alone give fewer blocks than the GPU has SMs (the weight gradient
# always: dw is small and its K = N*OH*OW is long) cuts its K range into S consecutive
# slices, one per grid z. Block z writes a partial tile for its slice; a second, fixed-order
# pass sums the S partials (kernels/conv2d/splitk_sum.cu): the same bits on every run.
# The bias gradient splits its N*OH*OW sum the same way (k_step = its 256 threads).
from .device import DEFAULT as _TARGET

SPLITK_RED_THREADS = 128   # splitk_sum: threads per block (T per output element, 128/T elements)


def conv_split_k(base_blocks, k_total, k_step=8, sms=None):
    """``(S, chunk)``: the number of K slices and the slice length of a split-K launch.

    ``base_blocks``: the launch's blocks without a split (output tiles); ``k_total``: the
    length of the reduction; ``k_step``: the kernel's K step (8 for the 64x64x8 GEMM tiles,
    256 for the bias gradient's 256 threads); ``sms``: the SMs to fill (default: the target
    GPU's, ``kernels.device.DEFAULT``, 132 on an H100/H200).

    Rule: aim at ``target = min(ceil(sms / base_blocks), ceil(k_total / k_step))`` slices
    (enough for one block per SM, never a slice shorter than one K step); each slice is
    ``floor(steps / target)`` whole K steps, so ``S = ceil(steps / (steps per slice))`` is
    at least ``target`` (and below ``2 * target``), every slice but the last is a multiple of
    ``k_step`` long and none is empty. ``S == 1`` (the tiles already fill the GPU, or K is one
    step): no split, the kernel writes its output directly.
    """
    sms = _TARGET.sms if sms is None else int(sms)
    if base_blocks < 1 or k_total < 1 or k_step < 1:
        raise ValueError(f"conv_split_k needs base_blocks, k_total and k_step >= 1, got "
                         f"{base_blocks}, {k_total}, {k_step}")
    steps = -(-k_total // k_step)
    target = min(-(-sms // base_blocks), steps)
    if target <= 1:
        return 1, steps * k_step
    per_slice = steps // target
    return -(-steps // per_slice), per_slice * k_step


def splitk_sum_threads(s):
    """Threads T that sum one output element's ``s`` partials in ``splitk_sum``: a power of
    two <= 32, about s/4 (each thread adds about 4 partials, then a fixed tree adds the T
    sums), so a large S still gives many blocks: block (T, 128/T), grid ceil(E / (128/T))."""
    t = 1
    while t < 32 and t * 4 < s:
        t *= 2
    return t
