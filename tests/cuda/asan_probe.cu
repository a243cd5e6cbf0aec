// Test-only kernels for tests/test_cuda_emulator.py: the AddressSanitizer mode of the CPU
// emulator must flag an out-of-bounds access -- of global memory, and of a static __shared__
// array (each is an exact-size allocation of the emulator) -- and stay quiet on correct
// kernels (with and without __syncthreads, i.e. on the fast path and on fibers).

// Reads one element past the end of x when n == size(x): the classic missing bounds check.
extern "C" __global__ void copy_oob(float* y, const float* x, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i <= n) y[i % n] = x[i];   // BUG on purpose: i == n reads x[n]
}

extern "C" __global__ void copy_ok(float* y, const float* x, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) y[i] = x[i];
}

// Reverses each 64-element block through shared memory: needs the barrier, so runs on fibers.
extern "C" __global__ void reverse_ok(float* y, const float* x, int n) {
    __shared__ float s[64];
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    s[threadIdx.x] = i < n ? x[i] : 0.0f;
    __syncthreads();
    if (i < n) y[i] = s[blockDim.x - 1 - threadIdx.x];
}

// Reads one element past the end of a static shared array: the last thread reads s[64].
extern "C" __global__ void shared_oob(float* y, const float* x, int n) {
    __shared__ float s[64];
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    s[threadIdx.x] = i < n ? x[i] : 0.0f;
    __syncthreads();
    if (i < n) y[i] = s[threadIdx.x + 1];   // BUG on purpose: threadIdx.x == 63 reads s[64]
}
