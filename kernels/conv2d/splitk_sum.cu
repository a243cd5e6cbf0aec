// splitk_sum.cu -- the second pass of every split-K convolution kernel (CUDA C, float32).
//
// Computes   out[e] = sum_{s < S} ws[s*E + e]      ws (S, E) -> out (E,)
// where ws holds the S partial results of a split-K launch (conv2d_forward_splitk,
// conv2d_backward_input_splitk, conv2d_backward_weight_splitk): partial s is the GEMM over
// the s-th slice of K, written by the blocks of grid z = s. The S slices and their length
// come from one rule, kernels/launch_spec.py (conv_split_k); launch code: kernels/cupy_backend.py.
//
// Plan: T threads per output element (T = a power of two <= 32, about S/4, from
// launch_spec.splitk_sum_threads), 128/T elements per 128-thread block. Thread (tx, ty) of
// block b works on e = b*(128/T) + ty and sums partials s = tx, tx+T, ... in order; then the
// T sums of e are added pairwise in a fixed shared-memory tree (T/2, ..., 1 apart) and
// thread tx = 0 writes out[e]. Every output is summed in one fixed order: the same bits on
// every run (no atomics), and with T > 1 a large S (the weight gradient's, up to 2*132)
// still gives many blocks. Reads of ws: consecutive ty read consecutive e, so a warp reads
// one run of 32 consecutive floats when T = 1, and T runs of 32/T (one per s) when T > 1.
// Limits: S*E < 2^31 (int indexing, checked by the launcher); blockDim.x*blockDim.y = 128.

typedef float real;

#define SPLITK_RED_THREADS 128   // threads per block (T per element, 128/T elements)

// grid (ceil(E / (128/T))), block (T, 128/T).
extern "C" __global__ void splitk_sum(real* __restrict__ out, const real* __restrict__ ws,
                                      int S, int E) {
    __shared__ real part[SPLITK_RED_THREADS];
    const int T = blockDim.x, tx = threadIdx.x, ty = threadIdx.y;
    const int e = blockIdx.x * blockDim.y + ty;
    real acc = 0;
    if (e < E)
        for (int s = tx; s < S; s += T) acc += ws[(size_t)s * E + e];
    real* mine = part + ty * T;
    mine[tx] = acc;
    __syncthreads();
    for (int stride = T / 2; stride > 0; stride >>= 1) {
        if (tx < stride) mine[tx] += mine[tx + stride];
        __syncthreads();   // every thread reaches it: the loop bound is uniform
    }
    if (tx == 0 && e < E) out[e] = mine[0];
}
