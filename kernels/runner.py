"""``python -m kernels OP``: validate, then time, every version of one op, llm.c style.

Modelled on llm.c's ``dev/cuda`` programs: one command per op takes the versions to run
(all of them by default, naive first, in the backend's ladder order), checks each against
the CPU reference *before* timing it, and prints one line per version with its time, the
napkin-maths speed (GFLOP/s for convolutions, GB/s for the memory-bound bias gradient and
pooling), its speed-up over ``naive`` and its validation error::

    python -m kernels conv2d_backward_weight --backend cupy --emulate --shape mnist-conv2 --batch 2
    python -m kernels maxpool2d_backward --backend numba --emulate --batch 2
    python -m kernels conv2d_forward --backend cupy --version naive tiled   # on a GPU
    python -m kernels --list                                                 # ops, versions, shapes

* **Validation**: the inputs, the reference and the tolerance come from
  :mod:`kernels.workloads` and :mod:`kernels.testing` (shared with ``bench/``): the NumPy
  ``naive`` definition in float64 at small sizes, NumPy ``fast`` in float64 at large ones;
  pooling exact on tie-free inputs, convolutions within ``8*sqrt(T)*eps*S``. A NaN is a
  failure. A version that fails is not timed; the command then exits 1 naming it.
* **Timing**: on a GPU, CUDA events around ``--repeat`` back-to-back calls after a warm-up
  call (device time; the calls skip the host-side argument checks). On the CPU emulator
  (cupy ``--emulate``), numba's simulator (numba ``--emulate``) and for NumPy: wall time of
  the same calls, labelled as such -- emulator and simulator times are **not GPU speeds**
  (they show what a version costs as CPU code, and the ranking can differ on a GPU).

numba's simulator must be chosen before numba is first imported: nothing here imports numba
before ``get_backend("numba", emulate=True)``, which sets ``NUMBA_ENABLE_CUDASIM=1`` itself
(``kernels/numba_backend.py``), so ``--backend numba --emulate`` works in a fresh process.

Exit status: 0 all versions valid, 1 a version failed validation, 2 bad usage (unknown
op/version/shape, bad ``--sizes``, a backend that cannot run here).
"""
from __future__ import annotations

import argparse
import sys
import time

import numpy as np

from . import workloads as W
from .backend import (BACKENDS, EMULATED, BackendUnavailableError, get_backend,
                      unavailable_reason)
from .contract import OPS
from .testing import CONV_OPS, op_tolerance

#: the NumPy ``naive`` loops are run only up to this many terms (a few seconds of Python)
#: unless named with --version
NAIVE_TIMING_TERMS = 3_000_000
#: default shapes when neither --shape nor --sizes is given
DEFAULT_SHAPE = {"conv": "mnist-conv2", "pool": "mnist-pool1"}
#: numba's simulator runs every CUDA thread as a Python thread (about 2,000 threads/s on
#: this project's 2-core machine): smaller defaults there
SIMULATOR_SHAPE = {"conv": "tiny-conv", "pool": "fig1-pool"}
#: batch of the named shapes under --emulate (unless --batch is given)
EMULATED_BATCH = 2
GPU_REPEAT, CPU_REPEAT, EMULATED_REPEAT = 20, 3, 1


class RunnerError(Exception):
    """Bad usage or an unusable backend: printed as ``error: ...``, exit status 2."""


# ------------------------------------------------------------------------------ parsing
def _positive(s):
    try:
        v = int(s)
    except ValueError:
        v = 0
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {s!r}")
    return v


def build_parser():
    p = argparse.ArgumentParser(
        prog="python -m kernels",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=(
            "Validate, then time, every version of one kernel op (llm.c dev/cuda style).\n"
            "Each version is checked against the NumPy reference before it is timed; one\n"
            "line per version: time, GFLOP/s or GB/s (napkin maths), speed-up over naive,\n"
            "validation error. Emulator/simulator times are wall times of CPU code, not GPU\n"
            "speeds."),
        epilog=(
            "examples:\n"
            "  python -m kernels --list\n"
            "  python -m kernels conv2d_forward --backend cupy --emulate --shape mnist-conv2 "
            "--batch 2\n"
            "  python -m kernels maxpool2d_backward --backend numba --emulate --batch 2\n"
            "  python -m kernels conv2d_backward_weight --backend numpy --shape tiny-conv\n"
            "  python -m kernels conv2d_forward --backend cupy --version naive tiled   "
            "# on a GPU\n\n"
            "exit status: 0 every version valid, 1 a version failed validation, 2 bad usage."))
    p.add_argument("op", nargs="?", metavar="OP", help=f"one of: {', '.join(OPS)}")
    p.add_argument("--list", action="store_true",
                   help="list the ops, every backend's versions of them, and the named shapes")
    p.add_argument("--backend", choices=tuple(BACKENDS), default=None,
                   help="kernels to run: cupy (CUDA C), numba (numba-cuda) or numpy "
                        "(default: cupy; with --list: every backend)")
    p.add_argument("--emulate", action="store_true",
                   help="run a GPU backend on the CPU: cupy in the project's CUDA emulator, "
                        "numba in numba's CUDA simulator (correctness, not GPU speed)")
    p.add_argument("--version", nargs="+", metavar="V", default=None,
                   help="versions to run, in this order (default: all, naive first)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--shape", metavar="NAME", default=None,
                   help=f"a named shape (see --list; default: {DEFAULT_SHAPE['conv']} for "
                        f"convolutions, {DEFAULT_SHAPE['pool']} for pooling; "
                        f"{SIMULATOR_SHAPE['conv']} / {SIMULATOR_SHAPE['pool']} in numba's "
                        f"simulator)")
    g.add_argument("--sizes", metavar="N,C,H,W,F,K", default=None,
                   help="explicit sizes: N,C,H,W,F,K for convolutions (batch, channels, "
                        "height, width, filters, kernel); N,C,H,W or N,C,H,W,K for pooling "
                        "(K: window, default 2)")
    p.add_argument("--batch", type=_positive, default=None,
                   help=f"batch of a named shape (default: {W.BATCH}; {EMULATED_BATCH} with "
                        f"--emulate)")
    p.add_argument("--repeat", type=_positive, default=None,
                   help=f"timed calls per version (default: {GPU_REPEAT} on a GPU, {CPU_REPEAT} "
                        f"for numpy, {EMULATED_REPEAT} with --emulate)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random inputs (default: 0)")
    return p


def parse_sizes(op, text):
    """The layer of ``--sizes`` for ``op``."""
    kind = W.layer_kind(op)
    want = "N,C,H,W,F,K" if kind == "conv" else "N,C,H,W or N,C,H,W,K"
    try:
        v = [int(t) for t in text.replace(" ", "").split(",")]
    except ValueError:
        raise RunnerError(f"--sizes {text!r}: expected integers {want} for {op}") from None
    counts = (6,) if kind == "conv" else (4, 5)
    if len(v) not in counts:
        raise RunnerError(f"--sizes {text!r}: {op} takes {want}, got {len(v)} numbers")
    if min(v) < 1:
        raise RunnerError(f"--sizes {text!r}: every size must be positive")
    if kind == "conv":
        n, c, h, w, f, k = v
        if k > h or k > w:
            raise RunnerError(f"--sizes {text!r}: the {k}x{k} kernel does not fit the "
                              f"{h}x{w} input")
        return W.ConvLayer("custom", c, f, h, w, k, n=n, note="--sizes")
    n, c, h, w, k = v + [2] * (5 - len(v))
    if k > h or k > w:
        raise RunnerError(f"--sizes {text!r}: the {k}x{k} window does not fit the {h}x{w} "
                          f"plane")
    return W.PoolLayer("custom", c, h, w, k, n=n, note="--sizes")


def pick_layer(op, shape=None, sizes=None, batch=None, backend=None):
    """The layer ``op`` runs on: ``--sizes``, else the named ``--shape`` (at ``--batch``),
    else the default shape of the op's kind for this backend."""
    kind = W.layer_kind(op)
    if sizes is not None:
        if batch is not None:
            raise RunnerError("--batch and --sizes both set the batch: give it as N in --sizes")
        return parse_sizes(op, sizes)
    named = W.named_shapes()
    emulated = bool(getattr(backend, "emulated", False))
    simulator = emulated and getattr(backend, "name", "") == "numba"
    if shape is None:
        shape = (SIMULATOR_SHAPE if simulator else DEFAULT_SHAPE)[kind]
    if shape not in named:
        raise RunnerError(f"unknown shape {shape!r}; the {kind} shapes are "
                          f"{[n for n, L in named.items() if L.kind == kind]} (or give "
                          f"--sizes)")
    L = named[shape]
    if L.kind != kind:
        raise RunnerError(f"{shape} is a {L.kind} shape, and {op} runs on {kind} shapes: "
                          f"{[n for n, M in named.items() if M.kind == kind]}")
    if batch is None and emulated and not shape.startswith("tiny"):
        batch = EMULATED_BATCH
    return W.with_batch(L, batch) if batch is not None else L


# ------------------------------------------------------------------------------ backend
def open_backend(name, emulate):
    """``get_backend(name, emulate=emulate)``, or a RunnerError that says what to do."""
    if name == "numpy" and emulate:
        raise RunnerError("--emulate runs a GPU backend (cupy or numba) on the CPU; the numpy "
                          "backend runs there already: drop --emulate")
    try:
        return get_backend(name, emulate=emulate)
    except BackendUnavailableError as e:
        if emulate:
            raise RunnerError(f"the {name} backend cannot be emulated here: {e}") from None
        raise RunnerError(
            f"the {name} backend cannot run here: {unavailable_reason(e)}.\n"
            f"  Add --emulate to run {EMULATED[name]} (checks correctness; its times are "
            f"not GPU speeds), or use --backend numpy. On a machine with an NVIDIA GPU: "
            f"pip install -e '.[cuda13]' (or '.[cuda12]').") from None


def describe_backend(be):
    if be.name == "numpy":
        return "numpy (CPU)"
    if be.emulated:
        return ("cupy, emulated: the CUDA C kernels compiled by g++ and run on the CPU emulator"
                if be.name == "cupy" else
                "numba, emulated: numba's CUDA simulator (every CUDA thread a Python thread)")
    return f"{be.name} on {gpu_name(be)}"


def on_gpu(be):
    return be.name != "numpy" and not be.emulated


def gpu_name(be):
    try:
        props = be.xp.cuda.runtime.getDeviceProperties(be.xp.cuda.Device().id)
        name = props["name"]
        return name.decode() if isinstance(name, bytes) else str(name)
    except Exception:  # noqa: BLE001 - a label only
        return "the GPU"


# ------------------------------------------------------------------------------ timing
def time_calls(be, fn, repeat):
    """Seconds per call of ``fn()`` (mean of ``repeat`` back-to-back calls).

    GPU: one warm-up call, then CUDA events (CuPy's, on the current stream, which the numba
    backend launches on too) around the ``repeat`` calls: device time, not host time.
    CPU (numpy, emulator, simulator): ``time.perf_counter`` around the calls (the
    validation call before it was the warm-up)."""
    if on_gpu(be):
        cupy = be.xp
        fn()
        start, end = cupy.cuda.Event(), cupy.cuda.Event()
        start.record()
        for _ in range(repeat):
            fn()
        end.record()
        end.synchronize()
        return cupy.cuda.get_elapsed_time(start, end) / 1e3 / repeat
    t0 = time.perf_counter()
    for _ in range(repeat):
        fn()
    be.synchronize()
    return (time.perf_counter() - t0) / repeat


def timing_label(be, repeat):
    calls = f"{repeat} call{'s' if repeat > 1 else ''}"
    if on_gpu(be):
        return (f"CUDA events around {calls} back-to-back after a warm-up call: device time "
                f"on {gpu_name(be)}")
    if be.name == "numpy":
        return f"wall time on the CPU, mean of {calls} after the validation call"
    what = "the CPU emulator" if be.name == "cupy" else "numba's CUDA simulator"
    return (f"wall time of {what}, mean of {calls} after the validation call.\n"
            f"        NOT a GPU speed: it shows what each version costs as CPU code; the "
            f"ranking can differ on a GPU")


# ------------------------------------------------------------------------------ the run
class Case:
    """One op on one layer: host inputs, napkin maths, references (computed once each)."""

    def __init__(self, op, layer, seed=0):
        self.op, self.layer = op, layer
        self.args = W.inputs(op, layer, seed=seed)
        self.flop, self.bytes = W.napkin(op, layer)
        self.metric = W.metric(op)
        self._refs = {}
        self._tol = None

    def reference(self, version):
        if version not in self._refs:
            self._refs[version] = W.compute_reference(self.op, self.args, version)
        return self._refs[version]

    def tolerance(self):
        if self._tol is None:
            self._tol = op_tolerance(self.op, *self.args, dtype=np.float32)
        return self._tol

    def rate(self, seconds):
        amount = self.flop if self.metric == "GFLOP/s" else self.bytes
        return amount / seconds / 1e9

    def error(self, result, ref):
        """Validation error of a result that passed: max |err| and max err/tol, or 'exact'."""
        if self.op not in CONV_OPS:
            return "exact"
        err = np.abs(np.asarray(result, np.float64) - ref)
        return f"{err.max():>8.1e}  {(err / self.tolerance()).max():7.3f}"


def run_versions(be, op, layer, versions, repeat, seed=0, explicit=(), out=None):
    """Validate then time each version; print one line each. Returns the failed versions
    as ``{version: message}``."""
    out = out or (lambda s: print(s, flush=True))
    case = Case(op, layer, seed)
    dev_args = tuple(be.to_device(a) if isinstance(a, np.ndarray) else a for a in case.args)
    checked = getattr(be, op)
    failed, times = {}, {}
    terms = W.reference_terms(op, layer)
    out(f"{'version':<20}{'time/call':>12}{case.metric:>11}{'vs naive':>10}   "
        + ("max|err|  err/tol" if op in CONV_OPS else "validation"))
    for v in versions:
        if be.name == "numpy" and v == "naive" and terms > NAIVE_TIMING_TERMS \
                and v not in explicit:
            out(f"{v:<20}skipped: explicit Python loops over {terms:.1e} terms at this shape "
                f"(minutes); name it with --version naive to run it anyway")
            continue
        ref_name = W.reference_version(op, layer, under_test=(be.name, v))
        try:
            result = checked(*dev_args, version=v)
            if isinstance(result, tuple):
                result = tuple(np.asarray(be.to_host(r)) for r in result)
            else:
                result = np.asarray(be.to_host(result))
            W.validate(op, case.args, result, case.reference(ref_name))
        except Exception as e:  # noqa: BLE001 - a failing version is reported, not raised
            msg = f"{type(e).__name__}: {e}" if not isinstance(e, AssertionError) else str(e)
            failed[v] = msg
            out(f"{v:<20}FAILED validation against numpy {ref_name}: {msg}")
            continue
        raw = be.get_op(op, v)
        seconds = time_calls(be, lambda: raw(*dev_args), repeat)
        times[v] = seconds
        speedup = f"{times['naive'] / seconds:.2f}x" if "naive" in times else "—"
        ref = case.reference(ref_name)
        err = case.error(result, ref)
        out(f"{v:<20}{format_seconds(seconds):>12}{_fmt_rate(case.rate(seconds)):>11}{speedup:>10}   "
            f"{err}")
    return failed, case


def format_seconds(s):
    """A duration for tables: s, ms or µs, 2-3 significant decimals (runner and bench)."""
    if s >= 1:
        return f"{s:.2f} s"
    if s >= 1e-3:
        return f"{s * 1e3:.2f} ms"
    return f"{s * 1e6:.1f} µs"


def _fmt_rate(r):
    if r < 1e-3:
        return f"{r:.1e}"
    return f"{r:.{0 if r >= 100 else 1 if r >= 10 else 2 if r >= 1 else 3}f}"


def _fmt_amount(n, unit):
    for scale, prefix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if n >= scale:
            return f"{n / scale:.3g} {prefix}{unit}"
    return f"{n} {unit}"


def _arg_shapes(case):
    parts = []
    for a in case.args:
        if isinstance(a, np.ndarray):
            parts.append(f"{a.dtype}{tuple(a.shape)}")
        else:
            parts.append(repr(a))
    return ", ".join(parts)


def run(args, out=None):
    out = out or (lambda s: print(s, flush=True))
    if args.op is None:
        raise RunnerError("name an op (one of: " + ", ".join(OPS) + "), or --list")
    if args.op not in OPS:
        raise RunnerError(f"unknown op {args.op!r}; the ops are: {', '.join(OPS)}")
    be = open_backend(args.backend or "cupy", args.emulate)
    versions = list(be.versions(args.op))
    if args.version:
        unknown = [v for v in args.version if v not in versions]
        if unknown:
            raise RunnerError(f"the {be.name} backend has no version {unknown[0]!r} of "
                              f"{args.op}; its versions are: {', '.join(versions)}")
        versions = list(dict.fromkeys(args.version))
    layer = pick_layer(args.op, args.shape, args.sizes, args.batch, be)
    repeat = args.repeat or (GPU_REPEAT if on_gpu(be) else
                             EMULATED_REPEAT if be.emulated else CPU_REPEAT)
    where = f": {layer.note}" if layer.note else ""
    out(f"{args.op} on {layer.name} = {layer.describe()}{where}")
    out(f"backend: {describe_backend(be)}")
    flop, nbytes = W.napkin(args.op, layer)
    work = _fmt_amount(flop, "FLOP") if flop else "no FLOP (it compares and moves values)"
    out(f"napkin maths per call: {work}, {_fmt_amount(nbytes, 'B')} minimum traffic (inputs "
        f"read once, output written once); speed in {W.metric(args.op)}")
    ref = W.reference_version(args.op, layer)
    tol = ("exact match" if args.op not in CONV_OPS else
           "|err| <= 8*sqrt(T)*eps*S (kernels/testing.py)")
    out(f"validation: against numpy {ref}{' in float64' if args.op in CONV_OPS else ''} on "
        f"the same inputs, {tol}" + ("; numpy fast is checked against numpy "
                                     + ("im2col" if args.op in CONV_OPS else "argmax")
                                     if ref == "fast" and be.name == "numpy" else ""))
    out(f"timing: {timing_label(be, repeat)}")
    out("")
    failed, case = run_versions(be, args.op, layer, versions, repeat, seed=args.seed,
                                explicit=tuple(args.version or ()), out=out)
    out("")
    if failed:
        names = ", ".join(failed)
        raise ValidationFailed(
            f"{len(failed)} of {len(versions)} versions of {args.op} on the {be.name} backend"
            f"{' (emulated)' if be.emulated else ''} failed validation: {names}")
    out(f"inputs: {_arg_shapes(case)}; every version run matches the reference.")
    return 0


class ValidationFailed(Exception):
    """A version did not match the reference: exit status 1."""


# ------------------------------------------------------------------------------ --list
def list_everything(backend=None, emulate=False, out=None):
    out = out or print
    names = [backend] if backend else list(BACKENDS)
    bes, why = {}, {}
    for name in names:
        tries = [emulate] if backend else ([False] if name == "numpy" else [False, True])
        for emu in tries:
            try:
                bes[name] = open_backend(name, emu)
                break
            except RunnerError as e:
                why[name] = str(e).splitlines()[0]
    out("ops and their versions per backend, naive first (* = the backend's default):")
    for op in OPS:
        out(f"  {op}")
        for name, be in bes.items():
            label = f"{name}{' (emulated)' if be.emulated else ''}:"
            vs = [v + ("*" if v == be.default_version(op) else "") for v in be.versions(op)]
            out(f"    {label:<18}{' '.join(vs)}")
    for name, msg in why.items():
        if name not in bes:
            out(f"  {name}: not available here: {msg}")
    out("")
    out("shapes (--shape NAME; the batch is --batch, default "
        f"{W.BATCH}, {EMULATED_BATCH} with --emulate):")
    for name, L in W.named_shapes().items():
        out(f"  {L.kind}  {name:<13}{L.describe().rsplit(', N=', 1)[0]:<24}{L.note}")
    out("")
    out(f"default shapes: {DEFAULT_SHAPE['conv']} (convolutions), {DEFAULT_SHAPE['pool']} "
        f"(pooling); in numba's simulator {SIMULATOR_SHAPE['conv']} and "
        f"{SIMULATOR_SHAPE['pool']}")
    return 0


# ------------------------------------------------------------------------------ main
def main(argv=None):
    args = build_parser().parse_args(sys.argv[1:] if argv is None else list(argv))
    try:
        if args.list:
            return list_everything(args.backend, args.emulate)
        return run(args)
    except RunnerError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except ValidationFailed as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
