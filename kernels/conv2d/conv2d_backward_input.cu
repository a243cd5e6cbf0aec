// conv2d_backward_input.cu -- gradient of a convolution w.r.t. its input (CUDA C, float32).
//
// Computes   dx[n,c,h,v] = sum_{f,p,q} dy[n,f,h-p,v-q] * w[f,c,p,q]   (terms inside dy only)
//   dy (N,F,OH,OW), w (F,C,KH,KW)  ->  dx (N,C,H,W),  H = OH+KH-1, W = OW+KW-1
// i.e. the "full" correlation of dy with w flipped in both spatial dimensions. It is also the
// tied-weight decoder of a convolutional auto-encoder (sum_k h_k * W~_k).
// Reference: conv2d_backward_input_naive in kernels/conv2d/numpy_ops.py. Launch code:
// kernels/cupy_backend.py.
//
// Versions (ladder order):
//   naive          one thread per dx element; it gathers the (at most F*KH*KW) dy entries that
//                  touch it, bounds-checking each: no atomics, each dx written once.
//   tiled          one 16x16 tile of one (n,c) dx plane per block, one output per thread; for
//                  each filter f the block stages the (16+KH-1)x(16+KW-1) dy patch (zero-padded
//                  at the borders, so the inner loop has no bounds checks) and w[f,c] in shared
//                  memory: each dy value is read from global memory once per tile, not KH*KW times.
//   implicit_gemm  the full correlation as an implicit GEMM over the flipped kernel:
//                  M = N*H*W dx pixels, N = C channels, K = F*KH*KW; A[m,k] = dy[n,f,h-p,v-q]
//                  (zero outside dy), B[k,c] = w[f,c,p,q]. 64x64 dx tile per 256-thread block,
//                  K in steps of 8 through shared memory, a 4x4 register block per thread: the
//                  same arithmetic intensity as the forward implicit GEMM.
//   splitk         implicit_gemm with K cut into S slices (grid z) when the dx tiles alone
//                  would leave SMs idle; partials to a workspace, summed in a fixed order by
//                  splitk_sum.cu: deterministic. S = 1: implicit_gemm's tiles and bits.

typedef float real;

#define CONV_TILE 16
#define GEMM_BM 64
#define GEMM_BN 64
#define GEMM_BK 8
#define GEMM_PAD 4

#include "gemm_tile.cuh"   // implicit_gemm, splitk: gemm_acc_zero, gemm_micro_step

// ---------------------------------------------------------------------------------- naive
// grid (ceil(N*C*H*W / 256)), block (256). Thread idx -> dx.flat[idx].
extern "C" __global__ void conv2d_backward_input_naive(real* __restrict__ dx,
                                                       const real* __restrict__ dy,
                                                       const real* __restrict__ w, int N, int C,
                                                       int OH, int OW, int F, int KH, int KW) {
    const int H = OH + KH - 1, W = OW + KW - 1;
    const int idx = blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= N * C * H * W) return;
    const int v = idx % W;
    const int h = (idx / W) % H;
    const int c = (idx / (W * H)) % C;
    const int n = idx / (W * H * C);
    // only taps with 0 <= h-p < OH and 0 <= v-q < OW touch this pixel
    const int p_lo = max(0, h - OH + 1), p_hi = min(KH - 1, h);
    const int q_lo = max(0, v - OW + 1), q_hi = min(KW - 1, v);
    real acc = 0;
    for (int f = 0; f < F; ++f) {
        const real* dyf = dy + ((size_t)n * F + f) * OH * OW;
        const real* wfc = w + ((size_t)f * C + c) * KH * KW;
        for (int p = p_lo; p <= p_hi; ++p)
            for (int q = q_lo; q <= q_hi; ++q)
                acc += dyf[(h - p) * OW + (v - q)] * wfc[p * KW + q];
    }
    dx[idx] = acc;
}

// ---------------------------------------------------------------------------------- tiled
// grid (ceil(W/16), ceil(H/16), N*C), block (16, 16),
// dynamic shared memory ((16+KH-1)*(16+KW-1) + KH*KW) * sizeof(real).
// Thread (tx, ty) of block (bx, by, n*C+c) -> dx[n, c, by*16+ty, bx*16+tx].
// The dy patch covers rows h0-KH+1 .. h0+15 and columns v0-KW+1 .. v0+15, so pixel (ty, tx)
// finds dy[h-p, v-q] at patch (ty+KH-1-p, tx+KW-1-q).
extern "C" __global__ void conv2d_backward_input_tiled(real* __restrict__ dx,
                                                       const real* __restrict__ dy,
                                                       const real* __restrict__ w, int N, int C,
                                                       int OH, int OW, int F, int KH, int KW) {
    extern __shared__ real smem[];
    const int H = OH + KH - 1, W = OW + KW - 1;
    const int TH = CONV_TILE + KH - 1, TW = CONV_TILE + KW - 1;
    real* ds = smem;              // [TH][TW] dy patch, zero outside dy
    real* ws = smem + TH * TW;    // [KH][KW]
    const int n = blockIdx.z / C, c = blockIdx.z % C;
    const int h0 = blockIdx.y * CONV_TILE, v0 = blockIdx.x * CONV_TILE;
    const int tx = threadIdx.x, ty = threadIdx.y, tid = ty * CONV_TILE + tx;
    const int h = h0 + ty, v = v0 + tx;
    real acc = 0;
    for (int f = 0; f < F; ++f) {
        const real* dyf = dy + ((size_t)n * F + f) * OH * OW;
        for (int e = tid; e < TH * TW; e += CONV_TILE * CONV_TILE) {
            const int i = h0 - KH + 1 + e / TW, j = v0 - KW + 1 + e % TW;
            ds[e] = (i >= 0 && i < OH && j >= 0 && j < OW) ? dyf[i * OW + j] : (real)0;
        }
        for (int e = tid; e < KH * KW; e += CONV_TILE * CONV_TILE)
            ws[e] = w[((size_t)f * C + c) * KH * KW + e];
        __syncthreads();
        if (h < H && v < W)
            for (int p = 0; p < KH; ++p)
                for (int q = 0; q < KW; ++q)
                    acc += ds[(ty + KH - 1 - p) * TW + tx + KW - 1 - q] * ws[p * KW + q];
        __syncthreads();
    }
    if (h < H && v < W) dx[(((size_t)n * C + c) * H + h) * W + v] = acc;
}

// -------------------------------------------------------------------------- implicit_gemm
// The 64x64x8 GEMM tile of the input gradient, shared by implicit_gemm (the whole K) and
// splitk (one slice of K per grid z): block (bm, bc) = (blockIdx.x, blockIdx.y) sums taps
// k = (f, p, q) in [k_lo, k_hi) into its 64x64 tile of out, laid out like dx (N, C, H, W).
// Thread t, tx = t % 16, ty = t / 16, computes the 4x4 outputs
//   m = bm*64 + tx + 16*r (dx pixel m = (n, h, v)),  c = bc*64 + ty + 16*s.
// Taps at or past k_hi load zeros. Every thread of the block must call it (barriers).
__device__ __forceinline__ void backward_input_gemm_tile(real* __restrict__ out,
                                                         const real* __restrict__ dy,
                                                         const real* __restrict__ w, int N,
                                                         int C, int OH, int OW, int F, int KH,
                                                         int KW, int k_lo, int k_hi,
                                                         real As[GEMM_BK][GEMM_BM],
                                                         real Bs[GEMM_BK][GEMM_BN + GEMM_PAD]) {
    const int H = OH + KH - 1, W = OW + KW - 1, HW = H * W, KK = KH * KW;
    const int M = N * HW;
    const int t = threadIdx.x, tx = t % 16, ty = t / 16;
    const int m0 = blockIdx.x * GEMM_BM, c0 = blockIdx.y * GEMM_BN;

    // A loader: fixed dx pixel (n, h, v) = m0 + t%64, rows k = t/64 + 4r of the tile.
    const int a_m = m0 + t % GEMM_BM, a_k = t / GEMM_BM;
    const bool a_ok = a_m < M;
    int a_n = 0, a_h = 0, a_v = 0;
    if (a_ok) {
        a_n = a_m / HW;
        a_h = (a_m % HW) / W;
        a_v = a_m % W;
    }
    // B loader: Bs[t%8][t/8 + 32r] = w[f, c, p, q] with k = (f, p, q).
    const int b_k = t % GEMM_BK, b_c = t / GEMM_BK;

    real acc[4][4];   // [r: m][s: c]
    gemm_acc_zero(acc);

    for (int k0 = k_lo; k0 < k_hi; k0 += GEMM_BK) {
        for (int r = 0; r < 2; ++r) {
            const int ka = k0 + a_k + 4 * r;
            real va = 0;
            if (a_ok && ka < k_hi) {
                const int f = ka / KK, pq = ka % KK;
                const int i = a_h - pq / KW, j = a_v - pq % KW;   // the flipped tap
                if (i >= 0 && i < OH && j >= 0 && j < OW)
                    va = dy[(((size_t)a_n * F + f) * OH + i) * OW + j];
            }
            As[a_k + 4 * r][t % GEMM_BM] = va;
            const int cb = c0 + b_c + 32 * r, kb = k0 + b_k;
            real vb = 0;
            if (cb < C && kb < k_hi) vb = w[((size_t)(kb / KK) * C + cb) * KK + kb % KK];
            Bs[b_k][b_c + 32 * r] = vb;
        }
        __syncthreads();
        gemm_micro_step(acc, As, Bs, tx, ty);   // acc[r][s] += As[.][m] * Bs[.][c]
        __syncthreads();
    }
    for (int r = 0; r < 4; ++r) {
        const int m = m0 + tx + 16 * r;
        if (m >= M) continue;
        const int n = m / HW, rr = m % HW;
        for (int s = 0; s < 4; ++s) {
            const int c = c0 + ty + 16 * s;
            if (c < C) out[((size_t)n * C + c) * HW + rr] = acc[r][s];
        }
    }
}

// grid (ceil(N*H*W / 64), ceil(C / 64)), block (256): the whole K = F*KH*KW per block.
extern "C" __global__ void conv2d_backward_input_implicit_gemm(real* __restrict__ dx,
                                                               const real* __restrict__ dy,
                                                               const real* __restrict__ w,
                                                               int N, int C, int OH, int OW,
                                                               int F, int KH, int KW) {
    __shared__ real As[GEMM_BK][GEMM_BM];
    __shared__ real Bs[GEMM_BK][GEMM_BN + GEMM_PAD];
    backward_input_gemm_tile(dx, dy, w, N, C, OH, OW, F, KH, KW, 0, F * KH * KW, As, Bs);
}

// ---------------------------------------------------------------------------------- splitk
// grid (ceil(N*H*W / 64), ceil(C / 64), S), block (256); S and chunk from
// kernels/launch_spec.py (conv_split_k). Block (bm, bc, z) computes implicit_gemm's tile over
// taps k in [z*chunk, (z+1)*chunk) into partial z of ws (S, N, C, H, W); splitk_sum.cu adds
// the S partials in a fixed order into dx (deterministic). S == 1: ws is dx itself, no sum.
// Why: at batch 16, mnist-conv2's input gradient (2,304 dx pixels, 100 channels) has 72 tiles.
extern "C" __global__ void conv2d_backward_input_splitk(real* __restrict__ ws,
                                                        const real* __restrict__ dy,
                                                        const real* __restrict__ w, int N,
                                                        int C, int OH, int OW, int F, int KH,
                                                        int KW, int chunk) {
    __shared__ real As[GEMM_BK][GEMM_BM];
    __shared__ real Bs[GEMM_BK][GEMM_BN + GEMM_PAD];
    const int z = blockIdx.z, K = F * KH * KW;
    const size_t plane = (size_t)N * C * (OH + KH - 1) * (OW + KW - 1);   // one partial dx
    backward_input_gemm_tile(ws + z * plane, dy, w, N, C, OH, OW, F, KH, KW, z * chunk,
                             min(K, (z + 1) * chunk), As, Bs);
}
