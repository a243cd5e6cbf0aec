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
//
// Thread -> output maps are stated above each kernel. No warp shuffles: every kernel also runs
// in the CPU emulator (kernels/emulator), where the tests check it against NumPy.

typedef float real;

#define CONV_TILE 16   // tiled: a CONV_TILE x CONV_TILE block of outputs per thread block
#define GEMM_BM 64     // implicit_gemm: output pixels (M) per block
#define GEMM_BN 64     // implicit_gemm: filters (N) per block
#define GEMM_BK 8      // implicit_gemm: K step held in shared memory
#define GEMM_PAD 4     // row padding of the B tile: its stores hit 32 different banks

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
// grid (ceil(N*OH*OW / 64), ceil(F / 64)), block (256).
// Thread t, with tx = t % 16, ty = t / 16, of block (bm, bf) computes the 4x4 outputs
//   m = bm*64 + tx + 16*r (r = 0..3, output pixel m = (n, i, j)),
//   f = bf*64 + ty + 16*s (s = 0..3),
// strided by 16 so that a warp's loads from shared memory are conflict-free and its stores to
// y (consecutive m = consecutive j) are coalesced.
extern "C" __global__ void conv2d_forward_implicit_gemm(real* __restrict__ y,
                                                        const real* __restrict__ x,
                                                        const real* __restrict__ w,
                                                        const real* __restrict__ b, int N,
                                                        int C, int H, int W, int F, int KH,
                                                        int KW) {
    __shared__ real As[GEMM_BK][GEMM_BM];              // A tile: [k][m]
    __shared__ real Bs[GEMM_BK][GEMM_BN + GEMM_PAD];   // B tile: [k][f]
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

    real acc[4][4];
    for (int r = 0; r < 4; ++r)
        for (int s = 0; s < 4; ++s) acc[r][s] = 0;

    for (int k0 = 0; k0 < K; k0 += GEMM_BK) {
        for (int r = 0; r < 2; ++r) {
            const int ka = k0 + a_k + 4 * r;
            real va = 0;
            if (a_ok && ka < K) {
                const int c = ka / KK, pq = ka % KK;
                va = x[a_base + c * H * W + (pq / KW) * W + pq % KW];
            }
            As[a_k + 4 * r][t % GEMM_BM] = va;
            const int fb = f0 + b_f + 32 * r, kb = k0 + b_k;
            Bs[b_k][b_f + 32 * r] = (fb < F && kb < K) ? w[(size_t)fb * K + kb] : (real)0;
        }
        __syncthreads();
        for (int kk = 0; kk < GEMM_BK; ++kk) {
            real a[4], bv[4];
            for (int r = 0; r < 4; ++r) a[r] = As[kk][tx + 16 * r];
            for (int s = 0; s < 4; ++s) bv[s] = Bs[kk][ty + 16 * s];
            for (int r = 0; r < 4; ++r)
                for (int s = 0; s < 4; ++s) acc[r][s] += a[r] * bv[s];
        }
        __syncthreads();
    }
    for (int r = 0; r < 4; ++r) {
        const int m = m0 + tx + 16 * r;
        if (m >= M) continue;
        const int n = m / OHW, rr = m % OHW;
        for (int s = 0; s < 4; ++s) {
            const int f = f0 + ty + 16 * s;
            if (f < F) y[((size_t)n * F + f) * OHW + rr] = acc[r][s] + b[f];
        }
    }
}
