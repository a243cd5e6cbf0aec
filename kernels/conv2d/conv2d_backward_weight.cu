// conv2d_backward_weight.cu -- gradients of a convolution w.r.t. its weights and its bias
// (CUDA C, float32).
//
// Computes   dw[f,c,p,q] = sum_{n,i,j} dy[n,f,i,j] * x[n,c,i+p,j+q]      -> dw (F,C,KH,KW)
//            db[f]       = sum_{n,i,j} dy[n,f,i,j]                        -> db (F,)
//   x (N,C,H,W), dy (N,F,OH,OW), KH = H-OH+1, KW = W-OW+1.
// Both are reductions over R = N*OH*OW positions (n, i, j) -- long sums (R = 57,600 for the
// paper's first MNIST layer at batch 100) into few outputs, so the question here is how to
// split a reduction, and whether the result may depend on thread timing.
// Reference: conv2d_backward_{weight,bias}_naive in kernels/conv2d/numpy_ops.py. Launch code:
// kernels/cupy_backend.py.
//
// Weight-gradient versions (ladder order):
//   naive          one thread per dw element, looping over all (n, i, j) in order:
//                  deterministic, but only F*C*KH*KW threads (2,500 for layer 1) each doing a
//                  long serial sum.
//   atomic         one thread per (dw element, chunk of 256 consecutive (n,i,j) positions):
//                  R/256 times more threads, each adds its partial sum into a zeroed dw with
//                  atomicAdd. Fast, but the order of the float additions depends on timing:
//                  NOT bitwise reproducible from run to run.
//   reduce         T threads per dw element (T = a power of two <= 32, about R/8, so no thread
//                  idles when R is small) and 256/T elements per 256-thread block; each thread
//                  sums every T-th (n,i,j), then a fixed shared-memory tree adds the T partial
//                  sums: deterministic (same bits every run) and up to 32x more parallel than naive.
//   warp           reduce's threads and partial sums, but the T partial sums of an element are
//                  added with warp shuffles (__shfl_down_sync, width T) in registers: no shared
//                  memory, no __syncthreads at all; the same tree, so the same bits as reduce.
//   implicit_gemm  dw as a GEMM: M = F, N = C*KH*KW, K = R = N*OH*OW. 64x64 tile of dw per
//                  256-thread block, a 4x4 register block per thread, the whole K walked by the
//                  block in steps of 8 through shared memory (no split across blocks, so no
//                  atomics): deterministic and the most arithmetic per byte loaded.
//   splitk         implicit_gemm with R cut into S slices (grid z, S from launch_spec.py) so
//                  that at least 132 blocks run; partial tiles to a workspace, then
//                  splitk_sum.cu adds them in a fixed order: deterministic.
// Bias-gradient versions:
//   naive          one thread per f, serial sum over (n, i, j): deterministic.
//   reduce         one 256-thread block per f, strided partial sums then a shared-memory tree:
//                  deterministic, 256x more parallel.
//   warp           reduce's partial sums, then shuffles inside each warp, one barrier, and one
//                  warp adding the 8 warp sums: 1 barrier instead of 9, deterministic.
//   split          reduce's block on each of S slices of the positions (grid (F, S), >= 132
//                  blocks); the last block of each f to finish adds the S partials in a fixed
//                  order: deterministic, one launch.
//
// Warp shuffles (the `warp` versions): __shfl_down_sync(mask, v, d, width) hands every lane the
// register v of the lane d places above it in its segment of `width` lanes, in one instruction,
// without shared memory. A warp is 32 threads of consecutive linear id
// (threadIdx.x + blockDim.x * threadIdx.y); every lane named in the mask must make the same call
// (the CPU emulator checks that, see kernels/emulator/README.md).

typedef float real;

#define WGRAD_CHUNK 256        // atomic: (n,i,j) positions summed by one thread
#define WGRAD_RED_BLOCK 256    // reduce: threads per block (T per element, 256/T elements)
#define BGRAD_THREADS 256      // bias reduce: threads per block (a power of two)
#define FULL_MASK 0xffffffffu  // warp versions: all 32 lanes take part in every shuffle
#define GEMM_BM 64
#define GEMM_BN 64
#define GEMM_BK 8
#define GEMM_PAD 4

#include "gemm_tile.cuh"   // implicit_gemm, splitk: gemm_acc_zero, gemm_micro_step

// dy[n,f,i,j] * x[n,c,i+p,j+q] for reduction position r = (n, i, j) -- shared by the
// naive, atomic, reduce and warp versions.
__device__ __forceinline__ real wgrad_term(const real* __restrict__ x,
                                           const real* __restrict__ dy, int r, int f, int c,
                                           int p, int q, int C, int H, int W, int F, int OH,
                                           int OW) {
    const int n = r / (OH * OW), s = r % (OH * OW);
    const int i = s / OW, j = s % OW;
    return dy[((size_t)n * F + f) * OH * OW + s] * x[(((size_t)n * C + c) * H + i + p) * W + j + q];
}

// Thread tx's share of dw.flat[e] when T threads split its sum: positions r = tx, tx+T, ...
// (0 for an e past the end, so the thread still takes part in the tree) -- shared by the
// reduce and warp versions.
__device__ __forceinline__ real wgrad_partial(const real* __restrict__ x,
                                              const real* __restrict__ dy, int e, int tx,
                                              int T, int N, int C, int H, int W, int F,
                                              int OH, int OW) {
    const int KH = H - OH + 1, KW = W - OW + 1;
    real acc = 0;
    if (e < F * C * KH * KW) {
        const int q = e % KW, p = (e / KW) % KH, c = (e / (KW * KH)) % C, f = e / (KW * KH * C);
        for (int r = tx; r < N * OH * OW; r += T)
            acc += wgrad_term(x, dy, r, f, c, p, q, C, H, W, F, OH, OW);
    }
    return acc;
}

// ---------------------------------------------------------------------------------- naive
// grid (ceil(F*C*KH*KW / 256)), block (256). Thread e -> dw.flat[e].
extern "C" __global__ void conv2d_backward_weight_naive(real* __restrict__ dw,
                                                        const real* __restrict__ x,
                                                        const real* __restrict__ dy, int N,
                                                        int C, int H, int W, int F, int OH,
                                                        int OW) {
    const int KH = H - OH + 1, KW = W - OW + 1;
    const int e = blockIdx.x * blockDim.x + threadIdx.x;
    if (e >= F * C * KH * KW) return;
    const int q = e % KW, p = (e / KW) % KH, c = (e / (KW * KH)) % C, f = e / (KW * KH * C);
    real acc = 0;
    for (int r = 0; r < N * OH * OW; ++r) acc += wgrad_term(x, dy, r, f, c, p, q, C, H, W, F, OH, OW);
    dw[e] = acc;
}

// --------------------------------------------------------------------------------- atomic
// dw must be zero before the launch. grid (ceil(E * nchunks / 256)), block (256) with
// E = F*C*KH*KW, nchunks = ceil(N*OH*OW / 256). Thread idx -> element e = idx % E (consecutive
// threads: consecutive q, so x reads are contiguous), chunk idx / E of the (n,i,j) positions.
extern "C" __global__ void conv2d_backward_weight_atomic(real* __restrict__ dw,
                                                         const real* __restrict__ x,
                                                         const real* __restrict__ dy, int N,
                                                         int C, int H, int W, int F, int OH,
                                                         int OW) {
    const int KH = H - OH + 1, KW = W - OW + 1;
    const int E = F * C * KH * KW, R = N * OH * OW;
    const int nchunks = (R + WGRAD_CHUNK - 1) / WGRAD_CHUNK;
    const int idx = blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= E * nchunks) return;
    const int e = idx % E, chunk = idx / E;
    const int q = e % KW, p = (e / KW) % KH, c = (e / (KW * KH)) % C, f = e / (KW * KH * C);
    const int r1 = min(R, (chunk + 1) * WGRAD_CHUNK);
    real acc = 0;
    for (int r = chunk * WGRAD_CHUNK; r < r1; ++r)
        acc += wgrad_term(x, dy, r, f, c, p, q, C, H, W, F, OH, OW);
    atomicAdd(&dw[e], acc);
}

// --------------------------------------------------------------------------------- reduce
// grid (ceil(E / (256/T))), block (T, 256/T), T = blockDim.x a power of two <= 32.
// Thread (tx, ty) of block b works on element e = b*blockDim.y + ty, summing positions
// r = tx, tx+T, ...; then the T partial sums of e are added pairwise in a fixed tree
// (T/2, T/4, ..., 1 apart) and thread tx = 0 writes dw[e].
extern "C" __global__ void conv2d_backward_weight_reduce(real* __restrict__ dw,
                                                         const real* __restrict__ x,
                                                         const real* __restrict__ dy, int N,
                                                         int C, int H, int W, int F, int OH,
                                                         int OW) {
    __shared__ real part[WGRAD_RED_BLOCK];
    const int E = F * C * (H - OH + 1) * (W - OW + 1);
    const int T = blockDim.x, tx = threadIdx.x, ty = threadIdx.y;
    const int e = blockIdx.x * blockDim.y + ty;
    real* mine = part + ty * T;
    mine[tx] = wgrad_partial(x, dy, e, tx, T, N, C, H, W, F, OH, OW);
    __syncthreads();
    for (int stride = T / 2; stride > 0; stride >>= 1) {
        if (tx < stride) mine[tx] += mine[tx + stride];
        __syncthreads();   // every thread reaches it: the loop bound is uniform
    }
    if (tx == 0 && e < E) dw[e] = mine[0];
}

// ----------------------------------------------------------------------------------- warp
// Launched exactly like reduce: grid (ceil(E / (256/T))), block (T, 256/T), T = blockDim.x a
// power of two <= 32 (about R/8). Thread (tx, ty) of block b works on element
// e = b*blockDim.y + ty and sums positions r = tx, tx+T, ..., as in reduce.
// Thread map in a warp: lane = (ty*T + tx) % 32, so the T threads of one element are T
// consecutive lanes of ONE warp (T divides 32) and a warp holds 32/T elements.
// The T partial sums are then added in registers: __shfl_down_sync(FULL_MASK, acc, off, T) for
// off = T/2, ..., 1 -- with width T every segment of T lanes (one element) shuffles on its
// own, lane tx gets acc of lane tx+off, and after log2(T) steps lane tx = 0 holds the sum,
// added in exactly reduce's tree order (so both versions give the same bits). All 32 lanes
// make every call (threads of a missing e >= E carry zeros): the full mask is honest.
// Why it is faster on a GPU: reduce writes the partials to shared memory and walks its tree
// with log2(T)+1 __syncthreads() -- each one stalls all 8 warps of the block until the slowest
// arrives -- plus a shared load and store per step; here each step is one shuffle instruction
// between registers and no warp waits for another. Limits: T <= 32 (an element's partial
// sums must sit in one warp), warpSize 32, 256 threads per block (a multiple of 32). The
// serial part (R/T terms per thread, the global loads) is the same as reduce's; the shuffles
// pay most when R is small (deep layers), where the tree is a large share of the work.
extern "C" __global__ void conv2d_backward_weight_warp(real* __restrict__ dw,
                                                       const real* __restrict__ x,
                                                       const real* __restrict__ dy, int N,
                                                       int C, int H, int W, int F, int OH,
                                                       int OW) {
    const int E = F * C * (H - OH + 1) * (W - OW + 1);
    const int T = blockDim.x, tx = threadIdx.x, ty = threadIdx.y;
    const int e = blockIdx.x * blockDim.y + ty;
    real acc = wgrad_partial(x, dy, e, tx, T, N, C, H, W, F, OH, OW);
    for (int off = T / 2; off > 0; off >>= 1)       // uniform: every lane makes every call
        acc += __shfl_down_sync(FULL_MASK, acc, off, T);
    if (tx == 0 && e < E) dw[e] = acc;
}

// -------------------------------------------------------------------------- implicit_gemm
// The 64x64x8 GEMM tile of the weight gradient, shared by implicit_gemm (all R positions)
// and splitk (one slice of them per grid z): block (bf, bk) = (blockIdx.x, blockIdx.y) sums
// positions r = (n, i, j) in [r_lo, r_hi) into its 64x64 tile of out, laid out like dw
// (F, C*KH*KW). A[f, r] = dy[n,f,i,j], B[r, k] = x[n,c,i+p,j+q]. Thread t, tx = t % 16,
// ty = t / 16, computes the 4x4 outputs
//   f = bf*64 + ty + 16*s,  k = bk*64 + tx + 16*r  (k = (c, p, q): consecutive tx write
//   consecutive out addresses).
// Positions at or past r_hi load zeros. Every thread of the block must call it (barriers).
__device__ __forceinline__ void backward_weight_gemm_tile(real* __restrict__ out,
                                                          const real* __restrict__ x,
                                                          const real* __restrict__ dy, int N,
                                                          int C, int H, int W, int F, int OH,
                                                          int OW, int r_lo, int r_hi,
                                                          real As[GEMM_BK][GEMM_BM + GEMM_PAD],
                                                          real Bs[GEMM_BK][GEMM_BN]) {
    const int KH = H - OH + 1, KW = W - OW + 1, KK = KH * KW, OHW = OH * OW;
    const int KC = C * KK;
    const int t = threadIdx.x, tx = t % 16, ty = t / 16;
    const int f0 = blockIdx.x * GEMM_BM, k0c = blockIdx.y * GEMM_BN;

    // A loader: As[t%8][t/8 + 32u] = dy[n, f, s] -- 8 threads read 8 consecutive r of a row.
    const int a_r = t % GEMM_BK, a_f = t / GEMM_BK;
    // B loader: Bs[t/64 + 4u][t%64] = x[n, c, i+p, j+q] -- fixed k = (c, p, q) per thread.
    const int b_k = k0c + t % GEMM_BN, b_r = t / GEMM_BN;
    const bool b_ok = b_k < KC;
    int b_koff = 0;
    if (b_ok) {
        const int c = b_k / KK, pq = b_k % KK;
        b_koff = c * H * W + (pq / KW) * W + pq % KW;
    }

    real acc[4][4];   // [s: f][r: k]
    gemm_acc_zero(acc);

    for (int r0 = r_lo; r0 < r_hi; r0 += GEMM_BK) {
        for (int u = 0; u < 2; ++u) {
            const int ra = r0 + a_r, fa = f0 + a_f + 32 * u;
            real va = 0;
            if (ra < r_hi && fa < F) {
                const int n = ra / OHW, s = ra % OHW;
                va = dy[((size_t)n * F + fa) * OHW + s];
            }
            As[a_r][a_f + 32 * u] = va;
            const int rb = r0 + b_r + 4 * u;
            real vb = 0;
            if (rb < r_hi && b_ok) {
                const int n = rb / OHW, s = rb % OHW;
                vb = x[(size_t)n * C * H * W + (s / OW) * W + s % OW + b_koff];
            }
            Bs[b_r + 4 * u][t % GEMM_BN] = vb;
        }
        __syncthreads();
        gemm_micro_step(acc, As, Bs, ty, tx);   // acc[s][r] += As[.][f] * Bs[.][k]
        __syncthreads();
    }
    for (int s = 0; s < 4; ++s) {
        const int f = f0 + ty + 16 * s;
        if (f >= F) continue;
        for (int r = 0; r < 4; ++r) {
            const int k = k0c + tx + 16 * r;
            if (k < KC) out[(size_t)f * KC + k] = acc[s][r];
        }
    }
}

// grid (ceil(F / 64), ceil(C*KH*KW / 64)), block (256): the block walks all R positions.
extern "C" __global__ void conv2d_backward_weight_implicit_gemm(real* __restrict__ dw,
                                                                const real* __restrict__ x,
                                                                const real* __restrict__ dy,
                                                                int N, int C, int H, int W,
                                                                int F, int OH, int OW) {
    __shared__ real As[GEMM_BK][GEMM_BM + GEMM_PAD];   // [r][f]
    __shared__ real Bs[GEMM_BK][GEMM_BN];              // [r][k]
    backward_weight_gemm_tile(dw, x, dy, N, C, H, W, F, OH, OW, 0, N * OH * OW, As, Bs);
}

// ---------------------------------------------------------------------------------- splitk
// grid (ceil(F / 64), ceil(C*KH*KW / 64), S), block (256); S and chunk from
// kernels/launch_spec.py (conv_split_k over R = N*OH*OW in steps of 8).
// Block (bf, bk, z) computes implicit_gemm's tile over positions r in [z*chunk, (z+1)*chunk)
// and writes it to partial z of ws (S, F, C*KH*KW); splitk_sum.cu then adds the S partials
// of every dw element in a fixed order: deterministic (no atomics), unlike `atomic`.
// With S == 1 the launcher passes dw itself as ws and launches no sum.
// Why: dw is small (mnist-conv1: 100 x 25, 2 tiles; the Fig. 1 CAE: 20 x 49, 1 tile) while
// R is long (9,216 .. 99,000): implicit_gemm runs 1-120 blocks on a 132-SM GPU, each walking
// all of R; here S slices of R give at least 132 blocks, each 1/S of the walk.
// Cost: a workspace of S*F*C*KH*KW floats (S tiles per output tile, and S * tiles stays
// below 2 * (132 + tiles): a few MB) and a second launch that reads it once.
extern "C" __global__ void conv2d_backward_weight_splitk(real* __restrict__ ws,
                                                         const real* __restrict__ x,
                                                         const real* __restrict__ dy, int N,
                                                         int C, int H, int W, int F, int OH,
                                                         int OW, int chunk) {
    __shared__ real As[GEMM_BK][GEMM_BM + GEMM_PAD];
    __shared__ real Bs[GEMM_BK][GEMM_BN];
    const int z = blockIdx.z, R = N * OH * OW;
    const size_t plane = (size_t)F * C * (H - OH + 1) * (W - OW + 1);   // one partial dw
    backward_weight_gemm_tile(ws + z * plane, x, dy, N, C, H, W, F, OH, OW, z * chunk,
                              min(R, (z + 1) * chunk), As, Bs);
}

// ============================================================================ bias: naive
// grid (ceil(F / 256)), block (256). Thread f -> db[f].
extern "C" __global__ void conv2d_backward_bias_naive(real* __restrict__ db,
                                                      const real* __restrict__ dy, int N, int F,
                                                      int OH, int OW) {
    const int f = blockIdx.x * blockDim.x + threadIdx.x;
    if (f >= F) return;
    const int OHW = OH * OW;
    real acc = 0;
    for (int n = 0; n < N; ++n) {
        const real* d = dy + ((size_t)n * F + f) * OHW;
        for (int s = 0; s < OHW; ++s) acc += d[s];
    }
    db[f] = acc;
}

// =========================================================================== bias: reduce
// Shared by the bias versions reduce, warp and split:
// bias_partial: thread t's share of the sum of dy[:, f] over positions r in [r0, r1):
// r = r0 + t, r0 + t + 256, ... (consecutive threads read consecutive addresses of a plane).
__device__ __forceinline__ real bias_partial(const real* __restrict__ dy, int f, int t, int r0,
                                             int r1, int F, int OHW) {
    real acc = 0;
    for (int r = r0 + t; r < r1; r += BGRAD_THREADS) {
        const int n = r / OHW, s = r % OHW;
        acc += dy[((size_t)n * F + f) * OHW + s];
    }
    return acc;
}

// block_tree_sum: the sum of part[0..255], left in part[0] by a fixed tree that halves the
// partial sums 8 times (128, 64, ..., 1 apart). Every thread of the 256-thread block calls it
// after writing part[t]; it begins and ends with a barrier.
__device__ __forceinline__ void block_tree_sum(real* part, int t) {
    __syncthreads();
    for (int stride = BGRAD_THREADS / 2; stride > 0; stride >>= 1) {
        if (t < stride) part[t] += part[t + stride];
        __syncthreads();   // every thread reaches it: the loop bound is uniform
    }
}

// grid (F), block (256). Block f: thread t sums positions r = t, t+256, ..., then the fixed
// tree of block_tree_sum; thread 0 writes db[f].
extern "C" __global__ void conv2d_backward_bias_reduce(real* __restrict__ db,
                                                       const real* __restrict__ dy, int N,
                                                       int F, int OH, int OW) {
    __shared__ real part[BGRAD_THREADS];
    const int f = blockIdx.x, t = threadIdx.x, OHW = OH * OW;
    part[t] = bias_partial(dy, f, t, 0, N * OHW, F, OHW);
    block_tree_sum(part, t);
    if (t == 0) db[f] = part[0];
}

// ============================================================================= bias: warp
// grid (F), block (256). Block f: thread t sums positions r = t, t+256, ... as in reduce.
// Thread map: warp w = t / 32 (8 warps), lane = t % 32. Each warp adds its 32 partial sums in
// registers with 5 shuffles (16, 8, 4, 2, 1 lanes apart); lane 0 of warp w stores the warp's
// sum in warp_sum[w]; one __syncthreads(); then warp 0 adds the 8 warp sums with 3 more
// shuffles and thread 0 writes db[f]. Deterministic (a fixed tree, though not reduce's).
// Why it is faster on a GPU: reduce's shared-memory tree takes 8 steps with a __syncthreads()
// each (9 barriers, ~500 shared loads/stores per block); here 1 barrier, 8 shared stores and
// 8 loads. The op is bound by reading dy (N*F*OH*OW floats once), so this trims the tail of
// each block -- it matters when N*OH*OW is small. Limits: blockDim.x = 256, a multiple of 32;
// warpSize 32; the second stage assumes at most 32 warps (true up to 1024 threads).
__device__ __forceinline__ real warp_sum_down(real v) {
    for (int off = 16; off > 0; off >>= 1) v += __shfl_down_sync(FULL_MASK, v, off);
    return v;   // lane 0: the sum of the warp's 32 values
}

extern "C" __global__ void conv2d_backward_bias_warp(real* __restrict__ db,
                                                     const real* __restrict__ dy, int N, int F,
                                                     int OH, int OW) {
    __shared__ real warp_sum[BGRAD_THREADS / 32];
    const int f = blockIdx.x, t = threadIdx.x, lane = t % 32, warp = t / 32, OHW = OH * OW;
    real acc = warp_sum_down(bias_partial(dy, f, t, 0, N * OHW, F, OHW));
    if (lane == 0) warp_sum[warp] = acc;
    __syncthreads();
    if (warp == 0) {                     // uniform over the warp: all 32 lanes shuffle below
        acc = lane < BGRAD_THREADS / 32 ? warp_sum[lane] : (real)0;
        for (int off = BGRAD_THREADS / 64; off > 0; off >>= 1)
            acc += __shfl_down_sync(FULL_MASK, acc, off);
        if (lane == 0) db[f] = acc;
    }
}

// ============================================================================ bias: split
// grid (F, S), block (256); ws (F, S) floats; count (F,) unsigned ints, zero before the
// launch. S and chunk from kernels/launch_spec.py (conv_split_k over R = N*OH*OW in steps of
// 256: at least 132 blocks in all).
// Block (f, z) sums positions r in [z*chunk, (z+1)*chunk) as reduce does (thread t takes
// r = z*chunk + t, + 256, ...; a fixed tree) and thread 0 stores the partial in ws[f, z].
// Then the blocks of one f elect the last to finish: thread 0 makes its partial visible to
// the whole GPU (__threadfence) and takes a ticket (atomicAdd on count[f]); the block that
// draws ticket S-1 knows every partial of f is written, adds ws[f, 0..S-1] in a fixed order
// (thread t takes s = t, t+256, ..., then the tree) and writes db[f]. The order of the
// additions never depends on which block came last: deterministic, in ONE launch.
// Why one launch and not partials + a second reduce kernel: a second launch would have one
// block per f at most (the Fig. 1 CAE has F = 20), so it could not fill the GPU; the
// summing is done by whichever blocks finish last instead (the "threadfence reduction" of
// the CUDA samples). The last block reads the partials with atomicAdd(p, 0) -- an atomic is
// done in L2, so it cannot see a stale copy of another SM's write in this SM's L1 cache.
// Limits: S <= 65535 (gridDim.y); the count must be zero at the launch (it is not reset).
extern "C" __global__ void conv2d_backward_bias_split(real* __restrict__ db,
                                                      const real* __restrict__ dy,
                                                      real* __restrict__ ws,
                                                      unsigned* __restrict__ count, int N,
                                                      int F, int OH, int OW, int chunk) {
    __shared__ real part[BGRAD_THREADS];
    __shared__ int is_last;
    const int f = blockIdx.x, z = blockIdx.y, S = gridDim.y, t = threadIdx.x, OHW = OH * OW;
    part[t] = bias_partial(dy, f, t, z * chunk, min(N * OHW, (z + 1) * chunk), F, OHW);
    block_tree_sum(part, t);
    if (t == 0) {
        ws[(size_t)f * S + z] = part[0];
        __threadfence();                        // the partial is visible before the ticket
        is_last = atomicAdd(&count[f], 1u) == (unsigned)(S - 1);
    }
    __syncthreads();
    if (!is_last) return;                       // uniform over the block
    real acc = 0;
    for (int s = t; s < S; s += BGRAD_THREADS) acc += atomicAdd(&ws[(size_t)f * S + s], (real)0);
    part[t] = acc;
    block_tree_sum(part, t);
    if (t == 0) db[f] = part[0];
}
