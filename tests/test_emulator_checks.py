"""The CPU emulator's strictness checks (kernels/emulator/README.md), each shown catching a
deliberately broken kernel of tests/cuda/broken_kernels.cu and quiet on its correct twin:
shared memory poisoned per block, the race check (SCAE_NP_EMU_RACECHECK=1), barrier
divergence, warp primitives with their rendezvous rules; and every version of every op of the
cupy backend passing all of them."""
import os
import re

import numpy as np
import pytest

from kernels import cupy_backend, get_backend, launch_spec
from kernels.emulator import EmuModule, EmulatorError
from kernels.testing import CONV_OPS, assert_op_close

pytestmark = pytest.mark.emulator

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BROKEN = os.path.join(ROOT, "tests", "cuda", "broken_kernels.cu")
i32, f32 = np.int32, np.float32


@pytest.fixture(scope="module")
def broken():
    return EmuModule(path=BROKEN)


@pytest.fixture
def racecheck(monkeypatch):
    monkeypatch.setenv("SCAE_NP_EMU_RACECHECK", "1")


def run(mod, name, grid, block, *args, smem=0):
    mod.get_function(name)(grid, block, args, shared_mem=smem)


# ============================================================= poisoned shared memory
def test_unwritten_static_shared_reads_nan_in_every_block(broken):
    """Only block 0 writes s: the other blocks read NaN (0xFF bytes), never block 0's
    values (static __shared__ used to be thread_local: carried from block to block)."""
    y = np.zeros(4 * 64, f32)
    run(broken, "shared_from_another_block", (4,), (64,), y)
    assert (y[:64] == 1).all() and np.isnan(y[64:]).all()


def test_unwritten_dynamic_shared_reads_nan_in_every_block(broken):
    y = np.zeros(4 * 64, f32)
    run(broken, "dynamic_from_another_block", (4,), (64,), y, smem=64 * 4)
    assert (y[:64] == 1).all() and np.isnan(y[64:]).all()


def test_missing_halo_shows_as_nan(broken):
    n = 200
    x = np.arange(n, dtype=f32)
    y = np.zeros(n, f32)
    run(broken, "stencil_missing_halo", (4,), (64,), y, x, i32(n))
    bad = np.flatnonzero(np.isnan(y))
    assert list(bad) == [63, 127, 191]        # the last thread of each full block
    run(broken, "stencil_ok", (4,), (64,), y, x, i32(n))
    np.testing.assert_array_equal(y, x + np.append(x[1:], 0))


# ============================================================= race check
def shifted(x):
    """shift_ok's result: three steps of "take the right neighbour's value" per 64-block."""
    t = np.minimum(np.arange(64) + 3, 63)
    return x.reshape(-1, 64)[:, t].ravel()


def test_race_check_catches_a_missing_barrier(broken, racecheck):
    x = np.arange(2 * 64, dtype=f32)
    y = np.zeros_like(x)
    with pytest.raises(EmulatorError, match=r"race in kernel shift_missing_sync: argument 0 "
                                            r"differs .* reverse order"):
        run(broken, "shift_missing_sync", (2,), (64,), y, x)
    run(broken, "shift_ok", (2,), (64,), y, x)       # the twin passes all three orders
    np.testing.assert_array_equal(y, shifted(x))


def test_without_the_race_check_the_missing_barrier_goes_unseen(broken, monkeypatch):
    """Why the check exists: in index order the broken kernel gives the right answer."""
    monkeypatch.delenv("SCAE_NP_EMU_RACECHECK", raising=False)
    x = np.arange(2 * 64, dtype=f32)
    y = np.zeros_like(x)
    run(broken, "shift_missing_sync", (2,), (64,), y, x)
    np.testing.assert_array_equal(y, shifted(x))


def test_race_check_reorders_the_fast_path_too(broken, racecheck):
    """A kernel without barriers runs as a plain loop over threads: reordered as well."""
    x = np.arange(64, dtype=f32)
    with pytest.raises(EmulatorError, match=r"race in kernel neighbour_no_sync"):
        run(broken, "neighbour_no_sync", (1,), (64,), np.zeros_like(x), x)
    assert not broken.get_function("neighbour_no_sync").fibers


def test_race_check_catches_two_writers(broken, racecheck):
    with pytest.raises(EmulatorError, match=r"race in kernel last_writer_wins.*index order"):
        run(broken, "last_writer_wins", (3,), (64,), np.zeros(3, np.int32))


def test_race_check_catches_warp_synchronous_code_without_syncwarp(broken, racecheck):
    x = np.random.default_rng(0).integers(-9, 9, 2 * 64).astype(f32)   # exact sums
    y = np.zeros(4, f32)
    with pytest.raises(EmulatorError, match=r"race in kernel warp_synchronous_no_syncwarp"):
        run(broken, "warp_synchronous_no_syncwarp", (2,), (64,), y, x)
    run(broken, "warp_synchronous_ok", (2,), (64,), y, x)
    np.testing.assert_array_equal(y, x.reshape(4, 32).sum(1))


def test_race_check_is_read_at_each_launch(broken, monkeypatch):
    x = np.arange(64, dtype=f32)
    k = broken.get_function("neighbour_no_sync")
    monkeypatch.setenv("SCAE_NP_EMU_RACECHECK", "0")
    k((1,), (64,), (np.zeros_like(x), x))
    monkeypatch.setenv("SCAE_NP_EMU_RACECHECK", "1")
    with pytest.raises(EmulatorError, match="race"):
        k((1,), (64,), (np.zeros_like(x), x))


def test_race_check_restores_inputs_and_keeps_the_first_result(racecheck):
    """Each order starts from a snapshot of every array argument (a kernel that updates its
    output in place gets the same start each time); the result left is index order's."""
    src = r'''extern "C" __global__ void add_one(float* y) { y[threadIdx.x] += 1.0f; }'''
    y = np.arange(8, dtype=f32)
    EmuModule(code=src).get_function("add_one")((1,), (8,), (y,))
    np.testing.assert_array_equal(y, np.arange(8) + 1)


ATOMIC_SUM = r'''
extern "C" __global__ void float_atomic_sum(float* out, const float* x, int n) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) atomicAdd(out, x[i]);
}
'''


def test_float_atomics_are_compared_within_the_given_tolerance(racecheck):
    """The order of float atomicAdds changes the rounding: bit-exact comparison would flag
    the atomic weight gradient. Kernels with atomics may name a tolerance per argument."""
    x = np.random.default_rng(1).standard_normal(4096).astype(f32) * np.float32(1e3)
    k = EmuModule(code=ATOMIC_SUM).get_function("float_atomic_sum")
    assert k.atomics and not k.fibers
    with pytest.raises(EmulatorError, match=r"race in kernel float_atomic_sum"):
        k((16,), (256,), (np.zeros(1, f32), x, i32(x.size)))
    out = np.zeros(1, f32)
    k((16,), (256,), (out, x, i32(x.size)),
      race_tolerance=lambda: {0: 4096 * np.finfo(f32).eps * np.abs(x).sum()})
    assert abs(out[0] - x.astype(np.float64).sum()) < 1e-2 * np.abs(x).sum()


def test_a_tolerance_never_excuses_a_kernel_without_atomics(broken, racecheck):
    with pytest.raises(EmulatorError, match=r"race in kernel last_writer_wins"):
        broken.get_function("last_writer_wins")((3,), (64,), (np.zeros(3, np.int32),),
                                                race_tolerance=lambda: {0: 1e9})


# ============================================================= barrier divergence
@pytest.mark.parametrize("kernel, why", [
    ("early_return_then_sync", r"divergent barrier: thread \(8, 0, 0\) of block \(3, 0, 0\) "
                               r"has finished while thread \(0, 0, 0\) of block \(3, 0, 0\) "
                               r"waits at __syncthreads at .*broken_kernels\.cu:\d+"),
    ("barrier_per_branch", r"divergent barrier: thread \(0, 0, 0\) .* waits at __syncthreads at "
                           r".*broken_kernels\.cu:(\d+):\d+ while thread \(32, 0, 0\) .* waits "
                           r"at __syncthreads at .*broken_kernels\.cu:(?!\1)\d+"),
    ("loop_count_differs", r"divergent barrier: thread \(0, 0, 0\) .* has finished while "
                           r"thread \(1, 0, 0\) .* waits at __syncthreads"),
])
def test_divergent_barriers_are_errors(broken, kernel, why):
    n = 200                    # not a multiple of 64: the last block has 8 live threads
    x = np.ones(n, f32)
    y = np.zeros(4 * 64, f32)
    args = (y, x, i32(n)) if kernel == "early_return_then_sync" else (y,)
    with pytest.raises(EmulatorError, match=rf"launch of {kernel} failed: {why}"):
        run(broken, kernel, (4,) if kernel == "early_return_then_sync" else (1,), (64,), *args)


def test_guarded_barrier_passes(broken):
    n = 200
    x = np.arange(n, dtype=f32)
    y = np.zeros(n, f32)
    run(broken, "guarded_sync_ok", (4,), (64,), y, x, i32(n))
    prev = np.concatenate([[x[b * 64] if b * 64 < n else 0] + list(x[b * 64: b * 64 + 63])
                           for b in range(4)])[:n]
    np.testing.assert_array_equal(y, x + prev)


# ============================================================= warp primitives
def test_lane_that_exited_never_arrives(broken):
    n = 200
    with pytest.raises(EmulatorError, match=r"divergent warp: thread \(0, 0, 0\) of block "
                                            r"\(3, 0, 0\) waits in __shfl_down_sync at "
                                            r".*broken_kernels\.cu:\d+:\d+ \(mask 0xffffffff\) "
                                            r"for lane 8, .* which has exited"):
        run(broken, "warp_sum_after_return", (4,), (64,), np.zeros(8, f32), np.ones(n, f32),
            i32(n))
    y = np.zeros(8, f32)
    run(broken, "warp_sum_ok", (4,), (64,), y, np.ones(n, f32), i32(n))
    np.testing.assert_array_equal(y[:7], [32] * 6 + [8])


def test_calling_lane_outside_its_mask(broken):
    x = np.ones(64, f32)
    with pytest.raises(EmulatorError, match=r"warp mask error: thread \(16, 0, 0\) .* calls "
                                            r"__shfl_down_sync .* mask 0x0000ffff, which does "
                                            r"not name the calling lane"):
        run(broken, "half_warp_wrong_mask", (1,), (64,), np.zeros(4, f32), x)
    y = np.zeros(4, f32)
    run(broken, "half_warp_ok", (1,), (64,), y, x)
    np.testing.assert_array_equal(y, [16] * 4)


def test_shuffle_from_a_lane_outside_the_mask_is_nan(broken):
    x = np.arange(64, dtype=f32)
    y = np.zeros(64, f32)
    run(broken, "shuffle_reads_outside_mask", (1,), (64,), y, x)
    lower = np.r_[0:16, 32:48]
    assert list(np.flatnonzero(np.isnan(y))) == [12, 13, 14, 15, 44, 45, 46, 47]
    ok = lower[lower % 32 < 12]
    np.testing.assert_array_equal(y[ok], x[ok + 4])


def test_lanes_at_different_primitives(broken):
    with pytest.raises(EmulatorError, match=r"divergent warp: .* waits in __shfl_xor_sync at "
                                            r".* for lane 16, .* which is at __shfl_down_sync"):
        run(broken, "warp_split_between_calls", (1,), (32,), np.zeros(32, f32),
            np.ones(32, f32))


def test_mask_naming_lanes_that_do_not_exist(broken):
    with pytest.raises(EmulatorError, match=r"names lane 16 of its warp, but the block has only "
                                            r"48 threads"):
        run(broken, "full_mask_partial_warp", (1,), (48,), np.zeros(48, f32), np.ones(48, f32))


def test_lane_waiting_at_a_barrier_instead():
    src = r'''extern "C" __global__ void k(float* y) {
        float v = 1.0f;
        if (threadIdx.x < 16) v = __shfl_xor_sync(0xffffffffu, v, 1);
        __syncthreads();
        y[threadIdx.x] = v;
    }'''
    with pytest.raises(EmulatorError, match=r"divergent warp: .* for lane 16, .* which waits at "
                                            r"barrier __syncthreads at <string>:4"):
        EmuModule(code=src).get_function("k")((1,), (32,), (np.zeros(32, f32),))


WARP_SRC = r'''
extern "C" __global__ void shuffles(float* y, const float* x, const int* a, int width) {
    const int t = threadIdx.x, n = blockDim.x;
    const float v = x[t];
    y[t] = __shfl_sync(0xffffffffu, v, a[t], width);
    y[n + t] = __shfl_up_sync(0xffffffffu, v, (unsigned)a[t] & 31u, width);
    y[2 * n + t] = __shfl_down_sync(0xffffffffu, v, (unsigned)a[t] & 31u, width);
    y[3 * n + t] = __shfl_xor_sync(0xffffffffu, v, a[t] & 31, width);
}
extern "C" __global__ void shuffles64(double* y, long long* z, const double* x) {
    const int t = threadIdx.x;
    y[t] = __shfl_xor_sync(0xffffffffu, x[t], 3);
    z[t] = __shfl_down_sync(0xffffffffu, (long long)x[t] << 33, 1);
}
extern "C" __global__ void votes(unsigned* y, const int* p) {
    const int t = threadIdx.x, n = blockDim.x;
    const unsigned half = t % 32 < 16 ? 0x0000ffffu : 0xffff0000u;
    y[t] = __ballot_sync(0xffffffffu, p[t]);
    y[n + t] = __any_sync(half, p[t]);
    y[2 * n + t] = __all_sync(half, p[t]);
    y[3 * n + t] = __syncthreads_count(p[t]);
    y[4 * n + t] = __syncthreads_and(p[t]);
    y[5 * n + t] = __syncthreads_or(p[t]);
    __syncwarp();
}
extern "C" __global__ void active(unsigned* y) {
    const int t = threadIdx.x;
    y[t] = 0;
    if (t % 3 == 0) y[t] = __activemask();
}
'''


def shuffle_model(op, v, a, width):
    """CUDA's shuffle semantics (programming guide), lane by lane over warps of 32."""
    out = np.empty_like(v)
    for t in range(v.size):
        base, lane = t - t % 32, t % 32
        seg = lane - lane % width
        if op == "idx":
            src = seg + a[t] % width
        elif op == "up":
            d = a[t] & 31
            src = lane - d if lane - seg >= d else lane
        elif op == "down":
            d = a[t] & 31
            src = lane + d if lane - seg + d < width else lane
        else:
            src = lane ^ (a[t] & 31)
            src = lane if src - src % width > seg else src    # later segments: own value
        out[t] = v[base + src]
    return out


@pytest.fixture(scope="module")
def warp_mod():
    return EmuModule(code=WARP_SRC)


@pytest.mark.parametrize("width", [1, 2, 4, 8, 16, 32])
def test_shuffles_follow_cuda_semantics(warp_mod, width):
    rng = np.random.default_rng(width)
    n = 64
    x = rng.permutation(n).astype(f32)
    a = rng.integers(-40, 40, n).astype(np.int32)
    y = np.zeros(4 * n, f32)
    warp_mod.get_function("shuffles")((1,), (n,), (y, x, a, i32(width)))
    for k, op in enumerate(("idx", "up", "down", "xor")):
        np.testing.assert_array_equal(y[k * n:(k + 1) * n], shuffle_model(op, x, a, width), op)


def test_shuffle_width_must_be_a_power_of_two(warp_mod):
    with pytest.raises(EmulatorError, match=r"width 12: width must be a power of two"):
        warp_mod.get_function("shuffles")((1,), (32,), (np.zeros(128, f32), np.zeros(32, f32),
                                                       np.zeros(32, np.int32), i32(12)))


def test_shuffles_of_64_bit_values(warp_mod):
    x = np.arange(32, dtype=np.float64) + 0.1
    y, z = np.zeros(32), np.zeros(32, np.int64)
    warp_mod.get_function("shuffles64")((1,), (32,), (y, z, x))
    np.testing.assert_array_equal(y, x[np.arange(32) ^ 3])
    src = np.minimum(np.arange(32) + 1, np.where(np.arange(32) == 31, 31, 32))
    np.testing.assert_array_equal(z, x.astype(np.int64)[src] << 33)


def test_votes_and_block_reductions(warp_mod):
    n = 64
    p = (np.arange(n) % 5 == 0).astype(np.int32)
    p[16:32] = 1
    y = np.zeros(6 * n, np.uint32)
    warp_mod.get_function("votes")((1,), (n,), (y, p))
    ballot = [sum(int(p[w * 32 + k]) << k for k in range(32)) for w in range(2)]
    halves = p.reshape(4, 16)
    np.testing.assert_array_equal(y[:n], np.repeat(ballot, 32))
    np.testing.assert_array_equal(y[n:2 * n], np.repeat(halves.any(1), 16))
    np.testing.assert_array_equal(y[2 * n:3 * n], np.repeat(halves.all(1), 16))
    assert (y[3 * n:4 * n] == p.sum()).all() and (y[4 * n:5 * n] == 0).all()
    assert (y[5 * n:] == 1).all()


def test_activemask_is_the_lanes_that_arrive_together(warp_mod):
    y = np.zeros(64, np.uint32)
    warp_mod.get_function("active")((1,), (64,), (y,))
    want = sum(1 << k for k in range(32) if k % 3 == 0)
    want2 = sum(1 << k for k in range(32) if (k + 32) % 3 == 0)
    np.testing.assert_array_equal(y[::3], [want if t < 32 else want2 for t in range(0, 64, 3)])


def test_warp_primitives_need_fibers_and_get_them(warp_mod):
    assert all(warp_mod.get_function(k).fibers for k in warp_mod.kernels)


def test_an_error_leaves_the_module_usable(broken):
    """A failed launch abandons its fibers; the next launch starts clean (also in parallel
    workers: the first error stops all of them)."""
    n = 4010               # the last block: warp 0 full, warp 1 with 10 live lanes
    for _ in range(2):
        with pytest.raises(EmulatorError, match="has exited"):
            run(broken, "warp_sum_after_return", (63,), (64,), np.zeros(126, f32),
                np.ones(n, f32), i32(n))
        y = np.zeros(126, f32)
        run(broken, "warp_sum_ok", (63,), (64,), y, np.ones(n, f32), i32(n))
        assert y.tolist() == [32.0] * 125 + [10.0]


# ============================================================= every version, every check
# Small shapes, none a multiple of a block, tile or chunk: (N, C, H, W, F, KH, KW). The second
# has F = 70 (two GEMM column tiles) and R = N*OH*OW = 300 (two atomic chunks, T = 32).
RACE_CONV = [(2, 3, 7, 6, 5, 3, 2), (3, 4, 11, 12, 70, 2, 3)]
RACE_POOL = [(2, 3, 9, 11, 2), (1, 2, 10, 7, 3)]


@pytest.fixture(scope="module")
def emu_be():
    return get_backend("cupy", emulate=True)


@pytest.mark.parametrize("shape", RACE_CONV, ids=str)
@pytest.mark.parametrize("op", CONV_OPS)
def test_every_conv_version_passes_every_check(emu_be, racecheck, op, shape):
    """Each version under the race check (3 thread orders, bit-exact but for the atomic
    weight gradient), with poisoned shared memory and NaN-filled outputs, against NumPy."""
    ref = get_backend("numpy")
    n, c, h, w_, f, kh, kw = shape
    rng = np.random.default_rng(sum(shape))
    x = rng.standard_normal((n, c, h, w_)).astype(f32)
    w = rng.standard_normal((f, c, kh, kw)).astype(f32)
    b = rng.standard_normal(f).astype(f32)
    dy = rng.standard_normal((n, f, h - kh + 1, w_ - kw + 1)).astype(f32)
    args = {"conv2d_forward": (x, w, b), "conv2d_backward_input": (dy, w),
            "conv2d_backward_weight": (x, dy), "conv2d_backward_bias": (dy,)}[op]
    a64 = [a.astype(np.float64) for a in args]
    expect = getattr(ref, op)(*a64, version="naive")
    for v in cupy_backend.VERSIONS[op]:
        assert_op_close(op, getattr(emu_be, op)(*args, version=v), expect, *a64, dtype=f32)


@pytest.mark.parametrize("shape", RACE_POOL, ids=str)
def test_every_pool_version_passes_every_check(emu_be, racecheck, shape):
    ref = get_backend("numpy")
    n, c, h, w_, k = shape
    rng = np.random.default_rng(sum(shape))
    x = rng.standard_normal((n, c, h, w_)).astype(f32)
    for v in cupy_backend.VERSIONS["maxpool2d_forward"]:
        y, sw = emu_be.maxpool2d_forward(x, k, version=v)
        ry, rsw = ref.maxpool2d_forward(x, k, version="naive")
        assert_op_close("maxpool2d_forward", y, ry)
        assert_op_close("maxpool2d_forward", sw, rsw)
    dy = rng.standard_normal(y.shape).astype(f32)
    for op, src in (("maxpool2d_backward", dy), ("unpool2d_forward", y)):
        expect = getattr(ref, op)(src, sw, (h, w_), version="naive")
        for v in cupy_backend.VERSIONS[op]:
            assert_op_close(op, getattr(emu_be, op)(src, sw, (h, w_), version=v), expect)
    for v in cupy_backend.VERSIONS["unpool2d_backward"]:
        assert_op_close("unpool2d_backward", emu_be.unpool2d_backward(x, sw, version=v),
                        ref.unpool2d_backward(x, sw, version="naive"))


def test_the_check_covers_every_kernel_of_the_backend():
    """The two tests above run each op's VERSIONS table; the table lists every kernel (the
    helper kernels run inside the versions that launch them)."""
    from kernels.emulator.loader import analyse
    names = set()
    for rel in set(cupy_backend.SOURCES.values()) | set(cupy_backend.HELPER_SOURCES.values()):
        src = open(os.path.join(ROOT, "kernels", rel)).read()
        names |= {k.name for k in analyse(src)[1]}
    listed = {launch_spec.kernel_name(op, v) for op, vs in cupy_backend.VERSIONS.items()
              for v in vs}     # unpool2d_forward runs maxpool2d_backward's kernels
    listed |= set(cupy_backend.HELPER_SOURCES)    # second passes (splitk_sum), run by them
    assert names == listed
