"""Every numba kernel compiles to PTX for compute capability 7.5, 8.0 and 9.0 -- without a GPU.

``numba.cuda.compile_ptx`` runs numba's real CUDA pipeline (typing, lowering to NVVM IR,
libNVVM -> PTX), so it catches what the simulator cannot: a shared-array shape that is not
a compile-time constant, a float64 that sneaked into a float32 kernel (any ``.f64`` in the
PTX fails), a register array (``cuda.local.array``) that spilled to local memory (any
``.local`` fails), an unsupported call.
It needs the *non-simulator* numba, so the whole check runs in one subprocess started
without ``NUMBA_ENABLE_CUDASIM`` (this pytest process is usually in simulator mode, see
tests/conftest.py); the subprocess compiles every kernel listed in the modules'
``PTX_SIGNATURES`` (and checks that list is complete) and prints one JSON report.

libNVVM and NVRTC come from PyPI (``numba-cuda[cu13]`` pulls ``nvidia-nvvm`` and
``nvidia-cuda-nvrtc``; see setup.cfg's ``test`` extra). Without them the test is skipped
with that reason.

Run by hand:  ``python tests/test_numba_compile.py``  (prints the JSON report).
"""
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CCS = ((7, 5), (8, 0), (9, 0))


def _compile_all():
    """The subprocess body: compile every kernel for every cc, return the report dict."""
    import re
    import time

    t0 = time.perf_counter()
    report = {"ccs": [f"{a}.{b}" for a, b in CCS], "kernels": {}, "errors": [],
              "missing_signatures": []}
    try:
        import numba.cuda.dispatcher as dispatcher
        from numba import cuda
        from numba.cuda.cudadrv import nvvm
        from numba.cuda.cudadrv.error import NvrtcSupportError, NvvmSupportError
    except ImportError as e:
        report["skip"] = f"numba-cuda is not installed ({e}); pip install -e '.[test]'"
        return report
    if cuda.jit.__module__.startswith("numba.cuda.simulator"):
        report["errors"].append("numba came up in simulator mode; NUMBA_ENABLE_CUDASIM is set")
        return report
    report["numba_cuda"] = getattr(__import__("numba_cuda"), "__version__", "?")
    if not nvvm.is_available():
        report["skip"] = ("libNVVM not found: install numba-cuda with its CUDA libraries, "
                          "pip install 'numba-cuda[cu13]' (or '.[cpu]'), which provides "
                          "nvidia-nvvm and nvidia-cuda-nvrtc")
        return report

    # numba-cuda compiles a kernel's *device functions* (@cuda.jit(device=True), e.g.
    # conv2d's wgrad_term) for the current device's compute capability, which it asks the
    # driver for -- there is none here. Point that question at the cc being compiled: the
    # device function's IR is then linked into the kernel and NVVM emits PTX for that cc.
    class _TargetDevice:
        compute_capability = CCS[0]

    dispatcher.get_current_device = lambda: _TargetDevice

    from kernels.conv2d import numba_kernels as conv_k
    from kernels.pool2d import numba_kernels as pool_k

    for module in (conv_k, pool_k):
        for name, obj in vars(module).items():
            if (isinstance(obj, dispatcher.CUDADispatcher)
                    and not obj.targetoptions.get("device")
                    and name not in module.PTX_SIGNATURES):
                report["missing_signatures"].append(f"{module.__name__}.{name}")
    for cc in CCS:
        _TargetDevice.compute_capability = cc
        for module in (conv_k, pool_k):
            for name, (kernel, sig) in module.PTX_SIGNATURES.items():
                key = f"{cc[0]}.{cc[1]}"
                entry = report["kernels"].setdefault(name, {})
                try:
                    ptx, _ = cuda.compile_ptx(kernel.py_func, sig, cc=cc)
                except (NvvmSupportError, NvrtcSupportError) as e:
                    report["skip"] = f"NVVM/NVRTC unusable ({e}); pip install 'numba-cuda[cu13]'"
                    return report
                except Exception as e:      # report every failure, not only the first
                    entry[key] = f"FAILED: {type(e).__name__}: {str(e).splitlines()[0][:300]}"
                    continue
                target = f".target sm_{cc[0]}{cc[1]}"
                if target not in ptx or ".entry" not in ptx:
                    entry[key] = f"FAILED: PTX without '{target}' / '.entry'"
                elif re.search(r"\.f64\b", ptx):
                    entry[key] = "FAILED: float64 in a float32 kernel (a bare 0.0 literal?)"
                elif ".local" in ptx:
                    entry[key] = ("FAILED: local memory in the PTX (a cuda.local.array not "
                                  "promoted to registers: a non-constant index?)")
                else:
                    entry[key] = f"ok ({len(ptx)} chars)"
    report["seconds"] = round(time.perf_counter() - t0, 1)
    return report


def test_every_kernel_compiles_to_ptx():
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"}
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run([sys.executable, os.path.abspath(__file__)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=900)
    lines = proc.stdout.strip().splitlines()
    assert proc.returncode == 0 and lines, (
        f"PTX compile subprocess failed (rc={proc.returncode}):\n{proc.stderr[-4000:]}")
    report = json.loads(lines[-1])
    if "skip" in report:
        pytest.skip(report["skip"])
    assert not report["errors"], report["errors"]
    assert not report["missing_signatures"], (
        f"kernels without a PTX_SIGNATURES entry (so never compile-checked): "
        f"{report['missing_signatures']}")
    failed = {k: v for k, per_cc in report["kernels"].items()
              for cc, v in per_cc.items() if not v.startswith("ok")}
    assert not failed, json.dumps(failed, indent=1)
    assert len(report["kernels"]) >= 18           # 12 conv2d + 6 pool2d kernels
    for name, per_cc in report["kernels"].items():
        assert sorted(per_cc) == sorted(report["ccs"]), name


if __name__ == "__main__":
    print(json.dumps(_compile_all()))
