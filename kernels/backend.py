"""The backend object every op is reached through, and the registry behind ``get_backend``.

A backend bundles, for each op of the contract (:data:`kernels.contract.OPS`), one or more
named *versions* (``naive`` first, faster ones after, llm.c style) and a default version
(the fastest one that was validated). Calling ``backend.conv2d_forward(x, w, b)`` checks the
arguments against the contract (:mod:`kernels.contract`) and then runs the default version;
``backend.conv2d_forward(x, w, b, version="naive")`` or ``backend.get_op(op, version)``
selects another one for study and benchmarks.

Concrete backends live in ``kernels/numpy_backend.py``, ``kernels/cupy_backend.py`` and
``kernels/numba_backend.py``; each defines a subclass and is imported lazily, so asking for
the NumPy backend never imports CuPy or numba.
"""
from __future__ import annotations

import importlib

import numpy as np

from . import contract
from .contract import OPS


class BackendUnavailableError(RuntimeError):
    """A backend cannot run on this machine; the message says why and what to use instead."""


class Backend:
    """Base class: argument checks + version dispatch for the eight ops.

    Subclasses set ``name``, ``xp`` (the array module), ``array_types`` (the array classes
    ops accept), ``move_hint`` (how to get an array there) and fill ``self._versions``:
    ``{op: {version_name: callable}}`` in ladder order, and ``self._defaults``:
    ``{op: version_name}``. Implementations receive arguments that already passed the
    contract checks.
    """

    name = "abstract"
    xp = np
    array_types: tuple = (np.ndarray,)
    move_hint = ""
    emulated = False
    #: dtypes the backend computes in; the NumPy backend also takes float64.
    dtypes = contract.FLOAT_DTYPES

    def __init__(self):
        self._versions: dict[str, dict] = {}
        self._defaults: dict[str, str] = {}

    # ------------------------------------------------------------------ versions
    def versions(self, op):
        """Version names of ``op``, naive first."""
        self._check_op(op)
        return tuple(self._versions[op])

    def default_version(self, op):
        self._check_op(op)
        return self._defaults[op]

    def get_op(self, op, version=None):
        """The raw implementation of one op version (no argument checks)."""
        self._check_op(op)
        version = version or self._defaults[op]
        try:
            return self._versions[op][version]
        except KeyError:
            raise ValueError(
                f"{self.name} backend has no version {version!r} of {op}; "
                f"choose one of {list(self._versions[op])}"
            ) from None

    def set_default(self, op, version):
        """Make ``version`` the one the plain op call runs."""
        self.get_op(op, version)
        self._defaults[op] = version

    def _check_op(self, op):
        if op not in OPS:
            raise ValueError(f"unknown op {op!r}; the contract's ops are {list(OPS)}")
        if op not in self._versions:
            raise NotImplementedError(f"{self.name} backend does not implement {op}")

    # ------------------------------------------------------------------ host/device
    def to_device(self, a, dtype=None):
        """Copy a host (NumPy) array to where this backend computes, C-contiguous."""
        a = np.ascontiguousarray(a, dtype=dtype)
        return self.xp.asarray(a)

    def to_host(self, a):
        """Copy an array of this backend to a NumPy array."""
        return np.asarray(a)

    def synchronize(self):
        """Wait for queued device work (no-op on the CPU)."""

    def matmul(self, a, b):
        """``a @ b`` of two 2-D arrays of this backend (the fully connected layers' GEMMs);
        the NumPy backend runs it on its thread pool."""
        return a @ b

    def _check_dtype(self, name, a):
        if np.dtype(a.dtype) not in self.dtypes:
            want = " or ".join(str(d) for d in self.dtypes)
            raise TypeError(
                f"the {self.name} backend computes in {want}, but {name} has dtype {a.dtype}; "
                f"convert it with {name}.astype(numpy.float32)"
            )

    def __repr__(self):
        emu = ", emulated" if self.emulated else ""
        return f"<{type(self).__name__} {self.name!r}{emu}>"

    # ------------------------------------------------------------------ the eight ops
    def conv2d_forward(self, x, w, b, *, version=None):
        contract.check_conv2d_forward(x, w, b, self.array_types, self.move_hint)
        self._check_dtype("x", x)
        return self.get_op("conv2d_forward", version)(x, w, b)

    def conv2d_backward_input(self, dy, w, *, version=None):
        contract.check_conv2d_backward_input(dy, w, self.array_types, self.move_hint)
        self._check_dtype("dy", dy)
        return self.get_op("conv2d_backward_input", version)(dy, w)

    def conv2d_backward_weight(self, x, dy, *, version=None):
        contract.check_conv2d_backward_weight(x, dy, self.array_types, self.move_hint)
        self._check_dtype("x", x)
        return self.get_op("conv2d_backward_weight", version)(x, dy)

    def conv2d_backward_bias(self, dy, *, version=None):
        contract.check_conv2d_backward_bias(dy, self.array_types, self.move_hint)
        self._check_dtype("dy", dy)
        return self.get_op("conv2d_backward_bias", version)(dy)

    def maxpool2d_forward(self, x, k=2, *, version=None):
        k = contract.check_maxpool2d_forward(x, k, self.array_types, self.move_hint)
        self._check_dtype("x", x)
        return self.get_op("maxpool2d_forward", version)(x, k)

    def maxpool2d_backward(self, dy, switches, input_hw, *, version=None):
        return self._to_switches("maxpool2d_backward", contract.check_maxpool2d_backward,
                                 "dy", dy, switches, input_hw, version)

    def unpool2d_forward(self, y, switches, output_hw, *, version=None):
        return self._to_switches("unpool2d_forward", contract.check_unpool2d_forward,
                                 "y", y, switches, output_hw, version)

    def _to_switches(self, op, check, name, v, switches, hw, version):
        """The two ops that put pooled values ``v`` back at their switches in zeroed planes
        of size ``hw`` (the same computation, and on the GPU backends the same kernels)."""
        hw = check(v, switches, hw, self.array_types, self.move_hint)
        self._check_dtype(name, v)
        self._check_switch_values(switches, hw)
        return self.get_op(op, version)(v, switches, hw)

    def unpool2d_backward(self, dx, switches, *, version=None):
        contract.check_unpool2d_backward(dx, switches, self.array_types, self.move_hint)
        self._check_dtype("dx", dx)
        self._check_switch_values(switches, dx.shape[2:])
        return self.get_op("unpool2d_backward", version)(dx, switches)

    def _check_switch_values(self, switches, hw):
        """Switch range check. On the host it is one cheap reduction; device backends
        override it with a no-op to avoid a synchronising read-back per call."""
        contract.check_switch_values(switches, hw)


# ---------------------------------------------------------------------- registry
#: backend name -> "module:Class", imported on first use.
BACKENDS = {
    "numpy": "kernels.numpy_backend:NumpyBackend",
    "cupy": "kernels.cupy_backend:CupyBackend",
    "numba": "kernels.numba_backend:NumbaBackend",
}

_INSTALL_HINT = {
    "cupy": "install the GPU extra (pip install -e '.[cuda13]' or '.[cuda12]') on a machine "
            "with an NVIDIA GPU, or use get_backend('cupy', emulate=True) to run the same CUDA C "
            "kernels on the CPU, or get_backend('numpy')",
    "numba": "install the GPU extra (pip install -e '.[cuda13]' or '.[cuda12]') on a machine "
             "with an NVIDIA GPU, or use get_backend('numba', emulate=True) to run the kernels in "
             "numba's CUDA simulator, or get_backend('numpy')",
}


#: what ``emulate=True`` (a command's ``--emulate``) runs instead of a GPU, per GPU backend
EMULATED = {"cupy": "the same CUDA C kernels on the CPU emulator",
            "numba": "the same kernels in numba's CUDA simulator"}


def unavailable_reason(err):
    """The *why* of a :class:`BackendUnavailableError`, without its advice (the message up to
    its first ``"; "``): for commands that give their own advice, such as their ``--emulate``
    flag, instead of the ``get_backend(...)`` calls the full message suggests."""
    return str(err).split("; ", 1)[0]


def get_backend(name="numpy", *, emulate=False, **options):
    """Return a backend by name: ``numpy``, ``cupy`` or ``numba``.

    ``emulate=True`` runs a GPU backend without a GPU: ``cupy`` compiles its ``.cu`` files
    with g++ and runs them in the project's CPU emulator; ``numba`` runs its kernels in
    numba's CUDA simulator. A backend that cannot run here raises
    :class:`BackendUnavailableError` saying why and what to install or use instead.
    """
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; choose one of {sorted(BACKENDS)}")
    if name == "numpy" and emulate:
        raise ValueError("the numpy backend runs on the CPU already; emulate=True is for "
                         "'cupy' and 'numba'")
    modname, clsname = BACKENDS[name].split(":")
    try:
        module = importlib.import_module(modname)
    except ModuleNotFoundError as e:
        if e.name == modname:
            raise BackendUnavailableError(
                f"the {name} backend is not part of this installation ({modname} is missing)"
            ) from e
        raise BackendUnavailableError(
            f"the {name} backend needs the package {e.name!r}, which is not installed; "
            f"{_INSTALL_HINT.get(name, '')}"
        ) from e
    cls = getattr(module, clsname)
    if name == "numpy":
        return cls(**options)
    return cls(emulate=emulate, **options)
