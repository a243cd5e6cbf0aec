"""The ``numpy`` backend: the CPU reference and the CPU production path.

Versions per op: ``naive`` (explicit loops; the definition used by the tests), then the
first vectorised rung (``im2col`` for convolutions, ``argmax`` for pooling), then ``fast``
(the default: cache-sized batch tasks on all cores, layouts chosen for BLAS; see
``kernels/numpy_threads.py``). Computes in float32 or float64 (float64 for gradient checks).
The op code lives beside each op's other backends: ``kernels/conv2d/numpy_ops.py`` and
``kernels/pool2d/numpy_ops.py``.
"""
from __future__ import annotations

import numpy as np

from . import numpy_threads
from .backend import Backend
from .conv2d import numpy_ops as conv_ops
from .pool2d import numpy_ops as pool_ops


class NumpyBackend(Backend):
    name = "numpy"
    xp = np
    array_types = (np.ndarray,)
    move_hint = "convert it with numpy.asarray(...) (or backend.to_host(...) for a GPU array)"

    def __init__(self):
        super().__init__()
        for table in (conv_ops.VERSIONS, pool_ops.VERSIONS):
            for op, versions in table.items():
                self._versions[op] = dict(versions)
                self._defaults[op] = "fast"

    def to_device(self, a, dtype=None):
        return np.ascontiguousarray(a, dtype=dtype)

    def matmul(self, a, b):
        return numpy_threads.matmul(a, b)
