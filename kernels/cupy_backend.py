"""The ``cupy`` backend: the CUDA C kernels of ``kernels/conv2d/*.cu`` and ``kernels/pool2d/*.cu``,
compiled by NVRTC through ``cupy.RawModule`` -- or, with ``emulate=True``, the very same files
compiled by g++ and run by the CPU emulator (``kernels/emulator``) on NumPy arrays.

Every op below computes its launch geometry (grid, block, arguments, dynamic shared memory)
once and hands it to :meth:`CupyBackend._launch`, the only place that knows whether the kernel
runs on a GPU or in the emulator; so the emulator tests exercise exactly the launches a GPU
would get. Scalars are passed as explicit ``numpy.int32`` (a Python int would not say its size).

GPU backends compute in float32 only (``dtypes``); float64 input gets a TypeError that says
to convert. Each op keeps all its versions selectable by name (``be.versions(op)``).

Defaults (``_DEFAULTS``) are the versions expected to be fastest on a GPU, judged from the
kernels' design (no GPU was available when they were written: memory traffic, parallelism and
arithmetic intensity, see each .cu header). ``bench/`` measures them on a real device.
"""
from __future__ import annotations

import os

import numpy as np

from .backend import Backend, BackendUnavailableError
from .cuda_source import read_cu
from .launch_spec import (BGRAD_THREADS, CONV_TILE, GEMM_BM, GEMM_BN, GEMM_THREADS,
                          GRID_YZ_MAX, INT32_MAX, THREADS, WGRAD_CHUNK, WGRAD_RED_BLOCK,
                          gather_window_bracket, kernel_name, one_thread_per,
                          wgrad_reduce_threads)
from .launch_spec import SPLITK_RED_THREADS, conv_split_k, splitk_sum_threads
from .launch_spec import cdiv as _cdiv

HERE = os.path.dirname(os.path.abspath(__file__))

#: source file of each op's kernels (paths relative to kernels/); unpool2d_forward runs
#: maxpool2d_backward's kernels (launch_spec.SHARED_KERNELS)
SOURCES = {
    "conv2d_forward": "conv2d/conv2d_forward.cu",
    "conv2d_backward_input": "conv2d/conv2d_backward_input.cu",
    "conv2d_backward_weight": "conv2d/conv2d_backward_weight.cu",
    "conv2d_backward_bias": "conv2d/conv2d_backward_weight.cu",
    "maxpool2d_forward": "pool2d/maxpool2d.cu",
    "maxpool2d_backward": "pool2d/maxpool2d.cu",
    "unpool2d_forward": "pool2d/maxpool2d.cu",
    "unpool2d_backward": "pool2d/unpool2d.cu",
}

#: kernels that are no op's version but a second pass of one (name -> source file): the sum of
#: the split-K partials (kernels/launch_spec.py: conv_split_k)
HELPER_SOURCES = {"splitk_sum": "conv2d/splitk_sum.cu"}

#: what cupy.RawModule (NVRTC) gets besides the code (tests/test_cuda_compile.py uses the same)
NVRTC_OPTIONS = ("-std=c++17",)


def nvrtc_source(path):
    """The code given to ``cupy.RawModule`` for the .cu file ``path``: its text with the local
    headers it includes (``conv2d/gemm_tile.cuh``) inlined by ``kernels/cuda_source.py``
    rather than found through an ``--include-path`` option, because CuPy's kernel cache keys
    a build by the code and the options only: an edited header would not be recompiled."""
    return read_cu(path)


#: versions per op, ladder order (naive first); the kernel is ``<op>_<version>``
#: (``launch_spec.kernel_name``)
VERSIONS = {
    "conv2d_forward": ("naive", "tiled", "implicit_gemm", "splitk"),
    "conv2d_backward_input": ("naive", "tiled", "implicit_gemm", "splitk"),
    "conv2d_backward_weight": ("naive", "atomic", "reduce", "warp", "implicit_gemm", "splitk"),
    "conv2d_backward_bias": ("naive", "reduce", "warp", "split"),
    "maxpool2d_forward": ("naive",),
    "maxpool2d_backward": ("naive", "gather"),
    "unpool2d_forward": ("naive", "gather"),
    "unpool2d_backward": ("naive",),
}

# Not measured here (no GPU on the machine that wrote them); judged from the designs:
# implicit GEMMs do 4x4 register-blocked FMAs per shared-memory load and read each input once
# per 64-wide tile; the gather versions write every output once, coalesced, with no memset;
# the bias reduce uses F blocks of 256 threads instead of F threads. The warp-shuffle versions
# (`warp`) should beat `reduce` on a GPU (no shared-memory tree, 0 or 1 barrier instead of up
# to 9) but stay out of the defaults until they are timed on one. The split versions (`splitk`,
# bias `split`) are the defaults since issue 12: they are implicit_gemm / reduce when the output
# alone gives every SM a block, and split the reduction (deterministically) when it does not
# (kernels/launch_spec.py: conv_split_k), so no default launch at the paper's shapes leaves an
# SM of a 132-SM H100/H200 idle (tests/test_launch_geometry.py).
_DEFAULTS = {
    "conv2d_forward": "splitk",
    "conv2d_backward_input": "splitk",
    "conv2d_backward_weight": "splitk",
    "conv2d_backward_bias": "split",
    "maxpool2d_forward": "naive",
    "maxpool2d_backward": "gather",
    "unpool2d_forward": "gather",
    "unpool2d_backward": "naive",
}

# Launch constants and rules: kernels/launch_spec.py (shared with the numba kernels; the
# .cu files' #defines are checked equal to them by tests/test_cuda_compile.py).

i32 = np.int32


def _op_tolerance(op, *inputs):
    """The test oracle's float32 tolerance of ``op`` (kernels/testing.py), for the race check
    of kernels whose float atomics make the rounding depend on the order."""
    from .testing import op_tolerance
    return op_tolerance(op, *inputs, dtype=np.float32)


def _check_int32(batch=None, **sizes):
    """The kernels index with int: refuse sizes that would overflow rather than corrupt memory.
    ``batch``: the batch size N of the arrays, for the advice (split the batch only helps when
    one image's share fits)."""
    for name, size in sizes.items():
        if size > INT32_MAX:
            per_image = -(-size // batch) if batch and name != "w" else size
            if batch and batch > 1 and per_image <= INT32_MAX:
                fix = f"split the batch (N = {batch}) into smaller ones"
            else:
                fix = ("even one image is too large: use smaller images or fewer maps, or the "
                       "numpy backend")
            raise ValueError(
                f"{name} has {size} elements, more than the kernels' int32 indexing allows "
                f"({INT32_MAX}); {fix}")


def _batch_chunks(n, per_sample):
    """Batch slices whose grid.z = (samples in slice) * per_sample stays <= 65535."""
    step = max(1, GRID_YZ_MAX // per_sample)
    if per_sample > GRID_YZ_MAX:
        raise ValueError(f"{per_sample} planes per sample exceed CUDA's grid.z limit "
                         f"{GRID_YZ_MAX}; use the naive or implicit_gemm version")
    return [(s, min(n, s + step)) for s in range(0, n, step)]


class CupyBackend(Backend):
    name = "cupy"
    dtypes = (np.dtype(np.float32),)

    def __init__(self, emulate=False, asan=None):
        super().__init__()
        self.emulated = bool(emulate)
        self._modules = {}
        self._functions = {}     # (op, kernel) -> kernel handle: get_function once, not per launch
        self._launch_log = None  # kernels.device.record_launches
        if self.emulated:
            from . import emulator
            if not emulator.gxx_available():
                raise BackendUnavailableError(
                    "the cupy backend's CPU emulator needs g++ (>= 12, C++20) to compile the .cu "
                    "files, and none was found; install g++ or use get_backend('numpy')")
            self._emu = emulator
            self._asan = asan
            self.xp = np
            self.array_types = (np.ndarray,)
            self.move_hint = ("the emulated cupy backend computes on NumPy arrays: convert it "
                              "with numpy.asarray(...)")
        else:
            try:
                import cupy
            except ImportError as e:
                raise BackendUnavailableError(
                    f"the cupy backend needs CuPy, which is not installed ({e}); install the GPU "
                    f"extra: pip install -e '.[cuda13]' (or '.[cuda12]' for a CUDA 12 driver), or "
                    f"use get_backend('cupy', emulate=True) to run the same CUDA C kernels on the "
                    f"CPU, or get_backend('numpy')") from None
            try:
                ndev = cupy.cuda.runtime.getDeviceCount()
            except Exception as e:   # CUDARuntimeError: no driver / no device
                ndev, why = 0, f" ({type(e).__name__}: {e})"
            else:
                why = ""
            if ndev < 1:
                raise BackendUnavailableError(
                    f"the cupy backend found no CUDA GPU on this machine{why}; use "
                    f"get_backend('cupy', emulate=True) to run the same CUDA C kernels in the CPU "
                    f"emulator, or get_backend('numpy')")
            self._cupy = cupy
            self.xp = cupy
            self.array_types = (cupy.ndarray,)
            self.move_hint = "move it to the GPU with backend.to_device(a) (cupy.asarray)"
        impl = {
            "conv2d_forward": self._conv2d_forward,
            "conv2d_backward_input": self._conv2d_backward_input,
            "conv2d_backward_weight": self._conv2d_backward_weight,
            "conv2d_backward_bias": self._conv2d_backward_bias,
            "maxpool2d_forward": self._maxpool2d_forward,
            "maxpool2d_backward": self._maxpool2d_backward,
            "unpool2d_forward": self._unpool2d_forward,
            "unpool2d_backward": self._unpool2d_backward,
        }
        for op, names in VERSIONS.items():
            self._versions[op] = {v: (lambda *a, _f=impl[op], _v=v: _f(*a, version=_v))
                                  for v in names}
            self._defaults[op] = _DEFAULTS[op]

    # ------------------------------------------------------------------ host/device
    def to_device(self, a, dtype=None):
        a = np.ascontiguousarray(a, dtype=dtype)
        return a if self.emulated else self._cupy.asarray(a)

    def to_host(self, a):
        return np.asarray(a) if self.emulated else self._cupy.asnumpy(a)

    def synchronize(self):
        if not self.emulated:
            self._cupy.cuda.get_current_stream().synchronize()

    def _check_switch_values(self, switches, hw):
        if self.emulated:   # host arrays: the check is cheap, and a bad switch would write
            super()._check_switch_values(switches, hw)   # outside the array on the CPU
        # on the GPU: no synchronising read-back per call

    # ------------------------------------------------------------------ the one launcher
    def module(self, op):
        """The compiled module (``cupy.RawModule`` or ``EmuModule``) holding ``op``'s kernels
        (``op``: an op, or a helper kernel of ``HELPER_SOURCES``)."""
        path = os.path.join(HERE, SOURCES[op] if op in SOURCES else HELPER_SOURCES[op])
        if path not in self._modules:
            if self.emulated:
                self._modules[path] = self._emu.EmuModule(path=path, asan=self._asan)
            else:
                self._modules[path] = self._cupy.RawModule(code=nvrtc_source(path),
                                                           options=NVRTC_OPTIONS)
        return self._modules[path]

    def _launch(self, op, kernel, grid, block, args, shared_mem=0, race_tolerance=None):
        """Launch ``kernel`` of ``op``'s .cu file -- on the GPU or in the emulator, same call.

        ``race_tolerance`` (emulator only): for kernels with float atomics, a callable giving
        ``{argument index: tolerance}`` for the emulator's race check (SCAE_NP_EMU_RACECHECK=1),
        which otherwise demands the same bits from every thread order."""
        log = self._launch_log
        if log is not None:
            log.add(kernel, grid, block, shared_mem)
            if log.dry:
                return
        fn = self._functions.get((op, kernel))
        if fn is None:
            fn = self._functions[(op, kernel)] = self.module(op).get_function(kernel)
        if self.emulated:
            fn(tuple(grid), tuple(block), tuple(args), shared_mem=int(shared_mem),
               race_tolerance=race_tolerance)
        else:
            fn(tuple(grid), tuple(block), tuple(args), shared_mem=int(shared_mem))

    def _empty(self, shape, zero=False, dtype=np.float32):
        """An output array. In the emulator an unzeroed one starts as NaN (-1 for integers),
        not as whatever memory NumPy hands out (often zeros): an element a kernel forgets to
        write then shows in every comparison, as garbage would on a GPU."""
        xp = self.xp
        if zero:
            return xp.zeros(shape, dtype=dtype)
        if self.emulated:
            return np.full(shape, np.nan if np.dtype(dtype).kind == "f" else -1, dtype=dtype)
        return xp.empty(shape, dtype=dtype)

    # ------------------------------------------------------------------ convolution
    def _conv2d_forward(self, x, w, b, version):
        n, c, h, wd = x.shape
        f, _, kh, kw = w.shape
        oh, ow = h - kh + 1, wd - kw + 1
        _check_int32(n, x=x.size, w=w.size, y=n * f * oh * ow)
        y = self._empty((n, f, oh, ow))
        op, k = "conv2d_forward", f"conv2d_forward_{version}"
        dims = lambda nb: (i32(nb), i32(c), i32(h), i32(wd), i32(f), i32(kh), i32(kw))
        if version == "naive":
            self._launch(op, k, (_cdiv(y.size, THREADS),), (THREADS,), (y, x, w, b, *dims(n)))
        elif version == "tiled":
            smem = ((CONV_TILE + kh - 1) * (CONV_TILE + kw - 1) + kh * kw) * 4
            for s, e in _batch_chunks(n, f):
                self._launch(op, k, (_cdiv(ow, CONV_TILE), _cdiv(oh, CONV_TILE), (e - s) * f),
                             (CONV_TILE, CONV_TILE), (y[s:e], x[s:e], w, b, *dims(e - s)), smem)
        elif version == "implicit_gemm":
            self._launch(op, k, (_cdiv(n * oh * ow, GEMM_BM), _cdiv(f, GEMM_BN)), (GEMM_THREADS,),
                         (y, x, w, b, *dims(n)))
        else:                                   # splitk
            tiles = (_cdiv(n * oh * ow, GEMM_BM), _cdiv(f, GEMM_BN))
            self._splitk(op, k, tiles, c * kh * kw, y, lambda ws, chunk:
                         (ws, x, w, b, *dims(n), i32(chunk)))
        return y

    def _conv2d_backward_input(self, dy, w, version):
        n, f, oh, ow = dy.shape
        _, c, kh, kw = w.shape
        h, wd = oh + kh - 1, ow + kw - 1
        _check_int32(n, dy=dy.size, w=w.size, dx=n * c * h * wd)
        dx = self._empty((n, c, h, wd))
        op, k = "conv2d_backward_input", f"conv2d_backward_input_{version}"
        dims = lambda nb: (i32(nb), i32(c), i32(oh), i32(ow), i32(f), i32(kh), i32(kw))
        if version == "naive":
            self._launch(op, k, (_cdiv(dx.size, THREADS),), (THREADS,), (dx, dy, w, *dims(n)))
        elif version == "tiled":
            smem = ((CONV_TILE + kh - 1) * (CONV_TILE + kw - 1) + kh * kw) * 4
            for s, e in _batch_chunks(n, c):
                self._launch(op, k, (_cdiv(wd, CONV_TILE), _cdiv(h, CONV_TILE), (e - s) * c),
                             (CONV_TILE, CONV_TILE), (dx[s:e], dy[s:e], w, *dims(e - s)), smem)
        elif version == "implicit_gemm":
            self._launch(op, k, (_cdiv(n * h * wd, GEMM_BM), _cdiv(c, GEMM_BN)), (GEMM_THREADS,),
                         (dx, dy, w, *dims(n)))
        else:                                   # splitk
            tiles = (_cdiv(n * h * wd, GEMM_BM), _cdiv(c, GEMM_BN))
            self._splitk(op, k, tiles, f * kh * kw, dx, lambda ws, chunk:
                         (ws, dy, w, *dims(n), i32(chunk)))
        return dx

    def _conv2d_backward_weight(self, x, dy, version):
        n, c, h, wd = x.shape
        _, f, oh, ow = dy.shape
        kh, kw = h - oh + 1, wd - ow + 1
        e_ = f * c * kh * kw
        r_ = n * oh * ow
        _check_int32(n, x=x.size, dy=dy.size, dw=e_ * _cdiv(r_, WGRAD_CHUNK))
        dw = self._empty((f, c, kh, kw), zero=(version == "atomic"))
        op, k = "conv2d_backward_weight", f"conv2d_backward_weight_{version}"
        args = (dw, x, dy, i32(n), i32(c), i32(h), i32(wd), i32(f), i32(oh), i32(ow))
        if version == "naive":
            self._launch(op, k, (_cdiv(e_, THREADS),), (THREADS,), args)
        elif version == "atomic":
            self._launch(op, k, (_cdiv(e_ * _cdiv(r_, WGRAD_CHUNK), THREADS),), (THREADS,), args,
                         race_tolerance=lambda: {0: _op_tolerance(op, x, dy)})
        elif version in ("reduce", "warp"):      # the same launch; warp adds with shuffles
            t = wgrad_reduce_threads(r_)
            self._launch(op, k, (_cdiv(e_, WGRAD_RED_BLOCK // t),), (t, WGRAD_RED_BLOCK // t),
                         args)
        elif version == "implicit_gemm":
            self._launch(op, k, (_cdiv(f, GEMM_BM), _cdiv(c * kh * kw, GEMM_BN)), (GEMM_THREADS,),
                         args)
        else:                                   # splitk: K = R = N*OH*OW
            tiles = (_cdiv(f, GEMM_BM), _cdiv(c * kh * kw, GEMM_BN))
            self._splitk(op, k, tiles, r_, dw, lambda ws, chunk: (ws, *args[1:], i32(chunk)))
        return dw

    def _splitk(self, op, kernel, tiles, k_total, out, make_args):
        """A split-K GEMM launch and its fixed-order sum: grid ``tiles + (S,)`` with S and the
        slice length from ``launch_spec.conv_split_k``; with S == 1 the kernel writes ``out``
        directly, else partials go to a workspace (S, *out.shape) that ``splitk_sum`` adds
        into ``out``. ``make_args(ws, chunk)``: the kernel's arguments."""
        s_, chunk = conv_split_k(tiles[0] * tiles[1], k_total)
        if s_ == 1:
            self._launch(op, kernel, tiles + (1,), (GEMM_THREADS,), make_args(out, chunk))
            return
        _check_int32(workspace=s_ * out.size)
        ws = self._empty((s_,) + out.shape)
        self._launch(op, kernel, tiles + (s_,), (GEMM_THREADS,), make_args(ws, chunk))
        t = splitk_sum_threads(s_)
        per_block = SPLITK_RED_THREADS // t
        self._launch("splitk_sum", "splitk_sum", (_cdiv(out.size, per_block),), (t, per_block),
                     (out, ws, i32(s_), i32(out.size)))

    def _conv2d_backward_bias(self, dy, version):
        n, f, oh, ow = dy.shape
        _check_int32(n, dy=dy.size)
        db = self._empty((f,))
        op, k = "conv2d_backward_bias", f"conv2d_backward_bias_{version}"
        args = (db, dy, i32(n), i32(f), i32(oh), i32(ow))
        if version == "naive":
            self._launch(op, k, (_cdiv(f, THREADS),), (THREADS,), args)
        elif version == "split":                # grid (F, S): S slices of N*OH*OW per f
            s_, chunk = conv_split_k(f, n * oh * ow, k_step=BGRAD_THREADS)
            if s_ > GRID_YZ_MAX:
                raise ValueError(f"the bias split needs {s_} slices, more than CUDA's grid.y "
                                 f"limit {GRID_YZ_MAX}; use version='reduce'")
            ws = self._empty((f, s_))
            count = self.xp.zeros(f, dtype=np.uint32)
            self._launch(op, k, (f, s_), (BGRAD_THREADS,),
                         (db, dy, ws, count, i32(n), i32(f), i32(oh), i32(ow), i32(chunk)))
        else:                                   # reduce, warp: one 256-thread block per f
            self._launch(op, k, (f,), (BGRAD_THREADS,), args)
        return db

    # ------------------------------------------------------------------ pooling
    # One launch per kernel; unpool2d_forward launches maxpool2d_backward's kernels (the
    # contract defines the two ops as one), so _place_at_switches serves both ops.
    def _maxpool2d_forward(self, x, k, version):
        n, c, h, wd = x.shape
        oh, ow = h // k, wd // k
        _check_int32(n, x=x.size)
        y = self._empty((n, c, oh, ow))
        sw = self._empty((n, c, oh, ow), dtype=np.int32)
        self._launch("maxpool2d_forward", kernel_name("maxpool2d_forward", version),
                     *one_thread_per(y.size), (y, sw, x, i32(n), i32(c), i32(h), i32(wd), i32(k)))
        return y, sw

    def _place_at_switches(self, op, version, src, switches, hw):
        """maxpool2d_backward and unpool2d_forward: src placed at its switches in an (H, W)
        plane, zeros elsewhere. Where no window size fits the plane, the gather runs as the
        scatter (launch_spec.gather_window_bracket), as on the numba backend."""
        n, c, oh, ow = src.shape
        h, wd = hw
        _check_int32(n, out=n * c * h * wd)
        bracket = gather_window_bracket((oh, ow), hw) if version == "gather" else None
        if bracket is None:
            version = "naive"
        out = self._empty((n, c, h, wd), zero=(version == "naive"))
        dims = (i32(n), i32(c), i32(h), i32(wd), i32(oh), i32(ow))
        if version == "naive":     # scatter: one thread per pooled value, into a zeroed plane
            self._launch(op, kernel_name(op, "naive"), *one_thread_per(src.size),
                         (out, src, switches, *dims))
        else:                      # gather: one thread per output pixel
            kmin, kmax = bracket
            self._launch(op, kernel_name(op, "gather"), *one_thread_per(out.size),
                         (out, src, switches, *dims, i32(kmin), i32(kmax)))
        return out

    def _maxpool2d_backward(self, dy, switches, input_hw, version):
        return self._place_at_switches("maxpool2d_backward", version, dy, switches, input_hw)

    def _unpool2d_forward(self, y, switches, output_hw, version):
        return self._place_at_switches("unpool2d_forward", version, y, switches, output_hw)

    def _unpool2d_backward(self, dx, switches, version):
        n, c, h, wd = dx.shape
        oh, ow = switches.shape[2:]
        _check_int32(n, dx=dx.size)
        dy = self._empty((n, c, oh, ow))
        self._launch("unpool2d_backward", kernel_name("unpool2d_backward", version),
                     *one_thread_per(dy.size),
                     (dy, dx, switches, i32(n), i32(c), i32(h), i32(wd), i32(oh), i32(ow)))
        return dy
