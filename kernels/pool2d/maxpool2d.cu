// maxpool2d.cu -- max-pooling that records switches, and its backward pass (CUDA C, float32).
//
// Forward:   y[n,c,i,j] = max over the k x k window (rows i*k .. i*k+k-1, cols j*k .. j*k+k-1)
//            switches[n,c,i,j] = h*W + v of that maximum (int32 flat index in its input plane,
//            PyTorch's return_indices); ties go to the FIRST maximum in row-major window order
//            (the scan only replaces on a value that beats the running maximum). NaN counts as
//            the largest value: a window holding a NaN pools to NaN, switch at its first NaN.
//            x (N,C,H,W) -> y, switches (N,C,H//k,W//k): non-overlapping windows, stride k,
//            remainder rows/cols dropped.
// Backward:  dx (N,C,H,W) = dy placed at the switches, zeros elsewhere. By the contract this
//            is also unpool2d_forward (y placed at its switches): the backward kernels below
//            serve both ops, there is no second copy in unpool2d.cu.
// Reference: kernels/pool2d/numpy_ops.py. Launch code: kernels/cupy_backend.py; block size
// and window rule: kernels/launch_spec.py (shared with the numba kernels).
//
// Versions (ladder order):
//   forward  naive   one thread per output (n,c,i,j) scans its k*k window: each x value is read
//                    by exactly one thread, so this is already one pass over x (memory-bound,
//                    nothing to tile).
//   backward naive   scatter: dx zeroed first (a memset), then one thread per dy value writes it
//                    to its switch. Windows never overlap, so no two threads hit one pixel: no
//                    atomics needed. Costs a memset plus scattered (uncoalesced) writes.
//   backward gather  one thread per input pixel (n,c,h,v): it reads the switch of the window
//                    containing it and writes dy there if the switch is itself, else 0
//                    (Caffe's pooling backward). Every dx element written exactly once, in
//                    order: coalesced, deterministic, no memset, no atomics.
//
// The backward pass is not told k (the contract passes only input_hw = (H, W)); every k that
// pools (H, W) to (OH, OW) lies in [kmin, kmax], computed on the host, so the gather thread
// checks the windows h/kmax .. h/kmin (one window in every normal case, kmin == kmax). Where
// no k pools (H, W) to (OH, OW) the launcher runs the scatter instead (same result).
// Gather assumes each switch lies in its own window, which holds for switches made by the
// forward pass; a switch outside the windows it scans is dropped (see the contract,
// kernels/contract.py, for every version's behaviour on illegal switches). Out-of-range
// switches (< 0 or >= H*W) are refused on the host where arrays are host arrays (emulator);
// on a GPU nothing checks them, so the scatter skips them rather than write out of bounds.

typedef float real;

// ------------------------------------------------------------------------- forward: naive
// grid (ceil(N*C*OH*OW / 256)), block (256). Thread idx -> y.flat[idx], switches.flat[idx].
extern "C" __global__ void maxpool2d_forward_naive(real* __restrict__ y, int* __restrict__ sw,
                                                   const real* __restrict__ x, int N, int C,
                                                   int H, int W, int K) {
    const int OH = H / K, OW = W / K;
    const int idx = blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= N * C * OH * OW) return;
    const int j = idx % OW, i = (idx / OW) % OH, plane = idx / (OW * OH);
    const real* xp = x + (size_t)plane * H * W;
    int arg = (i * K) * W + j * K;
    real best = xp[arg];
    for (int p = 0; p < K; ++p)
        for (int q = 0; q < K; ++q) {
            const int s = (i * K + p) * W + j * K + q;
            const real v = xp[s];
            // beats: strictly larger, or NaN over a number (v != v is isnan without <cmath>,
            // exact as long as nothing compiles with fast-math); the first maximum wins ties
            if (v > best || (v != v && best == best)) { best = v; arg = s; }
        }
    y[idx] = best;
    sw[idx] = arg;
}

// ------------------------------------------------------------------------ backward: naive
// dx must be zero before the launch. grid (ceil(N*C*OH*OW / 256)), block (256).
// Thread idx -> dy.flat[idx], written to dx[plane, switches.flat[idx]].
// Also unpool2d_forward naive: dx = x (N,C,H,W), dy = y (N,C,OH,OW).
extern "C" __global__ void maxpool2d_backward_naive(real* __restrict__ dx,
                                                    const real* __restrict__ dy,
                                                    const int* __restrict__ sw, int N, int C,
                                                    int H, int W, int OH, int OW) {
    const int idx = blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= N * C * OH * OW) return;
    const int plane = idx / (OH * OW);
    const int s = sw[idx];
    if (s < 0 || s >= H * W) return;           // unchecked on a GPU: skip, never write outside
    dx[(size_t)plane * H * W + s] = dy[idx];
}

// ----------------------------------------------------------------------- backward: gather
// grid (ceil(N*C*H*W / 256)), block (256). Thread idx -> dx.flat[idx] = dx[n,c,h,v].
// Also unpool2d_forward gather: dx = x (N,C,H,W), dy = y (N,C,OH,OW).
extern "C" __global__ void maxpool2d_backward_gather(real* __restrict__ dx,
                                                     const real* __restrict__ dy,
                                                     const int* __restrict__ sw, int N, int C,
                                                     int H, int W, int OH, int OW, int KMIN,
                                                     int KMAX) {
    const int idx = blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= N * C * H * W) return;
    const int v = idx % W, h = (idx / W) % H, plane = idx / (W * H);
    const int me = h * W + v;
    real val = 0;
    for (int i = h / KMAX; i <= min(h / KMIN, OH - 1); ++i)
        for (int j = v / KMAX; j <= min(v / KMIN, OW - 1); ++j) {
            const int o = (plane * OH + i) * OW + j;
            if (sw[o] == me) val = dy[o];
        }
    dx[idx] = val;
}
