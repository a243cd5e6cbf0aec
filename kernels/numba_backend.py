"""The ``numba`` backend: numba-cuda kernels on a GPU, or in numba's CUDA simulator.

``kernels.get_backend("numba")`` runs the ``@cuda.jit`` kernels of
``kernels/conv2d/numba_kernels.py`` and ``kernels/pool2d/numba_kernels.py`` on the GPU. It
computes on **CuPy arrays** (the same array type as the ``cupy`` backend, so the two GPU
backends can be mixed): the kernels read them through ``__cuda_array_interface__``, and
every launch goes to CuPy's current stream, so CuPy work and numba kernels stay ordered
without host synchronisation.

``kernels.get_backend("numba", emulate=True)`` runs the same kernels in numba's CUDA
simulator (``NUMBA_ENABLE_CUDASIM=1``) on **NumPy arrays**: each CUDA thread becomes a
Python thread, so it is slow (use small shapes) but needs no GPU and runs every line of
every kernel, barriers included.

The simulator trap: numba reads ``NUMBA_ENABLE_CUDASIM`` once, when ``numba`` is first
imported, and a process cannot switch afterwards. This module never imports numba at import
time; the constructor

* with ``emulate=True`` sets ``NUMBA_ENABLE_CUDASIM=1`` itself if numba is not imported yet
  (and the variable is not set to 0: an explicit ``NUMBA_ENABLE_CUDASIM=0`` reserves the
  process for the GPU), and raises :class:`~kernels.BackendUnavailableError` (with the fix)
  if numba was already imported for the GPU;
* with ``emulate=False`` refuses a process whose numba is (or will be) in simulator mode, and
  checks for a GPU through CuPy *before* importing numba, so asking for the GPU backend on a
  machine without one does not spoil the process for a later ``emulate=True``.

The pytest setup (``tests/conftest.py``) makes the choice once per session: simulator
(``NUMBA_ENABLE_CUDASIM=1``) unless ``SCAE_NP_GPU_TESTS=1`` (then ``NUMBA_ENABLE_CUDASIM=0``,
so that no test can flip a GPU session into the simulator).

GPU backends compute in float32 only (``dtypes``). Switch values are range-checked on the
host in the simulator; on the GPU that check (a device->host read per call) is skipped.
"""
from __future__ import annotations

import contextlib
import functools
import os
import sys

import numpy as np

from .backend import Backend, BackendUnavailableError

#: ``sys.setswitchinterval`` used while a simulator kernel runs. The simulator runs one OS
#: thread per CUDA thread plus a manager thread that busy-polls them at every barrier, so
#: how often CPython hands the GIL over decides how fast a block gets through a barrier.
#: Measured on the project's 2-core machine (shared, load 8-25; a fixed mix of tiled,
#: implicit_gemm, reduce, naive and pooling launches, min of 4 interleaved runs):
#: 5e-3 (CPython's default) 7.3 s, 1e-3 6.3 s, 1e-4 7.8 s, 1e-5 10.0 s. Shorter intervals
#: were expected to help barriers; here the extra switching costs more than it saves, so
#: 1e-3 it is. To try another value elsewhere: SCAE_NP_SIM_SWITCH_INTERVAL=<seconds>.
SIM_SWITCH_INTERVAL = float(os.environ.get("SCAE_NP_SIM_SWITCH_INTERVAL", "1e-3"))

_INSTALL = "pip install -e '.[cuda13]' (or '.[cuda12]'; '.[test]' for the simulator alone)"


def _sim_env_on():
    return os.environ.get("NUMBA_ENABLE_CUDASIM", "0").strip() not in ("", "0")


def _is_simulator(cuda):
    """True if this process's ``numba.cuda`` is the simulator (decided at numba's import)."""
    return cuda.jit.__module__.startswith("numba.cuda.simulator")


_TOO_LATE_FOR_SIM = (
    "numba was already imported in this process without NUMBA_ENABLE_CUDASIM=1, and numba "
    "chooses between the GPU and its CUDA simulator only at its first import. Start a fresh "
    "process and call get_backend('numba', emulate=True) before anything imports numba, or "
    "set NUMBA_ENABLE_CUDASIM=1 in the environment before starting Python.")
_SIM_PROCESS = (
    "numba is in CUDA-simulator mode in this process ({why}), so it cannot reach a GPU. "
    "Start a fresh process without NUMBA_ENABLE_CUDASIM (pytest: SCAE_NP_GPU_TESTS=1 "
    "pytest -m gpu), or use get_backend('numba', emulate=True).")


def check_numba_mode(emulate):
    """Raise BackendUnavailableError if this process's numba is (or will be) in the other
    mode. Imports nothing; with emulate=True and numba not yet imported it sets
    NUMBA_ENABLE_CUDASIM=1 so that the coming import picks the simulator."""
    numba = sys.modules.get("numba")
    if numba is None:
        if emulate and not _sim_env_on():
            if os.environ.get("NUMBA_ENABLE_CUDASIM", "").strip():
                raise BackendUnavailableError(
                    f"NUMBA_ENABLE_CUDASIM={os.environ['NUMBA_ENABLE_CUDASIM']} is set in the "
                    f"environment: this process is reserved for the GPU (e.g. a "
                    f"SCAE_NP_GPU_TESTS=1 pytest session). Use the simulator in a process "
                    f"started without it, or with NUMBA_ENABLE_CUDASIM=1.")
            os.environ["NUMBA_ENABLE_CUDASIM"] = "1"      # before numba's first import
        elif not emulate and _sim_env_on():
            raise BackendUnavailableError(_SIM_PROCESS.format(
                why="NUMBA_ENABLE_CUDASIM=1 is set in the environment"))
        return
    cuda = sys.modules.get("numba.cuda")
    if cuda is not None and hasattr(cuda, "jit"):
        sim = _is_simulator(cuda)                  # numba.cuda is loaded: that decides
    else:                                          # numba.cuda will follow numba's config
        sim = bool(getattr(getattr(numba, "core", None), "config", None)
                   and numba.core.config.ENABLE_CUDASIM)
    if emulate and not sim:
        raise BackendUnavailableError(_TOO_LATE_FOR_SIM)
    if not emulate and sim:
        raise BackendUnavailableError(_SIM_PROCESS.format(
            why="numba was imported with NUMBA_ENABLE_CUDASIM=1"))


def import_numba_cuda(emulate):
    """Import ``numba.cuda`` in the requested mode, or raise BackendUnavailableError saying
    why it cannot be had in this process and what to do."""
    check_numba_mode(emulate)
    try:
        from numba import cuda
    except ImportError as e:
        raise BackendUnavailableError(
            f"the numba backend needs numba-cuda ({e}); install it with {_INSTALL}") from e
    sim = _is_simulator(cuda)
    if emulate and not sim:
        raise BackendUnavailableError(_TOO_LATE_FOR_SIM)
    if not emulate and sim:
        raise BackendUnavailableError(_SIM_PROCESS.format(
            why="numba was imported with NUMBA_ENABLE_CUDASIM=1"))
    if sim:     # warp primitives, per-block NaN shared memory (kernels/numba_simulator.py)
        from . import numba_simulator
        numba_simulator.install()
    return cuda


@contextlib.contextmanager
def sim_switch_interval(seconds=SIM_SWITCH_INTERVAL):
    """Shorten the interpreter's thread switch interval for the duration of a simulator
    launch (restored afterwards, even on error)."""
    old = sys.getswitchinterval()
    sys.setswitchinterval(seconds)
    try:
        yield
    finally:
        sys.setswitchinterval(old)


def _logged(rt, kernel, grid, block, shared):
    """Record a launch in ``rt.launch_log`` (kernels.device); True if it must not run (dry)."""
    log = rt.launch_log
    if log is None:
        return False
    log.add(getattr(kernel, "__name__", None) or kernel.py_func.__name__, grid, block, shared)
    return log.dry


class _SimRuntime:
    """Allocation + launch under the simulator: NumPy arrays, stream 0."""

    emulated = True
    launch_log = None     # kernels.device.record_launches

    def __init__(self):
        self.xp = np

    def empty(self, shape, dtype=np.float32):
        # NaN (-1 for integers), not whatever memory NumPy hands out (often zeros): an output
        # element a kernel forgets to write then fails every comparison, as garbage would.
        return np.full(shape, np.nan if np.dtype(dtype).kind == "f" else -1, dtype=dtype)

    def zeros(self, shape, dtype=np.float32):
        return np.zeros(shape, dtype=dtype)

    def launch(self, kernel, grid, block, args, shared=0):
        # The simulator copies every array argument back to its host array after the launch,
        # inputs included; a read-only input (a slice of a read-only dataset, say) would make
        # that copy fail. Inputs are never written by our kernels, so a private copy is safe.
        if _logged(self, kernel, grid, block, shared):
            return
        args = [a.copy() if isinstance(a, np.ndarray) and not a.flags.writeable else a
                for a in args]
        with sim_switch_interval():
            kernel[grid, block, 0, shared](*args)


class _GpuRuntime:
    """Allocation + launch on the GPU: CuPy arrays, CuPy's current stream."""

    emulated = False
    launch_log = None     # kernels.device.record_launches

    def __init__(self, cuda, cupy):
        self.cuda, self.xp = cuda, cupy
        self._streams = {}

    def empty(self, shape, dtype=np.float32):
        return self.xp.empty(shape, dtype=dtype)

    def zeros(self, shape, dtype=np.float32):
        return self.xp.zeros(shape, dtype=dtype)    # a memset on CuPy's current stream

    def stream(self):
        """numba's handle on CuPy's current stream (the legacy default stream is ptr 0)."""
        ptr = self.xp.cuda.get_current_stream().ptr
        s = self._streams.get(ptr)
        if s is None:
            s = self.cuda.default_stream() if ptr == 0 else self.cuda.external_stream(ptr)
            self._streams[ptr] = s
        return s

    def launch(self, kernel, grid, block, args, shared=0):
        # as_cuda_array(sync=False): a zero-copy view through __cuda_array_interface__,
        # without a stream synchronisation -- the launch goes to the same stream CuPy
        # queued the producers on, so ordering is already guaranteed.
        if _logged(self, kernel, grid, block, shared):
            return
        dev = [self.cuda.as_cuda_array(a, sync=False) if isinstance(a, self.xp.ndarray) else a
               for a in args]
        kernel[grid, block, self.stream(), shared](*dev)


class NumbaBackend(Backend):
    """numba-cuda kernels: on CuPy arrays on a GPU, on NumPy arrays in the simulator."""

    name = "numba"
    dtypes = (np.dtype(np.float32),)

    def __init__(self, emulate=False):
        super().__init__()
        self.emulated = bool(emulate)
        if self.emulated:
            import_numba_cuda(True)
            self.xp = np
            self.array_types = (np.ndarray,)
            self.move_hint = ("the numba simulator computes on NumPy arrays: convert it with "
                              "numpy.asarray(...) (cupy.asnumpy(...) for a CuPy array)")
            self._rt = _SimRuntime()
        else:
            check_numba_mode(False)           # the mode first: no GPU can fix that
            cupy = self._require_gpu()        # then the device, before numba is imported
            cuda = import_numba_cuda(False)
            if not cuda.is_available():
                raise BackendUnavailableError(
                    "numba-cuda cannot use the GPU here (cuda.is_available() is False: "
                    "driver or device not usable); use get_backend('numba', emulate=True) for "
                    "the simulator or get_backend('numpy')")
            self.xp = cupy
            self.array_types = (cupy.ndarray,)
            self.move_hint = ("the numba backend computes on CuPy arrays: move it with "
                              "backend.to_device(...) or cupy.asarray(...)")
            self._rt = _GpuRuntime(cuda, cupy)
        from .conv2d import numba_kernels as conv_k   # imports numba: after the mode is set
        from .pool2d import numba_kernels as pool_k
        for module in (conv_k, pool_k):
            for op, versions in module.VERSIONS.items():
                self._versions[op] = {v: functools.partial(fn, self._rt)
                                      for v, fn in versions.items()}
                self._defaults[op] = module.DEFAULTS[op]

    @staticmethod
    def _require_gpu():
        """CuPy and a visible device, checked before numba is imported (see module doc)."""
        try:
            import cupy
        except ImportError as e:
            raise BackendUnavailableError(
                f"the numba GPU backend computes on CuPy arrays and CuPy is missing ({e}); "
                f"install the GPU extra: {_INSTALL}; or use get_backend('numba', emulate=True) "
                f"for the simulator") from e
        try:
            count = cupy.cuda.runtime.getDeviceCount()
        except Exception as e:      # no driver / no device: CUDARuntimeError and friends
            raise BackendUnavailableError(
                f"no CUDA GPU is available here ({type(e).__name__}: {e}); use "
                f"get_backend('numba', emulate=True) to run the kernels in numba's simulator, "
                f"or get_backend('numpy')") from e
        if count < 1:
            raise BackendUnavailableError(
                "no CUDA GPU is available here (0 devices); use get_backend('numba', "
                "emulate=True) for numba's simulator, or get_backend('numpy')")
        return cupy

    # ------------------------------------------------------------------ host/device
    def to_device(self, a, dtype=None):
        a = np.ascontiguousarray(a, dtype=dtype)
        return a if self.emulated else self.xp.asarray(a)

    def to_host(self, a):
        if self.emulated or isinstance(a, np.ndarray):
            return np.asarray(a)
        return self.xp.asnumpy(a)

    def synchronize(self):
        if not self.emulated:
            self.xp.cuda.get_current_stream().synchronize()

    def _check_switch_values(self, switches, hw):
        if self.emulated:               # host arrays: one cheap reduction, clear error
            super()._check_switch_values(switches, hw)
        # on the GPU: skipped (it would cost a device->host synchronisation per call)
