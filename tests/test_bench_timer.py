"""bench/benchlib.py's device timer and the cuDNN peer's precision, on a pretend GPU.

:class:`FakeGPU` models one CUDA stream with a host clock: a launch costs the host
``dispatch`` seconds and runs on the device when both the host has issued it and the stream
is free; an event completes when the stream reaches it. With kernels shorter than their
dispatch (the small-op case), an event pair around one Python call on an idle GPU times the
dispatch; :class:`benchlib.DeviceTimer`'s held stream makes it time the kernels.
"""
import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "bench"))
import benchlib as bl  # noqa: E402


class FakeGPU:
    def __init__(self, dispatch):
        self.host = 0.0          # host clock (s)
        self.free = 0.0          # when the stream has run everything queued
        self.dispatch = dispatch

    def launch(self, seconds):
        self.host += self.dispatch
        self.free = max(self.host, self.free) + seconds

    def hold(self, seconds):
        self.launch(seconds)

    def event(self):
        gpu = self

        class Event:
            t = None

            def record(self):
                self.t = max(gpu.host, gpu.free)

            def synchronize(self):
                gpu.host = max(gpu.host, self.t)
        return Event()

    def timer(self, block_s):
        return bl.DeviceTimer(self.event, lambda a, b: (b.t - a.t) * 1e3, self.hold,
                              block_s=block_s, host_clock=lambda: self.host)


def _round(timer, fn, k):
    """What pytest-benchmark's runner does for one round of k iterations."""
    start = timer()
    for _ in range(k):
        fn()
    return (timer() - start) / k


@pytest.mark.parametrize("kernel_s,dispatch_s", [(5e-6, 40e-6), (1e-3, 40e-6)])
def test_held_stream_times_the_kernels_not_the_dispatch(kernel_s, dispatch_s):
    gpu = FakeGPU(dispatch_s)
    fn = lambda: gpu.launch(kernel_s)                                   # noqa: E731
    k = bl.iterations_for(kernel_s)
    timer = gpu.timer(bl.hold_for(dispatch_s, k))
    assert _round(timer, fn, k) == pytest.approx(kernel_s, rel=1e-9)
    assert timer.host_bound_rounds == 0 and timer.pairs == 1
    # without the hold, one call between the events on an idle GPU times dispatch + kernel
    naive = gpu.timer(0.0)
    assert _round(naive, fn, 1) == pytest.approx(dispatch_s + kernel_s, rel=1e-9)


def test_a_hold_too_short_for_the_dispatch_is_reported():
    gpu = FakeGPU(40e-6)
    timer = gpu.timer(100e-6)                    # 50 dispatches need 2 ms
    t = _round(timer, lambda: gpu.launch(5e-6), 50)
    assert timer.host_bound_rounds == 1
    assert t > 5e-6                              # the GPU idled between calls


def test_timer_sums_device_time_over_rounds_and_time_once():
    gpu = FakeGPU(1e-5)
    timer = gpu.timer(1e-3)
    fn = lambda: gpu.launch(2e-4)                                       # noqa: E731
    assert timer.time_once(fn, lambda: None) == pytest.approx(2e-4)
    for _ in range(3):
        assert _round(timer, fn, 4) == pytest.approx(2e-4)
    assert timer.total == pytest.approx(2e-4 + 3 * 4 * 2e-4) and timer.pairs == 4


def test_iterations_and_hold():
    assert bl.iterations_for(1e-5) == 200 and bl.iterations_for(5e-4) == 4
    assert bl.iterations_for(1.0) == 1
    assert bl.hold_for(40e-6, 50) == pytest.approx(2 * 50 * 40e-6 + 1e-3)
    assert bl.hold_for(1.0, 50) == 0.2


def test_torch_peer_precision_flags():
    torch = pytest.importorskip("torch")
    assert bl.torch_module() is torch
    assert not torch.backends.cudnn.allow_tf32          # strict float32 by default
    assert bl.torch_precision(torch, tf32=True) == {"cudnn.allow_tf32": True,
                                                    "cuda.matmul.allow_tf32": True}
    assert bl.torch_precision(torch, tf32=False) == {"cudnn.allow_tf32": False,
                                                     "cuda.matmul.allow_tf32": False}


def test_the_tf32_row_is_labelled_and_only_for_convolutions():
    pytest.importorskip("torch")
    conv = [i.label for i in bl.op_impls("conv2d_forward") if i.backend == "torch"]
    pool = [i.label for i in bl.op_impls("maxpool2d_forward") if i.backend == "torch"]
    assert conv == ["torch/cpu", "torch/cuda", "torch/cuda-tf32"]
    assert pool == ["torch/cpu", "torch/cuda"]
    tf32 = [i for i in bl.op_impls("conv2d_forward") if i.label == "torch/cuda-tf32"][0]
    assert bl.input_eps(tf32) == 2.0 ** -10
    assert bl.input_eps(bl.Impl("torch/cuda", "torch", "cuda", "cuda")) == 0.0


def test_tf32_bound_accepts_tf32_rounding_and_strict_bound_rejects_it():
    """A forward convolution on inputs rounded to TF32 passes the TF32 validation and fails
    the strict float32 one (so the strict row cannot be TF32 in disguise)."""
    from kernels import workloads as W
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 9, 8)).astype(np.float32)
    w = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    b = np.zeros(4, np.float32)

    def tf32(a):                                  # keep 10 mantissa bits (truncate)
        return (a.view(np.uint32) & np.uint32(0xFFFFE000)).view(np.float32)
    ref = W.compute_reference("conv2d_forward", (x, w, b), "fast")
    got = W.compute_reference("conv2d_forward", (tf32(x), tf32(w), b), "fast").astype(
        np.float32)
    W.validate("conv2d_forward", (x, w, b), got, ref, input_eps=2.0 ** -10)
    with pytest.raises(AssertionError, match="outside tolerance"):
        W.validate("conv2d_forward", (x, w, b), got, ref)
