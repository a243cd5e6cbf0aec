"""Compile a CUDA C ``.cu`` file, unchanged, with g++ and launch its kernels on the CPU.

``EmuModule`` mirrors the two calls of ``cupy.RawModule`` the cupy backend uses, so the
backend's launch code is the same line for the GPU and the emulator::

    mod = EmuModule(path="kernels/conv2d/conv2d_forward.cu")   # or code="..."
    fn = mod.get_function("conv2d_forward_naive")
    fn(grid, block, (y, x, w, b, numpy.int32(N), ...), shared_mem=0)

Arrays are NumPy arrays (passed by pointer); scalars must be ``numpy.int32`` /
``numpy.float32`` (checked against the kernel's parameter types, because the GPU would
silently misread a wrongly sized scalar).

What the loader does to the source (line numbers are kept, so g++ errors point into the .cu):

* ``extern __shared__ T name[];`` becomes ``T* name = (T*)emu::dyn_smem();`` (a per-block
  buffer of the launch's ``shared_mem`` bytes);
* for every ``__global__`` function it appends an ``extern "C"`` wrapper
  ``__emu_launch_<name>`` that calls ``emu::launch`` (``cuda_emu.h``), and it notes whether the
  kernel's body calls ``__syncthreads()`` (fibers) or not (plain loop: the fast path).

Builds are cached by the hash of everything that goes into them, under
``$SCAE_NP_EMU_CACHE`` or ``~/.cache/scae_np/emu`` (a temp dir if that is not writable).
``asan=True`` (or ``SCAE_NP_EMU_ASAN=1``) builds with AddressSanitizer: the process must then
have libasan loaded first -- :func:`asan_env` gives the environment for a subprocess.
"""
from __future__ import annotations

import ctypes
import hashlib
import os
import re
import shutil
import subprocess
import tempfile
import threading

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
HEADER = os.path.join(HERE, "cuda_emu.h")
INCLUDE = os.path.join(HERE, "include")          # stand-ins for headers it refuses

CXX = os.environ.get("CXX", "g++")
FLAGS = ["-std=c++20", "-O2", "-fPIC", "-shared", "-pthread", "-w"]
ASAN_FLAGS = ["-std=c++20", "-O1", "-g", "-fPIC", "-shared", "-pthread", "-w",
              "-fsanitize=address", "-fno-omit-frame-pointer"]


class EmulatorError(RuntimeError):
    """The emulator could not build or launch a kernel; the message says why."""


class EmulatorCompileError(EmulatorError):
    """g++ rejected the .cu file (including the emulator's refusals, e.g. warp shuffles)."""


def asan_enabled(asan=None):
    if asan is not None:
        return bool(asan)
    return os.environ.get("SCAE_NP_EMU_ASAN", "") not in ("", "0")


def asan_env(env=None):
    """Environment for a subprocess that loads ASan-built kernels (libasan preloaded)."""
    env = dict(os.environ if env is None else env)
    lib = subprocess.run([CXX, "-print-file-name=libasan.so"], capture_output=True,
                         text=True, check=True).stdout.strip()
    env["LD_PRELOAD"] = lib
    env["ASAN_OPTIONS"] = env.get("ASAN_OPTIONS", "detect_leaks=0")
    env["SCAE_NP_EMU_ASAN"] = "1"
    return env


def cache_dir():
    cands = []
    if os.environ.get("SCAE_NP_EMU_CACHE"):
        cands.append(os.environ["SCAE_NP_EMU_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    cands.append(os.path.join(base, "scae_np", "emu"))
    cands.append(os.path.join(tempfile.gettempdir(), f"scae_np_emu_{os.getuid()}"))
    for d in cands:
        try:
            os.makedirs(d, exist_ok=True)
            if os.access(d, os.W_OK):
                return d
        except OSError:
            continue
    raise EmulatorError(f"no writable cache directory for emulator builds (tried {cands}); "
                        f"set SCAE_NP_EMU_CACHE")


# ------------------------------------------------------------------ source analysis
def _blank_comments(src):
    """``src`` with comments and string literals replaced by spaces (newlines kept), so
    positions and line numbers match the original."""
    out, i, n = list(src), 0, len(src)
    while i < n:
        if src.startswith("//", i):
            j = src.find("\n", i)
            j = n if j < 0 else j
        elif src.startswith("/*", i):
            j = src.find("*/", i + 2)
            j = n if j < 0 else j + 2
        elif src[i] == '"':
            j = i + 1
            while j < n and src[j] != '"':
                j += 2 if src[j] == "\\" else 1
            j += 1
        else:
            i += 1
            continue
        for k in range(i, min(j, n)):
            if out[k] != "\n":
                out[k] = " "
        i = j
    return "".join(out)


_KERNEL = re.compile(r"__global__\s+void\s+(?:__launch_bounds__\s*\([^)]*\)\s*)?(\w+)\s*\(")
_FUNCTION = re.compile(r"\b(\w+)\s*\([^;{}()]*(?:\([^;{}()]*\)[^;{}()]*)*\)\s*(?:const\s*)?\{")
_NOT_FUNCTIONS = {"if", "for", "while", "switch", "catch", "return", "sizeof", "do"}
_EXTERN_SHARED = re.compile(
    r"extern\s+__shared__\s+(?:__align__\s*\(\s*\d+\s*\)\s*)?([\w:]+(?:\s*\*)?)\s+"
    r"(?:__align__\s*\(\s*\d+\s*\)\s*)?(\w+)\s*\[\s*\]\s*;")


def _body(clean, start):
    """Text of the brace-delimited body that follows position ``start``."""
    i = clean.index("{", start)
    depth = 0
    for j in range(i, len(clean)):
        if clean[j] == "{":
            depth += 1
        elif clean[j] == "}":
            depth -= 1
            if depth == 0:
                return clean[i:j + 1]
    raise EmulatorCompileError("unbalanced braces in the .cu source")


def analyse(src):
    """Rewrite dynamic shared memory; return (source, [(kernel, uses_syncthreads)])."""
    clean = _blank_comments(src)
    pieces, last = [], 0
    for m in _EXTERN_SHARED.finditer(clean):
        depth = clean.count("{", 0, m.start()) - clean.count("}", 0, m.start())
        t, name = src[m.start(1):m.end(1)], src[m.start(2):m.end(2)]
        if depth > 0:
            rep = f"{t}* {name} = reinterpret_cast<{t}*>(::emu::dyn_smem());"
        else:   # file scope: a macro, evaluated inside the kernel at run time
            at_line_start = m.start() == 0 or src[:m.start()].rstrip(" \t").endswith("\n")
            rep = (("" if at_line_start else "\n")
                   + f"#define {name} (reinterpret_cast<{t}*>(::emu::dyn_smem()))")
        pieces += [src[last:m.start()], rep]
        last = m.end()
    pieces.append(src[last:])
    out = "".join(pieces)
    clean = _blank_comments(out)
    # Functions that reach __syncthreads(), directly or through helpers they call: their
    # kernels need fibers; the others take the fast path (a plain loop over threads).
    bodies = {}
    for m in _FUNCTION.finditer(clean):
        if m.group(1) not in _NOT_FUNCTIONS:
            bodies[m.group(1)] = _body(clean, m.end() - 1)
    syncing = {"__syncthreads"}
    while True:
        more = {f for f, body in bodies.items() if f not in syncing
                and any(re.search(rf"\b{re.escape(g)}\s*\(", body) for g in syncing)}
        if not more:
            break
        syncing |= more
    kernels = []
    for m in _KERNEL.finditer(clean):
        kernels.append((m.group(1), m.group(1) in syncing))
    return out, kernels


def _wrappers(kernels):
    lines = ["\n// ---- appended by kernels/emulator/loader.py"]
    for name, _ in kernels:
        lines.append(
            f'extern "C" int __emu_launch_{name}(void* const* a, unsigned gx, unsigned gy, '
            f'unsigned gz, unsigned bx, unsigned by, unsigned bz, unsigned long long smem, '
            f'int fibers) {{ return ::emu::launch(&{name}, a, gx, gy, gz, bx, by, bz, smem, '
            f'fibers); }}')
        lines.append(f'extern "C" const char* __emu_signature_{name}() '
                     f'{{ return ::emu::signature(&{name}); }}')
    return "\n".join(lines) + "\n"


def _compiler_id():
    try:
        return subprocess.run([CXX, "--version"], capture_output=True, text=True).stdout
    except OSError as e:
        raise EmulatorError(f"the CUDA emulator needs a C++20 compiler ({CXX!r}: {e}); "
                            f"install g++ >= 12 or set CXX") from None


_lock = threading.Lock()
_loaded = {}


def _read(path, mode):
    with open(path, mode) as f:
        return f.read()


def build(src, filename="<string>", asan=None):
    """Compile ``src`` (CUDA C) into a cached shared library; return (path, kernels)."""
    asan = asan_enabled(asan)
    code, kernels = analyse(src)
    if not kernels:
        raise EmulatorCompileError(f"{filename}: no __global__ kernels found")
    full = f'#line 1 "{filename}"\n{code}{_wrappers(kernels)}'
    flags = ASAN_FLAGS if asan else FLAGS
    h = hashlib.sha256()
    for part in (full, _read(HEADER, "r"), " ".join(flags), _compiler_id()):
        h.update(part.encode())
        h.update(b"\0")
    for fn in sorted(os.listdir(INCLUDE)):
        h.update(_read(os.path.join(INCLUDE, fn), "rb"))
    base = os.path.splitext(os.path.basename(filename))[0] or "module"
    base = re.sub(r"[^\w.-]", "_", base)
    out = os.path.join(cache_dir(), f"{base}-{h.hexdigest()[:20]}{'-asan' if asan else ''}.so")
    if not os.path.exists(out):
        fd, tmp_src = tempfile.mkstemp(suffix=".cpp", dir=os.path.dirname(out))
        with os.fdopen(fd, "w") as f:
            f.write(full)
        tmp_so = tmp_src[:-4] + ".so"
        cmd = [CXX, *flags, "-I", INCLUDE, "-include", HEADER, "-x", "c++", tmp_src, "-o", tmp_so]
        try:
            r = subprocess.run(cmd, capture_output=True, text=True)
            if r.returncode != 0:
                raise EmulatorCompileError(
                    f"g++ could not compile {filename} for the CUDA emulator:\n{r.stderr.strip()}")
            os.replace(tmp_so, out)     # atomic: concurrent builders never see half a file
        finally:
            for p in (tmp_src, tmp_so):
                if os.path.exists(p):
                    os.unlink(p)
    return out, kernels


def _asan_loaded():
    return hasattr(ctypes.CDLL(None), "__asan_init")


class EmuKernel:
    """One kernel; call it like a ``cupy.RawKernel``: ``k(grid, block, args, shared_mem=0)``."""

    def __init__(self, module, name, fibers):
        self.name = name
        self.fibers = fibers
        self._module = module
        self._fn = getattr(module._lib, f"__emu_launch_{name}")
        self._fn.restype = ctypes.c_int
        self._fn.argtypes = [ctypes.c_void_p] + [ctypes.c_uint] * 6 + [ctypes.c_ulonglong,
                                                                        ctypes.c_int]
        sig = getattr(module._lib, f"__emu_signature_{name}")
        sig.restype = ctypes.c_char_p
        self.signature = sig().decode()

    _SCALARS = {"i": (np.int32, ctypes.c_int32), "u": (np.uint32, ctypes.c_uint32),
                "l": (np.int64, ctypes.c_int64), "f": (np.float32, ctypes.c_float),
                "d": (np.float64, ctypes.c_double)}

    def _marshal(self, args):
        if len(args) != len(self.signature):
            raise EmulatorError(f"{self.name} takes {len(self.signature)} arguments, "
                                f"got {len(args)}")
        keep, argv = [], (ctypes.c_void_p * max(len(args), 1))()
        for i, (a, k) in enumerate(zip(args, self.signature)):
            if k == "p":
                if not isinstance(a, np.ndarray):
                    raise EmulatorError(f"{self.name} argument {i} is a pointer: pass a "
                                        f"numpy.ndarray, got {type(a).__name__}")
                if not a.flags.c_contiguous:
                    raise EmulatorError(f"{self.name} argument {i}: array is not C-contiguous")
                c = ctypes.c_void_p(a.ctypes.data)
            elif k in self._SCALARS:
                want, ctype = self._SCALARS[k]
                if type(a) is not want:
                    raise EmulatorError(
                        f"{self.name} argument {i} is a {np.dtype(want).name} scalar: pass "
                        f"numpy.{np.dtype(want).name}(...), got {type(a).__name__} (on the GPU "
                        f"a wrongly sized scalar is silently misread)")
                c = ctype(a.item())
            else:
                raise EmulatorError(f"{self.name} argument {i} has a type the emulator cannot "
                                    f"pass; use pointers, int, unsigned, long long, float, double")
            keep.append(c)
            argv[i] = ctypes.addressof(c)
        return keep, argv

    def __call__(self, grid, block, args, shared_mem=0):
        grid = tuple(int(g) for g in (tuple(grid) + (1, 1, 1))[:3])
        block = tuple(int(b) for b in (tuple(block) + (1, 1, 1))[:3])
        keep, argv = self._marshal(args)
        rc = self._fn(ctypes.cast(argv, ctypes.c_void_p), *grid, *block, int(shared_mem),
                      int(self.fibers))
        del keep
        if rc != 0:
            last_error = getattr(self._module._lib, "__emu_last_error")  # (no name mangling)
            last_error.restype = ctypes.c_char_p
            msg = last_error().decode()
            raise EmulatorError(f"launch of {self.name} failed: {msg}")


class EmuModule:
    """A ``.cu`` file compiled for the CPU; the emulator's ``cupy.RawModule``."""

    def __init__(self, code=None, path=None, asan=None):
        if (code is None) == (path is None):
            raise ValueError("pass exactly one of code= or path=")
        if path is not None:
            with open(path) as f:
                code = f.read()
        self.asan = asan_enabled(asan)
        if self.asan and not _asan_loaded():
            raise EmulatorError(
                "ASan-built kernels must run in a process that loaded libasan first: run "
                "LD_PRELOAD=$(g++ -print-file-name=libasan.so) ASAN_OPTIONS=detect_leaks=0 "
                "SCAE_NP_EMU_ASAN=1 python ...  (kernels.emulator.asan_env() gives that "
                "environment for a subprocess)")
        key = (code, path, self.asan)
        with _lock:
            if key not in _loaded:
                so, kernels = build(code, path or "<string>", self.asan)
                _loaded[key] = (ctypes.CDLL(so), dict(kernels))
        self._lib, self._kernels = _loaded[key]
        self.kernels = tuple(self._kernels)
        self._cache = {}

    def get_function(self, name):
        if name not in self._kernels:
            raise EmulatorError(f"no __global__ kernel {name!r} in this module; it has "
                                f"{list(self._kernels)}")
        if name not in self._cache:
            self._cache[name] = EmuKernel(self, name, self._kernels[name])
        return self._cache[name]


def gxx_available():
    return shutil.which(CXX) is not None
