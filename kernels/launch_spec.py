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
