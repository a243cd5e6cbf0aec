"""kernels.numpy_threads: thread-count independence, the set_threads API, scratch reuse."""
import numpy as np
import pytest

from kernels import get_backend, numpy_threads
from scae_np.models import CAE, CNN


def _conv_outputs(be, x, w, b, dy):
    return [be.conv2d_forward(x, w, b), be.conv2d_backward_input(dy, w),
            be.conv2d_backward_weight(x, dy), be.conv2d_backward_bias(dy)]


@pytest.mark.parametrize("shape", [(37, 1, 28, 28, 20, 5), (29, 30, 12, 12, 40, 5)])
def test_conv_ops_bit_identical_at_any_thread_count(shape):
    """Both GEMM plans (plane: conv1-like, rows: conv2-like); 37 and 29 images are not
    multiples of the task size. The dW partial sums are the part that would differ."""
    n, c, h, wd, f, k = shape
    rng = np.random.default_rng(0)
    be = get_backend("numpy")
    x = rng.standard_normal((n, c, h, wd), dtype=np.float32)
    w = rng.standard_normal((f, c, k, k), dtype=np.float32)
    b = rng.standard_normal(f, dtype=np.float32)
    dy = rng.standard_normal((n, f, h - k + 1, wd - k + 1), dtype=np.float32)
    outs = {}
    for t in (1, 2, 3):
        with numpy_threads.using_threads(t):
            outs[t] = _conv_outputs(be, x, w, b, dy)
    for t in (2, 3):
        for a, ref in zip(outs[t], outs[1]):
            assert a.dtype == np.float32
            np.testing.assert_array_equal(a, ref)


def _cnn_steps(threads, steps=2):
    be = get_backend("numpy")
    rng = np.random.default_rng(1)
    x = rng.random((40, 1, 28, 28), dtype=np.float32)
    y = rng.integers(0, 10, 40)
    m = CNN(be, maps=(8, 12, 16), hidden=20, seed=3)
    with numpy_threads.using_threads(threads):
        losses = [m.train_step(x, y, 0.05, momentum=0.9) for _ in range(steps)]
    return losses, m.state_dict()


def test_training_steps_bit_identical_at_1_and_2_threads():
    l1, p1 = _cnn_steps(1)
    l2, p2 = _cnn_steps(2)
    assert l1 == l2 and np.isfinite(l1).all()
    for k in p1:
        np.testing.assert_array_equal(p1[k], p2[k], err_msg=k)


def test_outputs_do_not_alias_between_calls():
    """Scratch workspaces are reused across calls; no output may be one of them (a second
    call must leave the first call's results untouched)."""
    be = get_backend("numpy")
    rng = np.random.default_rng(2)
    x1, x2 = (rng.standard_normal((33, 30, 12, 12), dtype=np.float32) for _ in range(2))
    w = rng.standard_normal((40, 30, 5, 5), dtype=np.float32)
    b = np.zeros(40, np.float32)
    dy1, dy2 = (rng.standard_normal((33, 40, 8, 8), dtype=np.float32) for _ in range(2))
    first = _conv_outputs(be, x1, w, b, dy1)
    keep = [a.copy() for a in first]
    second = _conv_outputs(be, x2, w, b, dy2)
    for a, k, s in zip(first, keep, second):
        np.testing.assert_array_equal(a, k)
        assert not np.shares_memory(a, s)
    # and through a model: the CAE's loss of a batch is the same before and after
    # other batches went through the same workspaces
    cae = CAE(be, n_maps=6, kernel=5, seed=0)
    xa, xb = (rng.random((20, 1, 16, 16), dtype=np.float32) for _ in range(2))
    la = cae.loss_and_grads(xa)[0]
    cae.loss_and_grads(xb)
    assert float(cae.loss_and_grads(xa)[0]) == float(la)


def test_set_threads_api():
    with numpy_threads.using_threads(3):
        assert numpy_threads.num_threads() == 3
        with numpy_threads.using_threads(1):
            assert numpy_threads.num_threads() == 1
        assert numpy_threads.num_threads() == 3
    for bad in (0, -1, 1.5):
        with pytest.raises(ValueError, match="positive whole number"):
            numpy_threads.set_threads(bad)


def test_keep_freed_memory_reports_what_it_did(monkeypatch):
    monkeypatch.setenv("SCAE_NP_MALLOPT", "0")
    assert numpy_threads.keep_freed_memory() is False
    monkeypatch.delenv("SCAE_NP_MALLOPT")
    assert isinstance(numpy_threads.keep_freed_memory(), bool)
