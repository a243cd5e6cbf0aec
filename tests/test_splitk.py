"""Split-K and the split bias reduction (issue 12): the slice rule of kernels/launch_spec.py,
and the split versions in both GPU dialects -- the CUDA C kernels on the emulator, the numba
kernels in numba's simulator -- against the NumPy definition at shapes that are not
multiples of the tiles, with S > 1 (partials + the fixed-order second pass) and S == 1 (no
split: implicit_gemm's / reduce's bits exactly), bit-identical reruns, and the emulator's
race check (three thread orders, bit for bit).
"""
import numpy as np
import pytest

from kernels import device, get_backend, launch_spec
from kernels.launch_spec import conv_split_k
from kernels.testing import assert_op_close

from numba_backends import numba_backend

ref = get_backend("numpy")

SPLIT = {"conv2d_forward": "splitk", "conv2d_backward_input": "splitk",
         "conv2d_backward_weight": "splitk", "conv2d_backward_bias": "split"}
#: the version each split version is when S == 1
UNSPLIT = {"conv2d_forward": "implicit_gemm", "conv2d_backward_input": "implicit_gemm",
           "conv2d_backward_weight": "implicit_gemm", "conv2d_backward_bias": "reduce"}
#: (N, C, H, W, F, KH, KW), none a multiple of a tile. With the default rule (132 SMs) they
#: split: forward K = 18 taps in 3 steps of 8 (S = 3), input K = 30 (S = 4), weight
#: R = 32 positions (S = 4), bias R = 288 positions in 2 steps of 256 (S = 2).
SHAPES = {"conv2d_forward": (2, 3, 5, 6, 5, 2, 3),
          "conv2d_backward_input": (2, 3, 5, 6, 5, 2, 3),
          "conv2d_backward_weight": (2, 3, 5, 6, 5, 2, 3),
          "conv2d_backward_bias": (2, 1, 13, 14, 2, 2, 3)}
EXPECTED_S = {"conv2d_forward": 3, "conv2d_backward_input": 4, "conv2d_backward_weight": 4,
              "conv2d_backward_bias": 2}


def cdiv(a, b):
    return -(-a // b)


# ------------------------------------------------------------------------------ the rule
def test_rule_fills_the_device_and_covers_k():
    for base in (1, 2, 3, 4, 47, 66, 120, 131, 132, 500):
        for k in (1, 7, 8, 9, 50, 289, 1024, 7744, 9216, 99_999):
            for step in (8, 256):
                s, chunk = conv_split_k(base, k, step)
                steps, want = cdiv(k, step), cdiv(132, base)
                assert chunk % step == 0 and chunk >= step
                assert (s - 1) * chunk < k <= s * chunk, (base, k, step)   # no empty slice
                if base >= 132 or steps == 1:
                    assert s == 1
                elif steps >= want:
                    assert want <= s < 2 * want and s * base >= 132, (base, k, step, s)
                else:                                 # K too short: one slice per K step
                    assert s == steps


def test_rule_at_the_papers_shapes():
    # weight gradient, batch 16: mnist-conv1 (2 tiles, R = 16*24*24), Fig. 1 CAE (1 tile,
    # R = 16*22*22), mnist-conv2 (120 tiles, R = 16*8*8)
    assert conv_split_k(2, 16 * 24 * 24) == (68, 136)
    assert conv_split_k(1, 16 * 22 * 22) == (139, 56)
    assert conv_split_k(120, 16 * 8 * 8) == (2, 512)
    # tiles that fill the GPU: no split (mnist-conv1's forward at batch 16: 288 tiles)
    assert conv_split_k(288, 25) == (1, 32)
    # bias of the Fig. 1 CAE: F = 20 blocks per slice, 256-position steps
    assert conv_split_k(20, 16 * 22 * 22, 256) == (8, 1024)
    # another device: the rule takes its SM count
    assert conv_split_k(2, 16 * 24 * 24, sms=16) == (8, 1152)


def test_rule_refuses_nonsense():
    with pytest.raises(ValueError, match="base_blocks, k_total and k_step >= 1"):
        conv_split_k(0, 10)


def test_sum_threads():
    assert [launch_spec.splitk_sum_threads(s) for s in (1, 2, 4, 5, 66, 139, 264)] == \
        [1, 1, 1, 2, 32, 32, 32]


# ------------------------------------------------------------------------------ kernels
def _backend(kind):
    return get_backend("cupy", emulate=True) if kind == "cupy" else numba_backend("sim")


KINDS = ["cupy", pytest.param("numba", marks=pytest.mark.simulator)]


def _args(op, shape, seed=0):
    n, c, h, w_, f, kh, kw = shape
    rng = np.random.default_rng(seed + sum(shape))
    x = rng.standard_normal((n, c, h, w_)).astype(np.float32)
    w = rng.standard_normal((f, c, kh, kw)).astype(np.float32)
    b = rng.standard_normal(f).astype(np.float32)
    dy = rng.standard_normal((n, f, h - kh + 1, w_ - kw + 1)).astype(np.float32)
    return {"conv2d_forward": (x, w, b), "conv2d_backward_input": (dy, w),
            "conv2d_backward_weight": (x, dy), "conv2d_backward_bias": (dy,)}[op]


def _run(be, op, version, args):
    with device.record_launches(be) as log:
        out = be.to_host(getattr(be, op)(*[be.to_device(a) for a in args], version=version))
    return out, log.launches


def _check(op, out, args):
    a64 = [a.astype(np.float64) for a in args]
    assert_op_close(op, out, getattr(ref, op)(*a64, version="naive"), *a64, dtype=np.float32)


@pytest.mark.parametrize("op", list(SPLIT))
@pytest.mark.parametrize("kind", KINDS)
def test_split_matches_numpy_and_repeats_bitwise(kind, op, monkeypatch):
    """S > 1: the split launch then (GEMMs) the fixed-order sum; right, and the same bits on
    a rerun. The cupy runs go through the emulator's race check."""
    be = _backend(kind)
    if kind == "cupy":
        monkeypatch.setenv("SCAE_NP_EMU_RACECHECK", "1")
    args = _args(op, SHAPES[op])
    out, launches = _run(be, op, SPLIT[op], args)
    _check(op, out, args)
    s = EXPECTED_S[op]
    if op == "conv2d_backward_bias":
        assert [la.grid for la in launches] == [(SHAPES[op][4], s)]
    else:
        assert len(launches) == 2 and launches[0].grid[2] == s
        assert launches[1].kernel == "splitk_sum"
    again, _ = _run(be, op, SPLIT[op], args)
    assert np.array_equal(out, again)


@pytest.mark.parametrize("op", list(SPLIT))
@pytest.mark.parametrize("kind", KINDS)
def test_unsplit_is_the_plain_version_bitwise(kind, op, monkeypatch):
    """S == 1 (here: a one-SM device, so the tiles alone fill it): one launch, no workspace,
    and exactly the bits of implicit_gemm / reduce."""
    monkeypatch.setattr(device, "DEFAULT", device.Device("one SM", 1, 1.0, 1.0))
    be = _backend(kind)
    args = _args(op, SHAPES[op], seed=1)
    out, launches = _run(be, op, SPLIT[op], args)
    assert len(launches) == 1 and launches[0].blocks == (
        SHAPES[op][4] if op == "conv2d_backward_bias" else 1)
    _check(op, out, args)
    plain, _ = _run(be, op, UNSPLIT[op], args)
    assert np.array_equal(out, plain)


@pytest.mark.parametrize("kind", KINDS)
def test_many_slices_and_tiles(kind, monkeypatch):
    """The most slices the rule can give (a huge device: one K step of 8 per slice; R = 36
    positions, so S = 5 and the last slice is half a step) on two column tiles of dw
    (C*KH*KW = 70), with T = 2 threads per element in the sum (S > 4)."""
    monkeypatch.setattr(device, "DEFAULT", device.Device("huge", 10**6, 1.0, 1.0))
    if kind == "cupy":
        monkeypatch.setenv("SCAE_NP_EMU_RACECHECK", "1")
    be = _backend(kind)
    shape = (3, 7, 3, 10, 2, 2, 5)            # KC = 7*2*5 = 70: 2 tiles; R = 3*2*6 = 36
    op = "conv2d_backward_weight"
    args = _args(op, shape)
    out, launches = _run(be, op, "splitk", args)
    _check(op, out, args)
    assert launches[0].grid == (1, 2, 5) and launches[1].block == (2, 64)
    if kind == "cupy":                        # (the simulator's rerun: the test above)
        again, _ = _run(be, op, "splitk", args)
        assert np.array_equal(out, again)


@pytest.mark.simulator
def test_numba_gemms_refuse_sizes_past_int32(monkeypatch):
    """The numba GEMM tiles decode indices in 32-bit unsigned maths (udiv/umod), so their
    launchers refuse arrays past the int32 range, with the CUDA C launcher's check and
    message (the limit shrunk here so that a small array crosses it)."""
    from kernels import cupy_backend
    monkeypatch.setattr(cupy_backend, "INT32_MAX", 100)
    be = numba_backend("sim")
    x, w, b = _args("conv2d_forward", (2, 3, 5, 6, 5, 2, 3))     # x: 180 elements
    for v in ("implicit_gemm", "splitk"):
        with pytest.raises(ValueError, match=r"x has 180 elements, more than the kernels' "
                                             r"int32 indexing allows \(100\)"):
            be.conv2d_forward(x, w, b, version=v)
