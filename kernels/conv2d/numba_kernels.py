"""Convolution ops as numba-cuda kernels: the Python translation of ``kernels/conv2d/*.cu``.

Versions (ladder order; the CUDA C files carry the same names and thread mappings):

conv2d_forward            naive          one thread per output y[n,f,i,j], loops c,p,q from global memory
conv2d_forward            tiled          16x16 output tile per block; input tile (+halo) and filter slice in smem, per channel
conv2d_forward            implicit_gemm  GEMM M=N*OH*OW, N=F, K=C*KH*KW; 64x64x8 smem tiles, 4x4 outputs per thread
conv2d_backward_input     naive          one thread per dx[n,c,h,v], gathers the dy entries that touch it
conv2d_backward_input     tiled          16x16 dx tile per block; dy tile (+halo) and filter slice in smem, per filter
conv2d_backward_input     implicit_gemm  GEMM M=N*H*W, N=C, K=F*KH*KW (A = dy, zero outside the plane)
conv2d_backward_weight    naive          one thread per dw[f,c,p,q], loops n,i,j (deterministic)
conv2d_backward_weight    atomic         one thread per (n, dw element), sums i,j, cuda.atomic.add over n (not deterministic)
conv2d_backward_weight    reduce         one 128-thread block per dw element, smem tree reduction (deterministic)
conv2d_backward_weight    implicit_gemm  GEMM M=F, N=C*KH*KW, K=N*OH*OW, one thread owns each output (deterministic)
conv2d_backward_bias      naive          one thread per db[f], loops n,i,j
conv2d_backward_bias      reduce         one 128-thread block per db[f], smem tree reduction

Every kernel computes in float32 (``acc = float32(0)``: a bare ``0.0`` would make numba
accumulate in float64). Arguments arrive C-contiguous and already checked against the
contract (``kernels/contract.py``); each launcher below its kernel allocates the output and
picks the grid. ``rt`` is the backend's runtime (``kernels/numba_backend.py``): it allocates
arrays (CuPy on a GPU, NumPy in the simulator) and launches on the right stream.

Reading guide: numba-cuda next to CUDA C
----------------------------------------
=========================================  =================================================
numba (this file)                          CUDA C (``conv2d_*.cu``)
=========================================  =================================================
``@cuda.jit`` on a Python function         ``extern "C" __global__ void ...``
``kern[grid, block, stream, smem](...)``   ``kern<<<grid, block, smem, stream>>>(...)``
``cuda.grid(1)``                           ``blockIdx.x * blockDim.x + threadIdx.x``
``cuda.threadIdx.x`` / ``blockIdx`` ...    ``threadIdx.x`` / ``blockIdx`` ... (same names)
``x[n, c, h, v]`` on a 4-D array           ``x[((n*C + c)*H + h)*W + v]``: no pointer
                                           arithmetic in numba; the array knows its shape
``x.shape`` inside the kernel              sizes passed as ``int`` arguments
``w.reshape(F, K)`` on the host (a view)   ``w`` as a flat ``const float*`` (row f at w+f*K)
``cuda.shared.array((BK, BM), float32)``   ``__shared__ float As[BK][BM];`` -- the shape
                                           must be a compile-time constant (module globals
                                           are frozen as constants at compile time)
``cuda.shared.array(0, float32)`` +        ``extern __shared__ float smem[];`` +
launch with ``smem`` bytes                 ``<<<grid, block, bytes>>>``
``cuda.local.array((TM, TN), float32)``    ``float acc[TM][TN];`` (registers once unrolled)
``cuda.syncthreads()``                     ``__syncthreads()``
``cuda.atomic.add(dw, (f, c, p, q), v)``   ``atomicAdd(&dw[...], v)``
``float32(0)``                             ``0.0f``
``for e in range(tid, n, step)``           ``for (int e = tid; e < n; e += step)``
=========================================  =================================================

Running a kernel in numba's CUDA simulator (no GPU; each CUDA thread becomes a Python
thread, so keep grids tiny). ``NUMBA_ENABLE_CUDASIM=1`` must be set before numba is first
imported; ``kernels.get_backend("numba", emulate=True)`` does that for you and refuses
(with the fix) if it is too late. This snippet is executed by
``tests/test_numba_doc_snippet.py``::

    import numpy as np, kernels
    be = kernels.get_backend("numba", emulate=True)      # sets NUMBA_ENABLE_CUDASIM=1
    from kernels.conv2d import numba_kernels as K        # imports numba: after the line above
    x = np.arange(16, dtype=np.float32).reshape(1, 1, 4, 4)
    w = np.array([[[[1, 0], [0, -1]]]], dtype=np.float32)
    b = np.array([0.5], dtype=np.float32)
    y = np.empty((1, 1, 3, 3), dtype=np.float32)
    K.conv2d_forward_naive_kernel[1, 32](x, w, b, y)     # grid 1 block, 32 threads
    assert (y == -4.5).all()                             # x[i,j] - x[i+1,j+1] + 0.5
    # the same through the backend, any version:
    assert (be.conv2d_forward(x, w, b, version="tiled") == -4.5).all()
"""
from __future__ import annotations

import math

import numpy as np
from numba import cuda, float32

# --------------------------------------------------------------------------- tile sizes
# Module-level ints are compile-time constants for numba (like #define / constexpr in C).
NAIVE_BLOCK = 256          # threads per block of the one-thread-per-output kernels
TILE = 16                  # tiled kernels: 16x16 outputs per block, one per thread
BM, BN, BK = 64, 64, 8     # implicit GEMM block tile: BM rows x BN columns, BK-deep K slice
TM, TN = 4, 4              # implicit GEMM register block: each thread owns TM x TN outputs
GEMM_TX = BM // TM         # 16 threads along M
GEMM_TY = BN // TN         # 16 threads along N
GEMM_THREADS = GEMM_TX * GEMM_TY   # 256
REDUCE_BLOCK = 128         # reduce kernels: threads per block (a power of two)
MAX_GRID_Z = 65535         # CUDA's gridDim.z limit; the tiled kernels stride over z


def _cdiv(a, b):
    return (a + b - 1) // b


# ============================================================================ forward
@cuda.jit
def conv2d_forward_naive_kernel(x, w, b, y):
    """naive: one thread per output element y[n,f,i,j] (flat NCHW index = cuda.grid(1)).

    Plan: decode (n,f,i,j) from the flat index, sum C*KH*KW products straight from global
    memory, add the bias. Constraints: 1-D grid of ceil(N*F*OH*OW / NAIVE_BLOCK) blocks;
    threads past the end return. Consecutive threads -> consecutive j: coalesced y stores
    and x loads.
    """
    N, C, H, W = x.shape
    F, _, KH, KW = w.shape
    OH, OW = H - KH + 1, W - KW + 1
    idx = cuda.grid(1)
    if idx >= N * F * OH * OW:
        return
    j = idx % OW
    i = (idx // OW) % OH
    f = (idx // (OW * OH)) % F
    n = idx // (OW * OH * F)
    acc = float32(0)
    for c in range(C):
        for p in range(KH):
            for q in range(KW):
                acc += x[n, c, i + p, j + q] * w[f, c, p, q]
    y[n, f, i, j] = acc + b[f]


def conv2d_forward_naive(rt, x, w, b):
    n, c, h, wd = x.shape
    f, _, kh, kw = w.shape
    y = rt.empty((n, f, h - kh + 1, wd - kw + 1))
    rt.launch(conv2d_forward_naive_kernel, _cdiv(y.size, NAIVE_BLOCK), NAIVE_BLOCK, (x, w, b, y))
    return y


@cuda.jit
def conv2d_forward_tiled_kernel(x, w, b, y):
    """tiled: a TILE x TILE block computes a TILE x TILE patch of one output plane (n,f).

    Plan: for each input channel c, the block copies the (TILE+KH-1) x (TILE+KW-1) input
    patch its outputs read (tile + halo) and the KH x KW filter slice w[f,c] into shared
    memory, syncs, and each thread accumulates its KH*KW products from shared memory.
    Each input pixel is read from global memory once per block instead of up to KH*KW
    times. Constraints: block (TILE, TILE); grid (ceil(OW/TILE), ceil(OH/TILE),
    min(N*F, 65535)), z strides over the (n,f) planes; dynamic shared memory of
    ((TILE+KH-1)*(TILE+KW-1) + KH*KW) floats, passed at launch (the kernel size is only
    known at run time, so the smem size is too: ``cuda.shared.array(0, ...)`` is CUDA C's
    ``extern __shared__``).
    """
    N, C, H, W = x.shape
    F, _, KH, KW = w.shape
    OH, OW = H - KH + 1, W - KW + 1
    SH, SW = TILE + KH - 1, TILE + KW - 1       # input patch (tile + halo)
    smem = cuda.shared.array(0, float32)        # [SH*SW input patch | KH*KW filter slice]
    wofs = SH * SW
    tx, ty = cuda.threadIdx.x, cuda.threadIdx.y
    tid = ty * TILE + tx
    i0 = cuda.blockIdx.y * TILE
    j0 = cuda.blockIdx.x * TILE
    i, j = i0 + ty, j0 + tx
    for nf in range(cuda.blockIdx.z, N * F, cuda.gridDim.z):   # uniform over the block
        n, f = nf // F, nf % F
        acc = float32(0)
        for c in range(C):
            for e in range(tid, SH * SW, TILE * TILE):          # cooperative patch load
                hh, vv = i0 + e // SW, j0 + e % SW
                v = float32(0)
                if hh < H and vv < W:
                    v = x[n, c, hh, vv]
                smem[e] = v
            for e in range(tid, KH * KW, TILE * TILE):          # filter slice w[f,c]
                smem[wofs + e] = w[f, c, e // KW, e % KW]
            cuda.syncthreads()
            if i < OH and j < OW:
                for p in range(KH):
                    for q in range(KW):
                        acc += smem[(ty + p) * SW + tx + q] * smem[wofs + p * KW + q]
            cuda.syncthreads()                                  # before the next overwrite
        if i < OH and j < OW:
            y[n, f, i, j] = acc + b[f]


def conv2d_forward_tiled(rt, x, w, b):
    n, c, h, wd = x.shape
    f, _, kh, kw = w.shape
    oh, ow = h - kh + 1, wd - kw + 1
    y = rt.empty((n, f, oh, ow))
    smem = ((TILE + kh - 1) * (TILE + kw - 1) + kh * kw) * 4
    grid = (_cdiv(ow, TILE), _cdiv(oh, TILE), min(n * f, MAX_GRID_Z))
    rt.launch(conv2d_forward_tiled_kernel, grid, (TILE, TILE), (x, w, b, y), shared=smem)
    return y


@cuda.jit(device=True)
def _gemm_tile_mac(As, Bs, acc, tx, ty):
    """acc[r,s] += sum_kk As[kk, tx + r*GEMM_TX] * Bs[kk, ty + s*GEMM_TY] (one BK slice).

    The thread's TM rows are strided by GEMM_TX so that neighbouring threads read
    neighbouring smem words (no bank conflicts) and, at the end, store neighbouring
    output elements (coalesced). a/bv are register copies: each smem word loaded once
    per kk feeds TN (resp. TM) multiply-adds -- the point of register blocking.
    """
    a = cuda.local.array(TM, float32)
    bv = cuda.local.array(TN, float32)
    for kk in range(BK):
        for r in range(TM):
            a[r] = As[kk, tx + r * GEMM_TX]
        for s in range(TN):
            bv[s] = Bs[kk, ty + s * GEMM_TY]
        for r in range(TM):
            for s in range(TN):
                acc[r, s] += a[r] * bv[s]


@cuda.jit
def conv2d_forward_implicit_gemm_kernel(x, w2, b, y):
    """implicit_gemm: y as the GEMM C[m, f] = sum_k A[m, k] * B[k, f] without im2col.

    M = N*OH*OW (m = (n,i,j)), N = F, K = C*KH*KW (k = (c,p,q)); A[m,k] = x[n,c,i+p,j+q]
    is gathered on the fly (the "implicit" im2col), B[k,f] = w2[f,k] with w2 = w viewed as
    (F, K). Plan: a block of GEMM_THREADS=256 threads owns a BM x BN = 64x64 tile of C; per
    BK=8 slice of K it stages A (BK x BM) and B (BK x BN) in shared memory (2 elements per
    thread each), syncs, and every thread does BK rank-1 updates of its TM x TN = 4x4
    register block. Constraints: grid (ceil(M/BM), ceil(F/BN)); out-of-range rows/columns
    load zeros and are not stored.
    """
    N, C, H, W = x.shape
    F, K = w2.shape
    OH, OW = y.shape[2], y.shape[3]
    KW = W - OW + 1
    KHW = K // C
    M = N * OH * OW
    As = cuda.shared.array((BK, BM), float32)
    Bs = cuda.shared.array((BK, BN), float32)
    acc = cuda.local.array((TM, TN), float32)
    tid = cuda.threadIdx.x
    tx, ty = tid % GEMM_TX, tid // GEMM_TX
    m0, f0 = cuda.blockIdx.x * BM, cuda.blockIdx.y * BN
    for r in range(TM):
        for s in range(TN):
            acc[r, s] = float32(0)
    for k0 in range(0, K, BK):
        for e in range(tid, BK * BM, GEMM_THREADS):     # A tile: consecutive threads, consecutive m
            kk, mm = e // BM, e % BM
            m, k = m0 + mm, k0 + kk
            v = float32(0)
            if m < M and k < K:
                n, ij = m // (OH * OW), m % (OH * OW)
                c, pq = k // KHW, k % KHW
                v = x[n, c, ij // OW + pq // KW, ij % OW + pq % KW]
            As[kk, mm] = v
        for e in range(tid, BK * BN, GEMM_THREADS):     # B tile: consecutive threads, consecutive k
            ff, kk = e // BK, e % BK
            f, k = f0 + ff, k0 + kk
            v = float32(0)
            if f < F and k < K:
                v = w2[f, k]
            Bs[kk, ff] = v
        cuda.syncthreads()
        _gemm_tile_mac(As, Bs, acc, tx, ty)
        cuda.syncthreads()
    for r in range(TM):
        m = m0 + tx + r * GEMM_TX
        if m < M:
            n, ij = m // (OH * OW), m % (OH * OW)
            for s in range(TN):
                f = f0 + ty + s * GEMM_TY
                if f < F:
                    y[n, f, ij // OW, ij % OW] = acc[r, s] + b[f]


def conv2d_forward_implicit_gemm(rt, x, w, b):
    n, c, h, wd = x.shape
    f, _, kh, kw = w.shape
    oh, ow = h - kh + 1, wd - kw + 1
    y = rt.empty((n, f, oh, ow))
    grid = (_cdiv(n * oh * ow, BM), _cdiv(f, BN))
    rt.launch(conv2d_forward_implicit_gemm_kernel, grid, GEMM_THREADS,
              (x, w.reshape(f, c * kh * kw), b, y))
    return y


# ===================================================================== backward input
@cuda.jit
def conv2d_backward_input_naive_kernel(dy, w, dx):
    """naive: one thread per dx[n,c,h,v]; it gathers every dy[n,f,h-p,v-q] inside the plane.

    Plan: dx[n,c,h,v] = sum_{f,p,q} dy[n,f,h-p,v-q] * w[f,c,p,q]. A gather, so no two
    threads write the same element and no atomics are needed. Constraints: 1-D grid over
    N*C*H*W; the (h-p, v-q) bounds test costs a branch per term.
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
    acc = float32(0)
    for f in range(F):
        for p in range(KH):
            i = h - p
            if 0 <= i < OH:
                for q in range(KW):
                    j = v - q
                    if 0 <= j < OW:
                        acc += dy[n, f, i, j] * w[f, c, p, q]
    dx[n, c, h, v] = acc


def conv2d_backward_input_naive(rt, dy, w):
    n, f, oh, ow = dy.shape
    _, c, kh, kw = w.shape
    dx = rt.empty((n, c, oh + kh - 1, ow + kw - 1))
    rt.launch(conv2d_backward_input_naive_kernel, _cdiv(dx.size, NAIVE_BLOCK), NAIVE_BLOCK,
              (dy, w, dx))
    return dx


@cuda.jit
def conv2d_backward_input_tiled_kernel(dy, w, dx):
    """tiled: a TILE x TILE block computes a TILE x TILE patch of one dx plane (n,c).

    Plan: for each filter f, stage the dy patch rows i0-KH+1 .. i0+TILE-1 (columns likewise;
    zeros outside the dy plane, which removes the bounds test from the inner loop) and the
    filter slice w[f,c] in shared memory; then dx[h,v] += sum_{p,q} dys[ty+KH-1-p,
    tx+KW-1-q] * ws[p,q]: the full correlation with the flipped kernel. Constraints: as
    the forward tiled kernel (block (TILE, TILE), grid z strides over N*C planes, dynamic
    smem of ((TILE+KH-1)*(TILE+KW-1) + KH*KW) floats).
    """
    N, F, OH, OW = dy.shape
    _, C, KH, KW = w.shape
    H, W = OH + KH - 1, OW + KW - 1
    SH, SW = TILE + KH - 1, TILE + KW - 1
    smem = cuda.shared.array(0, float32)        # [SH*SW dy patch | KH*KW filter slice]
    wofs = SH * SW
    tx, ty = cuda.threadIdx.x, cuda.threadIdx.y
    tid = ty * TILE + tx
    h0 = cuda.blockIdx.y * TILE
    v0 = cuda.blockIdx.x * TILE
    h, v = h0 + ty, v0 + tx
    for nc in range(cuda.blockIdx.z, N * C, cuda.gridDim.z):
        n, c = nc // C, nc % C
        acc = float32(0)
        for f in range(F):
            for e in range(tid, SH * SW, TILE * TILE):
                i = h0 - (KH - 1) + e // SW
                j = v0 - (KW - 1) + e % SW
                val = float32(0)
                if 0 <= i < OH and 0 <= j < OW:
                    val = dy[n, f, i, j]
                smem[e] = val
            for e in range(tid, KH * KW, TILE * TILE):
                smem[wofs + e] = w[f, c, e // KW, e % KW]
            cuda.syncthreads()
            if h < H and v < W:
                for p in range(KH):
                    for q in range(KW):
                        acc += (smem[(ty + KH - 1 - p) * SW + tx + KW - 1 - q]
                                * smem[wofs + p * KW + q])
            cuda.syncthreads()
        if h < H and v < W:
            dx[n, c, h, v] = acc


def conv2d_backward_input_tiled(rt, dy, w):
    n, f, oh, ow = dy.shape
    _, c, kh, kw = w.shape
    h, wd = oh + kh - 1, ow + kw - 1
    dx = rt.empty((n, c, h, wd))
    smem = ((TILE + kh - 1) * (TILE + kw - 1) + kh * kw) * 4
    grid = (_cdiv(wd, TILE), _cdiv(h, TILE), min(n * c, MAX_GRID_Z))
    rt.launch(conv2d_backward_input_tiled_kernel, grid, (TILE, TILE), (dy, w, dx), shared=smem)
    return dx


@cuda.jit
def conv2d_backward_input_implicit_gemm_kernel(dy, w, dx):
    """implicit_gemm: dx as C[m, c] = sum_k A[m, k] * B[k, c].

    M = N*H*W (m = (n,h,v)), N = C, K = F*KH*KW (k = (f,p,q)); A[m,k] = dy[n,f,h-p,v-q]
    (zero outside the dy plane: the implicit zero padding of the full correlation),
    B[k,c] = w[f,c,p,q]. Same tiling as the forward implicit GEMM (64x64x8, 4x4 per thread,
    256 threads). Constraints: grid (ceil(M/BM), ceil(C/BN)).
    """
    N, F, OH, OW = dy.shape
    _, C, KH, KW = w.shape
    H, W = dx.shape[2], dx.shape[3]
    K = F * KH * KW
    M = N * H * W
    As = cuda.shared.array((BK, BM), float32)
    Bs = cuda.shared.array((BK, BN), float32)
    acc = cuda.local.array((TM, TN), float32)
    tid = cuda.threadIdx.x
    tx, ty = tid % GEMM_TX, tid // GEMM_TX
    m0, c0 = cuda.blockIdx.x * BM, cuda.blockIdx.y * BN
    for r in range(TM):
        for s in range(TN):
            acc[r, s] = float32(0)
    for k0 in range(0, K, BK):
        for e in range(tid, BK * BM, GEMM_THREADS):
            kk, mm = e // BM, e % BM
            m, k = m0 + mm, k0 + kk
            val = float32(0)
            if m < M and k < K:
                n, hv = m // (H * W), m % (H * W)
                f, pq = k // (KH * KW), k % (KH * KW)
                i = hv // W - pq // KW
                j = hv % W - pq % KW
                if 0 <= i < OH and 0 <= j < OW:
                    val = dy[n, f, i, j]
            As[kk, mm] = val
        for e in range(tid, BK * BN, GEMM_THREADS):     # consecutive threads, consecutive (p,q)
            cc, kk = e // BK, e % BK
            c, k = c0 + cc, k0 + kk
            val = float32(0)
            if c < C and k < K:
                f, pq = k // (KH * KW), k % (KH * KW)
                val = w[f, c, pq // KW, pq % KW]
            Bs[kk, cc] = val
        cuda.syncthreads()
        _gemm_tile_mac(As, Bs, acc, tx, ty)
        cuda.syncthreads()
    for r in range(TM):
        m = m0 + tx + r * GEMM_TX
        if m < M:
            n, hv = m // (H * W), m % (H * W)
            for s in range(TN):
                c = c0 + ty + s * GEMM_TY
                if c < C:
                    dx[n, c, hv // W, hv % W] = acc[r, s]


def conv2d_backward_input_implicit_gemm(rt, dy, w):
    n, f, oh, ow = dy.shape
    _, c, kh, kw = w.shape
    h, wd = oh + kh - 1, ow + kw - 1
    dx = rt.empty((n, c, h, wd))
    grid = (_cdiv(n * h * wd, BM), _cdiv(c, BN))
    rt.launch(conv2d_backward_input_implicit_gemm_kernel, grid, GEMM_THREADS, (dy, w, dx))
    return dx


# ==================================================================== backward weight
@cuda.jit
def conv2d_backward_weight_naive_kernel(x, dy, dw):
    """naive: one thread per dw[f,c,p,q], looping n,i,j in a fixed order (deterministic).

    Constraints: 1-D grid over F*C*KH*KW. Little parallelism for small layers (375k
    threads for 150x100x5x5) and long serial loops (N*OH*OW terms each).
    """
    N, C, H, W = x.shape
    _, F, OH, OW = dy.shape
    KH, KW = H - OH + 1, W - OW + 1
    idx = cuda.grid(1)
    if idx >= F * C * KH * KW:
        return
    q = idx % KW
    p = (idx // KW) % KH
    c = (idx // (KW * KH)) % C
    f = idx // (KW * KH * C)
    acc = float32(0)
    for n in range(N):
        for i in range(OH):
            for j in range(OW):
                acc += dy[n, f, i, j] * x[n, c, i + p, j + q]
    dw[f, c, p, q] = acc


def conv2d_backward_weight_naive(rt, x, dy):
    n, c, h, wd = x.shape
    _, f, oh, ow = dy.shape
    dw = rt.empty((f, c, h - oh + 1, wd - ow + 1))
    rt.launch(conv2d_backward_weight_naive_kernel, _cdiv(dw.size, NAIVE_BLOCK), NAIVE_BLOCK,
              (x, dy, dw))
    return dw


@cuda.jit
def conv2d_backward_weight_atomic_kernel(x, dy, dw):
    """atomic: one thread per (n, f, c, p, q); sums its image's OH*OW terms, then
    ``cuda.atomic.add`` into the zeroed dw[f,c,p,q].

    N times the parallelism of naive, N-way contention per address. The float additions
    land in whatever order the hardware serves them: results may differ in the last bits
    from run to run (not deterministic). Constraints: 1-D grid over N*F*C*KH*KW; dw must
    be zero before the launch.
    """
    N, C, H, W = x.shape
    _, F, OH, OW = dy.shape
    KH, KW = H - OH + 1, W - OW + 1
    idx = cuda.grid(1)
    if idx >= N * F * C * KH * KW:
        return
    q = idx % KW
    p = (idx // KW) % KH
    c = (idx // (KW * KH)) % C
    f = (idx // (KW * KH * C)) % F
    n = idx // (KW * KH * C * F)
    acc = float32(0)
    for i in range(OH):
        for j in range(OW):
            acc += dy[n, f, i, j] * x[n, c, i + p, j + q]
    cuda.atomic.add(dw, (f, c, p, q), acc)


def conv2d_backward_weight_atomic(rt, x, dy):
    n, c, h, wd = x.shape
    _, f, oh, ow = dy.shape
    dw = rt.zeros((f, c, h - oh + 1, wd - ow + 1))
    rt.launch(conv2d_backward_weight_atomic_kernel, _cdiv(n * dw.size, NAIVE_BLOCK),
              NAIVE_BLOCK, (x, dy, dw))
    return dw


@cuda.jit(device=True)
def _block_tree_sum(s, tid):
    """In-place tree sum of s[0:REDUCE_BLOCK] in shared memory; the total ends in s[0].

    Halves the active threads each step (stride REDUCE_BLOCK/2, /4, ... 1), with a barrier
    between steps: log2(REDUCE_BLOCK) = 7 steps. The pairing is fixed, so the result is
    bitwise reproducible (deterministic). Every thread of the block must call it.
    """
    stride = REDUCE_BLOCK // 2
    while stride > 0:
        if tid < stride:
            s[tid] += s[tid + stride]
        cuda.syncthreads()
        stride //= 2


@cuda.jit
def conv2d_backward_weight_reduce_kernel(x, dy, dw):
    """reduce: one block of REDUCE_BLOCK=128 threads per dw[f,c,p,q] (blockIdx.x = flat index).

    Plan: thread t sums the terms t, t+128, t+256, ... of the N*OH*OW products (consecutive
    threads read consecutive j: coalesced), stores its partial sum in shared memory, and
    the block adds the 128 partials in a fixed-order tree. Deterministic, no atomics.
    Constraints: grid = F*C*KH*KW blocks; block = REDUCE_BLOCK threads.
    """
    N, C, H, W = x.shape
    _, F, OH, OW = dy.shape
    KH, KW = H - OH + 1, W - OW + 1
    s = cuda.shared.array(REDUCE_BLOCK, float32)
    tid = cuda.threadIdx.x
    idx = cuda.blockIdx.x
    q = idx % KW
    p = (idx // KW) % KH
    c = (idx // (KW * KH)) % C
    f = idx // (KW * KH * C)
    acc = float32(0)
    for t in range(tid, N * OH * OW, REDUCE_BLOCK):
        n, ij = t // (OH * OW), t % (OH * OW)
        i, j = ij // OW, ij % OW
        acc += dy[n, f, i, j] * x[n, c, i + p, j + q]
    s[tid] = acc
    cuda.syncthreads()
    _block_tree_sum(s, tid)
    if tid == 0:
        dw[f, c, p, q] = s[0]


def conv2d_backward_weight_reduce(rt, x, dy):
    n, c, h, wd = x.shape
    _, f, oh, ow = dy.shape
    dw = rt.empty((f, c, h - oh + 1, wd - ow + 1))
    rt.launch(conv2d_backward_weight_reduce_kernel, dw.size, REDUCE_BLOCK, (x, dy, dw))
    return dw


@cuda.jit
def conv2d_backward_weight_implicit_gemm_kernel(x, dy, dw2):
    """implicit_gemm: dw as C[f, col] = sum_k A[f, k] * B[k, col], deterministic.

    M = F, N = C*KH*KW (col = (c,p,q)), K = N*OH*OW (k = (n,i,j)); A[f,k] = dy[n,f,i,j],
    B[k,col] = x[n,c,i+p,j+q] (the im2col matrix, gathered on the fly); dw2 = dw viewed as
    (F, C*KH*KW). Same 64x64x8 tiling and 4x4 register blocks as the forward GEMM; each
    output is summed by one thread in a fixed order, so the result is reproducible (no
    split-K, no atomics). Constraints: grid (ceil(F/BM), ceil(C*KH*KW/BN)); K is long
    (N*OH*OW) and the grid small for the paper's layers -- the price of determinism.
    """
    N, C, H, W = x.shape
    _, F, OH, OW = dy.shape
    KH, KW = H - OH + 1, W - OW + 1
    NC = dw2.shape[1]
    K = N * OH * OW
    As = cuda.shared.array((BK, BM), float32)
    Bs = cuda.shared.array((BK, BN), float32)
    acc = cuda.local.array((TM, TN), float32)
    tid = cuda.threadIdx.x
    tx, ty = tid % GEMM_TX, tid // GEMM_TX
    f0, col0 = cuda.blockIdx.x * BM, cuda.blockIdx.y * BN
    for r in range(TM):
        for s in range(TN):
            acc[r, s] = float32(0)
    for k0 in range(0, K, BK):
        for e in range(tid, BK * BM, GEMM_THREADS):     # A = dy rows: consecutive threads, consecutive k
            ff, kk = e // BK, e % BK
            f, k = f0 + ff, k0 + kk
            val = float32(0)
            if f < F and k < K:
                n, ij = k // (OH * OW), k % (OH * OW)
                val = dy[n, f, ij // OW, ij % OW]
            As[kk, ff] = val
        for e in range(tid, BK * BN, GEMM_THREADS):     # B = im2col(x): consecutive threads, consecutive col
            kk, cc = e // BN, e % BN
            col, k = col0 + cc, k0 + kk
            val = float32(0)
            if col < NC and k < K:
                n, ij = k // (OH * OW), k % (OH * OW)
                c, pq = col // (KH * KW), col % (KH * KW)
                val = x[n, c, ij // OW + pq // KW, ij % OW + pq % KW]
            Bs[kk, cc] = val
        cuda.syncthreads()
        _gemm_tile_mac(As, Bs, acc, tx, ty)
        cuda.syncthreads()
    for r in range(TM):
        f = f0 + tx + r * GEMM_TX
        if f < F:
            for s in range(TN):
                col = col0 + ty + s * GEMM_TY
                if col < NC:
                    dw2[f, col] = acc[r, s]


def conv2d_backward_weight_implicit_gemm(rt, x, dy):
    n, c, h, wd = x.shape
    _, f, oh, ow = dy.shape
    kh, kw = h - oh + 1, wd - ow + 1
    dw = rt.empty((f, c, kh, kw))
    grid = (_cdiv(f, BM), _cdiv(c * kh * kw, BN))
    rt.launch(conv2d_backward_weight_implicit_gemm_kernel, grid, GEMM_THREADS,
              (x, dy, dw.reshape(f, c * kh * kw)))
    return dw


# ====================================================================== backward bias
@cuda.jit
def conv2d_backward_bias_naive_kernel(dy, db):
    """naive: one thread per db[f], looping n,i,j. F threads in all: a few busy warps."""
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


def conv2d_backward_bias_naive(rt, dy):
    db = rt.empty((dy.shape[1],))
    rt.launch(conv2d_backward_bias_naive_kernel, _cdiv(db.size, NAIVE_BLOCK), NAIVE_BLOCK,
              (dy, db))
    return db


@cuda.jit
def conv2d_backward_bias_reduce_kernel(dy, db):
    """reduce: one REDUCE_BLOCK-thread block per db[f] (blockIdx.x = f); strided partial
    sums over (n, i, j), then the fixed-order shared-memory tree (deterministic)."""
    N, F, OH, OW = dy.shape
    s = cuda.shared.array(REDUCE_BLOCK, float32)
    tid = cuda.threadIdx.x
    f = cuda.blockIdx.x
    acc = float32(0)
    for t in range(tid, N * OH * OW, REDUCE_BLOCK):
        n, ij = t // (OH * OW), t % (OH * OW)
        acc += dy[n, f, ij // OW, ij % OW]
    s[tid] = acc
    cuda.syncthreads()
    _block_tree_sum(s, tid)
    if tid == 0:
        db[f] = s[0]


def conv2d_backward_bias_reduce(rt, dy):
    db = rt.empty((dy.shape[1],))
    rt.launch(conv2d_backward_bias_reduce_kernel, db.size, REDUCE_BLOCK, (dy, db))
    return db


# ============================================================================ tables
VERSIONS = {
    "conv2d_forward": {"naive": conv2d_forward_naive, "tiled": conv2d_forward_tiled,
                       "implicit_gemm": conv2d_forward_implicit_gemm},
    "conv2d_backward_input": {"naive": conv2d_backward_input_naive,
                              "tiled": conv2d_backward_input_tiled,
                              "implicit_gemm": conv2d_backward_input_implicit_gemm},
    "conv2d_backward_weight": {"naive": conv2d_backward_weight_naive,
                               "atomic": conv2d_backward_weight_atomic,
                               "reduce": conv2d_backward_weight_reduce,
                               "implicit_gemm": conv2d_backward_weight_implicit_gemm},
    "conv2d_backward_bias": {"naive": conv2d_backward_bias_naive,
                             "reduce": conv2d_backward_bias_reduce},
}

#: The version each op runs by default (the one expected fastest on a GPU; see bench/).
DEFAULTS = {
    "conv2d_forward": "implicit_gemm",
    "conv2d_backward_input": "implicit_gemm",
    "conv2d_backward_weight": "implicit_gemm",
    "conv2d_backward_bias": "reduce",
}

# Kernel -> numba signature of the arrays it is launched with (C-contiguous float32), for
# the PTX compile check (tests/test_numba_compile.py).
_A4, _A2, _A1 = "float32[:, :, :, ::1]", "float32[:, ::1]", "float32[::1]"
PTX_SIGNATURES = {
    "conv2d_forward_naive_kernel": (conv2d_forward_naive_kernel, f"({_A4}, {_A4}, {_A1}, {_A4})"),
    "conv2d_forward_tiled_kernel": (conv2d_forward_tiled_kernel, f"({_A4}, {_A4}, {_A1}, {_A4})"),
    "conv2d_forward_implicit_gemm_kernel": (conv2d_forward_implicit_gemm_kernel,
                                            f"({_A4}, {_A2}, {_A1}, {_A4})"),
    "conv2d_backward_input_naive_kernel": (conv2d_backward_input_naive_kernel,
                                           f"({_A4}, {_A4}, {_A4})"),
    "conv2d_backward_input_tiled_kernel": (conv2d_backward_input_tiled_kernel,
                                           f"({_A4}, {_A4}, {_A4})"),
    "conv2d_backward_input_implicit_gemm_kernel": (conv2d_backward_input_implicit_gemm_kernel,
                                                   f"({_A4}, {_A4}, {_A4})"),
    "conv2d_backward_weight_naive_kernel": (conv2d_backward_weight_naive_kernel,
                                            f"({_A4}, {_A4}, {_A4})"),
    "conv2d_backward_weight_atomic_kernel": (conv2d_backward_weight_atomic_kernel,
                                             f"({_A4}, {_A4}, {_A4})"),
    "conv2d_backward_weight_reduce_kernel": (conv2d_backward_weight_reduce_kernel,
                                             f"({_A4}, {_A4}, {_A4})"),
    "conv2d_backward_weight_implicit_gemm_kernel": (conv2d_backward_weight_implicit_gemm_kernel,
                                                    f"({_A4}, {_A4}, {_A2})"),
    "conv2d_backward_bias_naive_kernel": (conv2d_backward_bias_naive_kernel, f"({_A4}, {_A1})"),
    "conv2d_backward_bias_reduce_kernel": (conv2d_backward_bias_reduce_kernel, f"({_A4}, {_A1})"),
}
