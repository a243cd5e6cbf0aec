// gemm_tile.cuh -- the pieces of the 64x64x8 implicit-GEMM tile that the three convolution
// GEMMs share: forward_gemm_tile (conv2d_forward.cu), backward_input_gemm_tile
// (conv2d_backward_input.cu) and backward_weight_gemm_tile (conv2d_backward_weight.cu).
//
// The plan of each of those tile functions (read it there, top to bottom):
//   1. loaders: which element of the A tile and of the B tile this thread stages, decoded
//      once (op-specific: the gathers are what makes each GEMM a convolution);
//   2. gemm_acc_zero(acc): the thread's 4x4 register block starts at zero;
//   3. for each step of GEMM_BK along K: every thread stores 2 elements of As and 2 of Bs,
//      __syncthreads(), gemm_micro_step(acc, As, Bs, ...) multiplies the two tiles into acc,
//      __syncthreads() (nobody overwrites a tile that another thread still reads);
//   4. epilogue: acc is stored into the op's output layout (op-specific).
// This header holds steps 2 and 3's multiply, the part that is the same in all three: the
// barriers stay in the tile functions, so every __syncthreads() is visible where it runs.
//
// Used by #include "gemm_tile.cuh" after the includer's `typedef float real;` and its
// #define GEMM_BK. nvcc finds the header next to the .cu file; the cupy backend (NVRTC) and
// the CPU emulator compile the text with this header inlined by kernels/cuda_source.py.

#ifndef SCAE_NP_GEMM_TILE_CUH
#define SCAE_NP_GEMM_TILE_CUH

#ifndef GEMM_BK
#error "gemm_tile.cuh: #define GEMM_BK (and typedef real) before including it"
#endif

// gemm_acc_zero: acc[i][j] = 0 for the thread's 4x4 register block (i, j = 0..3).
__device__ __forceinline__ void gemm_acc_zero(real acc[4][4]) {
    for (int i = 0; i < 4; ++i)
        for (int j = 0; j < 4; ++j) acc[i][j] = 0;
}

// gemm_micro_step: the 4x4 register block times one GEMM_BK slice of the shared tiles,
//   acc[i][j] += sum_{kk < GEMM_BK} As[kk][ta + 16*i] * Bs[kk][tb + 16*j]   (i, j = 0..3),
// kk in increasing order: each acc[i][j] adds its GEMM_BK products one kk after the other
// (the order of the 16 independent multiply-adds of one kk changes no result). Per kk the
// thread reads 4 values of A and 4 of B into registers and does 16 multiply-adds: each
// value read from shared memory feeds 4 of them. Thread t of a tile function passes t % 16
// and t / 16 as ta, tb (in the order its output layout wants). In a warp, t % 16 takes 16
// values and t / 16 two, so each kk reads 16 consecutive words of one tile row and 2 of the
// other, each word by 2 or 16 threads at once (a broadcast): no bank conflicts.
// LDA, LDB: the row lengths of the two tiles (GEMM_BM, or GEMM_BM + GEMM_PAD for a padded
// tile), deduced from the arguments. Call it between the two barriers of a K step.
template <int LDA, int LDB>
__device__ __forceinline__ void gemm_micro_step(real acc[4][4], const real (*As)[LDA],
                                                const real (*Bs)[LDB], int ta, int tb) {
    for (int kk = 0; kk < GEMM_BK; ++kk) {
        real a[4], bv[4];
        for (int i = 0; i < 4; ++i) a[i] = As[kk][ta + 16 * i];
        for (int j = 0; j < 4; ++j) bv[j] = Bs[kk][tb + 16 * j];
        for (int j = 0; j < 4; ++j)   // j outer: same sums, fewer registers on sm_75
            for (int i = 0; i < 4; ++i) acc[i][j] += a[i] * bv[j];
    }
}

#endif   // SCAE_NP_GEMM_TILE_CUH
