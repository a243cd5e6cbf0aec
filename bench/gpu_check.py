"""Helpers of ``bench/gpu_check.sh`` (the prepared GPU check; see that script's header).

``python bench/gpu_check.py env OUT.json [--rehearse]``
    Environment facts as JSON: nvidia-smi's GPU rows, the device's name, compute capability
    and SM count (CuPy, then numba), Python and the versions of the packages the project
    uses, where ``compute-sanitizer`` is, and the CPU. Never fails for a missing piece: it
    records why that piece is missing.

``python bench/gpu_check.py ops [--backends cupy,numba] [--emulate] [--versions all|default] [--small]``
    The sanitizer's small op set: every op of the contract once per backend (every version
    with ``all``), at small shapes that are not multiples of any block or tile (so the bounds
    checks and remainders run), each result checked against the NumPy backend in float64
    (``kernels.testing.assert_op_close``; pooling exact). Prints one line per launch and
    exits 1 naming any version that is wrong or raised. ``--small``: one tiny (still odd)
    shape per op, for numba's simulator. Under ``compute-sanitizer`` this is the program the
    tool watches; with ``SCAE_NP_CHECK_NO_POOL=1`` CuPy's memory pool (both GPU backends
    compute on CuPy arrays) is turned off, so memcheck sees every allocation's exact bounds.

``python bench/gpu_check.py counts (--junit FILE.xml | --bench FILE.json)``
    How many tests passed / failed / were skipped (a pytest junit XML), or how many
    benchmarks were timed (a pytest-benchmark JSON); exits 1 when nothing passed or was
    timed -- a GPU tier where every test skipped is no check.

``python bench/gpu_check.py summary OUTDIR --mode gpu|rehearse --seconds S``
    OUTDIR/summary.json from OUTDIR/steps.jsonl (one JSON line per step, written by the
    shell script) and OUTDIR/env.json. Exits 1 when a step failed or timed out.
"""
from __future__ import annotations

import argparse
import datetime
import glob
import json
import os
import platform
import shutil
import subprocess
import sys
import traceback

import numpy as np

PACKAGES = ("numpy", "cupy-cuda13x", "cupy-cuda12x", "cupy", "numba", "numba-cuda",
            "cuda-python", "cuda-bindings", "torch", "pytest", "pytest-benchmark", "hypothesis",
            "matplotlib", "tqdm", "nvidia-cuda-nvrtc", "nvidia-nvjitlink", "nvidia-nvvm")


def _run(cmd, timeout=20):
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        return (p.stdout if p.returncode == 0 else f"exit {p.returncode}: {p.stderr}").strip()
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"{type(e).__name__}: {e}"


def find_sanitizer():
    """The compute-sanitizer binary: PATH, the CUDA toolkit folders, pip's nvidia wheels."""
    p = shutil.which("compute-sanitizer")
    if p:
        return p
    cands = sorted(glob.glob("/usr/local/cuda*/bin/compute-sanitizer")
                   + glob.glob("/usr/local/cuda*/compute-sanitizer/compute-sanitizer")
                   + glob.glob("/opt/nvidia/*/bin/compute-sanitizer"))
    for base in sys.path:
        cands += glob.glob(os.path.join(base, "nvidia", "*", "bin", "compute-sanitizer"))
    return next((c for c in cands if os.access(c, os.X_OK)), None)


def env_facts(rehearse):
    from importlib import metadata
    facts = {"date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
             "mode": "rehearse" if rehearse else "gpu",
             "python": platform.python_version(), "platform": platform.platform(),
             "cpus": os.cpu_count(), "loadavg": list(os.getloadavg()), "packages": {}}
    for name in PACKAGES:
        try:
            facts["packages"][name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    try:
        with open("/proc/cpuinfo") as f:
            facts["cpu"] = next((ln.split(":", 1)[1].strip() for ln in f
                                 if ln.startswith("model name")), None)
    except OSError:
        facts["cpu"] = None
    smi = shutil.which("nvidia-smi")
    facts["nvidia_smi"] = (_run([smi, "--query-gpu=name,driver_version,memory.total,"
                                 "compute_cap,clocks.max.sm", "--format=csv,noheader"])
                           if smi else "nvidia-smi not found")
    facts["compute_sanitizer"] = find_sanitizer()
    gpu = {}
    try:
        import cupy
        props = cupy.cuda.runtime.getDeviceProperties(0)
        gpu = {"name": props["name"].decode() if isinstance(props["name"], bytes)
               else str(props["name"]),
               "sm_count": int(props["multiProcessorCount"]),
               "compute_capability": f"{props['major']}.{props['minor']}",
               "memory_gib": round(props["totalGlobalMem"] / 2 ** 30, 1),
               "cuda_runtime": cupy.cuda.runtime.runtimeGetVersion(),
               "cuda_driver": cupy.cuda.runtime.driverGetVersion(),
               "nvrtc": list(cupy.cuda.nvrtc.getVersion()), "via": "cupy"}
    except Exception as e:  # noqa: BLE001 - a fact to record, not a failure
        gpu["cupy_error"] = f"{type(e).__name__}: {e}"[:300]
    if "name" not in gpu and not rehearse:
        try:
            from numba import cuda
            d = cuda.get_current_device()
            gpu.update(name=d.name.decode() if isinstance(d.name, bytes) else str(d.name),
                       sm_count=int(d.MULTIPROCESSOR_COUNT),
                       compute_capability="%d.%d" % d.compute_capability, via="numba")
        except Exception as e:  # noqa: BLE001
            gpu["numba_error"] = f"{type(e).__name__}: {e}"[:300]
    facts["gpu"] = gpu
    try:                      # the project's device model (kernels/device.py) vs the device
        import dataclasses
        from kernels import device as dm
        facts["device_model"] = dataclasses.asdict(dm.DEFAULT)
        if gpu.get("sm_count"):
            facts["device_model"]["sms_match_device"] = gpu["sm_count"] == dm.DEFAULT.sms
    except Exception as e:  # noqa: BLE001 - a fact to record
        facts["device_model"] = f"{type(e).__name__}: {e}"
    try:
        from kernels.emulator import gxx_available
        facts["emulator_gxx"] = bool(gxx_available())
    except Exception as e:  # noqa: BLE001
        facts["emulator_gxx"] = f"{type(e).__name__}: {e}"
    return facts


# ------------------------------------------------------------------------------ ops
#: (N, C, H, W, F, K): no size a multiple of 16, 32 or 64; OH = OW = 17 and 11 leave
#: remainders in the 16x16 tiles, GEMM M = N*OH*OW in the 64-row tiles, F = 70 two column
#: blocks of the forward GEMM.
CONV_SHAPES = ((2, 3, 19, 19, 70, 3), (3, 5, 15, 13, 6, 5))
#: (N, C, H, W, k): odd planes (a dropped remainder row and column)
POOL_SHAPES = ((2, 5, 17, 13, 2), (1, 3, 9, 9, 3))
#: ``--small``: one tiny odd shape each, for numba's simulator (a Python thread per CUDA
#: thread: the shapes above take minutes there)
SMALL_CONV_SHAPES = ((1, 2, 7, 6, 3, 3),)
SMALL_POOL_SHAPES = ((1, 2, 7, 5, 2),)


def _conv_inputs(op, rng, n, c, h, w, f, k):
    oh, ow = h - k + 1, w - k + 1
    g = lambda *s: rng.standard_normal(s).astype(np.float32)
    return {"conv2d_forward": (g(n, c, h, w), g(f, c, k, k), g(f)),
            "conv2d_backward_input": (g(n, f, oh, ow), g(f, c, k, k)),
            "conv2d_backward_weight": (g(n, c, h, w), g(n, f, oh, ow)),
            "conv2d_backward_bias": (g(n, f, oh, ow),)}[op]


def _pool_inputs(op, rng, ref, n, c, h, w, k):
    from kernels.testing import distinct_values
    x = distinct_values(rng, (n, c, h, w), dtype=np.float32)
    y, s = ref.maxpool2d_forward(x, k)
    dy = distinct_values(rng, y.shape, dtype=np.float32)
    return {"maxpool2d_forward": (x, k), "maxpool2d_backward": (dy, s, (h, w)),
            "unpool2d_forward": (dy, s, (h, w)), "unpool2d_backward": (x, s)}[op]


def run_ops(backends, emulate, versions, small=False):
    from kernels import get_backend
    from kernels.testing import CONV_OPS, POOL_OPS, assert_op_close
    if os.environ.get("SCAE_NP_CHECK_NO_POOL") == "1" and not emulate:
        try:            # both GPU backends compute on CuPy arrays: every array its own
            import cupy  # cudaMalloc, so memcheck sees its exact bounds
            cupy.cuda.set_allocator(None)
            cupy.cuda.set_pinned_memory_allocator(None)
        except ImportError as e:
            print(f"CuPy's memory pool left on: {e}")
    ref = get_backend("numpy")
    rng = np.random.default_rng(0)
    bad, launches = [], 0
    for name in backends:
        try:
            be = get_backend(name, emulate=emulate)
        except Exception as e:  # noqa: BLE001 - reported, the other backend still runs
            print(f"{name}: unavailable: {type(e).__name__}: {e}")
            bad.append(f"{name} (unavailable)")
            continue
        print(f"== {be!r}", flush=True)
        for op in CONV_OPS + POOL_OPS:
            vs = be.versions(op) if versions == "all" else (be.default_version(op),)
            if small:
                shapes = SMALL_CONV_SHAPES if op in CONV_OPS else SMALL_POOL_SHAPES
            else:
                shapes = CONV_SHAPES if op in CONV_OPS else POOL_SHAPES
            for shape in shapes:
                args = (_conv_inputs(op, rng, *shape) if op in CONV_OPS
                        else _pool_inputs(op, rng, ref, *shape))
                arrays = [a for a in args if isinstance(a, np.ndarray)]
                expect = getattr(ref, op)(*[a.astype(np.float64) if a.dtype == np.float32
                                            else a for a in args]) if op in CONV_OPS else \
                    getattr(ref, op)(*args)
                dev = [be.to_device(a) if isinstance(a, np.ndarray) else a for a in args]
                for v in vs:
                    tag = f"{name} {op} {v} {shape}"
                    try:
                        out = getattr(be, op)(*dev, version=v)
                        be.synchronize()
                        launches += 1
                        if op == "maxpool2d_forward":
                            for o, e in zip(out, expect):
                                np.testing.assert_array_equal(be.to_host(o), e)
                        elif op in POOL_OPS:
                            np.testing.assert_array_equal(be.to_host(out), expect)
                        else:
                            assert_op_close(op, be.to_host(out), expect,
                                            *[a.astype(np.float64) for a in arrays],
                                            dtype=np.float32)
                        print(f"ok    {tag}", flush=True)
                    except Exception as e:  # noqa: BLE001 - every version is reported
                        print(f"WRONG {tag}: {type(e).__name__}: {str(e)[:300]}", flush=True)
                        traceback.print_exc(limit=3)
                        bad.append(tag)
    print(f"{launches} launches checked, {len(bad)} wrong or failed")
    for b in bad:
        print("  ", b)
    return 1 if bad else 0


# ---------------------------------------------------------------------------- counts
def counts(junit=None, bench=None):
    if junit is not None:
        import xml.etree.ElementTree as ET
        try:
            root = ET.parse(junit).getroot()
        except (OSError, ET.ParseError) as e:
            print(f"cannot read {junit}: {e}")
            return 1
        n = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
        for suite in ([root] if root.tag == "testsuite" else root.iter("testsuite")):
            for k in n:
                n[k] += int(suite.get(k, 0))
        passed = n["tests"] - n["failures"] - n["errors"] - n["skipped"]
        print(f"{passed} passed, {n['failures']} failed, {n['errors']} errors, "
              f"{n['skipped']} skipped")
        return 0 if passed > 0 else 1
    try:
        with open(bench) as f:
            timed = len(json.load(f).get("benchmarks", []))
    except (OSError, ValueError) as e:
        print(f"cannot read {bench}: {e}")
        return 1
    print(f"{timed} benchmarks timed")
    return 0 if timed > 0 else 1


# --------------------------------------------------------------------------- summary
def summary(outdir, mode, seconds):
    steps = []
    path = os.path.join(outdir, "steps.jsonl")
    if os.path.exists(path):
        with open(path) as f:
            steps = [json.loads(line) for line in f if line.strip()]
    env = {}
    try:
        with open(os.path.join(outdir, "env.json")) as f:
            env = json.load(f)
    except (OSError, ValueError):
        pass
    failed = [s["step"] for s in steps if not (s["status"] == "ok"
                                                or s["status"].startswith("skipped"))]
    gpu = env.get("gpu") or {}
    device = gpu.get("name") or ("none (CPU rehearsal)" if mode == "rehearse" else None)
    doc = {"mode": mode, "date_utc": env.get("date_utc"), "device": device,
           "sm_count": gpu.get("sm_count"),
           "total_seconds": round(float(seconds), 1), "ok": not failed, "failed": failed,
           "steps": [{k: s.get(k) for k in ("step", "status", "seconds", "timeout_s", "log")}
                     for s in steps]}
    with open(os.path.join(outdir, "summary.json"), "w") as f:
        json.dump(doc, f, indent=1)
        f.write("\n")
    for s in doc["steps"]:
        print(f"{s['step']:<26} {s['status']:<28} {s['seconds']:>7.1f} s")
    print(f"{'total':<26} {'ok' if doc['ok'] else 'FAILED: ' + ', '.join(failed):<28} "
          f"{doc['total_seconds']:>7.1f} s")
    return 0 if doc["ok"] else 1


def main(argv=None):
    p = argparse.ArgumentParser(prog="python bench/gpu_check.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    e = sub.add_parser("env")
    e.add_argument("out")
    e.add_argument("--rehearse", action="store_true")
    o = sub.add_parser("ops")
    o.add_argument("--backends", default="cupy,numba")
    o.add_argument("--emulate", action="store_true")
    o.add_argument("--versions", choices=("all", "default"), default="all")
    o.add_argument("--small", action="store_true", help="one tiny shape per op")
    c = sub.add_parser("counts")
    g = c.add_mutually_exclusive_group(required=True)
    g.add_argument("--junit")
    g.add_argument("--bench")
    s = sub.add_parser("summary")
    s.add_argument("outdir")
    s.add_argument("--mode", choices=("gpu", "rehearse"), required=True)
    s.add_argument("--seconds", type=float, required=True)
    a = p.parse_args(argv)
    if a.cmd == "env":
        facts = env_facts(a.rehearse)
        with open(a.out, "w") as f:
            json.dump(facts, f, indent=1, default=str)
            f.write("\n")
        g = facts["gpu"]
        print(f"device: {g.get('name', 'none')}, SMs: {g.get('sm_count', '-')}; "
              f"python {facts['python']}; "
              + ", ".join(f"{k} {v}" for k, v in facts["packages"].items()))
        return 0
    if a.cmd == "ops":
        return run_ops([b for b in a.backends.split(",") if b], a.emulate, a.versions, a.small)
    if a.cmd == "counts":
        return counts(a.junit, a.bench)
    return summary(a.outdir, a.mode, a.seconds)


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    sys.exit(main())
