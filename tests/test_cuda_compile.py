"""Every CUDA C file compiles for real GPUs -- with nvcc for sm_75, sm_80 and sm_90 (PTX and
cubin), and with NVRTC, the compiler CuPy uses at run time -- and no default kernel spills
registers. Neither compiler needs a GPU; each test is skipped, saying why, where its compiler
is missing. The per-kernel resources are recorded in kernels/cuda_resources.md
(``python -m kernels.emulator.ptxas_report`` regenerates it)."""
import os
import re

import pytest

from kernels import cupy_backend, launch_spec
from kernels.emulator import ptxas_report
from kernels.emulator.loader import analyse

CU_FILES = ptxas_report.cu_files()
ARCHS = ptxas_report.ARCHS


def kernels_in(path):
    return [k.name for k in analyse(open(path).read())[1]]


def test_every_backend_kernel_has_a_source():
    names = {k for p in CU_FILES for k in kernels_in(p)}
    for op, versions in cupy_backend.VERSIONS.items():
        for v in versions:
            k = launch_spec.kernel_name(op, v)    # unpool2d_forward: maxpool2d_backward's
            assert k in names
            assert k in kernels_in(os.path.join(ptxas_report.KERNELS, cupy_backend.SOURCES[op]))


@pytest.fixture(scope="module")
def ptxas_rows():
    nvcc = ptxas_report.find_nvcc()
    if nvcc is None:
        pytest.skip("nvcc not found (CUDA toolkit not installed): cannot check that the .cu "
                    "files compile for sm_75/80/90")
    return ptxas_report.compile_all(nvcc)


def test_nvcc_compiles_every_kernel_for_every_arch(ptxas_rows):
    got = {(r["kernel"], r["arch"]) for r in ptxas_rows}
    for path in CU_FILES:
        for k in kernels_in(path):
            for a in ARCHS:
                assert (k, f"sm_{a}") in got, f"{k} missing for sm_{a}"
    for r in ptxas_rows:
        assert r["registers"] <= 255


def test_no_spills_in_default_versions(ptxas_rows):
    bad = ptxas_report.spills_in_defaults(ptxas_rows)
    assert not bad, f"default kernels spill registers: {bad}"


def test_resource_report_is_current(ptxas_rows):
    """The committed table lists exactly the kernels that exist (regenerate it with
    python -m kernels.emulator.ptxas_report after adding or renaming one)."""
    text = open(ptxas_report.REPORT).read()
    listed = set(re.findall(r"\| `(\w+)`(?: \\\*)? \| (sm_\d+) \|", text))
    assert listed == {(r["kernel"], r["arch"]) for r in ptxas_rows}


@pytest.mark.parametrize("probe", ["broken_kernels.cu", "asan_probe.cu"])
def test_test_probes_are_real_cuda(probe):
    """The deliberately broken kernels that the emulator's checks must catch
    (tests/cuda/*.cu) are valid CUDA C: nvcc compiles every one of them."""
    nvcc = ptxas_report.find_nvcc()
    if nvcc is None:
        pytest.skip("nvcc not found (CUDA toolkit not installed)")
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "cuda", probe)
    rows = ptxas_report.compile_file(path, nvcc, archs=("80",))
    assert {r["kernel"] for r in rows} == set(kernels_in(path))


def _nvrtc():
    try:
        from cupy.cuda import nvrtc
        return "cupy", nvrtc
    except ImportError:
        pass
    try:
        from cuda.bindings import nvrtc
        return "cuda.bindings", nvrtc
    except ImportError:
        pytest.skip("no NVRTC (install cupy-cuda13x or cuda-bindings): cannot check that CuPy "
                    "can compile the .cu files")


def _compile_nvrtc(src, name, arch):
    kind, nvrtc = _nvrtc()
    opts = [*cupy_backend.NVRTC_OPTIONS, f"-arch={arch}"]
    if kind == "cupy":
        prog = nvrtc.createProgram(src, name, [], [])
        try:
            nvrtc.compileProgram(prog, opts)
            ptx = nvrtc.getPTX(prog) if arch.startswith("compute") else None
            cubin = nvrtc.getCUBIN(prog) if arch.startswith("sm") else None
        finally:
            nvrtc.destroyProgram(prog)
        return ptx, cubin
    err, prog = nvrtc.nvrtcCreateProgram(src.encode(), name.encode(), 0, [], [])
    (err,) = nvrtc.nvrtcCompileProgram(prog, len(opts), [o.encode() for o in opts])
    if err != nvrtc.nvrtcResult.NVRTC_SUCCESS:
        _, n = nvrtc.nvrtcGetProgramLogSize(prog)
        log = b" " * n
        nvrtc.nvrtcGetProgramLog(prog, log)
        raise RuntimeError(log.decode())
    ptx = cubin = None
    if arch.startswith("compute"):
        _, n = nvrtc.nvrtcGetPTXSize(prog)
        ptx = b" " * n
        nvrtc.nvrtcGetPTX(prog, ptx)
    else:
        _, n = nvrtc.nvrtcGetCUBINSize(prog)
        cubin = b" " * n
        nvrtc.nvrtcGetCUBIN(prog, cubin)
    return ptx, cubin


@pytest.mark.parametrize("path", CU_FILES, ids=os.path.basename)
def test_nvrtc_compiles_like_cupy(path):
    """The code and options CupyBackend gives cupy.RawModule (the local headers inlined,
    -std=c++17), for each arch: cubin, and PTX with one .entry per kernel."""
    src = cupy_backend.nvrtc_source(path)
    for a in ARCHS:
        _, cubin = _compile_nvrtc(src, os.path.basename(path), f"sm_{a}")
        assert cubin and len(cubin) > 1000
    ptx, _ = _compile_nvrtc(src, os.path.basename(path), "compute_80")
    ptx = ptx.decode() if isinstance(ptx, bytes) else ptx
    for k in kernels_in(path):
        assert re.search(rf"\.entry {k}\(", ptx), f"{k} not in PTX"


def test_launch_constants_match_the_cu_defines():
    """Both launchers compute grids from kernels/launch_spec.py; the .cu files #define the
    constants their kernels need under the same names: every such #define equals its value
    there (and one name has one value in every file)."""
    defines = {}
    for path in CU_FILES:
        for name, value in re.findall(r"^#define (\w+) (0[xX][0-9a-fA-F]+|\d+)[uUlL]*\b",
                                      open(path).read(), re.M):
            value = int(value, 0)
            assert defines.setdefault(name, value) == value, f"{name} differs between files"
    assert {"CONV_TILE", "GEMM_BM", "GEMM_BN", "GEMM_BK", "GEMM_PAD", "WGRAD_CHUNK",
            "WGRAD_RED_BLOCK", "BGRAD_THREADS", "FULL_MASK"} <= set(defines)
    for name, value in defines.items():
        assert hasattr(launch_spec, name), f"#define {name} has no Python mirror in launch_spec"
        assert getattr(launch_spec, name) == value, f"#define {name} {value} != launch_spec"
    # the implicit GEMM's cooperative tile loads: GEMM_THREADS threads, 2 values each
    assert defines["GEMM_BM"] * defines["GEMM_BK"] == 2 * launch_spec.GEMM_THREADS
    # ... and a 4 x 4 register block per thread covers the 64 x 64 tile
    assert (defines["GEMM_BM"] // 4) * (defines["GEMM_BN"] // 4) == launch_spec.GEMM_THREADS
