"""Convolution ops as numba-cuda kernels: the Python translation of ``kernels/conv2d/*.cu``.

Versions (ladder order; the CUDA C files carry the same names and thread mappings):

conv2d_forward          naive          thread per y[n,f,i,j]; c,p,q loop from global memory
conv2d_forward          tiled          16x16 outputs/block; input patch + w[f,c] in smem per c
conv2d_forward          implicit_gemm  M=N*OH*OW, N=F, K=C*KH*KW; 64x64x8 smem tiles, 4x4/thread
conv2d_forward          splitk         implicit_gemm over S slices of K (grid z) + splitk_sum: det.
conv2d_backward_input   naive          thread per dx[n,c,h,v], gathers the dy entries touching it
conv2d_backward_input   tiled          16x16 dx/block; zero-padded dy patch + w[f,c] in smem per f
conv2d_backward_input   implicit_gemm  M=N*H*W, N=C, K=F*KH*KW; A = dy (0 outside), 4x4/thread
conv2d_backward_input   splitk         implicit_gemm over S slices of K (grid z) + splitk_sum: det.
conv2d_backward_weight  naive          thread per dw[f,c,p,q], loops all (n,i,j): deterministic
conv2d_backward_weight  atomic         thread per (dw elem, 256 (n,i,j)); cuda.atomic.add: not det.
conv2d_backward_weight  reduce         T<=32 threads per dw elem, 256/T per block, smem tree: det.
conv2d_backward_weight  warp           reduce's threads, tree by cuda.shfl_down_sync: no smem, no
                                       barrier; the same bits as reduce
conv2d_backward_weight  implicit_gemm  M=F, N=C*KH*KW, K=N*OH*OW; 4x4/thread, all K per block: det.
conv2d_backward_weight  splitk         implicit_gemm over S slices of N*OH*OW + splitk_sum: det.,
                                       >= 132 blocks (S: kernels/launch_spec.py)
conv2d_backward_bias    naive          thread per db[f], loops n,i,j
conv2d_backward_bias    reduce         256-thread block per db[f], smem tree: deterministic
conv2d_backward_bias    warp           256-thread block per db[f], shuffles per warp + 1 barrier
conv2d_backward_bias    split          S blocks per db[f]; the last to finish adds the S partials
                                       (threadfence + atomic ticket): det., one launch
(helper)                splitk_sum     out[e] = sum_s ws[s, e] in a fixed order: the 2nd pass

The ``*_gemm_tile`` device functions hold the 64x64x8 tile loop of each GEMM over a K range:
``implicit_gemm`` calls them with the whole K, ``splitk`` with its slice. What the three
share -- zeroing the 4x4 register block and multiplying it by one 8-deep slice of the shared
tiles -- is written once, :func:`gemm_acc_zero` and :func:`gemm_micro_step` (CUDA C: the
same names in ``gemm_tile.cuh``).

Every kernel computes in float32 (``acc = float32(0)``: a bare ``0.0`` would make numba
accumulate in float64). Arguments arrive C-contiguous and already checked against the
contract (``kernels/contract.py``); each launcher below its kernel allocates the output and
picks the grid. ``rt`` is the backend's runtime (``kernels/numba_backend.py``): it allocates
arrays (CuPy on a GPU, NumPy in the simulator) and launches on the right stream.

Reading guide: numba-cuda next to CUDA C
----------------------------------------
==========================================  ===============================================
numba (this file)                           CUDA C (``conv2d_*.cu``)
==========================================  ===============================================
``@cuda.jit`` on a Python function          ``extern "C" __global__ void ...``
``kern[grid, block, stream, smem](...)``    ``kern<<<grid, block, smem, stream>>>(...)``
``cuda.grid(1)``                            ``blockIdx.x * blockDim.x + threadIdx.x``
``cuda.threadIdx.x``, ``cuda.blockIdx.y``   ``threadIdx.x``, ``blockIdx.y`` (same names)
``x[n, c, h, v]`` on a 4-D array            ``x[((n*C + c)*H + h)*W + v]``: numba has no
                                            pointer arithmetic; arrays know their shape
``def k(y, x, w, b)``, ``x.shape`` inside   ``k(real* y, const real* x, ..., int N, ...)``
                                            same argument order (output first); the
                                            sizes come with the arrays
``launch_<kernel>(rt, ...)`` below each     launch code in ``kernels/cupy_backend.py``
kernel: grid, block, smem, output           grid, block, smem, output
``@cuda.jit(device=True)``                  ``__device__ __forceinline__``
``w.reshape(F, K)`` on the host (a view)    ``w`` as a flat pointer: ``w[fb*K + kb]``
``cuda.shared.array((8, 64), float32)``     ``__shared__ real As[8][64];`` -- the shape
                                            must be a compile-time constant (module
                                            globals are frozen at compile time)
``cuda.shared.array(0, float32)`` and       ``extern __shared__ real smem[];`` and
launching with ``smem`` bytes               ``<<<grid, block, bytes>>>``
``cuda.local.array((4, 4), float32)``       ``real acc[4][4];`` (registers once unrolled)
``cuda.syncthreads()``                      ``__syncthreads()``
``cuda.atomic.add(dw, (f, c, p, q), v)``    ``atomicAdd(&dw[e], v)`` (both return the old value)
``cuda.threadfence()``                      ``__threadfence()``
``ws[z]`` on a 5-D array (a 4-D view)       ``ws + z * plane`` (pointer arithmetic)
``cuda.shfl_down_sync(mask, v, d)``         ``__shfl_down_sync(mask, v, d, width)``: numba
                                            has no width argument (always 32)
``float32(0)``                              ``(real)0``; a bare ``0.0`` would be float64
``for e in range(tid, n, step)``            ``for (int e = tid; e < n; e += step)``
``while stride > 0: ...; stride //= 2``     ``for (s = B/2; s > 0; s >>= 1)``
``val = float32(0)``, ``if ok: val = x[.]``  ``val = ok ? x[...] : (real)0``
==========================================  ===============================================

Warp primitives and numba's simulator
-------------------------------------
numba-cuda compiles ``cuda.shfl_sync``, ``shfl_up_sync``, ``shfl_down_sync``,
``shfl_xor_sync`` (32- and 64-bit ints and floats, width fixed at 32: no ``width``
argument), ``all_sync``, ``any_sync``, ``eq_sync``, ``ballot_sync``, ``syncwarp``,
``activemask``, ``lanemask_lt``, ``match_any_sync`` and ``match_all_sync`` for the GPU. Its
CUDA simulator (numba-cuda 0.30.4, ``numba_cuda/numba/cuda/simulator/kernelapi.py``) has
**none** of them -- only ``laneid``, ``warpsize`` and ``syncthreads_count/and/or``: a
kernel calling ``cuda.shfl_down_sync`` fails there with an AttributeError. The project adds
the shuffles, the votes and ``syncwarp`` to the simulator (``kernels/numba_simulator.py``,
installed by ``get_backend("numba", emulate=True)``): a lane waits until every lane named in
the mask has made the same call, a named lane that exits or waits elsewhere raises, a read
from a lane outside the mask returns NaN. So the ``warp`` versions below run against NumPy in
the default test tier like every other version, and ``tests/test_numba_compile.py`` compiles
them to PTX with numba's real CUDA pipeline (``activemask``, ``lanemask_lt`` and ``match_*``
are not added: nothing here uses them, and ``activemask`` would need the GPU's notion of
which lanes are converged).

Running a kernel in numba's CUDA simulator (no GPU; each CUDA thread becomes a Python
thread, so keep grids tiny). ``NUMBA_ENABLE_CUDASIM=1`` must be set before numba is first
imported; ``kernels.get_backend("numba", emulate=True)`` does that for you and refuses
(with the fix) if it is too late. This snippet is executed by
``tests/test_numba_backend.py``::

    import numpy as np, kernels
    be = kernels.get_backend("numba", emulate=True)      # sets NUMBA_ENABLE_CUDASIM=1
    from kernels.conv2d import numba_kernels as K        # imports numba: after the line above
    x = np.arange(16, dtype=np.float32).reshape(1, 1, 4, 4)
    w = np.array([[[[1, 0], [0, -1]]]], dtype=np.float32)
    b = np.array([0.5], dtype=np.float32)
    y = np.empty((1, 1, 3, 3), dtype=np.float32)
    K.conv2d_forward_naive[1, 32](y, x, w, b)            # <<<1 block, 32 threads>>>
    assert (y == -4.5).all()                             # x[i,j] - x[i+1,j+1] + 0.5
    # the same through the backend, any version:
    assert (be.conv2d_forward(x, w, b, version="tiled") == -4.5).all()
"""
from __future__ import annotations

import numpy as np
from numba import cuda, float32, int32, uint32

from ..cupy_backend import _check_int32   # the CUDA C launcher's int32 size check

# --------------------------------------------------------------------------- tile sizes
# Module-level ints are compile-time constants for numba (CUDA C: #define), imported ones
# too. Block and tile sizes, and the weight-gradient reduce rule, are the CUDA C launcher's:
# kernels/launch_spec.py holds them for both dialects.
from ..launch_spec import (BGRAD_THREADS, CONV_TILE, FULL_MASK, GEMM_BK, GEMM_BM, GEMM_BN,
                           GEMM_PAD, GEMM_THREADS, GRID_YZ_MAX, THREADS, WGRAD_CHUNK,
                           WGRAD_RED_BLOCK, wgrad_reduce_threads)
from ..launch_spec import SPLITK_RED_THREADS, conv_split_k, splitk_sum_threads
from ..launch_spec import cdiv as _cdiv

GEMM_BN_PAD = GEMM_BN + GEMM_PAD   # padded row: a shared-array shape must be a literal
GEMM_BM_PAD = GEMM_BM + GEMM_PAD   # constant, so the sum is taken here, not in the kernel
BGRAD_WARPS = BGRAD_THREADS // 32   # bias warp: warps per block (a shared-array shape)


# ----------------------------------------------------------------- 32-bit index maths
@cuda.jit(device=True)
def udiv(a, b):
    """``a // b`` for index maths, as a 32-bit division (CUDA C: ``a / b`` on ints).

    numba types integer arithmetic as int64 and gives signed ``//`` and ``%`` Python's floor
    semantics, so a bare ``a // b`` on indices compiles to a 64-bit ``div.s64`` plus sign
    fix-ups (a long instruction sequence and register pairs on the GPU). Indices are never
    negative, and for non-negative values floor division is plain division: on uint32
    operands LLVM emits one ``div.u32``. The result is int32 (not uint32: mixing a uint64 with
    an int64 would make numba compute in float64). Limit: 0 <= a, b < 2**31, which the
    launchers check (``_check_int32``, the CUDA C launcher's check)."""
    return int32(uint32(a) // uint32(b))


@cuda.jit(device=True)
def umod(a, b):
    """``a % b`` for index maths, as a 32-bit remainder; see :func:`udiv`."""
    return int32(uint32(a) % uint32(b))


# ------------------------------------------------------ the GEMM tiles' shared pieces
# The three *_gemm_tile functions below (forward, backward input, backward weight) read top
# to bottom: loaders (op-specific gathers), gemm_acc_zero, then per K step of GEMM_BK the
# tile loads, a barrier, gemm_micro_step, a barrier; last the epilogue (op-specific stores).
# CUDA C: kernels/conv2d/gemm_tile.cuh, the same two functions.
@cuda.jit(device=True)
def gemm_acc_zero(acc):
    """``acc[i, j] = 0`` for the thread's 4x4 register block."""
    for i in range(4):
        for j in range(4):
            acc[i, j] = float32(0)


@cuda.jit(device=True)
def gemm_micro_step(acc, As, Bs, ta, tb):
    """The 4x4 register block times one GEMM_BK slice of the shared tiles::

        acc[i, j] += sum_{kk < GEMM_BK} As[kk, ta + 16 i] * Bs[kk, tb + 16 j]   (i, j = 0..3)

    kk in increasing order: each acc[i, j] adds its products one kk after the other. Per kk
    the thread copies 4 values of A and 4 of B into registers (``a``, ``bv``: local arrays,
    CUDA C ``real a[4], bv[4]``) and does 16 multiply-adds, so each value read from shared
    memory feeds 4 of them. Thread t passes t % 16 and t // 16 as ta, tb (in the order its
    output layout wants): a warp reads 16 consecutive words of one tile row and 2 of the
    other, each by several threads at once (broadcasts): no bank conflicts. Call it between
    the two barriers of a K step.
    """
    a = cuda.local.array(4, float32)
    bv = cuda.local.array(4, float32)
    for kk in range(GEMM_BK):
        for i in range(4):
            a[i] = As[kk, ta + 16 * i]
        for j in range(4):
            bv[j] = Bs[kk, tb + 16 * j]
        for j in range(4):
            for i in range(4):
                acc[i, j] += a[i] * bv[j]


# ============================================================================ forward
@cuda.jit
def conv2d_forward_naive(y, x, w, b):
    """naive: one thread per output element y[n,f,i,j] (flat NCHW index = cuda.grid(1)).

    Plan: decode (n,f,i,j) from the flat index, sum C*KH*KW products straight from global
    memory (every x value is re-read by up to KH*KW*F threads), add the bias.
    Constraints: grid (ceil(N*F*OH*OW / 256)), block (256); threads past the end return.
    Consecutive threads -> consecutive j: coalesced y stores and x loads.
    """
    N, C, H, W = x.shape
    F, _, KH, KW = w.shape
    OH, OW = H - KH + 1, W - KW + 1
    idx = cuda.grid(1)                      # CUDA C: blockIdx.x * blockDim.x + threadIdx.x
    if idx >= N * F * OH * OW:
        return
    j = idx % OW
    i = (idx // OW) % OH
    f = (idx // (OW * OH)) % F
    n = idx // (OW * OH * F)
    acc = b[f]                              # CUDA C: real acc = b[f];
    for c in range(C):
        for p in range(KH):
            for q in range(KW):             # CUDA C: xn[(c*H + i+p)*W + j+q] * wf[...]
                acc += x[n, c, i + p, j + q] * w[f, c, p, q]
    y[n, f, i, j] = acc                     # CUDA C: y[idx] = acc (same element)


def launch_conv2d_forward_naive(rt, x, w, b):
    n, c, h, wd = x.shape
    f, _, kh, kw = w.shape
    y = rt.empty((n, f, h - kh + 1, wd - kw + 1))
    rt.launch(conv2d_forward_naive, _cdiv(y.size, THREADS), THREADS, (y, x, w, b))
    return y


@cuda.jit
def conv2d_forward_tiled(y, x, w, b):
    """tiled: one CONV_TILE x CONV_TILE tile of one (n,f) output plane per block, one output
    per thread (thread (tx, ty) of block (bx, by, n*F+f) -> y[n, f, by*16+ty, bx*16+tx]).

    Plan: for each input channel c, the block stages the (16+KH-1) x (16+KW-1) input patch
    of its tile (tile + halo) and the KH x KW filter slice w[f,c] in shared memory, syncs,
    and each thread accumulates its KH*KW products from shared memory: each x value is read
    from global memory about once per (f, tile) instead of KH*KW times.
    Constraints: block (16, 16); grid (ceil(OW/16), ceil(OH/16), min(N*F, 65535)): z strides
    over the (n,f) planes, so N*F > 65535 works (the CUDA C launcher instead launches batch
    slices with gridDim.z = (samples in slice)*F <= 65535: same mapping, one launch here);
    dynamic shared memory ((16+KH-1)*(16+KW-1) + KH*KW) floats, given at launch:
    ``cuda.shared.array(0, float32)`` is CUDA C's ``extern __shared__ real smem[]``. There
    is no ``real* ws = smem + TH*TW`` in numba (no pointer arithmetic): ws is an offset.
    """
    N, C, H, W = x.shape
    F, _, KH, KW = w.shape
    OH, OW = H - KH + 1, W - KW + 1
    TH, TW = CONV_TILE + KH - 1, CONV_TILE + KW - 1   # input patch of the tile
    smem = cuda.shared.array(0, float32)              # [TH*TW xs | KH*KW ws]
    ws = TH * TW                                      # offset of ws in smem
    tx, ty = cuda.threadIdx.x, cuda.threadIdx.y
    tid = ty * CONV_TILE + tx
    i0 = cuda.blockIdx.y * CONV_TILE
    j0 = cuda.blockIdx.x * CONV_TILE
    i, j = i0 + ty, j0 + tx
    for nf in range(cuda.blockIdx.z, N * F, cuda.gridDim.z):   # uniform over the block
        n, f = nf // F, nf % F
        acc = float32(0)
        for c in range(C):
            for e in range(tid, TH * TW, CONV_TILE * CONV_TILE):   # cooperative load
                h, v = i0 + e // TW, j0 + e % TW
                val = float32(0)
                if h < H and v < W:
                    val = x[n, c, h, v]
                smem[e] = val
            for e in range(tid, KH * KW, CONV_TILE * CONV_TILE):
                smem[ws + e] = w[f, c, e // KW, e % KW]
            cuda.syncthreads()                  # tile complete before anyone reads
            if i < OH and j < OW:
                for p in range(KH):
                    for q in range(KW):
                        acc += smem[(ty + p) * TW + tx + q] * smem[ws + p * KW + q]
            cuda.syncthreads()                  # all done reading before the overwrite
        if i < OH and j < OW:
            y[n, f, i, j] = acc + b[f]


def launch_conv2d_forward_tiled(rt, x, w, b):
    n, c, h, wd = x.shape
    f, _, kh, kw = w.shape
    oh, ow = h - kh + 1, wd - kw + 1
    y = rt.empty((n, f, oh, ow))
    smem = ((CONV_TILE + kh - 1) * (CONV_TILE + kw - 1) + kh * kw) * 4
    grid = (_cdiv(ow, CONV_TILE), _cdiv(oh, CONV_TILE), min(n * f, GRID_YZ_MAX))
    rt.launch(conv2d_forward_tiled, grid, (CONV_TILE, CONV_TILE), (y, x, w, b), shared=smem)
    return y


@cuda.jit(device=True)
def forward_gemm_tile(out, x, w2, b, k_lo, k_hi, add_bias, As, Bs, acc):
    """The 64x64x8 GEMM tile of the forward pass, shared by implicit_gemm (the whole K) and
    splitk (one slice of K per grid z; CUDA C: ``forward_gemm_tile``).

    Block (bm, bf) = (blockIdx.x, blockIdx.y) sums taps k in [k_lo, k_hi) into its 64x64 tile
    of ``out`` (shaped like y: (N, F, OH, OW)) and adds the bias when ``add_bias``. The
    GEMM: C[m, f] = sum_k A[m, k] * B[k, f], M = N*OH*OW (pixel m = (n,i,j)), N = F,
    K = C*KH*KW (tap k = (c,p,q)); A[m,k] = x[n,c,i+p,j+q] is gathered on the fly (no im2col
    buffer), B[k,f] = w2[f,k] with w2 = w viewed as (F, K) on the host.
    Plan: per K step of 8 the block stages A (8x64) and B (8x64, rows padded by 4) in the
    shared arrays As, Bs (declared by the kernel: a device function gets them as arguments),
    2 elements per thread each, syncs, and each thread does 8 rank-1 updates of its 4x4
    register block ``acc`` (:func:`gemm_micro_step`): every smem value feeds 4 multiply-adds, every x value loaded
    feeds 64 filters. Thread t, tx = t%16, ty = t/16 owns m = m0 + tx + 16r, f = f0 + ty +
    16s (r, s = 0..3): strided by 16 so a warp's smem loads are conflict-free and its stores
    (consecutive m = consecutive j) coalesced. Taps at or past k_hi and out-of-range rows or
    columns load zeros; those rows and columns are not stored. Every thread of the block
    must call it (it has barriers).
    """
    N, C, H, W = x.shape
    F, K = w2.shape
    OH, OW = out.shape[2], out.shape[3]
    KW = W - OW + 1
    KK = udiv(K, C)
    OHW = OH * OW
    M = N * OHW
    t = cuda.threadIdx.x
    tx, ty = t % 16, t // 16
    m0, f0 = cuda.blockIdx.x * GEMM_BM, cuda.blockIdx.y * GEMM_BN
    # A loader: this thread fills As[t//64 + 4r][t%64]: one fixed pixel, decoded once.
    a_m, a_k = m0 + t % GEMM_BM, t // GEMM_BM
    a_ok = a_m < M
    a_n, a_i, a_j = 0, 0, 0
    if a_ok:
        a_n = udiv(a_m, OHW)
        a_i = udiv(umod(a_m, OHW), OW)
        a_j = umod(a_m, OW)
    # B loader: this thread fills Bs[t%8][t//8 + 32r] from w2[f, k]: 8 threads read 8
    # consecutive k of one filter row.
    b_k, b_f = t % GEMM_BK, t // GEMM_BK
    gemm_acc_zero(acc)
    for k0 in range(k_lo, k_hi, GEMM_BK):
        for r in range(2):
            ka = k0 + a_k + 4 * r
            va = float32(0)
            if a_ok and ka < k_hi:
                c, pq = udiv(ka, KK), umod(ka, KK)
                va = x[a_n, c, a_i + udiv(pq, KW), a_j + umod(pq, KW)]
            As[a_k + 4 * r, t % GEMM_BM] = va
            fb, kb = f0 + b_f + 32 * r, k0 + b_k
            vb = float32(0)
            if fb < F and kb < k_hi:
                vb = w2[fb, kb]
            Bs[b_k, b_f + 32 * r] = vb
        cuda.syncthreads()
        gemm_micro_step(acc, As, Bs, tx, ty)   # acc[r, s] += As[., m] * Bs[., f]
        cuda.syncthreads()
    for r in range(4):
        m = m0 + tx + 16 * r
        if m < M:
            n, rr = udiv(m, OHW), umod(m, OHW)
            for s in range(4):
                f = f0 + ty + 16 * s
                if f < F:
                    bias = float32(0)
                    if add_bias:
                        bias = b[f]
                    out[n, f, udiv(rr, OW), umod(rr, OW)] = acc[r, s] + bias


@cuda.jit
def conv2d_forward_implicit_gemm(y, x, w2, b):
    """implicit_gemm: y as the GEMM C[m, f] = sum_k A[m, k] * B[k, f], never materialised
    (M = N*OH*OW pixels, N = F filters, K = C*KH*KW taps): one 64x64 tile of y per 256-thread
    block over the whole K, in steps of 8 through shared memory, a 4x4 register block per
    thread (the plan: :func:`forward_gemm_tile`). Constraints: grid (ceil(M/64),
    ceil(F/64)), block (256); w2 = w viewed as (F, K).
    """
    As = cuda.shared.array((GEMM_BK, GEMM_BM), float32)       # [k][m]
    Bs = cuda.shared.array((GEMM_BK, GEMM_BN_PAD), float32)   # [k][f]
    acc = cuda.local.array((4, 4), float32)                   # CUDA C: real acc[4][4]
    forward_gemm_tile(y, x, w2, b, 0, w2.shape[1], True, As, Bs, acc)


def launch_conv2d_forward_implicit_gemm(rt, x, w, b):
    n, c, h, wd = x.shape
    f, _, kh, kw = w.shape
    oh, ow = h - kh + 1, wd - kw + 1
    _check_int32(n, x=x.size, w=w.size, y=n * f * oh * ow)   # udiv/umod: 32-bit
    y = rt.empty((n, f, oh, ow))
    grid = (_cdiv(n * oh * ow, GEMM_BM), _cdiv(f, GEMM_BN))
    rt.launch(conv2d_forward_implicit_gemm, grid, GEMM_THREADS,
              (y, x, w.reshape(f, c * kh * kw), b))
    return y


@cuda.jit
def conv2d_forward_splitk(ws, x, w2, b, chunk):
    """splitk: implicit_gemm with K = C*KH*KW cut into S slices of ``chunk`` taps, one per
    grid z, for launches whose output tiles alone would leave SMs idle (batch 16: mnist-conv2
    has 48 tiles for 132 SMs). Block (bm, bf, z) computes implicit_gemm's tile over taps
    [z*chunk, (z+1)*chunk) into partial z of ws (S, N, F, OH, OW), the bias in partial 0
    only; :func:`splitk_sum` then adds the S partials in a fixed order into y:
    deterministic. S and chunk: ``kernels.launch_spec.conv_split_k``. With S == 1 the
    launcher passes y (viewed as (1, N, F, OH, OW)) as ws and launches no sum: implicit_gemm's
    tiles and bits. Constraints: grid (ceil(M/64), ceil(F/64), S), block (256).
    """
    As = cuda.shared.array((GEMM_BK, GEMM_BM), float32)
    Bs = cuda.shared.array((GEMM_BK, GEMM_BN_PAD), float32)
    acc = cuda.local.array((4, 4), float32)
    z = cuda.blockIdx.z
    k_hi = min(w2.shape[1], (z + 1) * chunk)
    forward_gemm_tile(ws[z], x, w2, b, z * chunk, k_hi, z == 0, As, Bs, acc)


def launch_conv2d_forward_splitk(rt, x, w, b):
    n, c, h, wd = x.shape
    f, _, kh, kw = w.shape
    oh, ow = h - kh + 1, wd - kw + 1
    _check_int32(n, x=x.size, w=w.size, y=n * f * oh * ow)   # udiv/umod: 32-bit
    y = rt.empty((n, f, oh, ow))
    tiles = (_cdiv(n * oh * ow, GEMM_BM), _cdiv(f, GEMM_BN))
    _launch_splitk(rt, conv2d_forward_splitk, tiles, c * kh * kw, y,
                   lambda ws, chunk: (ws, x, w.reshape(f, c * kh * kw), b, chunk))
    return y


# ======================================================================= split-K sum
@cuda.jit
def splitk_sum(out, ws):
    """The second pass of every split-K kernel (CUDA C: ``kernels/conv2d/splitk_sum.cu``):
    out[e] = sum_s ws[s, e] for ws (S, E) -> out (E,), out and ws flat views on the host.

    Plan: T threads per element (T = blockDim.x, a power of two <= 32, about S/4:
    ``launch_spec.splitk_sum_threads``), 128/T elements per 128-thread block; thread (tx, ty)
    of block b works on e = b*blockDim.y + ty, sums s = tx, tx+T, ... in order, then the T
    sums are added in a fixed shared-memory tree (T/2, ..., 1 apart) and tx = 0 writes
    out[e]. One fixed order per element: the same bits every run, no atomics; with T > 1 a
    large S (up to ~2*132) still gives many blocks. Constraints: grid (ceil(E / (128/T))),
    block (T, 128/T); every thread reaches every barrier.
    """
    part = cuda.shared.array(SPLITK_RED_THREADS, float32)
    S, E = ws.shape
    T, tx, ty = cuda.blockDim.x, cuda.threadIdx.x, cuda.threadIdx.y
    e = cuda.blockIdx.x * cuda.blockDim.y + ty
    acc = float32(0)
    if e < E:
        for s in range(tx, S, T):
            acc += ws[s, e]
    mine = ty * T                               # CUDA C: real* mine = part + ty * T;
    part[mine + tx] = acc
    cuda.syncthreads()
    stride = T // 2
    while stride > 0:
        if tx < stride:
            part[mine + tx] += part[mine + tx + stride]
        cuda.syncthreads()                      # uniform loop bound: every thread arrives
        stride //= 2
    if tx == 0 and e < E:
        out[e] = part[mine]


def _launch_splitk(rt, kernel, tiles, k_total, out, make_args):
    """A split-K GEMM launch and its fixed-order sum (the CUDA C launcher's
    ``CupyBackend._splitk``): grid ``tiles + (S,)``, S and the slice length from
    ``launch_spec.conv_split_k``; with S == 1 the kernel writes ``out`` (viewed as
    (1, *out.shape)) directly, else a workspace (S, *out.shape) that :func:`splitk_sum` adds
    into ``out``. ``make_args(ws, chunk)``: the kernel's arguments."""
    s, chunk = conv_split_k(tiles[0] * tiles[1], k_total)
    if s == 1:
        rt.launch(kernel, tiles + (1,), GEMM_THREADS, make_args(out.reshape((1,) + out.shape),
                                                                chunk))
        return
    _check_int32(workspace=s * out.size)
    ws = rt.empty((s,) + out.shape)
    rt.launch(kernel, tiles + (s,), GEMM_THREADS, make_args(ws, chunk))
    t = splitk_sum_threads(s)
    per_block = SPLITK_RED_THREADS // t
    rt.launch(splitk_sum, _cdiv(out.size, per_block), (t, per_block),
              (out.reshape(out.size), ws.reshape(s, out.size)))


# ===================================================================== backward input
@cuda.jit
def conv2d_backward_input_naive(dx, dy, w):
    """naive: one thread per dx[n,c,h,v]; it gathers the (at most F*KH*KW) dy entries that
    touch it: dx[n,c,h,v] = sum_{f,p,q} dy[n,f,h-p,v-q] * w[f,c,p,q].

    Only taps with 0 <= h-p < OH and 0 <= v-q < OW touch the pixel, so the p, q loops run
    over [p_lo, p_hi] x [q_lo, q_hi] (no test per term). A gather: each dx written once, no
    atomics. Constraints: grid (ceil(N*C*H*W / 256)), block (256).
    """
    N, F, OH, OW = dy.shape
    _, C, KH, KW = w.shape
    H, W = OH + KH - 1, OW + KW - 1
    idx = cuda.grid(1)
    if idx >= N * C * H * W:
        return
    v = idx % W
    h = (idx // W) % H
    c = (idx // (W * H)) % C
    n = idx // (W * H * C)
    p_lo, p_hi = max(0, h - OH + 1), min(KH - 1, h)
    q_lo, q_hi = max(0, v - OW + 1), min(KW - 1, v)
    acc = float32(0)
    for f in range(F):
        for p in range(p_lo, p_hi + 1):
            for q in range(q_lo, q_hi + 1):
                acc += dy[n, f, h - p, v - q] * w[f, c, p, q]
    dx[n, c, h, v] = acc


def launch_conv2d_backward_input_naive(rt, dy, w):
    n, f, oh, ow = dy.shape
    _, c, kh, kw = w.shape
    dx = rt.empty((n, c, oh + kh - 1, ow + kw - 1))
    rt.launch(conv2d_backward_input_naive, _cdiv(dx.size, THREADS), THREADS,
              (dx, dy, w))
    return dx


@cuda.jit
def conv2d_backward_input_tiled(dx, dy, w):
    """tiled: one 16x16 tile of one (n,c) dx plane per block, one output per thread
    (thread (tx, ty) of block (bx, by, n*C+c) -> dx[n, c, by*16+ty, bx*16+tx]).

    Plan: for each filter f, stage the dy patch rows h0-KH+1 .. h0+15, columns v0-KW+1 ..
    v0+15 (zeros outside dy, so the inner loop has no bounds tests) and w[f,c] in shared
    memory; pixel (ty, tx) finds dy[h-p, v-q] at patch (ty+KH-1-p, tx+KW-1-q): the full
    correlation with the flipped kernel. Constraints: as conv2d_forward_tiled (block
    (16, 16), grid z strides over the N*C planes, dynamic smem ((16+KH-1)*(16+KW-1) +
    KH*KW) floats).
    """
    N, F, OH, OW = dy.shape
    _, C, KH, KW = w.shape
    H, W = OH + KH - 1, OW + KW - 1
    TH, TW = CONV_TILE + KH - 1, CONV_TILE + KW - 1
    smem = cuda.shared.array(0, float32)        # [TH*TW ds (dy patch) | KH*KW ws]
    ws = TH * TW
    tx, ty = cuda.threadIdx.x, cuda.threadIdx.y
    tid = ty * CONV_TILE + tx
    h0 = cuda.blockIdx.y * CONV_TILE
    v0 = cuda.blockIdx.x * CONV_TILE
    h, v = h0 + ty, v0 + tx
    for nc in range(cuda.blockIdx.z, N * C, cuda.gridDim.z):
        n, c = nc // C, nc % C
        acc = float32(0)
        for f in range(F):
            for e in range(tid, TH * TW, CONV_TILE * CONV_TILE):
                i = h0 - KH + 1 + e // TW
                j = v0 - KW + 1 + e % TW
                val = float32(0)
                if i >= 0 and i < OH and j >= 0 and j < OW:
                    val = dy[n, f, i, j]
                smem[e] = val
            for e in range(tid, KH * KW, CONV_TILE * CONV_TILE):
                smem[ws + e] = w[f, c, e // KW, e % KW]
            cuda.syncthreads()
            if h < H and v < W:
                for p in range(KH):
                    for q in range(KW):
                        acc += (smem[(ty + KH - 1 - p) * TW + tx + KW - 1 - q]
                                * smem[ws + p * KW + q])
            cuda.syncthreads()
        if h < H and v < W:
            dx[n, c, h, v] = acc


def launch_conv2d_backward_input_tiled(rt, dy, w):
    n, f, oh, ow = dy.shape
    _, c, kh, kw = w.shape
    h, wd = oh + kh - 1, ow + kw - 1
    dx = rt.empty((n, c, h, wd))
    smem = ((CONV_TILE + kh - 1) * (CONV_TILE + kw - 1) + kh * kw) * 4
    grid = (_cdiv(wd, CONV_TILE), _cdiv(h, CONV_TILE), min(n * c, GRID_YZ_MAX))
    rt.launch(conv2d_backward_input_tiled, grid, (CONV_TILE, CONV_TILE), (dx, dy, w), shared=smem)
    return dx


@cuda.jit(device=True)
def backward_input_gemm_tile(out, dy, w, k_lo, k_hi, As, Bs, acc):
    """The 64x64x8 GEMM tile of the input gradient, shared by implicit_gemm (the whole K) and
    splitk (one slice of K per grid z; CUDA C: ``backward_input_gemm_tile``).

    The full correlation as an implicit GEMM over the flipped kernel, C[m, c] = sum_k
    A[m, k] * B[k, c]: M = N*H*W (dx pixel m = (n,h,v)), N = C, K = F*KH*KW (k = (f,p,q));
    A[m,k] = dy[n,f,h-p,v-q] (zero outside dy: the implicit zero padding), B[k,c] =
    w[f,c,p,q]. Block (bm, bc) sums taps k in [k_lo, k_hi) into its 64x64 tile of ``out``
    (shaped like dx), with forward_gemm_tile's tiling, loaders and 4x4 register blocks:
    thread t owns m = m0 + t%16 + 16r, c = c0 + t//16 + 16s. Taps at or past k_hi load
    zeros. Every thread of the block must call it (barriers).
    """
    N, F, OH, OW = dy.shape
    _, C, KH, KW = w.shape
    H, W = out.shape[2], out.shape[3]
    HW, KK = H * W, KH * KW
    M = N * HW
    t = cuda.threadIdx.x
    tx, ty = t % 16, t // 16
    m0, c0 = cuda.blockIdx.x * GEMM_BM, cuda.blockIdx.y * GEMM_BN
    # A loader: fixed dx pixel (n, h, v) = m0 + t%64, rows k = t//64 + 4r of the tile.
    a_m, a_k = m0 + t % GEMM_BM, t // GEMM_BM
    a_ok = a_m < M
    a_n, a_h, a_v = 0, 0, 0
    if a_ok:
        a_n = udiv(a_m, HW)
        a_h = udiv(umod(a_m, HW), W)
        a_v = umod(a_m, W)
    # B loader: Bs[t%8][t//8 + 32r] = w[f, c, p, q] with k = (f, p, q).
    b_k, b_c = t % GEMM_BK, t // GEMM_BK
    gemm_acc_zero(acc)
    for k0 in range(k_lo, k_hi, GEMM_BK):
        for r in range(2):
            ka = k0 + a_k + 4 * r
            va = float32(0)
            if a_ok and ka < k_hi:
                f, pq = udiv(ka, KK), umod(ka, KK)
                i, j = a_h - udiv(pq, KW), a_v - umod(pq, KW)     # the flipped tap
                if i >= 0 and i < OH and j >= 0 and j < OW:
                    va = dy[a_n, f, i, j]
            As[a_k + 4 * r, t % GEMM_BM] = va
            cb, kb = c0 + b_c + 32 * r, k0 + b_k
            vb = float32(0)
            if cb < C and kb < k_hi:
                pq = umod(kb, KK)
                vb = w[udiv(kb, KK), cb, udiv(pq, KW), umod(pq, KW)]
            Bs[b_k, b_c + 32 * r] = vb
        cuda.syncthreads()
        gemm_micro_step(acc, As, Bs, tx, ty)   # acc[r, s] += As[., m] * Bs[., c]
        cuda.syncthreads()
    for r in range(4):
        m = m0 + tx + 16 * r
        if m < M:
            n, rr = udiv(m, HW), umod(m, HW)
            for s in range(4):
                c = c0 + ty + 16 * s
                if c < C:
                    out[n, c, udiv(rr, W), umod(rr, W)] = acc[r, s]


@cuda.jit
def conv2d_backward_input_implicit_gemm(dx, dy, w):
    """implicit_gemm: dx as the implicit GEMM over the flipped kernel (M = N*H*W pixels,
    N = C channels, K = F*KH*KW), one 64x64 dx tile per 256-thread block over the whole K
    (the plan: :func:`backward_input_gemm_tile`). Constraints: grid (ceil(M/64),
    ceil(C/64)), block (256).
    """
    As = cuda.shared.array((GEMM_BK, GEMM_BM), float32)
    Bs = cuda.shared.array((GEMM_BK, GEMM_BN_PAD), float32)
    acc = cuda.local.array((4, 4), float32)
    k_total = w.shape[0] * w.shape[2] * w.shape[3]
    backward_input_gemm_tile(dx, dy, w, 0, k_total, As, Bs, acc)


def launch_conv2d_backward_input_implicit_gemm(rt, dy, w):
    n, f, oh, ow = dy.shape
    _, c, kh, kw = w.shape
    h, wd = oh + kh - 1, ow + kw - 1
    _check_int32(n, dy=dy.size, w=w.size, dx=n * c * h * wd)   # udiv/umod: 32-bit
    dx = rt.empty((n, c, h, wd))
    grid = (_cdiv(n * h * wd, GEMM_BM), _cdiv(c, GEMM_BN))
    rt.launch(conv2d_backward_input_implicit_gemm, grid, GEMM_THREADS, (dx, dy, w))
    return dx


@cuda.jit
def conv2d_backward_input_splitk(ws, dy, w, chunk):
    """splitk: implicit_gemm with K = F*KH*KW cut into S slices of ``chunk`` taps, one per
    grid z (batch 16: mnist-conv2's dx has 72 tiles for 132 SMs). Block (bm, bc, z) computes
    the tile over taps [z*chunk, (z+1)*chunk) into partial z of ws (S, N, C, H, W);
    :func:`splitk_sum` adds the S partials in a fixed order into dx: deterministic. S == 1:
    ws is dx itself, no sum. Constraints: grid (ceil(M/64), ceil(C/64), S), block (256).
    """
    As = cuda.shared.array((GEMM_BK, GEMM_BM), float32)
    Bs = cuda.shared.array((GEMM_BK, GEMM_BN_PAD), float32)
    acc = cuda.local.array((4, 4), float32)
    z = cuda.blockIdx.z
    k_hi = min(w.shape[0] * w.shape[2] * w.shape[3], (z + 1) * chunk)
    backward_input_gemm_tile(ws[z], dy, w, z * chunk, k_hi, As, Bs, acc)


def launch_conv2d_backward_input_splitk(rt, dy, w):
    n, f, oh, ow = dy.shape
    _, c, kh, kw = w.shape
    h, wd = oh + kh - 1, ow + kw - 1
    _check_int32(n, dy=dy.size, w=w.size, dx=n * c * h * wd)   # udiv/umod: 32-bit
    dx = rt.empty((n, c, h, wd))
    tiles = (_cdiv(n * h * wd, GEMM_BM), _cdiv(c, GEMM_BN))
    _launch_splitk(rt, conv2d_backward_input_splitk, tiles, f * kh * kw, dx,
                   lambda ws, chunk: (ws, dy, w, chunk))
    return dx


# ==================================================================== backward weight
@cuda.jit(device=True)
def wgrad_term(x, dy, r, f, c, p, q):
    """dy[n,f,i,j] * x[n,c,i+p,j+q] for reduction position r = (n, i, j) -- shared by the
    naive, atomic, reduce and warp versions (CUDA C: a ``__device__ __forceinline__`` function;
    numba inlines device functions too)."""
    OH, OW = dy.shape[2], dy.shape[3]
    n, s = r // (OH * OW), r % (OH * OW)
    i, j = s // OW, s % OW
    return dy[n, f, i, j] * x[n, c, i + p, j + q]


@cuda.jit(device=True)
def wgrad_partial(x, dy, e, tx, T):
    """Thread tx's share of dw.flat[e] when T threads split its sum: positions r = tx,
    tx+T, ... (0 for an e past the end, so the thread still takes part in the tree) --
    shared by the reduce and warp versions."""
    N, C, H, W = x.shape
    _, F, OH, OW = dy.shape
    KH, KW = H - OH + 1, W - OW + 1
    acc = float32(0)
    if e < F * C * KH * KW:
        q, p = e % KW, (e // KW) % KH
        c, f = (e // (KW * KH)) % C, e // (KW * KH * C)
        for r in range(tx, N * OH * OW, T):
            acc += wgrad_term(x, dy, r, f, c, p, q)
    return acc


@cuda.jit(device=True)
def store_flat4(a, e, v):
    """``a.flat[e] = v`` for a 4-D C-contiguous array (CUDA C: ``a[e] = v``)."""
    _, C, KH, KW = a.shape
    a[e // (KW * KH * C), (e // (KW * KH)) % C, (e // KW) % KH, e % KW] = v


@cuda.jit
def conv2d_backward_weight_naive(dw, x, dy):
    """naive: one thread per dw element (thread e -> dw.flat[e]), looping over all
    r = (n,i,j) in order: deterministic, but only F*C*KH*KW threads, each a long serial
    sum. Constraints: grid (ceil(F*C*KH*KW / 256)), block (256).
    """
    N, C, H, W = x.shape
    _, F, OH, OW = dy.shape
    KH, KW = H - OH + 1, W - OW + 1
    e = cuda.grid(1)
    if e >= F * C * KH * KW:
        return
    q, p = e % KW, (e // KW) % KH
    c, f = (e // (KW * KH)) % C, e // (KW * KH * C)
    acc = float32(0)
    for r in range(N * OH * OW):
        acc += wgrad_term(x, dy, r, f, c, p, q)
    dw[f, c, p, q] = acc


def launch_conv2d_backward_weight_naive(rt, x, dy):
    n, c, h, wd = x.shape
    _, f, oh, ow = dy.shape
    dw = rt.empty((f, c, h - oh + 1, wd - ow + 1))
    rt.launch(conv2d_backward_weight_naive, _cdiv(dw.size, THREADS), THREADS,
              (dw, x, dy))
    return dw


@cuda.jit
def conv2d_backward_weight_atomic(dw, x, dy):
    """atomic: one thread per (dw element e, chunk of WGRAD_CHUNK=256 consecutive (n,i,j)
    positions); it adds its partial sum into the zeroed dw with ``cuda.atomic.add``.

    Thread idx -> e = idx % E (consecutive threads: consecutive q, contiguous x reads),
    chunk = idx // E. R/256 times more threads than naive; but the order of the float
    additions depends on timing: NOT bitwise reproducible from run to run. Constraints:
    dw zero before the launch; grid (ceil(E * nchunks / 256)), block (256).
    """
    N, C, H, W = x.shape
    _, F, OH, OW = dy.shape
    KH, KW = H - OH + 1, W - OW + 1
    E, R = F * C * KH * KW, N * OH * OW
    nchunks = (R + WGRAD_CHUNK - 1) // WGRAD_CHUNK
    idx = cuda.grid(1)
    if idx >= E * nchunks:
        return
    e, chunk = idx % E, idx // E
    q, p = e % KW, (e // KW) % KH
    c, f = (e // (KW * KH)) % C, e // (KW * KH * C)
    r1 = min(R, (chunk + 1) * WGRAD_CHUNK)
    acc = float32(0)
    for r in range(chunk * WGRAD_CHUNK, r1):
        acc += wgrad_term(x, dy, r, f, c, p, q)
    cuda.atomic.add(dw, (f, c, p, q), acc)        # CUDA C: atomicAdd(&dw[e], acc)


def launch_conv2d_backward_weight_atomic(rt, x, dy):
    n, c, h, wd = x.shape
    _, f, oh, ow = dy.shape
    dw = rt.zeros((f, c, h - oh + 1, wd - ow + 1))
    nchunks = _cdiv(n * oh * ow, WGRAD_CHUNK)
    rt.launch(conv2d_backward_weight_atomic, _cdiv(dw.size * nchunks, THREADS), THREADS,
              (dw, x, dy))
    return dw


@cuda.jit
def conv2d_backward_weight_reduce(dw, x, dy):
    """reduce: T threads per dw element (T = blockDim.x, a power of two <= 32 picked at
    launch: about R/8, so no thread idles when R = N*OH*OW is small) and 256/T elements per
    256-thread block. Thread (tx, ty) of block b works on e = b*blockDim.y + ty, summing
    positions r = tx, tx+T, ...; the T partial sums of e are then added pairwise in a fixed
    tree (T/2, T/4, ..., 1 apart) and thread tx = 0 writes dw[e]. Deterministic (same bits
    every run), up to 32x more parallel than naive. Constraints: grid (ceil(E / (256/T))),
    block (T, 256/T); every thread reaches every barrier (uniform loop bounds; threads of a
    missing e add zeros). The shared array is flat (``part[ty*T + tx]``) because its shape
    must be a compile-time constant and T is not (CUDA C: ``real* mine = part + ty*T``).
    """
    part = cuda.shared.array(WGRAD_RED_BLOCK, float32)
    T, tx, ty = cuda.blockDim.x, cuda.threadIdx.x, cuda.threadIdx.y
    e = cuda.blockIdx.x * cuda.blockDim.y + ty
    acc = wgrad_partial(x, dy, e, tx, T)
    mine = ty * T                               # CUDA C: real* mine = part + ty * T;
    part[mine + tx] = acc
    cuda.syncthreads()
    stride = T // 2
    while stride > 0:                           # CUDA C: for (...; stride > 0; stride >>= 1)
        if tx < stride:
            part[mine + tx] += part[mine + tx + stride]
        cuda.syncthreads()                      # every thread reaches it: uniform bound
        stride //= 2
    if tx == 0 and e < dw.size:
        store_flat4(dw, e, part[mine])


def _launch_wgrad_split(rt, kernel, x, dy):
    """The launch of the reduce and warp versions: T threads per dw element, 256/T elements
    per block (T from wgrad_reduce_threads)."""
    n, c, h, wd = x.shape
    _, f, oh, ow = dy.shape
    dw = rt.empty((f, c, h - oh + 1, wd - ow + 1))
    t = wgrad_reduce_threads(n * oh * ow)
    rt.launch(kernel, _cdiv(dw.size, WGRAD_RED_BLOCK // t), (t, WGRAD_RED_BLOCK // t),
              (dw, x, dy))
    return dw


def launch_conv2d_backward_weight_reduce(rt, x, dy):
    return _launch_wgrad_split(rt, conv2d_backward_weight_reduce, x, dy)


@cuda.jit
def conv2d_backward_weight_warp(dw, x, dy):
    """warp: reduce's threads and partial sums (T threads per dw element, a power of two
    <= 32; block (T, 256/T); thread (tx, ty) of block b on e = b*blockDim.y + ty, summing
    r = tx, tx+T, ...), but the T partial sums are added by warp shuffles in registers.

    Thread map: lane = (ty*T + tx) % 32, so the T threads of an element are T consecutive
    lanes of one warp. ``acc += cuda.shfl_down_sync(FULL_MASK, acc, off)`` for off = T/2, ...,
    1: lane tx gets acc of lane tx+off. numba's shuffle has no width argument (CUDA C passes
    width T), so a lane with tx >= off may read the next element's lanes -- but only lanes
    tx < off are read at the next step, and those read tx+off < T, inside their element: lane
    tx = 0 ends with exactly reduce's tree, the same bits. All 32 lanes make every call (a
    missing e >= E adds zeros). Why faster on a GPU: no shared memory and no syncthreads
    (reduce: log2(T)+1 block-wide barriers, each stalling all 8 warps, and a shared load and
    store per step); a shuffle is one register-to-register instruction. Limits: T <= 32,
    warp size 32, 256 threads per block. Constraints: launched exactly like reduce.
    """
    T, tx, ty = cuda.blockDim.x, cuda.threadIdx.x, cuda.threadIdx.y
    e = cuda.blockIdx.x * cuda.blockDim.y + ty
    acc = wgrad_partial(x, dy, e, tx, T)
    off = T // 2
    while off > 0:                              # uniform: every lane makes every call
        acc += cuda.shfl_down_sync(FULL_MASK, acc, off)   # CUDA C: (..., off, T)
        off //= 2
    if tx == 0 and e < dw.size:
        store_flat4(dw, e, acc)


def launch_conv2d_backward_weight_warp(rt, x, dy):
    return _launch_wgrad_split(rt, conv2d_backward_weight_warp, x, dy)


@cuda.jit(device=True)
def backward_weight_gemm_tile(out, x, dy, r_lo, r_hi, As, Bs, acc):
    """The 64x64x8 GEMM tile of the weight gradient, shared by implicit_gemm (all R
    positions) and splitk (one slice of them per grid z; CUDA C: ``backward_weight_gemm_tile``).

    dw as a GEMM C[f, k] = sum_r A[f, r] * B[r, k]: M = F, N = C*KH*KW (k = (c,p,q)),
    K = R = N*OH*OW (r = (n,i,j)); A[f,r] = dy[n,f,i,j], B[r,k] = x[n,c,i+p,j+q] (the im2col
    matrix, gathered on the fly). Block (bf, bk) sums positions r in [r_lo, r_hi) into its
    64x64 tile of ``out`` (shaped (F, C*KH*KW)); 4x4 register block per thread: thread t,
    tx = t%16, ty = t//16 owns f = f0 + ty + 16s, k = k0c + tx + 16r (consecutive tx write
    consecutive addresses). Positions at or past r_hi load zeros. Every thread of the block
    must call it (barriers).
    """
    N, C, H, W = x.shape
    _, F, OH, OW = dy.shape
    KH, KW = H - OH + 1, W - OW + 1
    KK, OHW = KH * KW, OH * OW
    KC = C * KK
    t = cuda.threadIdx.x
    tx, ty = t % 16, t // 16
    f0, k0c = cuda.blockIdx.x * GEMM_BM, cuda.blockIdx.y * GEMM_BN
    # A loader: As[t%8][t//8 + 32u] = dy[n, f, s] -- 8 threads read 8 consecutive r of a row.
    a_r, a_f = t % GEMM_BK, t // GEMM_BK
    # B loader: Bs[t//64 + 4u][t%64] = x[n, c, i+p, j+q] -- fixed k = (c, p, q) per thread.
    b_k, b_r = k0c + t % GEMM_BN, t // GEMM_BN
    b_ok = b_k < KC
    b_c, b_p, b_q = 0, 0, 0
    if b_ok:
        b_c, pq = udiv(b_k, KK), umod(b_k, KK)
        b_p, b_q = udiv(pq, KW), umod(pq, KW)
    gemm_acc_zero(acc)
    for r0 in range(r_lo, r_hi, GEMM_BK):
        for u in range(2):
            ra, fa = r0 + a_r, f0 + a_f + 32 * u
            va = float32(0)
            if ra < r_hi and fa < F:
                n, sp = udiv(ra, OHW), umod(ra, OHW)
                va = dy[n, fa, udiv(sp, OW), umod(sp, OW)]
            As[a_r, a_f + 32 * u] = va
            rb = r0 + b_r + 4 * u
            vb = float32(0)
            if rb < r_hi and b_ok:
                n, sp = udiv(rb, OHW), umod(rb, OHW)
                vb = x[n, b_c, udiv(sp, OW) + b_p, umod(sp, OW) + b_q]
            Bs[b_r + 4 * u, t % GEMM_BN] = vb
        cuda.syncthreads()
        gemm_micro_step(acc, As, Bs, ty, tx)   # acc[s, r] += As[., f] * Bs[., k]
        cuda.syncthreads()
    for s in range(4):
        f = f0 + ty + 16 * s
        if f < F:
            for r in range(4):
                k = k0c + tx + 16 * r
                if k < KC:
                    out[f, k] = acc[s, r]


@cuda.jit
def conv2d_backward_weight_implicit_gemm(dw2, x, dy):
    """implicit_gemm: dw as a GEMM (M = F, N = C*KH*KW, K = R = N*OH*OW), deterministic: one
    64x64 tile of dw2 = dw viewed as (F, C*KH*KW) per 256-thread block, which walks all R
    positions itself (no split-K across blocks, so no atomics): every output is summed in one
    fixed order (the plan: :func:`backward_weight_gemm_tile`). Constraints: grid
    (ceil(F/64), ceil(C*KH*KW/64)), block (256).
    """
    As = cuda.shared.array((GEMM_BK, GEMM_BM_PAD), float32)   # [r][f]
    Bs = cuda.shared.array((GEMM_BK, GEMM_BN), float32)       # [r][k]
    acc = cuda.local.array((4, 4), float32)                   # [s: f][r: k]
    r_total = dy.shape[0] * dy.shape[2] * dy.shape[3]
    backward_weight_gemm_tile(dw2, x, dy, 0, r_total, As, Bs, acc)


def launch_conv2d_backward_weight_implicit_gemm(rt, x, dy):
    n, c, h, wd = x.shape
    _, f, oh, ow = dy.shape
    kh, kw = h - oh + 1, wd - ow + 1
    _check_int32(n, x=x.size, dy=dy.size, dw=f * c * kh * kw)   # udiv/umod: 32-bit
    dw = rt.empty((f, c, kh, kw))
    grid = (_cdiv(f, GEMM_BM), _cdiv(c * kh * kw, GEMM_BN))
    rt.launch(conv2d_backward_weight_implicit_gemm, grid, GEMM_THREADS,
              (dw.reshape(f, c * kh * kw), x, dy))
    return dw


@cuda.jit
def conv2d_backward_weight_splitk(ws, x, dy, chunk):
    """splitk: implicit_gemm with R = N*OH*OW cut into S slices of ``chunk`` positions, one
    per grid z. Why: dw is small (mnist-conv1 100 x 25: 2 tiles; the Fig. 1 CAE 20 x 49: 1
    tile) while R is long, so implicit_gemm runs 1-120 blocks on a 132-SM GPU, each walking
    all of R; S slices (``kernels.launch_spec.conv_split_k``) give at least 132 blocks, each
    1/S of the walk. Block (bf, bk, z) writes its partial tile to ws[z] (ws: (S, F,
    C*KH*KW)); :func:`splitk_sum` adds the S partials of each element in a fixed order:
    deterministic (unlike ``atomic``). S == 1: ws is dw itself (viewed (1, F, C*KH*KW)), no
    sum. Cost: a workspace of S*F*C*KH*KW floats (a few MB) and a second launch reading it
    once. Constraints: grid (ceil(F/64), ceil(C*KH*KW/64), S), block (256).
    """
    As = cuda.shared.array((GEMM_BK, GEMM_BM_PAD), float32)
    Bs = cuda.shared.array((GEMM_BK, GEMM_BN), float32)
    acc = cuda.local.array((4, 4), float32)
    z = cuda.blockIdx.z
    r_hi = min(dy.shape[0] * dy.shape[2] * dy.shape[3], (z + 1) * chunk)
    backward_weight_gemm_tile(ws[z], x, dy, z * chunk, r_hi, As, Bs, acc)


def launch_conv2d_backward_weight_splitk(rt, x, dy):
    n, c, h, wd = x.shape
    _, f, oh, ow = dy.shape
    kh, kw = h - oh + 1, wd - ow + 1
    _check_int32(n, x=x.size, dy=dy.size, dw=f * c * kh * kw)   # udiv/umod: 32-bit
    dw = rt.empty((f, c, kh, kw))
    tiles = (_cdiv(f, GEMM_BM), _cdiv(c * kh * kw, GEMM_BN))
    _launch_splitk(rt, conv2d_backward_weight_splitk, tiles, n * oh * ow,
                   dw.reshape(f, c * kh * kw), lambda ws, chunk: (ws, x, dy, chunk))
    return dw


# ====================================================================== backward bias
@cuda.jit
def conv2d_backward_bias_naive(db, dy):
    """naive: one thread per f, serial sum over (n, i, j): deterministic; F threads in all.
    Constraints: grid (ceil(F / 256)), block (256)."""
    N, F, OH, OW = dy.shape
    f = cuda.grid(1)
    if f >= F:
        return
    acc = float32(0)
    for n in range(N):
        for i in range(OH):
            for j in range(OW):
                acc += dy[n, f, i, j]
    db[f] = acc


def launch_conv2d_backward_bias_naive(rt, dy):
    db = rt.empty((dy.shape[1],))
    rt.launch(conv2d_backward_bias_naive, _cdiv(db.size, THREADS), THREADS, (db, dy))
    return db


@cuda.jit(device=True)
def bias_partial(dy, f, t, r0, r1):
    """Thread t's share of the sum of dy[:, f] over positions r in [r0, r1): r = r0 + t,
    r0 + t + 256, ... (consecutive threads read consecutive addresses of a plane) -- shared by
    the bias versions reduce, warp and split (CUDA C: ``bias_partial``)."""
    OH, OW = dy.shape[2], dy.shape[3]
    OHW = OH * OW
    acc = float32(0)
    for r in range(r0 + t, r1, BGRAD_THREADS):
        n, s = r // OHW, r % OHW
        acc += dy[n, f, s // OW, s % OW]
    return acc


@cuda.jit(device=True)
def block_tree_sum(part, t):
    """The sum of part[0..255], left in part[0] by a fixed tree halving the partial sums 8
    times (128, 64, ..., 1 apart). Every thread of the 256-thread block calls it after
    writing part[t]; it begins and ends with a barrier (CUDA C: ``block_tree_sum``)."""
    cuda.syncthreads()
    stride = BGRAD_THREADS // 2
    while stride > 0:
        if t < stride:
            part[t] += part[t + stride]
        cuda.syncthreads()                      # uniform loop bound: every thread arrives
        stride //= 2


@cuda.jit
def conv2d_backward_bias_reduce(db, dy):
    """reduce: one BGRAD_THREADS=256-thread block per f (blockIdx.x = f): thread t sums
    positions r = t, t+256, ... (:func:`bias_partial`), then the fixed tree of
    :func:`block_tree_sum`; thread 0 writes db[f]. Deterministic, 256x more parallel than
    naive. Constraints: grid (F), block (256).
    """
    part = cuda.shared.array(BGRAD_THREADS, float32)
    N, F, OH, OW = dy.shape
    f, t = cuda.blockIdx.x, cuda.threadIdx.x
    part[t] = bias_partial(dy, f, t, 0, N * OH * OW)
    block_tree_sum(part, t)
    if t == 0:
        db[f] = part[0]


def launch_conv2d_backward_bias_reduce(rt, dy):
    db = rt.empty((dy.shape[1],))
    rt.launch(conv2d_backward_bias_reduce, db.size, BGRAD_THREADS, (db, dy))
    return db


@cuda.jit(device=True)
def warp_sum_down(v):
    """The sum of the warp's 32 values of ``v``, in lane 0 (5 shuffles: 16, 8, 4, 2, 1 lanes
    apart). Every lane of the warp must call it (CUDA C: ``warp_sum_down``)."""
    off = 16
    while off > 0:
        v += cuda.shfl_down_sync(FULL_MASK, v, off)
        off //= 2
    return v


@cuda.jit
def conv2d_backward_bias_warp(db, dy):
    """warp: one 256-thread block per f, partial sums as in reduce; then each of the 8 warps
    (warp = t // 32, lane = t % 32) adds its 32 partial sums with 5 shuffles, lane 0 stores
    the warp's sum in shared memory, one syncthreads, and warp 0 adds the 8 warp sums with 3
    more shuffles; thread 0 writes db[f]. Deterministic (a fixed tree, not reduce's).
    Why faster on a GPU: 1 barrier instead of reduce's 9 and 16 shared accesses instead of
    ~500; the op is bound by reading dy, so this trims each block's tail (it matters when
    N*OH*OW is small). Limits: 256 threads (a multiple of 32), warp size 32.
    Constraints: grid (F), block (256).
    """
    warp_sum = cuda.shared.array(BGRAD_WARPS, float32)
    N, F, OH, OW = dy.shape
    f, t = cuda.blockIdx.x, cuda.threadIdx.x
    lane, warp = t % 32, t // 32
    acc = warp_sum_down(bias_partial(dy, f, t, 0, N * OH * OW))
    if lane == 0:
        warp_sum[warp] = acc
    cuda.syncthreads()
    if warp == 0:                               # uniform over the warp
        acc = float32(0)
        if lane < BGRAD_WARPS:
            acc = warp_sum[lane]
        off = BGRAD_WARPS // 2
        while off > 0:
            acc += cuda.shfl_down_sync(FULL_MASK, acc, off)
            off //= 2
        if lane == 0:
            db[f] = acc


def launch_conv2d_backward_bias_warp(rt, dy):
    db = rt.empty((dy.shape[1],))
    rt.launch(conv2d_backward_bias_warp, db.size, BGRAD_THREADS, (db, dy))
    return db


@cuda.jit
def conv2d_backward_bias_split(db, dy, ws, count, chunk):
    """split: reduce's 256-thread block on each of S slices of the N*OH*OW positions, grid
    (F, S) -- at least 132 blocks (S from ``kernels.launch_spec.conv_split_k``, k_step 256) --
    and the last block of each f to finish adds the S partials: deterministic, one launch.

    Block (f, z) sums positions [z*chunk, (z+1)*chunk) (thread t: z*chunk + t, + 256, ...;
    a fixed tree) and thread 0 stores the partial in ws[f, z], makes it visible to the whole
    GPU (``cuda.threadfence()``, CUDA C ``__threadfence()``) and takes a ticket
    (``cuda.atomic.add(count, f, 1)`` returns the old value). The block that draws S-1 knows
    every partial of f is written: it adds ws[f, 0..S-1] in a fixed order (thread t takes
    s = t, t+256, ..., then the tree) and writes db[f]. Which block comes last never changes
    the order of the additions. It reads the partials with ``cuda.atomic.add(ws, (f, s), 0)``
    (the old value): atomics are done in L2, so no stale copy in this SM's L1 cache can be
    read. Why not partials + a second reduce launch: that launch would have at most one block
    per f (the Fig. 1 CAE: F = 20), far from filling the GPU. Constraints: grid (F, S),
    block (256); ws (F, S) float32; count (F,) uint32 zero at the launch (not reset).
    """
    part = cuda.shared.array(BGRAD_THREADS, float32)
    is_last = cuda.shared.array(1, int32)
    N, F, OH, OW = dy.shape
    f, z, S, t = cuda.blockIdx.x, cuda.blockIdx.y, cuda.gridDim.y, cuda.threadIdx.x
    part[t] = bias_partial(dy, f, t, z * chunk, min(N * OH * OW, (z + 1) * chunk))
    block_tree_sum(part, t)
    if t == 0:
        ws[f, z] = part[0]
        cuda.threadfence()                      # the partial is visible before the ticket
        is_last[0] = 1 if cuda.atomic.add(count, f, 1) == S - 1 else 0
    cuda.syncthreads()
    if is_last[0] == 0:                         # uniform over the block
        return
    acc = float32(0)
    for s in range(t, S, BGRAD_THREADS):
        acc += cuda.atomic.add(ws, (f, s), float32(0))   # read through L2
    part[t] = acc
    block_tree_sum(part, t)
    if t == 0:
        db[f] = part[0]


def launch_conv2d_backward_bias_split(rt, dy):
    n, f, oh, ow = dy.shape
    db = rt.empty((f,))
    s, chunk = conv_split_k(f, n * oh * ow, k_step=BGRAD_THREADS)
    if s > GRID_YZ_MAX:
        raise ValueError(f"the bias split needs {s} slices, more than CUDA's grid.y limit "
                         f"{GRID_YZ_MAX}; use version='reduce'")
    ws = rt.empty((f, s))
    count = rt.zeros((f,), dtype=np.uint32)
    rt.launch(conv2d_backward_bias_split, (f, s), BGRAD_THREADS, (db, dy, ws, count, chunk))
    return db


# ============================================================================ tables
VERSIONS = {
    "conv2d_forward": {"naive": launch_conv2d_forward_naive,
                       "tiled": launch_conv2d_forward_tiled,
                       "implicit_gemm": launch_conv2d_forward_implicit_gemm,
                       "splitk": launch_conv2d_forward_splitk},
    "conv2d_backward_input": {"naive": launch_conv2d_backward_input_naive,
                              "tiled": launch_conv2d_backward_input_tiled,
                              "implicit_gemm": launch_conv2d_backward_input_implicit_gemm,
                              "splitk": launch_conv2d_backward_input_splitk},
    "conv2d_backward_weight": {"naive": launch_conv2d_backward_weight_naive,
                               "atomic": launch_conv2d_backward_weight_atomic,
                               "reduce": launch_conv2d_backward_weight_reduce,
                               "warp": launch_conv2d_backward_weight_warp,
                               "implicit_gemm": launch_conv2d_backward_weight_implicit_gemm,
                               "splitk": launch_conv2d_backward_weight_splitk},
    "conv2d_backward_bias": {"naive": launch_conv2d_backward_bias_naive,
                             "reduce": launch_conv2d_backward_bias_reduce,
                             "warp": launch_conv2d_backward_bias_warp,
                             "split": launch_conv2d_backward_bias_split},
}

#: The version each op runs by default: the one expected fastest on a GPU (implicit GEMM's
#: arithmetic intensity; the deterministic reductions). Not yet timed on a GPU: see bench/.
#: The warp-shuffle versions stay out of the defaults until they are timed on one.
#: Since issue 12 the split versions: implicit_gemm / reduce when the output alone gives every
#: SM of a 132-SM GPU a block, a deterministic split of the reduction when it does not.
DEFAULTS = {
    "conv2d_forward": "splitk",
    "conv2d_backward_input": "splitk",
    "conv2d_backward_weight": "splitk",
    "conv2d_backward_bias": "split",
}

# kernel -> numba signature of the arrays it is launched with (C-contiguous float32), for
# the PTX compile check (tests/test_numba_compile.py).
_A4, _A2, _A1 = "float32[:, :, :, ::1]", "float32[:, ::1]", "float32[::1]"
_A5, _A3 = "float32[:, :, :, :, ::1]", "float32[:, :, ::1]"
PTX_SIGNATURES = {
    "conv2d_forward_naive": (conv2d_forward_naive, f"({_A4}, {_A4}, {_A4}, {_A1})"),
    "conv2d_forward_tiled": (conv2d_forward_tiled, f"({_A4}, {_A4}, {_A4}, {_A1})"),
    "conv2d_forward_implicit_gemm": (conv2d_forward_implicit_gemm,
                                     f"({_A4}, {_A4}, {_A2}, {_A1})"),
    "conv2d_backward_input_naive": (conv2d_backward_input_naive, f"({_A4}, {_A4}, {_A4})"),
    "conv2d_backward_input_tiled": (conv2d_backward_input_tiled, f"({_A4}, {_A4}, {_A4})"),
    "conv2d_backward_input_implicit_gemm": (conv2d_backward_input_implicit_gemm,
                                            f"({_A4}, {_A4}, {_A4})"),
    "conv2d_backward_weight_naive": (conv2d_backward_weight_naive, f"({_A4}, {_A4}, {_A4})"),
    "conv2d_backward_weight_atomic": (conv2d_backward_weight_atomic, f"({_A4}, {_A4}, {_A4})"),
    "conv2d_backward_weight_reduce": (conv2d_backward_weight_reduce, f"({_A4}, {_A4}, {_A4})"),
    "conv2d_backward_weight_warp": (conv2d_backward_weight_warp, f"({_A4}, {_A4}, {_A4})"),
    "conv2d_backward_weight_implicit_gemm": (conv2d_backward_weight_implicit_gemm,
                                             f"({_A2}, {_A4}, {_A4})"),
    "conv2d_backward_bias_naive": (conv2d_backward_bias_naive, f"({_A1}, {_A4})"),
    "conv2d_backward_bias_reduce": (conv2d_backward_bias_reduce, f"({_A1}, {_A4})"),
    "conv2d_backward_bias_warp": (conv2d_backward_bias_warp, f"({_A1}, {_A4})"),
    "conv2d_forward_splitk": (conv2d_forward_splitk, f"({_A5}, {_A4}, {_A2}, {_A1}, int64)"),
    "conv2d_backward_input_splitk": (conv2d_backward_input_splitk,
                                     f"({_A5}, {_A4}, {_A4}, int64)"),
    "conv2d_backward_weight_splitk": (conv2d_backward_weight_splitk,
                                      f"({_A3}, {_A4}, {_A4}, int64)"),
    "splitk_sum": (splitk_sum, f"({_A1}, {_A2})"),
    "conv2d_backward_bias_split": (conv2d_backward_bias_split,
                                   f"({_A1}, {_A4}, {_A2}, uint32[::1], int64)"),
}
