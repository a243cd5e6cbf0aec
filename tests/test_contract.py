"""Input checking: every bad argument fails before any kernel runs, with a message that
names the argument, the shape/dtype it got and what it needed."""
import numpy as np
import pytest

import kernels
from kernels import BackendUnavailableError, get_backend

f32 = np.float32


@pytest.fixture
def be():
    return get_backend("numpy")


def z(*shape, dtype=f32):
    return np.zeros(shape, dtype=dtype)


def test_get_backend_unknown_name():
    with pytest.raises(ValueError, match="unknown backend 'torch'.*cupy.*numba.*numpy"):
        get_backend("torch")


def test_numpy_backend_rejects_emulate():
    with pytest.raises(ValueError, match="emulate=True is for"):
        get_backend("numpy", emulate=True)


def test_backend_exposes_contract(be):
    for op in kernels.OPS:
        assert callable(getattr(be, op))
        assert be.versions(op)[0] == "naive"
        assert be.default_version(op) in be.versions(op)
    assert be.xp is np
    a = np.arange(6.0).reshape(2, 3)[:, ::2]
    dev = be.to_device(a, dtype=f32)
    assert dev.flags.c_contiguous and dev.dtype == f32
    assert isinstance(be.to_host(dev), np.ndarray)


def test_unknown_version_names_choices(be):
    with pytest.raises(ValueError, match="no version 'tiled'.*naive.*fast"):
        be.conv2d_forward(z(1, 1, 3, 3), z(1, 1, 2, 2), z(1), version="tiled")


@pytest.mark.parametrize("args, match", [
    ((z(1, 3, 3), z(1, 1, 2, 2), z(1)), r"x must be 4-D \(N, C, H, W\), got shape \(1, 3, 3\)"),
    ((z(1, 2, 5, 5), z(4, 3, 2, 2), z(4)), r"w has 3 input channels.*x has 2.*\(4, 2, KH, KW\)"),
    ((z(1, 1, 3, 3), z(1, 1, 4, 2), z(1)), r"kernel 4x2.*larger than the input plane 3x3"),
    ((z(1, 1, 3, 3), z(2, 1, 2, 2), z(3)), r"b must have shape \(2,\).*got \(3,\)"),
    ((z(1, 1, 3, 3), z(2, 1, 2, 2), z(2, 1)), r"b must be 1-D"),
    ((z(0, 1, 3, 3), z(2, 1, 2, 2), z(2)), r"x must not be empty"),
])
def test_conv2d_forward_shape_errors(be, args, match):
    with pytest.raises(ValueError, match=match):
        be.conv2d_forward(*args)


def test_dtype_errors(be):
    with pytest.raises(TypeError, match=r"x must have dtype float32 or float64, got int64"):
        be.conv2d_forward(z(1, 1, 3, 3, dtype=np.int64), z(1, 1, 2, 2), z(1))
    with pytest.raises(TypeError, match=r"w has dtype float64 but x has dtype float32"):
        be.conv2d_forward(z(1, 1, 3, 3), z(1, 1, 2, 2, dtype=np.float64), z(1))
    with pytest.raises(TypeError, match=r"switches must have dtype int32, got int64.*astype"):
        be.unpool2d_forward(z(1, 1, 2, 2), z(1, 1, 2, 2, dtype=np.int64), (4, 4))
    with pytest.raises(TypeError, match=r"x must be a numpy.ndarray, got builtins.list"):
        be.maxpool2d_forward([[1.0]], 2)


def test_non_contiguous_is_rejected_with_fix(be):
    x = np.zeros((1, 1, 6, 6), f32)[:, :, ::2, :]
    with pytest.raises(ValueError, match=r"x must be C-contiguous.*ascontiguousarray\(x\)"):
        be.maxpool2d_forward(x, 2)


def test_backward_shape_errors(be):
    with pytest.raises(ValueError, match=r"dy has 3 maps.*w has 2 filters"):
        be.conv2d_backward_input(z(1, 3, 2, 2), z(2, 1, 2, 2))
    with pytest.raises(ValueError, match=r"dy has batch size 2.*x has 1"):
        be.conv2d_backward_weight(z(1, 1, 4, 4), z(2, 1, 2, 2))
    with pytest.raises(ValueError, match=r"dy plane 5x5.*larger than the x plane 4x4"):
        be.conv2d_backward_weight(z(1, 1, 4, 4), z(1, 1, 5, 5))


def test_pool_errors(be):
    with pytest.raises(ValueError, match=r"k must be a positive int"):
        be.maxpool2d_forward(z(1, 1, 4, 4), 0)
    with pytest.raises(ValueError, match=r"k must be a positive int"):
        be.maxpool2d_forward(z(1, 1, 4, 4), 2.0)
    with pytest.raises(ValueError, match=r"pooling window 3x3 is larger than the input plane 2x5"):
        be.maxpool2d_forward(z(1, 1, 2, 5), 3)
    sw = np.zeros((1, 1, 2, 2), np.int32)
    with pytest.raises(ValueError, match=r"switches has shape \(1, 1, 2, 2\) but dy has shape "
                                         r"\(1, 1, 2, 3\).*as returned by maxpool2d_forward"):
        be.maxpool2d_backward(z(1, 1, 2, 3), sw, (4, 6))
    with pytest.raises(ValueError, match=r"input_hw=\(1, 4\) is smaller than the pooled plane"):
        be.maxpool2d_backward(z(1, 1, 2, 2), sw, (1, 4))
    with pytest.raises(ValueError, match=r"output_hw must be a pair of ints"):
        be.unpool2d_forward(z(1, 1, 2, 2), sw, 4)
    bad = np.full((1, 1, 2, 2), 16, np.int32)
    with pytest.raises(ValueError, match=r"switches hold flat in-plane indices in \[16, 16\] "
                                         r"but the plane 4x4 has indices 0..15"):
        be.unpool2d_forward(z(1, 1, 2, 2), bad, (4, 4))
    with pytest.raises(ValueError, match=r"switches hold flat in-plane indices in \[-1, -1\]"):
        be.unpool2d_backward(z(1, 1, 4, 4), np.full((1, 1, 2, 2), -1, np.int32))
    with pytest.raises(ValueError, match=r"first two dimensions \(N, C\) must match"):
        be.unpool2d_backward(z(1, 2, 4, 4), sw)


def test_missing_cupy_says_how_to_install(monkeypatch):
    """Without CuPy installed, asking for the GPU backend names the pip extra to install."""
    import sys
    monkeypatch.setitem(sys.modules, "cupy", None)          # makes `import cupy` fail
    with pytest.raises(BackendUnavailableError,
                       match=r"pip install -e '\.\[cuda13\]'.*emulate=True"):
        get_backend("cupy")


def test_cupy_without_gpu_points_to_the_emulator():
    """CuPy installed but no GPU visible: the error says so and offers emulate=True."""
    cupy = pytest.importorskip("cupy", reason="CuPy is not installed here")
    try:
        if cupy.cuda.runtime.getDeviceCount() > 0:
            pytest.skip("a CUDA GPU is visible here")
    except Exception:
        pass
    with pytest.raises(BackendUnavailableError,
                       match=r"no CUDA GPU.*get_backend\('cupy', emulate=True\)"):
        get_backend("cupy")


def test_emulated_cupy_backend_needs_no_cupy(monkeypatch):
    import sys
    monkeypatch.setitem(sys.modules, "cupy", None)
    be = get_backend("cupy", emulate=True)
    assert be.emulated and be.xp is np
