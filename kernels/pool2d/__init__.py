"""Max-pooling with switches, switch unpooling, and their backward passes.

Files of this op, side by side:

* ``numpy_ops.py``  -- the NumPy versions: ``naive`` (explicit loops, the definition the
  tests use) and ``fast`` (reshape/argmax and flat gathers/scatters);
* ``*.cu``          -- the CUDA C versions, launched through CuPy or the CPU emulator;
* ``numba_kernels.py`` -- the numba-cuda translations of the CUDA C versions.
"""
