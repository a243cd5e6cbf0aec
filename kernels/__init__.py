"""scae-np kernels: 2-D convolution, max-pooling with switches and switch unpooling, with
all their backward passes, hand-written three ways behind one contract.

    >>> import numpy as np, kernels
    >>> be = kernels.get_backend("numpy")          # or "cupy", "numba" (emulate=True: no GPU)
    >>> x = np.random.rand(2, 1, 28, 28).astype(np.float32)
    >>> w = np.random.rand(20, 1, 7, 7).astype(np.float32)
    >>> h = be.conv2d_forward(x, w, np.zeros(20, np.float32))
    >>> p, switches = be.maxpool2d_forward(h, 2)
    >>> h.shape, p.shape, switches.dtype
    ((2, 20, 22, 22), (2, 20, 11, 11), dtype('int32'))

The contract is in :mod:`kernels.contract` and ``kernels/README.md``.
"""
from .backend import BACKENDS, Backend, BackendUnavailableError, get_backend, unavailable_reason
from .contract import OPS

__all__ = ["BACKENDS", "Backend", "BackendUnavailableError", "OPS", "get_backend",
           "unavailable_reason"]
