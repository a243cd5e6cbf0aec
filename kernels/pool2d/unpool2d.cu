// unpool2d.cu -- switch unpooling (Zeiler-style) and its backward pass (CUDA C, float32).
//
// Forward:   x (N,C,H,W) = y (N,C,OH,OW) placed at its switches, zeros elsewhere: the
//            convolutional auto-encoder's decoder keeps only the maxima the encoder pooled.
//            By the contract this is exactly maxpool2d_backward, so its versions (naive: the
//            scatter, gather: one thread per output pixel) are maxpool2d.cu's backward
//            kernels, maxpool2d_backward_naive and maxpool2d_backward_gather: read them there.
// Backward:  dy[n,c,i,j] = dx[n,c].flat[switches[n,c,i,j]]  (a gather), this file's kernel.
// Switches are int32 flat in-plane indices h*W + v, as maxpool2d_forward returns them.
// Reference: kernels/pool2d/numpy_ops.py. Launch code: kernels/cupy_backend.py.
//
// Versions (ladder order):
//   backward naive   one thread per pooled position: one coalesced read of the switch, one
//                    gathered read of dx, one coalesced write. Nothing left to save.
//
// Out-of-range switches (unchecked on a GPU) are read as 0, never an access outside the plane.

typedef float real;

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
