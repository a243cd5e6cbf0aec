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

* a local ``#include "name"`` (next to the ``.cu`` file, or in ``include_dirs``) is replaced
  by the header's text between ``#line`` directives (``kernels/cuda_source.py``), so the
  rewrites below, the barrier search and the build cache's hash see the header too;
* ``extern __shared__ T name[];`` becomes ``T* name = (T*)emu::dyn_smem();`` (a per-block
  buffer of the launch's ``shared_mem`` bytes);
* ``__shared__ T name[...];`` becomes ``using A = T[...]; A& name = emu::static_smem<A, id,
  align>();`` -- a slot of the running block's shared memory; both kinds are filled with
  0xFF bytes (NaN) at the start of every block;
* for every ``__global__`` function it appends an ``extern "C"`` wrapper
  ``__emu_launch_<name>`` that calls ``emu::launch`` (``cuda_emu.h``), and it notes whether the
  kernel reaches a barrier or a warp primitive (fibers) or not (plain loop: the fast path),
  and whether it reaches an ``atomic*`` call (for the race check's tolerance).

``SCAE_NP_EMU_RACECHECK=1`` makes every launch a race check (:class:`EmuKernel`). The checks
and what they cannot see: kernels/emulator/README.md.

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

from ..cuda_source import blank_comments as _blank_comments
from ..cuda_source import inline_includes, location, read_cu

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
_KERNEL = re.compile(r"__global__\s+void\s+(?:__launch_bounds__\s*\([^)]*\)\s*)?(\w+)\s*\(")
_FUNCTION = re.compile(r"\b(\w+)\s*\([^;{}()]*(?:\([^;{}()]*\)[^;{}()]*)*\)\s*(?:const\s*)?\{")
_NOT_FUNCTIONS = {"if", "for", "while", "switch", "catch", "return", "sizeof", "do"}
_EXTERN_SHARED = re.compile(
    r"extern\s+__shared__\s+(?:__align__\s*\(\s*\d+\s*\)\s*)?((?:[\w:]+\s+)*?[\w:]+(?:\s*\*)?)\s*"
    r"(?<=[\s*])(?:__align__\s*\(\s*\d+\s*\)\s*)?(\w+)\s*\[\s*\]\s*;")
_SHARED = re.compile(r"\b__shared__\b")
_ALIGN = re.compile(r"\b(?:__align__|alignas)\s*\(\s*([^()]*)\s*\)")
_IDENT = re.compile(r"[A-Za-z_]\w*")

#: calls that make a kernel need one fiber per thread (it blocks and waits for others)
BLOCKING = ("__syncthreads", "__syncthreads_count", "__syncthreads_and", "__syncthreads_or",
            "__syncwarp", "__shfl_sync", "__shfl_up_sync", "__shfl_down_sync",
            "__shfl_xor_sync", "__ballot_sync", "__any_sync", "__all_sync", "__activemask")


class Kernel(tuple):
    """(name, fibers, atomics) of one ``__global__`` function: whether it needs fibers (it
    reaches a barrier or a warp primitive) and whether it reaches an ``atomic*`` call."""

    def __new__(cls, name, fibers, atomics=False):
        return super().__new__(cls, (name, fibers, atomics))

    name = property(lambda self: self[0])
    fibers = property(lambda self: self[1])
    atomics = property(lambda self: self[2])


def _body(clean, start):
    """Text of the brace-delimited body that follows position ``start``."""
    return clean[start:_body_end(clean, start)]


def _body_end(clean, start):
    i = clean.index("{", start)
    depth = 0
    for j in range(i, len(clean)):
        if clean[j] == "{":
            depth += 1
        elif clean[j] == "}":
            depth -= 1
            if depth == 0:
                return j + 1
    raise EmulatorCompileError("unbalanced braces in the .cu source")


def _split_top(text, sep=","):
    """``text`` split at ``sep`` outside (), [] and <>."""
    parts, depth, cur = [], 0, []
    for ch in text:
        if ch in "([<":
            depth += 1
        elif ch in ")]>":
            depth -= 1
        if ch == sep and depth == 0:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    parts.append("".join(cur))
    return parts


def _rewrite_static_shared(src, filename):
    """Every ``__shared__ T name[...];`` in a function body becomes a reference to a slot of
    the running block's shared memory, filled with 0xFF bytes at the start of each block::

        using __emu_shared_t7 = T[...];
        __emu_shared_t7& name = ::emu::static_smem<__emu_shared_t7, 7, align>();

    on the same line (line numbers are kept). File-scope ``__shared__`` variables and
    declarations inside ``#define``s are refused with the reason."""
    clean = _blank_comments(src)
    bodies = [(m.end() - 1, _body_end(clean, m.end() - 1)) for m in _FUNCTION.finditer(clean)
              if m.group(1) not in _NOT_FUNCTIONS]
    pieces, last, sid = [], 0, 0
    for m in _SHARED.finditer(clean):
        where = location(src, m.start(), filename)
        line_start = clean.rfind("\n", 0, m.start()) + 1
        if clean[line_start:m.start()].lstrip().startswith("#"):
            raise EmulatorCompileError(
                f"{where}: __shared__ inside a #define: the CPU emulator rewrites each "
                f"__shared__ declaration where it stands and cannot see through macros; write "
                f"the declaration in the function body")
        if not any(a < m.start() < b for a, b in bodies):
            raise EmulatorCompileError(
                f"{where}: a __shared__ variable outside a function: the CPU emulator gives "
                f"each block its own shared memory and supports __shared__ declarations only "
                f"inside a kernel or __device__ function body; move it there")
        # the declaration starts after the previous statement, on the line of __shared__
        # (qualifiers before it on that line are parsed; lines above, e.g. #pragma, stay)
        begin = max([clean.rfind(c, 0, m.start()) + 1 for c in ";{}"] + [line_start])
        end = clean.find(";", m.end())
        prefix, decl = clean[begin:m.start()], clean[m.end():end]
        if end < 0 or "{" in decl or "=" in decl:
            raise EmulatorCompileError(
                f"{where}: cannot parse this __shared__ declaration for the CPU emulator "
                f"(expected `__shared__ type name[dims];`, no initializer)")
        align = "0"
        spec = prefix + " " + decl
        for a in _ALIGN.finditer(spec):
            align = f"({a.group(1)})"
        spec = _ALIGN.sub(" ", spec)
        quals = [q for q in ("volatile", "const") if re.search(rf"\b{q}\b", prefix)]
        leftover = re.sub(r"\b(?:volatile|const|static)\b", " ", _ALIGN.sub(" ", prefix))
        if leftover.strip():
            raise EmulatorCompileError(
                f"{where}: cannot parse {leftover.strip()!r} before __shared__ for the CPU "
                f"emulator")
        parts = _split_top(_ALIGN.sub(" ", decl))
        first = parts[0]
        bracket = first.find("[")
        head = first if bracket < 0 else first[:bracket]
        names = list(_IDENT.finditer(head))
        if len(names) < 2:
            raise EmulatorCompileError(
                f"{where}: cannot find the type and name in this __shared__ declaration")
        name0 = names[-1]
        base = " ".join(quals + [head[:name0.start()].strip()])
        base_nostar = base.rstrip("*& ")
        out = []
        for i, part in enumerate(parts):
            if i == 0:
                typ, name = base, name0.group(0)
                dims = first[len(head):] if bracket >= 0 else ""
            else:
                pm = re.match(r"\s*([*&\s]*)([A-Za-z_]\w*)\s*(.*)$", part, re.S)
                if not pm or (pm.group(3).strip() and not pm.group(3).strip().startswith("[")):
                    raise EmulatorCompileError(
                        f"{where}: cannot parse declarator {part.strip()!r} of this __shared__ "
                        f"declaration for the CPU emulator")
                typ = base_nostar + pm.group(1).replace(" ", "")
                name, dims = pm.group(2), pm.group(3)
            alias = f"__emu_shared_t{sid}"
            dims = re.sub(r"\s*([\[\]])\s*", r"\1", " ".join(dims.split()))
            out.append(f"using {alias} = {typ.strip()}{dims}; {alias}& {name} = "
                       f"::emu::static_smem<{alias}, {sid}, {align}>();")
            sid += 1
        pieces += [src[last:begin], "\n" * src.count("\n", begin, m.start()), " ".join(out),
                   "\n" * src.count("\n", m.start(), end + 1)]
        last = end + 1
    pieces.append(src[last:])
    return "".join(pieces)


def analyse(src, filename="<string>"):
    """Rewrite shared memory (dynamic and static) for the emulator; return (source,
    [Kernel(name, fibers, atomics)])."""
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
    out = _rewrite_static_shared("".join(pieces), filename)
    clean = _blank_comments(out)
    # Functions that reach a barrier or a warp primitive, directly or through helpers they
    # call: their kernels need fibers; the others take the fast path (a plain loop over
    # threads). The same closure finds the kernels that use atomics (the race check compares
    # their float results within a tolerance).
    bodies = {}
    for m in _FUNCTION.finditer(clean):
        if m.group(1) not in _NOT_FUNCTIONS:
            bodies[m.group(1)] = _body(clean, m.end() - 1)

    def reaching(seeds, pattern):
        found = {f for f, body in bodies.items() if re.search(pattern, body)} | set(seeds)
        while True:
            more = {f for f, body in bodies.items() if f not in found
                    and any(re.search(rf"\b{re.escape(g)}\s*\(", body) for g in found)}
            if not more:
                return found
            found |= more

    blocking = reaching(BLOCKING, r"\b(?:%s)\s*\(" % "|".join(BLOCKING))
    atomic = reaching((), r"\batomic[A-Z]\w*\s*\(")
    kernels = []
    for m in _KERNEL.finditer(clean):
        k = m.group(1)
        kernels.append(Kernel(k, k in blocking, k in atomic))
    return out, kernels


def _wrappers(kernels):
    lines = ["\n// ---- appended by kernels/emulator/loader.py"]
    for name, *_ in kernels:
        lines.append(
            f'extern "C" int __emu_launch_{name}(void* const* a, unsigned gx, unsigned gy, '
            f'unsigned gz, unsigned bx, unsigned by, unsigned bz, unsigned long long smem, '
            f'int fibers, int order, unsigned long long seed) {{ return ::emu::launch(&{name}, '
            f'a, gx, gy, gz, bx, by, bz, smem, fibers, order, seed); }}')
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
    code, kernels = analyse(src, filename)
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


def racecheck_enabled():
    """``SCAE_NP_EMU_RACECHECK=1`` in the environment (read at every launch)."""
    return os.environ.get("SCAE_NP_EMU_RACECHECK", "").strip() not in ("", "0")


def racecheck_seed():
    """The seed of the race check's shuffled thread order (``SCAE_NP_EMU_RACECHECK_SEED``)."""
    return int(os.environ.get("SCAE_NP_EMU_RACECHECK_SEED", "1"))


#: thread orders of cuda_emu.h (emu::Order) the race check compares with index order
RACE_ORDERS = ((1, "reverse"), (2, "shuffled"))


class EmuKernel:
    """One kernel; call it like a ``cupy.RawKernel``: ``k(grid, block, args, shared_mem=0)``.

    With ``SCAE_NP_EMU_RACECHECK=1`` in the environment every call runs the launch three times
    from the same inputs -- threads in index order, reversed, and shuffled (a seeded order,
    new for every block and barrier interval; blocks reversed / permuted too) -- and raises
    :class:`EmulatorError` ("race") if any array argument ends up different: bit for bit,
    except for kernels that use atomics, whose arrays listed in ``race_tolerance`` (a callable
    returning ``{argument index: absolute tolerance array}``, evaluated only then) may differ
    by that much (the order of float atomicAdds changes the rounding)."""

    def __init__(self, module, name, info):
        self.name = name
        self.fibers = info.fibers
        self.atomics = info.atomics
        self._module = module
        self._fn = getattr(module._lib, f"__emu_launch_{name}")
        self._fn.restype = ctypes.c_int
        self._fn.argtypes = ([ctypes.c_void_p] + [ctypes.c_uint] * 6
                             + [ctypes.c_ulonglong, ctypes.c_int, ctypes.c_int, ctypes.c_ulonglong])
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

    def _launch(self, grid, block, argv, shared_mem, order=0, seed=0):
        rc = self._fn(ctypes.cast(argv, ctypes.c_void_p), *grid, *block, int(shared_mem),
                      int(self.fibers), int(order), int(seed))
        if rc != 0:
            last_error = getattr(self._module._lib, "__emu_last_error")  # (no name mangling)
            last_error.restype = ctypes.c_char_p
            msg = last_error().decode()
            how = "" if order == 0 else f" (threads in {dict(RACE_ORDERS)[order]} order)"
            raise EmulatorError(f"launch of {self.name} failed{how}: {msg}")

    def __call__(self, grid, block, args, shared_mem=0, race_tolerance=None):
        grid = tuple(int(g) for g in (tuple(grid) + (1, 1, 1))[:3])
        block = tuple(int(b) for b in (tuple(block) + (1, 1, 1))[:3])
        keep, argv = self._marshal(args)
        if not racecheck_enabled():
            self._launch(grid, block, argv, shared_mem)
        else:
            self._race_checked(grid, block, args, argv, shared_mem, race_tolerance)
        del keep

    def _race_checked(self, grid, block, args, argv, shared_mem, race_tolerance):
        arrays = [(i, a) for i, a in enumerate(args) if isinstance(a, np.ndarray)]
        before = [a.copy() for _, a in arrays]
        self._launch(grid, block, argv, shared_mem)
        first = [a.copy() for _, a in arrays]
        tol = {}
        if self.atomics and race_tolerance is not None:
            tol = race_tolerance()
        seed = racecheck_seed()
        for order, what in RACE_ORDERS:
            for (_, a), b in zip(arrays, before):
                _restore(a, b)
            self._launch(grid, block, argv, shared_mem, order, seed)
            for (i, a), f in zip(arrays, first):
                bad = _differs(a, f, tol.get(i))
                if bad is not None:
                    n, j = bad
                    raise EmulatorError(
                        f"race in kernel {self.name}: argument {i} differs when the threads of "
                        f"each block run in {what} order between barriers instead of index "
                        f"order ({n} of {a.size} elements; first at flat index {j}: "
                        f"{f.reshape(-1)[j].item()!r} in index order, "
                        f"{a.reshape(-1)[j].item()!r} {what}). "
                        f"The result depends on the order threads run in: a missing "
                        f"__syncthreads() between a write and a read of shared memory, threads "
                        f"writing the same element, or a read of another thread's output. "
                        f"(race check: SCAE_NP_EMU_RACECHECK=1, "
                        f"SCAE_NP_EMU_RACECHECK_SEED={seed}; grid {grid}, block {block})")
        for (_, a), f in zip(arrays, first):
            _restore(a, f)


def _restore(a, saved):
    if a.flags.writeable:
        np.copyto(a, saved)
    else:     # a read-only input: the kernel may not write it, but the check must restore it
        ctypes.memmove(a.ctypes.data, saved.ctypes.data, saved.nbytes)


def _differs(a, b, tol=None):
    """None if ``a`` equals ``b`` bit for bit (or within ``tol``), else (count, first index)."""
    ab, bb = a.reshape(-1).view(np.uint8), b.reshape(-1).view(np.uint8)
    if np.array_equal(ab, bb):
        return None
    if tol is not None and a.dtype.kind == "f":
        x, y = a.reshape(-1).astype(np.float64), b.reshape(-1).astype(np.float64)
        t = np.broadcast_to(np.asarray(tol, np.float64), a.shape).reshape(-1)
        same_nan = np.isnan(x) & np.isnan(y)
        bad = ~(same_nan | (np.abs(x - y) <= t))
    else:
        item = a.dtype.itemsize
        bad = (ab != bb).reshape(-1, item).any(axis=1) if item else np.zeros(0, bool)
    if not bad.any():
        return None
    return int(bad.sum()), int(np.argmax(bad))


class EmuModule:
    """A ``.cu`` file compiled for the CPU; the emulator's ``cupy.RawModule``."""

    def __init__(self, code=None, path=None, asan=None, include_dirs=()):
        if (code is None) == (path is None):
            raise ValueError("pass exactly one of code= or path=")
        # local headers inlined (kernels/cuda_source.py): the file's own directory, then
        # include_dirs (cupy.RawModule's "-I" options) -- g++ compiles a copy elsewhere
        if path is not None:
            code = read_cu(path, include_dirs)
        else:
            code = inline_includes(code, "<string>", include_dirs)
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
                _loaded[key] = (ctypes.CDLL(so), {k.name: k for k in kernels})
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
