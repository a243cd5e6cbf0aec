"""Pooling benchmarks: 2x2 max-pooling with switches (forward, backward) and switch
unpooling (forward, backward), every backend x version, and the PyTorch peer
(F.max_pool2d(return_indices=True), aten.max_pool2d_with_indices_backward,
F.max_unpool2d, torch.gather), at the paper's shapes (batch 128):
100x24x24 and 150x8x8 (MNIST), 100x28x28 and 150x10x10 (CIFAR-10).

Pooling is memory-bound: the report shows GB/s of the minimum traffic (benchlib.pool_napkin).
Results are validated exactly against the reference before timing.
Run:  pytest --benchmark-only bench/bench_pool2d.py
"""
import pytest

import benchlib as bl


@pytest.mark.parametrize("op,L,imp", bl.family_params(bl.POOL_LAYERS, bl.POOL_OPS, bl.TINY_POOL))
def test_pool2d(benchmark, op, L, imp):
    bl.bench_op(benchmark, op, L, imp, inputs=bl.pool_inputs, napkin=bl.pool_napkin,
                metric="GB/s", budget=0.4 if L.n > 8 else 0.2)


def test_roof_copy(benchmark):
    """The CPU's measured memory roof: np.copyto of 256 MB float32 (read + write), one
    thread as NumPy runs it (the '% of peak' of CPU pooling is relative to this)."""
    import numpy as np
    n = 64 * 1024 * 1024
    src = np.arange(n, dtype=np.float32)
    dst = np.empty_like(src)
    np.copyto(dst, src)
    assert np.array_equal(dst[::4097], src[::4097])
    benchmark.group = "roof: np.copyto 256 MB"
    benchmark.extra_info.update(kind="roof", op="roof_copy", layer="roof", shape="256 MB",
                                impl="numpy/copyto", backend="numpy", version="copy",
                                device="cpu", flop=0, bytes=2 * n * 4, metric="GB/s",
                                peer=False)
    imp = bl.Impl("numpy/copyto", "numpy", "copy", "cpu")
    bl.run_timed(benchmark, lambda: np.copyto(dst, src), imp, budget=0.5)
