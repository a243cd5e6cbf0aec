"""Shared pieces of the benchmark suite: the paper's layer shapes, napkin maths, the
implementations under test (every backend x version that runs here, and the PyTorch peer),
the reference every result is validated against before it is timed, and the timers.

Imported by ``bench/bench_*.py`` (pytest puts ``bench/`` on ``sys.path`` because of
``bench/conftest.py``) and by ``bench/report.py``.
"""
from __future__ import annotations

import ctypes
import functools
import math
import os
import time
from dataclasses import dataclass

import numpy as np

from kernels import BackendUnavailableError, get_backend
from kernels import workloads as W
from kernels.testing import CONV_OPS, POOL_OPS  # noqa: F401 (used by bench_*.py)

# Shapes, napkin maths, inputs and the validation reference live in kernels/workloads.py
# (shared with `python -m kernels`); the benchmarks run the paper's CNN layers.
BATCH = W.BATCH
ConvLayer, PoolLayer = W.ConvLayer, W.PoolLayer
#: The paper's CNN layers (Masci et al. 2011): MNIST 28x28x1 and CIFAR-10 32x32x3 inputs,
#: conv 100@5x5 -> pool 2 -> conv 150@5x5 -> pool 2 -> conv 200@3x3 (from scae_np.models).
CONV_LAYERS, POOL_LAYERS = (list(t) for t in W.paper_cnn_layers())
#: A tiny shape at which the explicit-loop ``naive`` versions can be timed (own group).
TINY_CONV = W.named_shapes()["tiny-conv"]
TINY_POOL = W.named_shapes()["tiny-pool"]

conv_napkin, pool_napkin = W.conv_napkin, W.pool_napkin
conv_inputs, pool_inputs = W.conv_inputs, W.pool_inputs


def cnn_step_flop(n=BATCH, dataset="mnist"):
    """Flop of one CNN training step (convolutions + dense layers; elementwise ignored)."""
    layers = [L for L in CONV_LAYERS if L.name.startswith(dataset)]
    total = 0
    for i, L in enumerate(layers):
        fwd = conv_napkin("conv2d_forward", W.with_batch(L, n))[0]
        total += fwd * (3 if i > 0 else 2)            # fwd + dW (+ dx except conv1)
    last = layers[-1]
    feat = last.f * last.ohw[0] * last.ohw[1]
    total += 3 * 2 * n * (feat * 300 + 300 * 10)
    return total


def cae_step_flop(n=BATCH, c=1, maps=20, k=7, hw=28):
    """Flop of one CAE training step: encoder conv, decoder (backward_input), and their
    gradients (decoder dW, decoder adjoint (a forward conv), encoder dW)."""
    L = ConvLayer("cae", c, maps, hw, hw, k, n=n)
    return 5 * conv_napkin("conv2d_forward", L)[0]


# ------------------------------------------------------------------------ machine facts
def blas_threads():
    """Threads NumPy's BLAS uses (OpenBLAS via ctypes), else the CPUs we may use."""
    try:
        for line in open("/proc/self/maps"):
            if "openblas" in line:
                lib = ctypes.CDLL(line.split()[-1])
                for name in ("scipy_openblas_get_num_threads64_", "openblas_get_num_threads64_",
                             "openblas_get_num_threads"):
                    fn = getattr(lib, name, None)
                    if fn is not None:
                        return int(fn())
    except OSError:
        pass
    return len(os.sched_getaffinity(0))


def blas_info():
    """OpenBLAS config string and core type (e.g. 'SkylakeX'), or numpy's build config."""
    try:
        for line in open("/proc/self/maps"):
            if "openblas" in line:
                lib = ctypes.CDLL(line.split()[-1])
                out = {}
                for key, names in (("config", ("scipy_openblas_get_config64_",
                                               "openblas_get_config64_", "openblas_get_config")),
                                   ("core", ("scipy_openblas_get_corename64_",
                                             "openblas_get_corename64_",
                                             "openblas_get_corename"))):
                    for name in names:
                        fn = getattr(lib, name, None)
                        if fn is not None:
                            fn.restype = ctypes.c_char_p
                            out[key] = fn().decode()
                            break
                out["threads"] = blas_threads()
                return out
    except OSError:
        pass
    return {"threads": blas_threads()}


def lscpu():
    out = {}
    try:
        import subprocess
        txt = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        for line in txt.splitlines():
            if ":" in line:
                k, v = line.split(":", 1)
                out[k.strip()] = v.strip()
    except Exception:  # noqa: BLE001 - informational only
        pass
    return {k: out.get(k) for k in ("Model name", "CPU(s)", "Thread(s) per core",
                                    "Core(s) per socket", "L2 cache", "L3 cache", "Flags")
            if k in out and k != "Flags"} | (
        {"avx512f": "avx512f" in out.get("Flags", "")} if out else {})


def loadavg():
    try:
        return tuple(float(v) for v in open("/proc/loadavg").read().split()[:3])
    except OSError:
        return None


# --------------------------------------------------------------------------- torch
@functools.lru_cache(maxsize=None)
def torch_module():
    """torch, with its intra-op threads set to NumPy's BLAS threads and strict float32 on
    CUDA (:func:`torch_precision`); None if absent."""
    try:
        import torch
    except ImportError:
        return None
    torch.set_num_threads(blas_threads())
    torch_precision(torch, tf32=False)
    return torch


def torch_precision(torch, tf32):
    """Set torch's CUDA float32 mode for the peer: ``tf32=False`` is strict float32 (cuDNN
    convolutions and cuBLAS matmuls round no input: the float32 validation bound holds;
    PyTorch's default lets cuDNN use TF32, inputs rounded to 10 mantissa bits, far outside
    it); ``tf32=True`` lets both use TF32 tensor cores (the ``torch/cuda-tf32`` row,
    validated with the TF32 input rounding, :data:`kernels.testing.TF32_EPS`). Returns the
    flags as set."""
    torch.backends.cudnn.allow_tf32 = bool(tf32)
    torch.backends.cuda.matmul.allow_tf32 = bool(tf32)
    return {"cudnn.allow_tf32": torch.backends.cudnn.allow_tf32,
            "cuda.matmul.allow_tf32": torch.backends.cuda.matmul.allow_tf32}


@functools.lru_cache(maxsize=None)
def gpu_available():
    """(True, name) when a CUDA device can run CuPy kernels here, else (False, why)."""
    try:
        import cupy
        n = cupy.cuda.runtime.getDeviceCount()
        if n < 1:
            return False, "no CUDA device"
        props = cupy.cuda.runtime.getDeviceProperties(0)
        name = props["name"].decode() if isinstance(props["name"], bytes) else props["name"]
        return True, name
    except Exception as e:  # noqa: BLE001 - any failure means: no usable GPU
        return False, f"no usable CUDA GPU ({type(e).__name__}: {str(e).splitlines()[0][:120]})"


# ------------------------------------------------------------------- implementations
@dataclass
class Impl:
    """One thing to time: a backend version of an op (or the torch peer)."""
    label: str           # "numpy/fast", "cupy/tiled", "torch/oneDNN"
    backend: str         # numpy, cupy, numba, torch
    version: str
    device: str          # "cpu" or "cuda"
    be: object = None    # kernels backend (None for torch)
    skip: str = ""       # reason this cannot run here


def _backend_or_reason(name, **kw):
    try:
        return get_backend(name, **kw), ""
    except BackendUnavailableError as e:
        return None, str(e)
    except Exception as e:  # noqa: BLE001
        return None, f"{type(e).__name__}: {e}"


@functools.lru_cache(maxsize=None)
def _emulated(name):
    return _backend_or_reason(name, emulate=True)


@functools.lru_cache(maxsize=None)
def backend_for(name):
    """(backend, reason) for 'numpy', 'cupy', 'numba' on real hardware (GPU ones need a GPU)."""
    if name in ("cupy", "numba"):
        ok, why = gpu_available()
        if not ok:
            return None, f"{name} backend needs a CUDA GPU: {why}"
    return _backend_or_reason(name)


def op_impls(op, *, naive=False):
    """Every implementation of ``op`` to benchmark: numpy/cupy/numba versions + torch.

    The ``naive`` versions (explicit Python loops, or one GPU thread-naive kernel) are
    returned with a skip reason at the paper's shapes unless ``naive=True`` (tiny group)."""
    out = []
    for name in ("numpy", "cupy", "numba"):
        be, why = backend_for(name)
        device = "cpu" if name == "numpy" else "cuda"
        if be is None:
            out.append(Impl(f"{name}/*", name, "*", device, skip=why))
            continue
        try:
            versions = be.versions(op)
        except NotImplementedError as e:
            out.append(Impl(f"{name}/*", name, "*", device, skip=str(e)))
            continue
        for v in versions:
            imp = Impl(f"{name}/{v}", name, v, device, be=be)
            if name == "numpy" and v == "naive" and not naive:
                imp.skip = ("numpy naive is explicit Python loops (hours at batch 128); "
                            "timed in the tiny-shape group instead")
            out.append(imp)
    if naive:
        # the tiny group also shows the CUDA C kernels on the project's CPU emulator (cheap
        # at this shape; host time of an emulator, no GPU meaning: device "emulator")
        be, why = _emulated("cupy")
        if be is None:
            out.append(Impl("cupy-emulator/*", "cupy", "*", "emulator", skip=why))
        else:
            out += [Impl(f"cupy-emulator/{v}", "cupy", v, "emulator", be=be)
                    for v in be.versions(op)]
        out.append(Impl("numba-simulator/*", "numba", "*", "emulator",
                        skip="numba's CUDA simulator runs every GPU thread as Python code "
                             "(needs NUMBA_ENABLE_CUDASIM=1 before numba is imported): a "
                             "correctness tool, not benchmarked"))
    torch = torch_module()
    if torch is None:
        out.append(Impl("torch/peer", "torch", "peer", "cpu", skip="torch is not installed"))
    else:
        out.append(Impl("torch/cpu", "torch", "cpu", "cpu"))
        ok, why = gpu_available()
        # cuDNN in strict float32 (the peer), and the same with TF32 on (a labelled row)
        for version in ("cuda", "cuda-tf32") if op in CONV_OPS else ("cuda",):
            if ok and torch.cuda.is_available():
                out.append(Impl(f"torch/{version}", "torch", version, "cuda"))
            else:
                out.append(Impl(f"torch/{version}", "torch", version, "cuda",
                                skip="torch CUDA peer needs a GPU and a CUDA build of torch"
                                f" ({why if not ok else 'torch is a CPU build'})"))
    return out


def input_eps(imp: Impl):
    """The input rounding an implementation's validation allows: TF32's for the
    ``torch/cuda-tf32`` row, none for everything else."""
    from kernels.testing import TF32_EPS
    return TF32_EPS if imp.backend == "torch" and imp.version.endswith("tf32") else 0.0


# ------------------------------------------------------------------------ reference
_REFERENCE = {}


def reference(op, layer, args, under_test=None):
    """The result an implementation is checked against, on the same inputs: the NumPy
    version :func:`kernels.workloads.reference_version` names (``naive`` at the tiny shape,
    ``fast`` in float64 at the paper's; ``im2col``/``argmax`` for numpy ``fast`` itself).
    Cached per (op, layer, reference version)."""
    ver = W.reference_version(op, layer, under_test)
    key = (op, layer.name, ver)
    if key not in _REFERENCE:
        _REFERENCE[key] = W.compute_reference(op, args, ver)
    return _REFERENCE[key]


def validate(op, layer, args, result, under_test=None, input_eps=0.0):
    """Raise AssertionError unless ``result`` (host arrays) matches the reference
    (``input_eps``: the implementation's input rounding, :func:`input_eps`)."""
    W.validate(op, args, result, reference(op, layer, args, under_test), input_eps=input_eps,
               mixed=under_test in (("numpy", "fast"), ("numpy", "dft")))


# ------------------------------------------------------------------------ callables
def make_call(imp: Impl, op, args):
    """(fn, to_host): ``fn()`` runs the op once on inputs already where the
    implementation computes; ``to_host(out)`` brings its result back for validation."""
    if imp.backend == "torch":
        return _torch_call(imp, op, args)
    be = imp.be
    dev_args = tuple(be.to_device(a) if isinstance(a, np.ndarray) else a for a in args)
    fn_op = getattr(be, op)

    def fn():
        return fn_op(*dev_args, version=imp.version)

    def to_host(out):
        if isinstance(out, tuple):
            return tuple(np.asarray(be.to_host(o)) for o in out)
        return np.asarray(be.to_host(out))
    return fn, to_host


def _torch_call(imp, op, args):
    torch = torch_module()
    F = torch.nn.functional
    dev = "cuda" if imp.version.startswith("cuda") else "cpu"
    torch_precision(torch, tf32=imp.version.endswith("tf32"))     # per test: flags are global
    t = [torch.from_numpy(np.ascontiguousarray(a)).to(dev) if isinstance(a, np.ndarray)
         else a for a in args]
    if op == "conv2d_forward":
        x, w, b = t
        fn = lambda: F.conv2d(x, w, b)                                      # noqa: E731
    elif op == "conv2d_backward_input":
        dy, w = t
        n, f, oh, ow = dy.shape
        shape = (n, w.shape[1], oh + w.shape[2] - 1, ow + w.shape[3] - 1)
        fn = lambda: torch.nn.grad.conv2d_input(shape, w, dy)               # noqa: E731
    elif op == "conv2d_backward_weight":
        x, dy = t
        kh, kw = x.shape[2] - dy.shape[2] + 1, x.shape[3] - dy.shape[3] + 1
        wshape = (dy.shape[1], x.shape[1], kh, kw)
        fn = lambda: torch.nn.grad.conv2d_weight(x, wshape, dy)             # noqa: E731
    elif op == "conv2d_backward_bias":
        (dy,) = t
        fn = lambda: dy.sum(dim=(0, 2, 3))                                  # noqa: E731
    elif op == "maxpool2d_forward":
        x, k = t
        fn = lambda: F.max_pool2d(x, k, return_indices=True)                # noqa: E731
    elif op == "maxpool2d_backward":               # what autograd runs after max_pool2d
        dy, sw, hw = t
        sw64 = sw.long()
        k = hw[0] // dy.shape[2]
        xshape = torch.empty(dy.shape[:2] + tuple(hw), dtype=dy.dtype, device=dev)
        bwd = torch.ops.aten.max_pool2d_with_indices_backward
        fn = lambda: bwd(dy, xshape, [k, k], [k, k], [0, 0], [1, 1], False, sw64)  # noqa: E731
    elif op == "unpool2d_forward":
        dy, sw, hw = t
        sw64 = sw.long()
        k = hw[0] // dy.shape[2]
        fn = lambda: F.max_unpool2d(dy, sw64, k, output_size=hw)            # noqa: E731
    elif op == "unpool2d_backward":
        dx, sw = t
        n, c, oh, ow = sw.shape
        idx = sw.long().reshape(n, c, -1)
        flat = dx.reshape(n, c, -1)
        fn = lambda: torch.gather(flat, 2, idx).reshape(n, c, oh, ow)       # noqa: E731
    else:
        raise ValueError(op)

    def to_host(out):
        if isinstance(out, tuple):
            y, i = out
            return y.cpu().numpy(), i.cpu().numpy().astype(np.int32)
        return out.detach().cpu().numpy()
    return fn, to_host


# --------------------------------------------------------------------------- timing
#: Upper bound of a GPU's SM clock (Hz): a spin of ``s * SPIN_HZ`` cycles lasts at least s.
SPIN_HZ = 3.0e9
#: Device time one timed round aims at (k back-to-back calls fill it, 1 <= k <= MAX_ITERS).
ROUND_S = 2e-3
MAX_ITERS = 200


class DeviceTimer:
    """A pytest-benchmark timer that measures device time of k back-to-back calls.

    pytest-benchmark calls its timer once before and once after the ``iterations`` (k)
    calls of a round and divides the difference by k. This timer, on the first call of a
    pair, (1) launches a kernel that holds the stream for ``block_s`` seconds, (2) records
    the start event behind it and returns; the k calls are then queued behind the held
    stream while the host dispatches them; on the second call it records the end event,
    waits for it and returns the device time between the two events. Because the start
    event fires only when the hold ends, and by then all k calls are queued, the interval
    is the k kernels back to back -- not the host's dispatch of the first one (an event
    recorded just before a Python call on an idle GPU times the dispatch, which for a
    10 us kernel is most of the number). If the host needed longer than ``block_s`` to queue
    the k calls, the GPU may have idled between them: such a round is counted in
    ``host_bound_rounds`` (reported in the benchmark's extra_info; raise ``block_s``).

    ``new_event()``: an object with ``record()`` and ``synchronize()``;
    ``elapsed_ms(a, b)``; ``hold(seconds)``: queue the stream-holding kernel;
    ``host_clock``: seconds (perf_counter). :meth:`for_cupy` / :meth:`for_torch` build it
    for the two stacks (both queue on their current stream, which CuPy, the numba backend
    and torch all leave on the legacy default stream)."""

    def __init__(self, new_event, elapsed_ms, hold, block_s=5e-3, host_clock=time.perf_counter):
        self._new, self._elapsed, self._hold = new_event, elapsed_ms, hold
        self.block_s = float(block_s)
        self._clock = host_clock
        self._start = None
        self._t_host = 0.0
        self.total = 0.0              # device seconds summed over timed pairs
        self.pairs = 0
        self.host_bound_rounds = 0

    def __call__(self):
        if self._start is None:                       # a round begins
            if self.block_s > 0:
                self._hold(self.block_s)
            self._start = self._new()
            self._start.record()
            self._t_host = self._clock()
            return self.total
        end = self._new()
        end.record()
        if self._clock() - self._t_host >= self.block_s:
            self.host_bound_rounds += 1
        end.synchronize()
        self.total += self._elapsed(self._start, end) / 1e3
        self._start = None
        self.pairs += 1
        return self.total

    def time_once(self, fn, sync):
        """Device seconds of one ``fn()`` (after ``sync()``), by the same event pair."""
        sync()
        t0 = self()
        fn()
        return self() - t0

    @classmethod
    def for_cupy(cls, **kw):
        import cupy
        spin = cupy.RawKernel(r"""
        extern "C" __global__ void scae_np_hold(long long cycles) {
            long long t0 = clock64();
            while (clock64() - t0 < cycles) { }
        }""", "scae_np_hold")
        hold = lambda s: spin((1,), (1,), (cupy.int64(int(s * SPIN_HZ)),))   # noqa: E731
        return cls(cupy.cuda.Event, lambda a, b: cupy.cuda.get_elapsed_time(a, b), hold, **kw)

    @classmethod
    def for_torch(cls, **kw):
        import torch
        return cls(lambda: torch.cuda.Event(enable_timing=True),
                   lambda a, b: a.elapsed_time(b),
                   lambda s: torch.cuda._sleep(int(s * SPIN_HZ)), **kw)


def iterations_for(device_s, round_s=ROUND_S, hi=MAX_ITERS):
    """k: back-to-back calls per timed round so that a round lasts ~``round_s`` of device
    time (1 for calls longer than that)."""
    return int(max(1, min(hi, math.ceil(round_s / max(device_s, 1e-7) - 1e-9))))


def hold_for(host_s, k):
    """Seconds the stream is held so the host can queue k calls of ``host_s`` each behind it:
    twice the estimate plus 1 ms, at most 0.2 s."""
    return min(0.2, 2.0 * k * host_s + 1e-3)


def rounds_for(seconds_per_call, budget=1.0, lo=3, hi=50):
    """How many timed rounds fit a time budget (at least ``lo``)."""
    return int(max(lo, min(hi, budget / max(seconds_per_call, 1e-6))))


def run_timed(benchmark, fn, imp: Impl, *, budget=1.0, min_rounds=3):
    """Time ``fn`` with pytest-benchmark in pedantic mode, after a warm-up call.

    CPU: perf_counter (pytest-benchmark's default), one call per round. GPU: a
    :class:`DeviceTimer` round of k back-to-back calls between one event pair behind a held
    stream (k from one call's device time, :func:`iterations_for`); the benchmark's
    extra_info gets ``timer``, ``iterations``, ``hold_s`` and ``host_bound_rounds``."""
    if imp.device != "cuda":
        t0 = time.perf_counter()
        fn()                                   # warm-up (compiles, caches, page faults)
        dt = time.perf_counter() - t0
        rounds = rounds_for(dt, budget=budget, lo=min_rounds)
        return benchmark.pedantic(fn, rounds=rounds, warmup_rounds=1, iterations=1)
    if imp.backend == "torch":
        sync = torch_module().cuda.synchronize
        timer = DeviceTimer.for_torch()
    else:
        sync = imp.be.synchronize
        timer = DeviceTimer.for_cupy()
    fn()                                       # warm-up: compiles, allocates
    sync()
    t0 = time.perf_counter()
    fn()                                       # the host's dispatch time of one call
    host_s = time.perf_counter() - t0
    dev_s = timer.time_once(fn, sync)
    k = iterations_for(dev_s)
    timer.block_s = hold_for(host_s, k)
    timer.host_bound_rounds = 0
    benchmark._timer = timer
    rounds = rounds_for(k * dev_s + timer.block_s, budget=budget, lo=min_rounds)
    out = benchmark.pedantic(fn, rounds=rounds, warmup_rounds=1, iterations=k)
    benchmark.extra_info.update(timer="cuda-events, k calls behind a held stream",
                                iterations=k, hold_s=round(timer.block_s, 6),
                                host_dispatch_s=host_s,
                                host_bound_rounds=timer.host_bound_rounds)
    return out


# -------------------------------------------------------------------- op benchmarks
def op_params(cases, *, naive):
    """pytest params (op, layer, impl) for every implementation of every (op, layer) case;
    those that cannot run here carry a skip mark with the reason."""
    import pytest
    out = []
    for op, L in cases:
        for imp in op_impls(op, naive=naive):
            marks = [pytest.mark.skip(reason=imp.skip)] if imp.skip else []
            out.append(pytest.param(op, L, imp, id=f"{op}-{L.name}-{imp.label}", marks=marks))
    return out


def family_params(layers, ops, tiny):
    """:func:`op_params` of an op family: every op at the paper's ``layers`` without the
    naive versions (minutes each there), and at the ``tiny`` layer with them."""
    return (op_params([(op, L) for L in layers for op in ops], naive=False)
            + op_params([(op, tiny) for op in ops], naive=True))


def bench_op(benchmark, op, L, imp, *, inputs, napkin, metric, budget):
    """Validate one implementation of an op on a layer's inputs, then time it."""
    args = inputs(op, L)
    fn, to_host = make_call(imp, op, args)
    eps = input_eps(imp)
    validate(op, L, args, to_host(fn()), (imp.backend, imp.version), eps)  # never time unvalidated
    flop, nbytes = napkin(op, L)
    benchmark.group = f"{op} {L.name} ({L.describe()})"
    benchmark.extra_info.update(
        kind="op", op=op, layer=L.name, shape=L.describe(), impl=imp.label,
        backend=imp.backend, version=imp.version, device=imp.device, flop=flop,
        bytes=nbytes, metric=metric, peer=imp.backend == "torch",
        precision="tf32" if eps else "fp32")
    run_timed(benchmark, fn, imp, budget=budget)
