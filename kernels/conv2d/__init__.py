"""2-D convolution (stride 1, no padding): forward, and gradients w.r.t. input, weights, bias.

Files of this op, side by side:

* ``numpy_ops.py``  -- the NumPy versions: ``naive`` (explicit loops, the definition the
  tests use) and ``fast`` (im2col + one BLAS GEMM per op; the CPU production path);
* ``*.cu``          -- the CUDA C versions, launched through CuPy or the CPU emulator;
* ``numba_kernels.py`` -- the numba-cuda translations of the CUDA C versions.
"""
