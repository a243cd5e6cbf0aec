"""kernels.numpy_threads: thread-count independence, the set_threads API, scratch reuse."""
import numpy as np
import pytest

from kernels import get_backend, numpy_threads
from scae_np.models import CAE, CNN


def _conv_outputs(be, x, w, b, dy):
    return [be.conv2d_forward(x, w, b), be.conv2d_backward_input(dy, w),
            be.conv2d_backward_weight(x, dy), be.conv2d_backward_bias(dy)]


@pytest.mark.parametrize("shape", [(37, 1, 28, 28, 20, 5), (29, 30, 12, 12, 40, 5),
                                   (33, 100, 12, 12, 150, 5)])
def test_conv_ops_bit_identical_at_any_thread_count(shape):
    """Both GEMM plans (plane: conv1-like, rows: conv2-like) and the dft plan (the paper's
    conv2 channels); 37, 29 and 33 images are not multiples of the task size. The dW
    partial sums are the part that would differ."""
    n, c, h, wd, f, k = shape
    rng = np.random.default_rng(0)
    be = get_backend("numpy")
    x = rng.standard_normal((n, c, h, wd), dtype=np.float32)
    w = rng.standard_normal((f, c, k, k), dtype=np.float32)
    b = rng.standard_normal(f, dtype=np.float32)
    dy = rng.standard_normal((n, f, h - k + 1, wd - k + 1), dtype=np.float32)
    from kernels.conv2d import numpy_ops
    assert numpy_ops._dft_plan(n, c, f, h, wd, k, k) == (c == 100)
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


def test_matmul_is_the_product_at_any_thread_count():
    """The fully connected layers' GEMM: rows cut into tasks (130 is not a multiple of the
    task size), transposed views accepted, bit-identical at 1 and 3 threads."""
    rng = np.random.default_rng(4)
    a = rng.standard_normal((130, 70), dtype=np.float32)
    b = rng.standard_normal((50, 70), dtype=np.float32)
    outs = []
    for t in (1, 3):
        with numpy_threads.using_threads(t):
            outs.append((numpy_threads.matmul(a, b.T), numpy_threads.matmul(a.T, a)))
    for got, ref in zip(outs[0], (a @ b.T, a.T @ a)):
        assert got.dtype == np.float32 and got.flags.c_contiguous
        np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4)
    for x1, x3 in zip(*outs):
        np.testing.assert_array_equal(x1, x3)


def test_blas_never_threads_inside_the_backend(monkeypatch):
    """OpenBLAS's idle workers spin a core for ~0.1 s after every threaded call, which
    would steal that core from the pool's tasks: every GEMM of a CNN step (the dft plan's
    stages and the fully connected layers included) runs with BLAS on one thread, while
    BLAS itself is set to 2 outside the ops."""
    ctl = numpy_threads.blas_controls()
    if ctl is None:
        pytest.skip("no OpenBLAS thread control in this process")
    from kernels.conv2d import numpy_ops
    seen = {"conv": [], "dense": []}

    def watch(gemm, key):
        def wrapped(*args, **kw):
            seen[key].append(ctl[0]())
            return gemm(*args, **kw)
        return wrapped

    monkeypatch.setattr(numpy_ops, "_gemm", watch(numpy_ops._gemm, "conv"))
    monkeypatch.setattr(numpy_threads, "_gemm", watch(numpy_threads._gemm, "dense"))
    be = get_backend("numpy")
    rng = np.random.default_rng(5)
    x = rng.random((24, 1, 28, 28), dtype=np.float32)
    y = rng.integers(0, 10, 24)
    m = CNN(be, maps=(100, 150, 20), hidden=30, seed=0)      # conv2 takes the dft plan
    assert numpy_ops._dft_plan(24, 100, 150, 12, 12, 5, 5)
    with numpy_threads.using_threads(2):
        assert ctl[0]() == 2
        assert np.isfinite(float(m.train_step(x, y, 0.01)))
        assert ctl[0]() == 2
    assert len(seen["conv"]) > 20 and set(seen["conv"]) == {1}
    assert len(seen["dense"]) >= 5 and set(seen["dense"]) == {1}     # 2 forward, 3 backward


def test_tasks_see_the_callers_errstate():
    """np.errstate is a context variable: the pool's workers run in a copy of the caller's
    context, so an error state set around an op holds inside its tasks -- on the worker
    threads too, not only in the slices the caller runs itself."""
    import threading
    import time
    z = np.zeros(64 * 1024, np.float32)

    def task(lo, hi):
        time.sleep(0.001)                        # long enough for both threads to take slices
        return threading.get_ident(), np.geterr()["divide"], np.float32(1) / z[lo:hi]

    with numpy_threads.using_threads(2):
        for state in ("raise", "ignore"):
            with np.errstate(divide=state):
                if state == "raise":
                    with pytest.raises(FloatingPointError):
                        numpy_threads.batch_tasks(task, len(z), 1024, target=1 << 20, blas=False)
                    continue
                parts = numpy_threads.batch_tasks(task, len(z), 1024, target=1 << 20, blas=False)
    assert len(parts) >= numpy_threads.MIN_TASKS
    assert len({ident for ident, _, _ in parts}) == 2            # a worker ran some slices
    assert {seen for _, seen, _ in parts} == {"ignore"}
    assert all(np.isinf(q).all() for _, _, q in parts)


def test_a_failing_task_stops_the_rest_and_is_raised_after_all_threads_stop():
    import threading
    import time
    running, done, started = [0], [], []
    lock = threading.Lock()

    def task(lo, hi):
        with lock:
            running[0] += 1
            started.append(lo)
        try:
            if lo == 0:
                raise KeyError("slice 0 failed")
            time.sleep(0.02)
            done.append(lo)
        finally:
            with lock:
                running[0] -= 1

    with numpy_threads.using_threads(2):
        with pytest.raises(KeyError, match="slice 0 failed"):
            numpy_threads.batch_tasks(task, 64, 1 << 20, blas=False)
    assert running[0] == 0                       # nothing still runs after the raise
    assert len(started) <= 3                     # of 16 slices: the hand-out stopped
