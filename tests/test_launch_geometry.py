"""Launch geometry at the paper's shapes (issue 12): every default launch should give an
H100/H200 (132 SMs, kernels/device.py) at least one block per SM.

The launches are planned dry (``kernels.device.plan``: the backends' own launch code,
recording instead of running), so batch 128 costs milliseconds on the emulated cupy backend
and in numba's simulator alike.
"""
import numpy as np
import pytest

from kernels import device, get_backend, workloads
from kernels.contract import OPS

from numba_backends import numba_backend

NAMES = ("mnist-conv1", "mnist-conv2", "cifar-conv1", "fig1-cae",
         "mnist-pool1", "cifar-pool1", "fig1-pool")
LAYERS = [workloads.with_batch(workloads.named_shapes()[n], b) for b in (16, 128)
          for n in NAMES]


def _backends():
    return [get_backend("cupy", emulate=True), numba_backend("sim")]


def _idle(be):
    out = []
    for L in LAYERS:
        for op in OPS:
            if op.startswith("conv") != (L.kind == "conv"):
                continue
            for la in device.plan(be, op, L):
                if not device.fills_device(la):
                    out.append(f"{be.name} {op} {L.name} N={L.n}: {la.kernel} grid {la.grid} "
                               f"= {la.blocks} blocks < {device.DEFAULT.sms} SMs")
    return out


def test_device_model_numbers():
    for d in (device.H100_SXM, device.H200):
        assert d.sms == 132 and d.fp32_tflops == 67.0
    assert device.H200.hbm_tbs == 4.8 and device.H100_SXM.hbm_tbs == 3.35
    # 1 GFLOP at 67 TFLOP/s: 14.9 us; 1 GB at 4.8 TB/s: 208 us
    assert device.H200.roofline_us(1e9, 1e9) == pytest.approx(1e9 / 4.8e12 * 1e6)


def test_dry_plan_matches_the_launches_that_run():
    """The dry plan is the real launch: the same kernels and grids as a call that runs."""
    L = workloads.named_shapes()["tiny-conv"]
    for be in _backends():
        for op in ("conv2d_forward", "conv2d_backward_weight", "conv2d_backward_bias"):
            planned = device.plan(be, op, L)
            args = workloads.inputs(op, L)
            with device.record_launches(be) as log:
                out = be.get_op(op)(*args)
            assert not np.isnan(be.to_host(out)).any()       # it ran
            assert [(a.kernel, a.grid, a.block) for a in log.launches] == \
                   [(a.kernel, a.grid, a.block) for a in planned]
            assert planned and all(a.blocks >= 1 for a in planned)


def test_the_rule_can_fail():
    """The weight gradient without a split (implicit_gemm) gives the Fig. 1 CAE one block."""
    L = workloads.with_batch(workloads.named_shapes()["fig1-cae"], 128)
    be = get_backend("cupy", emulate=True)
    (la,) = device.plan(be, "conv2d_backward_weight", L, version="implicit_gemm")
    assert la.blocks == 1 and not device.fills_device(la)


@pytest.mark.parametrize("which", ["cupy", "numba"])
def test_every_default_launch_fills_an_h200(which):
    """Since issue 12 the defaults split their reductions when the output alone is too small
    (``splitk`` GEMMs + ``splitk_sum``, the bias ``split``; rule: kernels/launch_spec.py):
    every launch, second passes included, has at least 132 blocks."""
    be = {b.name: b for b in _backends()}[which]
    idle = _idle(be)
    assert not idle, "\n".join(idle)


def test_cupy_and_numba_plan_the_same_launches():
    """The CUDA C and numba versions of one name are translations of each other: the same
    kernels, grids and blocks for every default launch at every shape above (the split-K
    second passes included)."""
    cupy_be, numba_be = _backends()
    for L in LAYERS:
        for op in OPS:
            if op.startswith("conv") != (L.kind == "conv"):
                continue
            a, b = device.plan(cupy_be, op, L), device.plan(numba_be, op, L)
            assert [(x.kernel, x.grid, x.block) for x in a] == \
                   [(x.kernel, x.grid, x.block) for x in b], (op, L.name, L.n)
