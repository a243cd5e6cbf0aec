"""2-D convolution (stride 1, no padding): forward, and gradients w.r.t. input, weights, bias.

Files of this op, side by side:

* ``numpy_ops.py``  -- the NumPy versions: ``naive`` (explicit loops, the definition the
  tests use), ``im2col`` (a sliding-window view + one BLAS GEMM per op) and ``fast`` (the
  same GEMMs in the layouts BLAS wants, in cache-sized batch tasks on all cores; the CPU
  production path);
* ``*.cu``          -- the CUDA C versions, launched through CuPy or the CPU emulator;
* ``numba_kernels.py`` -- the numba-cuda translations of the CUDA C versions.

Launch constants and rules shared by both GPU dialects: ``kernels/launch_spec.py``.
"""
