"""The launch specification both GPU dialects share: the constants, the rules that pick a
launch parameter from the shapes, and the policies, written once.

Imported by ``kernels/cupy_backend.py`` (which launches the CUDA C kernels of
``kernels/*/*.cu``) and by the numba-cuda kernels (``kernels/conv2d/numba_kernels.py``,
``kernels/pool2d/numba_kernels.py``), under the same names. CUDA C cannot import Python, so
the ``.cu`` files ``#define`` the constants their kernels need, under these names;
``tests/test_cuda_compile.py`` checks every such ``#define`` equals its value here. numba
reads module-level ints as compile-time constants (as CUDA C reads a ``#define``), imported
ones included, so the numba kernels use these very objects.

Imports nothing (not even NumPy): safe to import before numba's GPU-or-simulator
mode is chosen (``kernels/numba_backend.py``).
"""
from __future__ import annotations

# ---- launch constants
THREADS = 256          # threads per block of every 1-D kernel (one thread per output or pixel)
CONV_TILE = 16         # tiled convolutions: a CONV_TILE x CONV_TILE block of outputs per block
GEMM_BM = 64           # implicit GEMM: rows (M) of the block tile
GEMM_BN = 64           # implicit GEMM: columns (N) of the block tile
GEMM_BK = 8            # implicit GEMM: the K step staged in shared memory
GEMM_PAD = 4           # implicit GEMM: row padding of a shared tile, so its stores hit 32 banks
GEMM_THREADS = 256     # implicit GEMM: 16 x 16 threads, each a 4 x 4 block of the 64 x 64 tile
WGRAD_CHUNK = 256      # weight-gradient atomic: (n,i,j) positions summed by one thread
WGRAD_RED_BLOCK = 256  # weight-gradient reduce/warp: threads per block (T per dw element)
BGRAD_THREADS = 256    # bias-gradient reduce/warp: threads per block (a power of two)
FULL_MASK = 0xFFFFFFFF  # warp versions: all 32 lanes take part in every shuffle
GRID_YZ_MAX = 65535    # CUDA's limit on gridDim.y and gridDim.z
INT32_MAX = 2**31 - 1  # the kernels index with 32-bit ints


def cdiv(a, b):
    """Ceiling division: the blocks needed to cover ``a`` items with ``b`` per block."""
    return -(-a // b)


def one_thread_per(n):
    """(grid, block) of a 1-D kernel with one thread per element of an n-element array:
    blocks of THREADS threads, the last one partly idle (its threads past n return)."""
    return (cdiv(n, THREADS),), (THREADS,)


# ---- conv reductions
def wgrad_reduce_threads(r):
    """Threads T per dw element of the weight gradient's ``reduce`` and ``warp`` versions,
    for a reduction of length ``r`` = N*OH*OW: a power of two <= 32, about r/8 (each thread
    then sums about 8 terms before the tree), so small reductions leave no thread idle.
    The launch is then block (T, WGRAD_RED_BLOCK/T), grid ceil(F*C*KH*KW / (WGRAD_RED_BLOCK/T))."""
    t = 1
    while t < 32 and t * 8 < r:
        t *= 2
    return t


# ---- pooling
#: By the contract ``unpool2d_forward`` *is* ``maxpool2d_backward`` (values placed at their
#: switches, zeros elsewhere), so both dialects run maxpool2d_backward's kernels for it: one
#: body per dialect (kernels/pool2d/maxpool2d.cu, kernels/pool2d/numba_kernels.py).
SHARED_KERNELS = {"unpool2d_forward": "maxpool2d_backward"}


def kernel_name(op, version):
    """The kernel that runs ``version`` of ``op``: ``<op>_<version>``, or the kernel of the
    op it shares its kernels with (``SHARED_KERNELS``)."""
    return f"{SHARED_KERNELS.get(op, op)}_{version}"


def pool_window_sizes(pooled_hw, full_hw):
    """The pooling window rule: every window size k that pools a ``full_hw`` = (H, W) plane
    to ``pooled_hw`` = (OH, OW), i.e. ``H//k == OH`` and ``W//k == OW``, as a range (empty
    when there is none). Usually exactly one k (k=2 on 24x24 -> 12x12); several where the
    plane is small (5x5 -> 1x1 for k = 3, 4, 5)."""
    (oh, ow), (h, w) = pooled_hw, full_hw
    kmin = max(h // (oh + 1) + 1, w // (ow + 1) + 1)
    kmax = min(h // oh, w // ow)
    return range(kmin, kmax + 1)


def gather_window_bracket(pooled_hw, full_hw):
    """The ``gather`` versions' window bracket (kmin, kmax), or None: the policy of
    ``maxpool2d_backward`` and ``unpool2d_forward`` on both GPU backends.

    The backward ops are not told k (the contract passes only the plane's (H, W)), so a
    gather thread at pixel (h, v) scans the windows (h//kmax .. h//kmin) x (v//kmax ..
    v//kmin) that hold it for some k of :func:`pool_window_sizes` -- one window when k is
    unique. Where no k fits (say a 2x2 map unpooled to 7x9: 7//k == 2 needs k = 3, 9//k == 2
    needs k = 4) there is no window to scan: then None, and both backends run the scatter
    (``naive``) instead, which needs no window and, by the contract's definition, computes
    the same result -- the one the NumPy backend returns for that plane."""
    ks = pool_window_sizes(pooled_hw, full_hw)
    return (ks[0], ks[-1]) if ks else None


# ---- conv split-K
# A GEMM whose output tiles alone give fewer blocks than the GPU has SMs (the weight gradient
# always: dw is small and its K = N*OH*OW is long) cuts its K range into S consecutive
# slices, one per grid z. Block z writes a partial tile for its slice; a second, fixed-order
# pass sums the S partials (kernels/conv2d/splitk_sum.cu, numba: splitk_sum): the same bits
# on every run. The bias gradient splits its N*OH*OW sum the same way (k_step = its 256
# threads). Used by the CUDA C launcher, the numba launchers and so kernels.device.plan.
SPLITK_RED_THREADS = 128   # splitk_sum: threads per block (T per output element, 128/T elements)


def conv_split_k(base_blocks, k_total, k_step=GEMM_BK, sms=None):
    """``(S, chunk)``: the number of K slices and the slice length of a split-K launch.

    ``base_blocks``: the launch's blocks without a split (output tiles); ``k_total``: the
    length of the reduction; ``k_step``: the kernel's K step (GEMM_BK = 8 for the 64x64x8
    GEMM tiles, BGRAD_THREADS = 256 for the bias gradient); ``sms``: the SMs to fill
    (default: the target GPU's, ``kernels.device.DEFAULT``, 132 on an H100/H200).

    Rule: aim at ``target = min(ceil(sms / base_blocks), ceil(k_total / k_step))`` slices
    (enough for one block per SM, never a slice shorter than one K step); each slice is
    ``floor(steps / target)`` whole K steps, so ``S = ceil(steps / (steps per slice))`` is
    at least ``target`` (and below ``2 * target``), every slice but the last is a multiple of
    ``k_step`` long and none is empty. ``S == 1`` (the tiles already fill the GPU, or K is one
    step): no split, the kernel writes its output directly.
    """
    if sms is None:
        from .device import DEFAULT   # stdlib-only; imported here so this module imports nothing
        sms = DEFAULT.sms
    if base_blocks < 1 or k_total < 1 or k_step < 1:
        raise ValueError(f"conv_split_k needs base_blocks, k_total and k_step >= 1, got "
                         f"{base_blocks}, {k_total}, {k_step}")
    steps = cdiv(k_total, k_step)
    target = min(cdiv(int(sms), base_blocks), steps)
    if target <= 1:
        return 1, steps * k_step
    per_slice = steps // target
    return cdiv(steps, per_slice), per_slice * k_step


def splitk_sum_threads(s):
    """Threads T that sum one output element's ``s`` partials in ``splitk_sum``: a power of
    two <= 32, about s/4 (each thread adds about 4 partials, then a fixed tree adds the T
    sums), so a large S still gives many blocks: block (T, 128/T), grid ceil(E / (128/T))."""
    t = 1
    while t < 32 and t * 4 < s:
        t *= 2
    return t
