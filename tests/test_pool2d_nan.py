"""Max-pooling with NaN and +-Inf, and switch legality: the rules of kernels/contract.py on
every version of every backend (NumPy naive/argmax/fast; the CUDA C kernels on the emulator,
and on a GPU in the gpu tier; the numba kernels in the simulator), checked against
torch.nn.functional.max_pool2d(return_indices=True).

(The gpu tier, ``pytest -m gpu``, runs the same tests on the CUDA C and numba kernels on a
GPU; not run on this project's GPU-less machine yet.)

The rule: values are ordered -Inf < finite < +Inf < NaN, ties (NaNs included) go to the first
in row-major window order. PyTorch agrees on every value and on the switch of every window
with at most one NaN; with several NaNs it points at the last one (pinned below).
"""
import numpy as np
import pytest

from kernels import contract, get_backend, launch_spec

from numba_backends import numba_backend

NAN, INF = np.nan, np.inf
ref = get_backend("numpy")


def _numpy():
    return ref


def _cupy_emulated():
    return get_backend("cupy", emulate=True)


def _numba_sim():
    return numba_backend("sim")


def _cupy_gpu():
    from kernels import BackendUnavailableError
    try:
        return get_backend("cupy")
    except BackendUnavailableError as e:
        pytest.skip(f"gpu tier needs a CUDA GPU with CuPy: {e}")


def _numba_gpu():
    return numba_backend("gpu")


BACKENDS = [pytest.param(_numpy, id="numpy"),
            pytest.param(_cupy_emulated, id="cupy-emulated", marks=pytest.mark.emulator),
            pytest.param(_numba_sim, id="numba-sim", marks=pytest.mark.simulator),
            pytest.param(_cupy_gpu, id="cupy-gpu", marks=pytest.mark.gpu),
            pytest.param(_numba_gpu, id="numba-gpu", marks=pytest.mark.gpu)]


@pytest.fixture(params=BACKENDS)
def be(request):
    return request.param()


@pytest.fixture(params=BACKENDS[1:])
def gpu_be(request):
    """The CUDA C and numba kernels (emulator, simulator): the versions a GPU runs."""
    return request.param()


def forward_versions(be):
    return be.versions("maxpool2d_forward")


def pool(be, x, k, version):
    y, sw = be.maxpool2d_forward(be.to_device(np.ascontiguousarray(x, np.float32)), k,
                                 version=version)
    return np.asarray(be.to_host(y)), np.asarray(be.to_host(sw))


def window(values):
    """One 1x1 plane of k x k pixels holding ``values`` in row-major order."""
    k = int(round(len(values) ** 0.5))
    return np.array(values, np.float32).reshape(1, 1, k, k), k


# (window in row-major order, pooled value, switch)
CASES = {
    "one NaN": ([0.5, NAN, 0.9, 0.2], NAN, 1),
    "NaN first": ([NAN, 0.5, 0.9, 0.2], NAN, 0),
    "NaN last": ([0.5, 0.9, 0.2, NAN], NAN, 3),
    "two NaNs: the first": ([0.5, 1.0, NAN, NAN], NAN, 2),
    "NaN beats +Inf": ([INF, 0.0, NAN, 1.0], NAN, 2),
    "all NaN": ([NAN, NAN, NAN, NAN], NAN, 0),
    "all -Inf": ([-INF, -INF, -INF, -INF], -INF, 0),
    "-Inf and a number": ([-INF, -INF, -3.0, -INF], -3.0, 2),
    "two +Inf: the first": ([-INF, INF, INF, -INF], INF, 1),
    "3x3, NaNs at 4 and 6": ([1, 2, 3, 4, NAN, 6, NAN, 8, 9], NAN, 4),
    "3x3, -Inf": ([-INF] * 9, -INF, 0),
}


@pytest.mark.parametrize("case", list(CASES))
def test_nan_and_inf_windows_on_every_version(be, case):
    values, want_y, want_sw = CASES[case]
    x, k = window(values)
    for v in forward_versions(be):
        y, sw = pool(be, x, k, v)
        assert sw.dtype == np.int32 and int(sw[0, 0, 0, 0]) == want_sw, (v, sw)
        if np.isnan(want_y):
            assert np.isnan(y[0, 0, 0, 0]), (v, y)
        else:
            assert y[0, 0, 0, 0] == want_y, (v, y)
        # value and switch agree: y is x at the switch (NaN compared as NaN)
        np.testing.assert_array_equal(y.reshape(-1), x.reshape(-1)[sw.reshape(-1)])


def nan_inf_input(rng, shape, several_nans):
    """Distinct finite values with NaN, +Inf and -Inf sprinkled in; without
    ``several_nans`` no window (k=2 and k=3 windows of the shape) holds two NaNs."""
    n, c, h, w = shape
    x = rng.permutation(n * c * h * w).astype(np.float32).reshape(shape) - n * c * h * w / 2
    special = rng.random(shape)
    x[special < 0.08] = INF
    x[(special >= 0.08) & (special < 0.16)] = -INF
    if several_nans:
        x[special > 0.8] = NAN
    else:   # at most one NaN per 6x6 block (a multiple of both window sizes)
        for b0 in range(0, h, 6):
            for b1 in range(0, w, 6):
                for nn in range(n):
                    for cc in range(c):
                        if rng.random() < 0.7:
                            x[nn, cc, b0 + rng.integers(0, min(6, h - b0)),
                              b1 + rng.integers(0, min(6, w - b1))] = NAN
    return x


@pytest.mark.parametrize("k", [2, 3])
def test_every_version_matches_the_naive_reference_with_nan_and_inf(be, rng, k):
    """Whole planes (remainder rows/columns, k = 2 takes the fast 2x2 path, k = 3 the
    general one) with many NaN/Inf windows: every version equals the naive scan."""
    x = nan_inf_input(rng, (2, 3, 13, 11), several_nans=True)
    y0, sw0 = pool(ref, x, k, "naive")
    assert np.isnan(y0).any() and np.isinf(y0).any()
    for v in forward_versions(be):
        y, sw = pool(be, x, k, v)
        np.testing.assert_array_equal(sw, sw0, err_msg=v)
        np.testing.assert_array_equal(y, y0, err_msg=v)      # NaN == NaN for this assert


@pytest.mark.parametrize("k", [2, 3])
def test_against_torch_max_pool2d(rng, k):
    """PyTorch (the oracle): the same values everywhere and the same switches on every
    window with at most one NaN; with several NaNs in a window torch takes the last one,
    the contract the first."""
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    for several in (False, True):
        x = nan_inf_input(rng, (2, 3, 12, 18), several_nans=several)
        ty, ti = F.max_pool2d(torch.from_numpy(x), k, return_indices=True)
        ty, ti = ty.numpy(), ti.numpy()
        for v in ref.versions("maxpool2d_forward"):
            y, sw = pool(ref, x, k, v)
            np.testing.assert_array_equal(y, ty, err_msg=v)
            n_nan = np.isnan(x[:, :, :y.shape[2] * k, :y.shape[3] * k]
                             .reshape(2, 3, y.shape[2], k, y.shape[3], k)).sum(axis=(3, 5))
            one = n_nan <= 1
            np.testing.assert_array_equal(sw[one], ti[one], err_msg=v)
            if several:
                many = ~one
                assert many.any()
                # torch: the last NaN of the window; the contract: the first
                assert (sw[many] < ti[many]).all(), v
            else:
                assert one.all()
    xs = np.array([0.5, NAN, 0.9, 0.2], np.float32).reshape(1, 1, 2, 2)
    ty, ti = F.max_pool2d(torch.from_numpy(xs), 2, return_indices=True)
    assert np.isnan(ty.item()) and ti.item() == 1


def test_backward_puts_the_gradient_at_the_first_nan(be):
    x, k = window([0.5, NAN, NAN, 0.2])
    for v in be.versions("maxpool2d_backward"):
        _, sw = pool(ref, x, k, "naive")
        dy = np.array([[[[3.0]]]], np.float32)
        dx = be.to_host(be.maxpool2d_backward(be.to_device(dy), be.to_device(sw), (2, 2),
                                              version=v))
        np.testing.assert_array_equal(np.asarray(dx).reshape(-1), [0, 3, 0, 0], err_msg=v)


# ------------------------------------------------------------------- switch legality
def test_check_switch_windows_accepts_forward_switches_and_names_a_bad_one(rng):
    for shape, k in [((2, 3, 9, 11), 2), ((1, 2, 8, 8), 3), ((2, 1, 5, 5), 5)]:
        x = rng.standard_normal(shape).astype(np.float32)
        _, sw = ref.maxpool2d_forward(x, k)
        got = contract.check_switch_windows(sw, shape[2:])
        assert got in contract.pool_window_sizes(sw.shape[2:], shape[2:])
    x = rng.standard_normal((2, 3, 8, 8)).astype(np.float32)
    _, sw = ref.maxpool2d_forward(x, 2)
    bad = sw.copy()
    bad[1, 2, 3, 1] = sw[1, 2, 0, 0]          # in range, inside another window: a repeat
    with pytest.raises(ValueError, match=r"switches\[1, 2, 3, 1\].*not inside its own"):
        contract.check_switch_windows(bad, (8, 8))
    bad = sw.copy()
    bad[0, 0, 0, 0] = 64
    with pytest.raises(ValueError, match="not inside its own"):
        contract.check_switch_windows(bad, (8, 8))
    with pytest.raises(ValueError, match="no pooling window size"):
        contract.check_switch_windows(sw, (9, 20))


def test_pooling_window_rule():
    """kernels/launch_spec.py's window rule, which both GPU launchers and the contract use:
    every k with H//k == OH and W//k == OW, and the gather's bracket of them (None: no k)."""
    assert list(launch_spec.pool_window_sizes((12, 12), (24, 24))) == [2]
    assert list(launch_spec.pool_window_sizes((4, 5), (9, 11))) == [2]
    assert list(launch_spec.pool_window_sizes((1, 2), (5, 7))) == [3]
    assert list(launch_spec.pool_window_sizes((1, 1), (5, 5))) == [3, 4, 5]
    assert list(launch_spec.pool_window_sizes((2, 2), (7, 9))) == []     # k=3 rows, k=4 cols
    assert launch_spec.gather_window_bracket((12, 12), (24, 24)) == (2, 2)
    assert launch_spec.gather_window_bracket((1, 1), (5, 5)) == (3, 5)
    assert launch_spec.gather_window_bracket((2, 2), (7, 9)) is None
    assert launch_spec.gather_window_bracket((3, 2), (7, 7)) is None       # k=2 rows, k=3 cols
    assert contract.pool_window_sizes is launch_spec.pool_window_sizes     # one rule


@pytest.mark.parametrize("hw, pooled", [((7, 9), (2, 2)), ((7, 7), (3, 2))],
                         ids=["7x9_from_2x2", "7x7_from_3x2"])
def test_a_plane_no_window_size_fits_gives_the_same_result_on_every_backend(be, hw, pooled):
    """No k pools hw to the pooled plane, so the gathers have no window to scan: every
    version of every backend still places the values at their (in-range, distinct) switches
    -- the GPU backends by running the scatter (kernels/launch_spec.py) -- and none raises."""
    rng = np.random.default_rng(5)
    n, c = 2, 3
    y = rng.standard_normal((n, c) + pooled).astype(np.float32)
    size = pooled[0] * pooled[1]
    sw = np.stack([rng.permutation(hw[0] * hw[1])[:size] for _ in range(n * c)])
    sw = sw.reshape((n, c) + pooled).astype(np.int32)
    want = np.zeros((n * c, hw[0] * hw[1]), np.float32)
    np.put_along_axis(want, sw.reshape(n * c, -1), y.reshape(n * c, -1), axis=1)
    want = want.reshape((n, c) + hw)
    for op in ("maxpool2d_backward", "unpool2d_forward"):
        for v in be.versions(op):
            got = getattr(be, op)(be.to_device(y), be.to_device(sw), hw, version=v)
            np.testing.assert_array_equal(be.to_host(got), want, err_msg=f"{op} {v}")


@pytest.mark.parametrize("bad", [-1, 16])
def test_out_of_range_switches_are_refused_on_every_host_backend(be, bad):
    if be.xp is not np:
        pytest.skip("on a GPU the range is not checked: see the next test")
    sw = np.array([[[[0, 3], [8, 10]]]], np.int32)
    sw[0, 0, 1, 1] = bad
    dy = np.ones((1, 1, 2, 2), np.float32)
    for op, call in [("maxpool2d_backward", lambda v: be.maxpool2d_backward(
                          be.to_device(dy), be.to_device(sw), (4, 4), version=v)),
                     ("unpool2d_forward", lambda v: be.unpool2d_forward(
                          be.to_device(dy), be.to_device(sw), (4, 4), version=v)),
                     ("unpool2d_backward", lambda v: be.unpool2d_backward(
                          be.to_device(np.ones((1, 1, 4, 4), np.float32)), be.to_device(sw),
                          version=v))]:
        for v in be.versions(op):
            with pytest.raises(ValueError, match=r"switches hold flat in-plane indices"):
                call(v)


def test_gpu_kernels_skip_out_of_range_switches_they_are_not_checked_for(gpu_be):
    """On a GPU no range check runs; the CUDA C and numba kernels must then skip a bad
    switch (scatter: value dropped; unpool2d_backward: 0) instead of touching memory
    outside the plane. Called through get_op, which bypasses the host check."""
    be = gpu_be
    sw = np.array([[[[0, 3], [-1, 16]]]], np.int32)
    y = np.array([[[[1.0, 2.0], [3.0, 4.0]]]], np.float32)
    for op in ("maxpool2d_backward", "unpool2d_forward"):
        out = be.get_op(op, "naive")(be.to_device(y), be.to_device(sw), (4, 4))
        want = np.zeros(16, np.float32)
        want[0], want[3] = 1.0, 2.0
        np.testing.assert_array_equal(np.asarray(be.to_host(out)).reshape(-1), want)
    dx = np.arange(1, 17, dtype=np.float32).reshape(1, 1, 4, 4)
    got = be.get_op("unpool2d_backward", "naive")(be.to_device(dx), be.to_device(sw))
    np.testing.assert_array_equal(np.asarray(be.to_host(got)).reshape(-1), [1, 4, 0, 0])


def _illegal_switches():
    """4x4 plane pooled 2x2 (windows: {0,1,4,5}, {2,3,6,7}, {8,9,12,13}, {10,11,14,15}).
    Window (0,1) points outside itself at 5 (inside window (0,0), which points at 0);
    windows (1,0) and (1,1) both point at 10 (a repeat; 10 is inside (1,1))."""
    return np.array([[[[0, 5], [10, 10]]]], np.int32)


def test_illegal_switches_numpy_versions_agree_as_documented():
    sw = _illegal_switches()
    y = np.array([[[[1.0, 2.0], [3.0, 4.0]]]], np.float32)
    want = np.zeros(16, np.float32)
    want[0], want[5], want[10] = 1.0, 2.0, 4.0     # outside: lands there; repeat: last wins
    for op in ("maxpool2d_backward", "unpool2d_forward"):
        for v in ref.versions(op):
            out = getattr(ref, op)(y, sw, (4, 4), version=v)
            np.testing.assert_array_equal(out.reshape(-1), want, err_msg=f"{op} {v}")
    dx = np.arange(1, 17, dtype=np.float32).reshape(1, 1, 4, 4)
    for v in ref.versions("unpool2d_backward"):
        np.testing.assert_array_equal(ref.unpool2d_backward(dx, sw, version=v).reshape(-1),
                                      [1, 6, 11, 11], err_msg=v)


def test_illegal_switches_gpu_versions_as_documented(gpu_be, monkeypatch):
    """The scatter (naive) honours a switch outside its window; the gather drops it; both
    honour a repeat that lies in its own window, for the gather the last window it scans."""
    # Two threads of the scatter write pixel 10 (the repeated switch): a race by design, which
    # value wins is unspecified (out[10] in (3, 4) below), so the emulator's race check would
    # rightly flag it under SCAE_NP_EMU_RACECHECK=1.
    monkeypatch.delenv("SCAE_NP_EMU_RACECHECK", raising=False)
    be = gpu_be
    sw = _illegal_switches()
    y = np.array([[[[1.0, 2.0], [3.0, 4.0]]]], np.float32)
    gather = np.zeros(16, np.float32)
    gather[0], gather[10] = 1.0, 4.0             # 5 is not in window (0,1): dropped
    for op in ("maxpool2d_backward", "unpool2d_forward"):
        out = np.asarray(be.to_host(getattr(be, op)(be.to_device(y), be.to_device(sw), (4, 4),
                                                    version="gather"))).reshape(-1)
        np.testing.assert_array_equal(out, gather, err_msg=op)
        out = np.asarray(be.to_host(getattr(be, op)(be.to_device(y), be.to_device(sw), (4, 4),
                                                    version="naive"))).reshape(-1)
        assert out[0] == 1.0 and out[5] == 2.0 and out[10] in (3.0, 4.0), (op, out)
        assert np.count_nonzero(out) == 3
