// Deliberately broken kernels (and their correct twins) for tests/test_cuda_emulator.py: each
// check of the CPU emulator (kernels/emulator/README.md) must catch its bug here, and stay
// quiet on the twin. Every kernel is real CUDA C: tests/test_cuda_compile.py compiles this file
// with nvcc. The bugs are the classic ones: on a GPU most of them give right answers on most
// runs, which is why they need a checker.
//
// Launch shapes used by the tests: 1-D blocks of 64 threads (2 warps) unless noted.

#define FULL_MASK 0xffffffffu

// ---------------------------------------------------------------- race: missing barrier
// Each round, every thread reads its right neighbour's value (the last thread its own) and
// writes its own slot for the next round. Without the second __syncthreads(), thread t can
// overwrite s[t] before thread t-1 has read it (a write-after-read race): in index order the
// emulator happens to run t-1 first and the answer looks right; in reverse order it is wrong.
// One body for the broken kernel and its twin: `second_barrier` is what the broken one lacks
// (uniform over the block, so the conditional barrier is legal).
__device__ float shift_three_rounds(float* s, float v, int t, int n, bool second_barrier) {
    for (int round = 0; round < 3; ++round) {
        s[t] = v;
        __syncthreads();
        v = s[t + 1 < n ? t + 1 : t];
        if (second_barrier) __syncthreads();
    }
    return v;
}

extern "C" __global__ void shift_missing_sync(float* y, const float* x) {
    __shared__ float s[64];
    const int t = threadIdx.x, base = blockIdx.x * blockDim.x;
    // BUG: without the second barrier the next round's s[t] = v may overwrite a value that
    // thread t-1 has not read yet.
    y[base + t] = shift_three_rounds(s, x[base + t], t, blockDim.x, false);
}

extern "C" __global__ void shift_ok(float* y, const float* x) {
    __shared__ float s[64];
    const int t = threadIdx.x, base = blockIdx.x * blockDim.x;
    y[base + t] = shift_three_rounds(s, x[base + t], t, blockDim.x, true);
}

// ---------------------------------------------------------------- race: no barrier at all
// Reads a neighbour's shared slot without any barrier: the fast path (no fibers) must be
// reordered by the race check too.
extern "C" __global__ void neighbour_no_sync(float* y, const float* x) {
    __shared__ float s[64];
    const int t = threadIdx.x, base = blockIdx.x * blockDim.x;
    s[t] = x[base + t];
    y[base + t] = s[63 - t];       // BUG: nothing orders the write of s[63-t] before this read
}

// ---------------------------------------------------------------- race: two writers
// Every thread of a block writes its index to the same element: the value left depends on
// which thread writes last (the race check sees a different winner in another order).
extern "C" __global__ void last_writer_wins(int* y) {
    y[blockIdx.x] = threadIdx.x;   // BUG: 64 threads write one element without an atomic
}

// ---------------------------------------------------------------- unwritten shared memory
// A 3-point stencil that loads only the tile, not its halo: the last thread reads s[t + 1]
// past what was loaded. On a GPU it reads leftovers (often the right value from the previous
// block on the same SM, or zeros); in the emulator shared memory starts as NaN in every block.
extern "C" __global__ void stencil_missing_halo(float* y, const float* x, int n) {
    __shared__ float s[65];
    const int t = threadIdx.x, i = blockIdx.x * blockDim.x + t;
    s[t] = i < n ? x[i] : 0.0f;
    // BUG: s[64] (the halo, x[i + 1] of the last thread) is never loaded
    __syncthreads();
    if (i < n) y[i] = s[t] + s[t + 1];
}

extern "C" __global__ void stencil_ok(float* y, const float* x, int n) {
    __shared__ float s[65];
    const int t = threadIdx.x, i = blockIdx.x * blockDim.x + t;
    s[t] = i < n ? x[i] : 0.0f;
    if (t == blockDim.x - 1) s[t + 1] = i + 1 < n ? x[i + 1] : 0.0f;
    __syncthreads();
    if (i < n) y[i] = s[t] + s[t + 1];
}

// Only block 0 fills the shared array; the other blocks read it: on a GPU another block's
// shared memory is never visible (each block gets its own).
extern "C" __global__ void shared_from_another_block(float* y) {
    __shared__ float s[64];
    if (blockIdx.x == 0) s[threadIdx.x] = 1.0f;   // BUG: blocks != 0 never write s
    __syncthreads();
    y[blockIdx.x * blockDim.x + threadIdx.x] = s[threadIdx.x];
}

// The same bug with dynamic shared memory (extern __shared__), poisoned per block too.
extern "C" __global__ void dynamic_from_another_block(float* y) {
    extern __shared__ float d[];
    if (blockIdx.x == 0) d[threadIdx.x] = 1.0f;   // BUG: blocks != 0 never write d
    __syncthreads();
    y[blockIdx.x * blockDim.x + threadIdx.x] = d[threadIdx.x];
}

// ---------------------------------------------------------------- divergent barriers
// The early return that every 1-D kernel has -- before a barrier: threads past n leave while
// the others wait at __syncthreads() (undefined; hangs on some GPUs, "works" on others).
extern "C" __global__ void early_return_then_sync(float* y, const float* x, int n) {
    __shared__ float s[64];
    const int t = threadIdx.x, i = blockIdx.x * blockDim.x + t;
    if (i >= n) return;            // BUG: returns before the barrier below
    s[t] = x[i];
    __syncthreads();
    y[i] = s[t] + s[t > 0 ? t - 1 : 0];
}

extern "C" __global__ void guarded_sync_ok(float* y, const float* x, int n) {
    __shared__ float s[64];
    const int t = threadIdx.x, i = blockIdx.x * blockDim.x + t;
    s[t] = i < n ? x[i] : 0.0f;    // every thread stays to the barrier
    __syncthreads();
    if (i < n) y[i] = s[t] + s[t > 0 ? t - 1 : 0];
}

// Two branches, each with its own barrier: the two halves of the block wait at different
// __syncthreads() calls.
extern "C" __global__ void barrier_per_branch(float* y) {
    __shared__ float s[64];
    const int t = threadIdx.x;
    if (t < 32) {
        s[t] = 1.0f;
        __syncthreads();           // BUG: the other half waits at the other barrier
    } else {
        s[t] = 2.0f;
        __syncthreads();
    }
    y[t] = s[63 - t];
}

// A barrier inside a loop whose trip count differs between threads.
extern "C" __global__ void loop_count_differs(float* y) {
    __shared__ float s[64];
    const int t = threadIdx.x;
    s[t] = 0.0f;
    for (int k = 0; k < 1 + t % 2; ++k) {   // BUG: odd threads pass one more barrier
        __syncthreads();
        s[t] += 1.0f;
    }
    y[t] = s[t];
}

// ---------------------------------------------------------------- warp primitives
// Warp sum with shuffles after an early return: lanes past n have exited, but the full mask
// names them (their "values" would be garbage on a GPU).
extern "C" __global__ void warp_sum_after_return(float* y, const float* x, int n) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;            // BUG: the exited lanes are still in FULL_MASK below
    float v = x[i];
    for (int off = 16; off > 0; off >>= 1) v += __shfl_down_sync(FULL_MASK, v, off);
    if (threadIdx.x % 32 == 0) y[i / 32] = v;
}

extern "C" __global__ void warp_sum_ok(float* y, const float* x, int n) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    float v = i < n ? x[i] : 0.0f; // every lane stays and shuffles; lanes past n add zeros
    for (int off = 16; off > 0; off >>= 1) v += __shfl_down_sync(FULL_MASK, v, off);
    if (threadIdx.x % 32 == 0 && i < n) y[i / 32] = v;
}

// A half-warp reduction whose mask names the lower half only, called by the whole warp: the
// upper 16 lanes call it with a mask that does not contain them.
extern "C" __global__ void half_warp_wrong_mask(float* y, const float* x) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    float v = x[i];
    for (int off = 8; off > 0; off >>= 1)
        v += __shfl_down_sync(0x0000ffffu, v, off, 16);   // BUG: lanes 16..31 call it too
    if (threadIdx.x % 16 == 0) y[i / 16] = v;
}

// A shift inside the lower half-warp, written with the default width 32: lanes 12..15 read
// lanes 16..19, which are outside the mask (undefined on a GPU: NaN in the emulator). Width 16
// would give them their own value instead.
extern "C" __global__ void shuffle_reads_outside_mask(float* y, const float* x) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x, lane = threadIdx.x % 32;
    if (lane < 16) y[i] = __shfl_down_sync(0x0000ffffu, x[i], 4);   // BUG: needs width 16
}

extern "C" __global__ void half_warp_ok(float* y, const float* x) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    float v = x[i];
    const unsigned mask = threadIdx.x % 32 < 16 ? 0x0000ffffu : 0xffff0000u;   // own half
    for (int off = 8; off > 0; off >>= 1) v += __shfl_down_sync(mask, v, off, 16);
    if (threadIdx.x % 16 == 0) y[i / 16] = v;
}

// Two halves of a warp at two different shuffles, each with the full mask.
extern "C" __global__ void warp_split_between_calls(float* y, const float* x) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    float v = x[i];
    if (threadIdx.x % 32 < 16) v = __shfl_xor_sync(FULL_MASK, v, 1);   // BUG: divergent
    else v = __shfl_down_sync(FULL_MASK, v, 1);
    y[i] = v;
}

// A warp-synchronous reduction without __syncwarp(): lanes read shared slots that other lanes
// of the warp write in the same step -- "safe" on pre-Volta GPUs that ran warps in lockstep,
// a race since independent thread scheduling (sm_70).
extern "C" __global__ void warp_synchronous_no_syncwarp(float* y, const float* x) {
    __shared__ float s[64];
    const int t = threadIdx.x, lane = t % 32;
    s[t] = x[blockIdx.x * blockDim.x + t];
    __syncwarp();
    for (int off = 16; off > 0; off >>= 1) {
        if (lane < off) s[t] += s[t + off];   // BUG: no __syncwarp() between the steps
    }
    if (lane == 0) y[blockIdx.x * 2 + t / 32] = s[t];
}

extern "C" __global__ void warp_synchronous_ok(float* y, const float* x) {
    __shared__ float s[64];
    const int t = threadIdx.x, lane = t % 32;
    s[t] = x[blockIdx.x * blockDim.x + t];
    __syncwarp();
    for (int off = 16; off > 0; off >>= 1) {
        const float other = lane < off ? s[t + off] : 0.0f;
        __syncwarp();                          // everyone has read before anyone writes
        if (lane < off) s[t] += other;
        __syncwarp();                          // everyone has written before the next read
    }
    if (lane == 0) y[blockIdx.x * 2 + t / 32] = s[t];
}

// A block of 48 threads: the second warp has 16 lanes, but the full mask names 32.
extern "C" __global__ void full_mask_partial_warp(float* y, const float* x) {
    const int t = threadIdx.x;
    y[t] = __shfl_xor_sync(FULL_MASK, x[t], 1);   // BUG when blockDim.x % 32 != 0
}
