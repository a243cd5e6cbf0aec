"""The CPU emulator for CUDA C (kernels/emulator): built-in variables, barriers, shared and
dynamic shared memory, atomics, launch limits, argument checks, the source rewrite, the
compile-time refusal of what it cannot emulate, AddressSanitizer mode, and the README's
snippet. The strictness checks (poisoned shared memory, race check, barrier divergence, warp
primitives) are in tests/test_emulator_checks.py."""
import os
import re
import signal
import subprocess
import sys

import numpy as np
import pytest

from kernels.emulator import EmuModule, EmulatorCompileError, EmulatorError, asan_env
from kernels.emulator.loader import analyse

pytestmark = pytest.mark.emulator

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
i32, f32 = np.int32, np.float32

SRC = r"""
// every thread writes its coordinates: checks threadIdx/blockIdx/blockDim/gridDim
extern "C" __global__ void coords(int* out) {
    int t = threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z);
    int b = blockIdx.x + gridDim.x * (blockIdx.y + gridDim.y * blockIdx.z);
    int nt = blockDim.x * blockDim.y * blockDim.z;
    int g = b * nt + t;
    out[4 * g + 0] = threadIdx.x + 100 * threadIdx.y + 10000 * threadIdx.z;
    out[4 * g + 1] = blockIdx.x + 100 * blockIdx.y + 10000 * blockIdx.z;
    out[4 * g + 2] = blockDim.x + 100 * blockDim.y + 10000 * blockDim.z;
    out[4 * g + 3] = gridDim.x + 100 * gridDim.y + 10000 * gridDim.z;
}

// a rotation through shared memory: wrong unless every thread wrote before any reads
extern "C" __global__ void rotate(float* y, const float* x) {
    __shared__ float s[128];
    int t = threadIdx.x, base = blockIdx.x * blockDim.x;
    s[t] = x[base + t];
    __syncthreads();
    float v = s[(t + 1) % blockDim.x];
    __syncthreads();          // everyone has read before the overwrite below
    s[t] = 2.0f * v;
    __syncthreads();
    y[base + t] = s[(t + 1) % blockDim.x];
}

// static shared memory belongs to one block even while blocks run in parallel
extern "C" __global__ void own_block(int* out) {
    __shared__ int who;
    if (threadIdx.x == 0) who = blockIdx.x;
    __syncthreads();
    for (int k = 0; k < 50; ++k) { __syncthreads(); }   // give other blocks time to interfere
    out[blockIdx.x * blockDim.x + threadIdx.x] = who;
}

// dynamic shared memory sized at launch; a tree reduction with a loop of barriers
extern "C" __global__ void block_sum(float* out, const float* x, int n) {
    extern __shared__ float part[];
    int t = threadIdx.x, i = blockIdx.x * blockDim.x + t;
    part[t] = i < n ? x[i] : 0.0f;
    __syncthreads();
    for (int s = blockDim.x / 2; s > 0; s >>= 1) {
        if (t < s) part[t] += part[t + s];
        __syncthreads();
    }
    if (t == 0) out[blockIdx.x] = part[0];
}

// reads dynamic shared memory it never wrote: the emulator fills it with NaN bytes
extern "C" __global__ void read_unwritten(float* out) {
    extern __shared__ float junk[];
    out[threadIdx.x] = junk[threadIdx.x];
}

// a barrier inside a helper: the loader must still give this kernel fibers
__device__ void store_then_sync(float* s, float v) { s[threadIdx.x] = v; __syncthreads(); }
extern "C" __global__ void helper_barrier(float* y) {
    __shared__ float s[32];
    store_then_sync(s, (float)threadIdx.x);
    y[threadIdx.x] = s[31 - threadIdx.x];
}

extern "C" __global__ void atomics(int* counter, float* fsum, int* imax, int* cas, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    atomicAdd(counter, 1);
    atomicAdd(fsum, 1.0f);
    atomicMax(imax, (i * 7919) % 10007);
    atomicCAS(cas, 0, i + 1);      // exactly one thread wins
}

extern "C" __global__ void scale(float* y, const float* x, float a, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) y[i] = a * x[i];
}
"""


@pytest.fixture(scope="module")
def mod():
    return EmuModule(code=SRC)


def test_fast_path_and_fibers_are_chosen_from_the_source(mod):
    fib = {k: mod.get_function(k).fibers for k in mod.kernels}
    assert fib == {"coords": False, "rotate": True, "own_block": True, "block_sum": True,
                   "read_unwritten": False, "helper_barrier": True, "atomics": False,
                   "scale": False}


@pytest.mark.parametrize("grid, block", [((3, 2, 2), (8, 4, 2)), ((5,), (7,)), ((1, 3), (1, 1, 3))])
def test_builtin_variables(mod, grid, block):
    g3 = (tuple(grid) + (1, 1))[:3]
    b3 = (tuple(block) + (1, 1))[:3]
    nt, nb = int(np.prod(b3)), int(np.prod(g3))
    out = np.full((nb * nt, 4), -1, np.int32)
    mod.get_function("coords")(grid, block, (out,))
    enc = lambda v: v[0] + 100 * v[1] + 10000 * v[2]
    for b in range(nb):
        bidx = (b % g3[0], b // g3[0] % g3[1], b // (g3[0] * g3[1]))
        for t in range(nt):
            tidx = (t % b3[0], t // b3[0] % b3[1], t // (b3[0] * b3[1]))
            assert tuple(out[b * nt + t]) == (enc(tidx), enc(bidx), enc(b3), enc(g3))


def test_barrier_orders_shared_memory(mod):
    x = np.arange(3 * 128, dtype=f32)
    y = np.zeros_like(x)
    mod.get_function("rotate")((3,), (128,), (y, x))
    expect = 2 * np.roll(x.reshape(3, 128), -2, axis=1).ravel()
    np.testing.assert_array_equal(y, expect)


def test_static_shared_memory_is_per_block(mod):
    out = np.full(64 * 16, -1, np.int32)
    mod.get_function("own_block")((64,), (16,), (out,))
    np.testing.assert_array_equal(out, np.repeat(np.arange(64), 16))


def test_dynamic_shared_memory(mod):
    x = np.random.default_rng(0).integers(-50, 50, 1000).astype(f32)   # exact float sums
    out = np.zeros(8, f32)
    mod.get_function("block_sum")((8,), (128,), (out, x, i32(1000)), shared_mem=128 * 4)
    np.testing.assert_array_equal(out, np.pad(x, (0, 24)).reshape(8, 128).sum(1))
    junk = np.zeros(4, f32)
    mod.get_function("read_unwritten")((1,), (4,), (junk,), shared_mem=16)
    assert np.isnan(junk).all()      # uninitialised shared memory shows up, never as 0


def test_barrier_inside_a_device_helper(mod):
    y = np.zeros(32, f32)
    mod.get_function("helper_barrier")((1,), (32,), (y,))
    np.testing.assert_array_equal(y, np.arange(31, -1, -1, dtype=f32))


def test_atomics_from_parallel_blocks(mod, monkeypatch):
    # which thread wins the atomicCAS depends on the order: a race by design, which the race
    # check (SCAE_NP_EMU_RACECHECK=1) rightly reports
    monkeypatch.delenv("SCAE_NP_EMU_RACECHECK", raising=False)
    n = 20000
    counter, imax, cas = (np.zeros(1, np.int32) for _ in range(3))
    fsum = np.zeros(1, f32)
    mod.get_function("atomics")((79,), (256,), (counter, fsum, imax, cas, i32(n)))
    assert counter[0] == n and fsum[0] == n
    assert imax[0] == max((i * 7919) % 10007 for i in range(n))
    assert 1 <= cas[0] <= n


def test_float_scalar_argument(mod):
    x = np.arange(10, dtype=f32)
    y = np.zeros_like(x)
    mod.get_function("scale")((1,), (16,), (y, x, f32(2.5), i32(10)))
    np.testing.assert_array_equal(y, 2.5 * x)


def test_argument_checks(mod):
    k = mod.get_function("scale")
    x = np.zeros(4, f32)
    with pytest.raises(EmulatorError, match=r"argument 3 is a int32 scalar: pass numpy.int32"):
        k((1,), (4,), (x, x, f32(1), 4))
    with pytest.raises(EmulatorError, match=r"argument 2 is a float32 scalar.*got float64"):
        k((1,), (4,), (x, x, np.float64(1), i32(4)))
    with pytest.raises(EmulatorError, match=r"takes 4 arguments, got 3"):
        k((1,), (4,), (x, x, f32(1)))
    with pytest.raises(EmulatorError, match=r"argument 0 is a pointer: pass a numpy.ndarray"):
        k((1,), (4,), ([0.0], x, f32(1), i32(4)))
    with pytest.raises(EmulatorError, match=r"no __global__ kernel 'nope'"):
        mod.get_function("nope")


def test_launch_limits_like_cuda(mod):
    x = np.zeros(4, f32)
    with pytest.raises(EmulatorError, match=r"too many threads per block.*1025"):
        mod.get_function("scale")((1,), (1025,), (x, x, f32(1), i32(4)))
    with pytest.raises(EmulatorError, match=r"dynamic shared memory of 49153 bytes"):
        mod.get_function("block_sum")((1,), (1,), (x, x, i32(4)), shared_mem=48 * 1024 + 1)
    with pytest.raises(EmulatorError, match=r"grid.y and grid.z must be <= 65535"):
        mod.get_function("scale")((1, 65536), (1,), (x, x, f32(1), i32(4)))


@pytest.mark.parametrize("call, what", [
    ("v = __shfl_down(v, 1);", "mask-less warp shuffle, removed for sm_70\\+: use __shfl_down_sync"),
    ("if (__any(v > 0)) v = 1;", "mask-less warp vote, removed for sm_70\\+: use __any_sync"),
    ("v = __match_any_sync(0xffffffffu, v);", "warp match: not implemented by the emulator"),
    ("v = __reduce_add_sync(0xffffffffu, (unsigned)v);", "warp reduction: not implemented"),
])
def test_what_cannot_be_emulated_is_refused_at_compile_time(call, what):
    """The warp primitives the emulator does not implement fail to compile, saying so (the
    emulated ones are tested in tests/test_emulator_checks.py)."""
    src = ('extern "C" __global__ void k(float* y) { float v = y[threadIdx.x]; '
           + call + " y[threadIdx.x] = v; }")
    with pytest.raises(EmulatorCompileError, match=rf"{what}.*cannot be emulated on the CPU"):
        EmuModule(code=src)


def test_cooperative_groups_are_refused_at_compile_time():
    src = ('#include <cooperative_groups.h>\n'
           'extern "C" __global__ void k(float* y) { y[0] = 1; }')
    with pytest.raises(EmulatorCompileError, match=r"cooperative groups cannot be emulated"):
        EmuModule(code=src)


def test_extern_shared_rewrite_keeps_line_numbers():
    src = ('extern "C" __global__ void k(float* y) {\n'
           '    extern __shared__ __align__(16) float buf[];\n'
           '    y[0] = buf[0];\n}\n')
    out, kernels = analyse(src)
    assert "emu::dyn_smem()" in out and "extern __shared__" not in out
    assert out.count("\n") == src.count("\n") and kernels == [("k", False, False)]


def test_static_shared_rewrite_keeps_line_numbers():
    """Static __shared__ declarations become references to per-block slots (emu::static_smem),
    each on its own line, whatever the declaration's form."""
    src = ('extern "C" __global__ void k(float* y) {\n'
           '    __shared__ float a[4][8], b[3];   // two declarators\n'
           '    __shared__ __align__(16) int c;\n'
           '    volatile __shared__ float d[\n'
           '        32];\n'
           '    y[0] = a[0][0] + b[0] + c + d[0];\n}\n')
    out, kernels = analyse(src)
    lines = out.splitlines()
    assert out.count("\n") == src.count("\n") and "__shared__" not in out
    assert "using __emu_shared_t0 = float[4][8]; __emu_shared_t0& a = " in lines[1]
    assert "using __emu_shared_t1 = float[3]; __emu_shared_t1& b = " in lines[1]
    assert "__emu_shared_t2 = int; __emu_shared_t2& c = ::emu::static_smem<__emu_shared_t2, 2, (16)>()" in lines[2]
    assert "using __emu_shared_t3 = volatile float[32];" in lines[3]
    assert lines[5].strip().startswith("y[0] =")
    y = np.zeros(1, f32)
    EmuModule(code=src).get_function("k")((1,), (1,), (y,))
    assert np.isnan(y[0])      # none of it was written: NaN (c reads as -1)


@pytest.mark.parametrize("src, why", [
    ('__shared__ float s[4];\nextern "C" __global__ void k(float* y) { y[0] = s[0]; }',
     r"<string>:1: a __shared__ variable outside a function"),
    ('#define TILE __shared__ float s[4]\nextern "C" __global__ void k(float* y) { TILE; y[0] = s[0]; }',
     r"<string>:1: __shared__ inside a #define"),
    ('extern "C" __global__ void k(float* y) { __shared__ float s = 0; y[0] = s; }',
     r"no initializer"),
])
def test_shared_declarations_the_emulator_cannot_rewrite_are_refused(src, why):
    with pytest.raises(EmulatorCompileError, match=why):
        EmuModule(code=src)


def test_compile_errors_point_into_the_cu_file(tmp_path):
    cu = tmp_path / "broken.cu"
    cu.write_text('extern "C" __global__ void k(float* y) {\n  y[0] = undeclared_name;\n}\n')
    with pytest.raises(EmulatorCompileError, match=r"broken\.cu:2:.*undeclared_name"):
        EmuModule(path=str(cu))


# ------------------------------------------------------------ local headers (#include "x")
HEADER_USER = ('#include "step.cuh"\n'
               'extern "C" __global__ void k(float* y) {\n'
               '    y[threadIdx.x] = step(threadIdx.x);\n'
               '}\n')


def test_local_header_is_found_next_to_the_cu_file_and_rebuilt_when_edited(tmp_path):
    """``#include "step.cuh"`` resolves next to the .cu file (like nvcc) although g++ compiles
    a copy in the cache directory, and an edited header is a new build: the header's text is
    part of what the build cache hashes (kernels/cuda_source.py inlines it)."""
    (tmp_path / "step.cuh").write_text("__device__ float step(int t) { return t + 1.0f; }\n")
    cu = tmp_path / "user.cu"
    cu.write_text(HEADER_USER)
    y = np.zeros(4, f32)
    EmuModule(path=str(cu)).get_function("k")((1,), (4,), (y,))
    assert y.tolist() == [1, 2, 3, 4]
    (tmp_path / "step.cuh").write_text("__device__ float step(int t) { return t * 10.0f; }\n")
    EmuModule(path=str(cu)).get_function("k")((1,), (4,), (y,))
    assert y.tolist() == [0, 10, 20, 30]
    # code= strings have no directory: the header is found through include_dirs
    EmuModule(code=HEADER_USER, include_dirs=[str(tmp_path)]).get_function("k")((1,), (4,), (y,))
    assert y.tolist() == [0, 10, 20, 30]
    with pytest.raises(EmulatorCompileError, match=r"step\.cuh"):
        EmuModule(code=HEADER_USER)


def test_errors_in_a_local_header_name_the_header_and_its_line(tmp_path):
    (tmp_path / "step.cuh").write_text("// a comment\n__device__ float step(int t) {\n"
                                       "    return undeclared_name;\n}\n")
    cu = tmp_path / "user.cu"
    cu.write_text(HEADER_USER + "extern \"C\" __global__ void k2(float* y) { y[0] = nope; }\n")
    with pytest.raises(EmulatorCompileError) as e:
        EmuModule(path=str(cu))
    assert re.search(r"step\.cuh:3:.*undeclared_name", str(e.value))
    assert re.search(r"user\.cu:5:.*nope", str(e.value))     # the .cu keeps its line numbers
    (tmp_path / "step.cuh").write_text("\n__shared__ float s[4];\n")
    with pytest.raises(EmulatorCompileError, match=r"step\.cuh:2: a __shared__ variable outside"):
        EmuModule(path=str(cu))


def test_a_barrier_in_a_local_header_gives_its_kernels_fibers(tmp_path):
    """The barrier search follows calls into the header: a kernel whose only barrier is in a
    header function runs on fibers (the plain-loop fast path cannot wait at a barrier)."""
    (tmp_path / "step.cuh").write_text(
        "__device__ float step(int t) {\n"
        "    __shared__ float s[4];\n"
        "    s[t] = t; __syncthreads(); return s[3 - t];\n}\n")
    cu = tmp_path / "user.cu"
    cu.write_text(HEADER_USER)
    m = EmuModule(path=str(cu))
    assert m._kernels["k"].fibers
    y = np.zeros(4, f32)
    m.get_function("k")((1,), (4,), (y,))
    assert y.tolist() == [3, 2, 1, 0]


def test_an_include_cycle_is_refused_naming_the_files(tmp_path):
    (tmp_path / "a.cuh").write_text('#include "b.cuh"\n')
    (tmp_path / "b.cuh").write_text('#include "a.cuh"\n')
    cu = tmp_path / "user.cu"
    cu.write_text('#include "a.cuh"\nextern "C" __global__ void k(float* y) { y[0] = 1; }\n')
    with pytest.raises(ValueError, match=r"#include cycle.*a\.cuh -> .*b\.cuh -> .*a\.cuh"):
        EmuModule(path=str(cu))


STACK_HOG = r"""
import numpy as np
from kernels.emulator import EmuModule
src = '''extern "C" __global__ void hog(float* y) {
    volatile float big[40000];               // 160 KB of locals: more than a 64 KiB fiber stack
    for (int i = 0; i < 40000; ++i) big[i] = i;
    __syncthreads();
    y[threadIdx.x] = big[threadIdx.x];
}'''
y = np.zeros(4, np.float32)
EmuModule(code=src).get_function("hog")((1,), (4,), (y,))
print("no fault")
"""


def test_fiber_stack_overflow_faults_instead_of_corrupting():
    """Each 64 KiB fiber stack sits above an inaccessible guard page."""
    r = subprocess.run([sys.executable, "-c", STACK_HOG], capture_output=True, text=True,
                       timeout=240, env={**os.environ, "PYTHONPATH": ROOT})
    assert r.returncode == -signal.SIGSEGV and "no fault" not in r.stdout, r.stderr[-2000:]


# -------------------------------------------------------------------------- AddressSanitizer
ASAN_PROBE = os.path.join(ROOT, "tests", "cuda", "asan_probe.cu")
ASAN_RUN = """
import sys, numpy as np
from kernels.emulator import EmuModule
m = EmuModule(path=sys.argv[1], asan=True)
n = 1000
x = np.arange(n, dtype=np.float32); y = np.zeros(n, np.float32)
m.get_function(sys.argv[2])((16,), (64,), (y, x, np.int32(n)))
print("finished", float(y[:64].sum()))
"""


def _run_asan(kernel):
    env = asan_env()
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    return subprocess.run([sys.executable, "-c", ASAN_RUN, ASAN_PROBE, kernel], env=env,
                          capture_output=True, text=True, timeout=240)


@pytest.mark.parametrize("kernel,line", [("copy_oob", 9),      # a global-memory read
                                         ("shared_oob", 32)])  # static shared memory
def test_asan_catches_an_out_of_bounds_read(kernel, line):
    r = _run_asan(kernel)
    assert r.returncode != 0, r.stdout
    assert "AddressSanitizer: heap-buffer-overflow" in r.stderr
    assert re.search(rf"in {kernel} .*asan_probe\.cu:{line}\b", r.stderr), r.stderr[-2000:]
    assert "finished" not in r.stdout


@pytest.mark.parametrize("kernel", ["copy_ok", "reverse_ok"])
def test_asan_is_quiet_on_correct_kernels(kernel):
    r = _run_asan(kernel)      # reverse_ok runs on fibers: no false alarms from stack switches
    assert r.returncode == 0, r.stderr[-2000:]
    assert "finished" in r.stdout and "AddressSanitizer" not in r.stderr


def test_asan_mode_without_libasan_says_how_to_run():
    import ctypes
    if hasattr(ctypes.CDLL(None), "__asan_init"):
        pytest.skip("this process already runs under ASan")
    with pytest.raises(EmulatorError, match=r"LD_PRELOAD=\$\(g\+\+ -print-file-name=libasan.so\)"):
        EmuModule(path=ASAN_PROBE, asan=True)


ASAN_ALL = """
import numpy as np
from kernels import get_backend
from kernels.cupy_backend import VERSIONS
be = get_backend("cupy", emulate=True, asan=True)
rng = np.random.default_rng(1)
for (n, c, h, w_, f, kh, kw) in [(2, 3, 19, 21, 5, 3, 4), (1, 67, 6, 5, 3, 2, 2),
                                 (1, 4, 4, 4, 3, 4, 4), (3, 2, 17, 18, 70, 3, 3)]:
    x = rng.standard_normal((n, c, h, w_)).astype(np.float32)
    w = rng.standard_normal((f, c, kh, kw)).astype(np.float32)
    b = rng.standard_normal(f).astype(np.float32)
    dy = rng.standard_normal((n, f, h - kh + 1, w_ - kw + 1)).astype(np.float32)
    for op, args in [("conv2d_forward", (x, w, b)), ("conv2d_backward_input", (dy, w)),
                     ("conv2d_backward_weight", (x, dy)), ("conv2d_backward_bias", (dy,))]:
        for v in VERSIONS[op]:
            getattr(be, op)(*args, version=v)
for (n, c, h, w_, k) in [(2, 3, 9, 11, 2), (2, 5, 5, 7, 3), (1, 2, 10, 7, 3)]:
    x = rng.standard_normal((n, c, h, w_)).astype(np.float32)
    y, sw = be.maxpool2d_forward(x, k)
    for v in VERSIONS["maxpool2d_backward"]:
        be.maxpool2d_backward(y, sw, (h, w_), version=v)
    for v in VERSIONS["unpool2d_forward"]:
        be.unpool2d_forward(y, sw, (h, w_), version=v)
    be.unpool2d_backward(x, sw)
print("clean")
"""


@pytest.mark.slow
def test_every_backend_kernel_is_clean_under_asan():
    """Every version of every op of the cupy backend, on edge shapes (partial tiles, 1x1
    outputs, ambiguous pooling windows), built with AddressSanitizer: no access outside
    global memory or dynamic shared memory."""
    env = asan_env()
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    r = subprocess.run([sys.executable, "-c", ASAN_ALL], env=env, capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0 and "clean" in r.stdout, r.stderr[-3000:]


# -------------------------------------------------------------------------- the guide
def test_readme_snippet_runs():
    """kernels/emulator/README.md's example is executed, so the guide cannot rot."""
    text = open(os.path.join(ROOT, "kernels", "emulator", "README.md")).read()
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    assert blocks, "the README has no python snippet"
    for code in blocks:
        r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                           text=True, timeout=240,
                           env={**os.environ, "PYTHONPATH": ROOT + os.pathsep
                                + os.environ.get("PYTHONPATH", "")})
        assert r.returncode == 0, r.stderr[-2000:]
        assert "max |error|" in r.stdout
