// conv2d_forward.cu -- the forward pass of a 2-D convolution layer (CUDA C, float32).
//
// Computes   y[n,f,i,j] = b[f] + sum_{c,p,q} x[n,c,i+p,j+q] * w[f,c,p,q]
//   x (N,C,H,W), w (F,C,KH,KW), b (F,)  ->  y (N,F,OH,OW),  OH = H-KH+1, OW = W-KW+1
// (cross-correlation, stride 1, no padding; all arrays C-contiguous NCHW).
// Reference: conv2d_forward_naive in kernels/conv2d/numpy_ops.py.  Launch code (grid, block,
// shared memory): kernels/cupy_backend.py, shared by CuPy and the CPU emulator.
//
// Versions (ladder order):
//   naive          one thread per output y[n,f,i,j], 1-D grid of 256-thread blocks; reads its
//                  C*KH*KW inputs and weights straight from global memory (every x value is
//                  re-read by up to KH*KW*F threads).
//   tiled          one 16x16 output tile of one (n,f) plane per block, one output per thread;
//                  for each input channel the block stages the (16+KH-1)x(16+KW-1) input patch
//                  and the KHxKW filter slice in shared memory, so each x value is read from
//                  global memory about once per (f, tile) instead of KH*KW times.
//   implicit_gemm  the convolution as a GEMM that is never materialised (no im2col buffer):
//                  M = N*OH*OW output pixels, N = F filters, K = C*KH*KW; A[m,k] is the x value
//                  under filter tap k at pixel m, B[k,f] = w[f,k]. A 64x64 tile of y per 256-
//                  thread block, K walked in steps of 8 through shared-memory tiles of A and B,
//                  each thread accumulating a 4x4 register block: every value loaded from
//                  shared memory feeds 4 multiply-adds and every x value loaded from global
//                  memory feeds 64 filters, so the kernel is compute-bound, not load-bound.
//   splitk         implicit_gemm with K cut into S slices, one per grid z, when the output
//                  tiles alone would leave SMs idle (small batches); partial results go to a
//                  workspace and splitk_sum.cu adds them in a fixed order: deterministic.
//                  With S = 1 (the tiles fill the GPU) it is implicit_gemm: same tiles, same bits.
//
// Thread -> output maps are stated above each kernel. No warp shuffles: every kernel also runs
// in the CPU emulator (kernels/emulator), where the tests check it against NumPy.

typedef float real;

#define CONV_TILE 16   // tiled: a CONV_TILE x CONV_TILE block of outputs per thread block
#define GEMM_BM 64     // implicit_gemm: output pixels (M) per block
#define GEMM_BN 64     // implicit_gemm: filters (N) per block
#define GEMM_BK 8      // implicit_gemm: K step held in shared memory
#define GEMM_PAD 4     // row padding of the B tile: its stores hit 32 different banks

#include "gemm_tile.cuh"   // implicit_gemm, splitk: gemm_acc_zero, gemm_micro_step

// ---------------------------------------------------------------------------------- naive
// grid (ceil(N*F*OH*OW / 256)), block (256). Thread idx -> y.flat[idx].
extern "C" __global__ void conv2d_forward_naive(real* __restrict__ y, const real* __restrict__ x,
                                                const real* __restrict__ w,
                                                const real* __restrict__ b, int N, int C, int H,
                                                int W, int F, int KH, int KW) {
    const int OH = H - KH + 1, OW = W - KW + 1;
    const int idx = blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= N * F * OH * OW) return;
    const int j = idx % OW;
    const int i = (idx / OW) % OH;
    const int f = (idx / (OW * OH)) % F;
    const int n = idx / (OW * OH * F);
    const real* xn = x + (size_t)n * C * H * W;
    const real* wf = w + (size_t)f * C * KH * KW;
    real acc = b[f];
    for (int c = 0; c < C; ++c)
        for (int p = 0; p < KH; ++p)
            for (int q = 0; q < KW; ++q)
                acc += xn[(c * H + i + p) * W + j + q] * wf[(c * KH + p) * KW + q];
    y[idx] = acc;
}

// ---------------------------------------------------------------------------------- tiled
// grid (ceil(OW/16), ceil(OH/16), N*F), block (16, 16),
// dynamic shared memory ((16+KH-1)*(16+KW-1) + KH*KW) * sizeof(real).
// Thread (tx, ty) of block (bx, by, n*F+f) -> y[n, f, by*16+ty, bx*16+tx].
extern "C" __global__ void conv2d_forward_tiled(real* __restrict__ y, const real* __restrict__ x,
                                                const real* __restrict__ w,
                                                const real* __restrict__ b, int N, int C, int H,
                                                int W, int F, int KH, int KW) {
    extern __shared__ real smem[];
    const int OH = H - KH + 1, OW = W - KW + 1;
    const int TH = CONV_TILE + KH - 1, TW = CONV_TILE + KW - 1;   // input patch of the tile
    real* xs = smem;              // [TH][TW]
    real* ws = smem + TH * TW;    // [KH][KW]
    const int n = blockIdx.z / F, f = blockIdx.z % F;
    const int i0 = blockIdx.y * CONV_TILE, j0 = blockIdx.x * CONV_TILE;
    const int tx = threadIdx.x, ty = threadIdx.y, tid = ty * CONV_TILE + tx;
    const int i = i0 + ty, j = j0 + tx;
    real acc = 0;
    for (int c = 0; c < C; ++c) {
        const real* xc = x + ((size_t)n * C + c) * H * W;
        for (int e = tid; e < TH * TW; e += CONV_TILE * CONV_TILE) {   // cooperative load
            const int h = i0 + e / TW, v = j0 + e % TW;
            xs[e] = (h < H && v < W) ? xc[h * W + v] : (real)0;
        }
        for (int e = tid; e < KH * KW; e += CONV_TILE * CONV_TILE)
            ws[e] = w[((size_t)f * C + c) * KH * KW + e];
        __syncthreads();                                   // tile complete before anyone reads
        if (i < OH && j < OW)
            for (int p = 0; p < KH; ++p)
                for (int q = 0; q < KW; ++q)
                    acc += xs[(ty + p) * TW + tx + q] * ws[p * KW + q];
        __syncthreads();                                   // all done reading before overwrite
    }
    if (i < OH && j < OW) y[(((size_t)n * F + f) * OH + i) * OW + j] = acc + b[f];
}

// -------------------------------------------------------------------------- implicit_gemm
// The 64x64x8 GEMM tile of the forward pass, shared by implicit_gemm (the whole K) and
// splitk (one slice of K per grid z): the block (bm, bf) = (blockIdx.x, blockIdx.y) sums
// taps k in [k_lo, k_hi) into its 64x64 tile of out, laid out like y (N, F, OH, OW); the
// bias is added when add_bias. Thread t, with tx = t % 16, ty = t / 16, computes the 4x4
// outputs
//   m = bm*64 + tx + 16*r (r = 0..3, output pixel m = (n, i, j)),
//   f = bf*64 + ty + 16*s (s = 0..3),
// strided by 16 so that a warp's loads from shared memory are conflict-free and its stores to
// out (consecutive m = consecutive j) are coalesced. Taps at or past k_hi load zeros, so any
// k_lo < k_hi is correct. Every thread of the block must call it (it has barriers).
// Reading order (gemm_tile.cuh's plan): loaders, gemm_acc_zero, then per K step the tile
// loads, a barrier, gemm_micro_step, a barrier; last the epilogue (+ bias) into out.
__device__ __forceinline__ void forward_gemm_tile(real* __restrict__ out,
                                                  const real* __restrict__ x,
                                                  const real* __restrict__ w,
                                                  const real* __restrict__ b, int N, int C,
                                                  int H, int W, int F, int KH, int KW,
                                                  int k_lo, int k_hi, bool add_bias,
                                                  real As[GEMM_BK][GEMM_BM],
                                                  real Bs[GEMM_BK][GEMM_BN + GEMM_PAD]) {
    const int OH = H - KH + 1, OW = W - KW + 1, OHW = OH * OW, KK = KH * KW;
    const int M = N * OHW, K = C * KK;
    const int t = threadIdx.x, tx = t % 16, ty = t / 16;
    const int m0 = blockIdx.x * GEMM_BM, f0 = blockIdx.y * GEMM_BN;

    // A loader: this thread fills As[t/64 + 4r][t%64]: one fixed pixel, so decode it once.
    const int a_m = m0 + t % GEMM_BM, a_k = t / GEMM_BM;
    const bool a_ok = a_m < M;
    int a_base = 0;
    if (a_ok) {
        const int n = a_m / OHW, rr = a_m % OHW;
        a_base = n * C * H * W + (rr / OW) * W + rr % OW;   // &x[n, 0, i, j]
    }
    // B loader: this thread fills Bs[t%8][t/8 + 32r] from w[f, k]: 8 threads read 8
    // consecutive k of one filter row.
    const int b_k = t % GEMM_BK, b_f = t / GEMM_BK;

    real acc[4][4];   // [r: m][s: f]
    gemm_acc_zero(acc);

    for (int k0 = k_lo; k0 < k_hi; k0 += GEMM_BK) {
        for (int r = 0; r < 2; ++r) {
            const int ka = k0 + a_k + 4 * r;
            real va = 0;
            if (a_ok && ka < k_hi) {
                const int c = ka / KK, pq = ka % KK;
                va = x[a_base + c * H * W + (pq / KW) * W + pq % KW];
            }
            As[a_k + 4 * r][t % GEMM_BM] = va;
            const int fb = f0 + b_f + 32 * r, kb = k0 + b_k;
            Bs[b_k][b_f + 32 * r] = (fb < F && kb < k_hi) ? w[(size_t)fb * K + kb] : (real)0;
        }
        __syncthreads();
        gemm_micro_step(acc, As, Bs, tx, ty);   // acc[r][s] += As[.][m] * Bs[.][f]
        __syncthreads();
    }
    for (int r = 0; r < 4; ++r) {
        const int m = m0 + tx + 16 * r;
        if (m >= M) continue;
        const int n = m / OHW, rr = m % OHW;
        for (int s = 0; s < 4; ++s) {
            const int f = f0 + ty + 16 * s;
            if (f < F)
                out[((size_t)n * F + f) * OHW + rr] = acc[r][s] + (add_bias ? b[f] : (real)0);
        }
    }
}

// grid (ceil(N*OH*OW / 64), ceil(F / 64)), block (256): the whole K = C*KH*KW per block.
extern "C" __global__ void conv2d_forward_implicit_gemm(real* __restrict__ y,
                                                        const real* __restrict__ x,
                                                        const real* __restrict__ w,
                                                        const real* __restrict__ b, int N,
                                                        int C, int H, int W, int F, int KH,
                                                        int KW) {
    __shared__ real As[GEMM_BK][GEMM_BM];              // A tile: [k][m]
    __shared__ real Bs[GEMM_BK][GEMM_BN + GEMM_PAD];   // B tile: [k][f]
    forward_gemm_tile(y, x, w, b, N, C, H, W, F, KH, KW, 0, C * KH * KW, true, As, Bs);
}

// ---------------------------------------------------------------------------------- splitk
// grid (ceil(N*OH*OW / 64), ceil(F / 64), S), block (256); S and chunk from
// kernels/launch_spec.py (conv_split_k: enough z slices for one block per SM).
// Block (bm, bf, z) computes implicit_gemm's tile over taps k in [z*chunk, (z+1)*chunk) and
// writes it to partial z of ws (S, N, F, OH, OW); the bias goes into partial 0 only. Then
// splitk_sum (kernels/conv2d/splitk_sum.cu) adds the S partials in a fixed order into y:
// deterministic. With S == 1 the launcher passes y itself as ws and launches no sum.
// Why: at batch 16 a layer like mnist-conv2 (M = 1024 pixels, 150 filters) has only 48
// output tiles, so 84 of 132 SMs would idle; 3 slices of K give 144 blocks.
extern "C" __global__ void conv2d_forward_splitk(real* __restrict__ ws,
                                                 const real* __restrict__ x,
                                                 const real* __restrict__ w,
                                                 const real* __restrict__ b, int N, int C,
                                                 int H, int W, int F, int KH, int KW,
                                                 int chunk) {
    __shared__ real As[GEMM_BK][GEMM_BM];
    __shared__ real Bs[GEMM_BK][GEMM_BN + GEMM_PAD];
    const int z = blockIdx.z, K = C * KH * KW;
    const size_t plane = (size_t)N * F * (H - KH + 1) * (W - KW + 1);   // one partial y
    forward_gemm_tile(ws + z * plane, x, w, b, N, C, H, W, F, KH, KW, z * chunk,
                      min(K, (z + 1) * chunk), z == 0, As, Bs);
}
