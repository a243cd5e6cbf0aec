// unpool2d.cu -- switch unpooling (Zeiler-style) and its backward pass (CUDA C, float32).
//
// Forward:   x (N,C,H,W) = y (N,C,OH,OW) placed at its switches, zeros elsewhere: the
//            convolutional auto-encoder's decoder keeps only the maxima the encoder pooled.
//            By the contract this is exactly maxpool2d_backward (see maxpool2d.cu).
// Backward:  dy[n,c,i,j] = dx[n,c].flat[switches[n,c,i,j]]  (a gather).
// Switches are int32 flat in-plane indices h*W + v, as maxpool2d_forward returns them.
// Reference: kernels/pool2d/numpy_ops.py. Launch code: kernels/cupy_backend.py.
//
// Versions (ladder order; each one line):
//   forward  naive   scatter: x zeroed first (a memset), one thread per y value writes it to its
//                    switch; windows never overlap, so no atomics.
//   forward  gather  one thread per output pixel (n,c,h,v): reads the switch of the window that
//                    contains it, writes y there if the switch is itself, else 0. Every x element
//                    written once, coalesced, no memset, no atomics, deterministic.
//   backward naive   one thread per pooled position: one coalesced read of the switch, one
//                    gathered read of dx, one coalesced write. Nothing left to save.
//
// As in maxpool2d.cu, the window size k is not passed; [KMIN, KMAX] brackets every k that
// pools (H, W) to (OH, OW), and the gather assumes each switch lies in its own window.
// Out-of-range switches (unchecked on a GPU) are skipped by the scatter and read as 0 by the
// backward gather, never an access outside the plane.

typedef float real;

// ------------------------------------------------------------------------- forward: naive
// x must be zero before the launch. grid (ceil(N*C*OH*OW / 256)), block (256).
// Thread idx -> y.flat[idx], written to x[plane, switches.flat[idx]].
extern "C" __global__ void unpool2d_forward_naive(real* __restrict__ x, const real* __restrict__ y,
                                                  const int* __restrict__ sw, int N, int C,
                                                  int H, int W, int OH, int OW) {
    const int idx = blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= N * C * OH * OW) return;
    const int plane = idx / (OH * OW);
    const int s = sw[idx];
    if (s < 0 || s >= H * W) return;           // unchecked on a GPU: skip, never write outside
    x[(size_t)plane * H * W + s] = y[idx];
}

// ------------------------------------------------------------------------ forward: gather
// grid (ceil(N*C*H*W / 256)), block (256). Thread idx -> x.flat[idx] = x[n,c,h,v].
extern "C" __global__ void unpool2d_forward_gather(real* __restrict__ x, const real* __restrict__ y,
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
            if (sw[o] == me) val = y[o];
        }
    x[idx] = val;
}

// ------------------------------------------------------------------------ backward: naive
// grid (ceil(N*C*OH*OW / 256)), block (256). Thread idx -> dy.flat[idx].
extern "C" __global__ void unpool2d_backward_naive(real* __restrict__ dy,
                                                   const real* __restrict__ dx,
                                                   const int* __restrict__ sw, int N, int C,
                                                   int H, int W, int OH, int OW) {
    const int idx = blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= N * C * OH * OW) return;
    const int plane = idx / (OH * OW);
    const int s = sw[idx];
    dy[idx] = (s < 0 || s >= H * W) ? real(0) : dx[(size_t)plane * H * W + s];
}
