"""A pretend GPU backend for CPU tests: counts every copy between "device" and host.

:class:`FakeDevice` wraps the numpy backend. Its arrays are :class:`DeviceArray` (a NumPy
subclass) and its ``xp`` is a NumPy proxy that is *not* the ``numpy`` module, so code that
asks "do I compute on the host?" (``backend.xp is numpy``) takes its device path. Every way a
value can leave the pretend device is counted as a device->host transfer:

* ``backend.to_host(a)`` (CuPy's ``asnumpy``);
* reading a DeviceArray as a Python value: ``float(a)``, ``int(a)``, ``bool(a)``,
  ``a.item()``, ``a.tolist()``, ``f"{a:.4f}"``, ``str(a)`` -- on CuPy each of these is an
  implicit synchronising copy.

Host->device uploads are counted too: ``backend.to_device(host_array)`` and ``xp.asarray``/
``xp.array`` of a host array. The eight ops run the numpy backend's kernels on the
underlying host arrays and hand back DeviceArrays.
"""
from __future__ import annotations

import types

import numpy as np

from kernels import get_backend
from kernels.contract import OPS


class Counts:
    def __init__(self):
        self.reads = 0        # device -> host
        self.uploads = 0      # host -> device

    def reset(self):
        self.reads = self.uploads = 0


COUNTS = Counts()


def _read(method):
    def wrapped(self, *a, **k):
        COUNTS.reads += 1
        return getattr(np.ndarray, method)(self.view(np.ndarray), *a, **k)
    wrapped.__name__ = method
    return wrapped


class DeviceArray(np.ndarray):
    """An ndarray that lives on the pretend device: reading it as a host value is counted."""


for _m in ("__float__", "__int__", "__bool__", "__index__", "__complex__", "item", "tolist",
           "__format__", "__str__", "__repr__"):
    setattr(DeviceArray, _m, _read(_m))


def on_device(a):
    """``a`` (an ndarray result) as a DeviceArray view; anything else unchanged."""
    if isinstance(a, np.ndarray) and not isinstance(a, DeviceArray):
        return a.view(DeviceArray)
    if isinstance(a, tuple):
        return tuple(on_device(v) for v in a)
    return a


def _host(a):
    return a.view(np.ndarray) if isinstance(a, DeviceArray) else a


class _Proxy:
    """NumPy (or one of its submodules / a Generator) whose function results are
    DeviceArrays; ``asarray``/``array`` of a host array count as uploads."""

    def __init__(self, target):
        self._t = target

    def __getattr__(self, name):
        v = getattr(self._t, name)
        if isinstance(v, types.ModuleType):
            return _Proxy(v)
        if isinstance(v, (types.FunctionType, types.BuiltinFunctionType, types.MethodType)):
            def call(*a, **k):
                if name in ("asarray", "array", "ascontiguousarray") and a and not isinstance(
                        a[0], DeviceArray):
                    COUNTS.uploads += 1
                out = v(*a, **k)
                if isinstance(out, np.random.Generator):
                    return _Proxy(out)
                return on_device(out)
            return call
        return v


class FakeDevice:
    """The numpy backend's kernels behind a pretend device boundary (module docstring)."""

    name = "fakedevice"
    emulated = True
    counts = COUNTS

    def __init__(self):
        self.inner = get_backend("numpy")
        self.xp = _Proxy(np)
        self.array_types = (np.ndarray,)

    def to_device(self, a, dtype=None):
        if not isinstance(a, DeviceArray):
            COUNTS.uploads += 1
        return np.array(_host(a), dtype=dtype, order="C").view(DeviceArray)

    def to_host(self, a):
        COUNTS.reads += 1
        return np.array(_host(a))

    def synchronize(self):
        pass

    def matmul(self, a, b):
        """The backend's GEMM (the fully connected layers'), on the pretend device."""
        return on_device(self.inner.matmul(_host(a), _host(b)))

    def __getattr__(self, name):
        v = getattr(self.inner, name)
        if name in OPS:
            def op(*a, **k):
                return on_device(v(*[_host(x) for x in a], **k))
            return op
        return v
