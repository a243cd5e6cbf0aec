"""Max-pooling with switches, switch unpooling, and their backward passes.

Files of this op, side by side:

* ``numpy_ops.py``  -- the NumPy versions: ``naive`` (explicit loops, the definition the
  tests use), ``argmax`` (the windows copied out, ``argmax`` over each) and ``fast``
  (maxima over strided views, flat ``put``/``take``, batch tasks on all cores);
* ``*.cu``          -- the CUDA C versions, launched through CuPy or the CPU emulator:
  ``maxpool2d.cu`` (whose backward kernels are also ``unpool2d_forward``'s) and
  ``unpool2d.cu``;
* ``numba_kernels.py`` -- the numba-cuda translations of the CUDA C versions.

Launch constants and rules (block size, the pooling window rule) shared by both GPU
dialects: ``kernels/launch_spec.py``.
"""
