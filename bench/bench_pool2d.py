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

CASES = [(op, L) for L in bl.POOL_LAYERS for op in bl.POOL_OPS]
TINY = [(op, bl.TINY_POOL) for op in bl.POOL_OPS]


def _params(cases, naive):
    out = []
    for op, L in cases:
        for imp in bl.op_impls(op, naive=naive):
            marks = [pytest.mark.skip(reason=imp.skip)] if imp.skip else []
            out.append(pytest.param(op, L, imp, id=f"{op}-{L.name}-{imp.label}", marks=marks))
    return out


def _bench(benchmark, op, L, imp):
    args = bl.pool_inputs(op, L)
    fn, to_host = bl.make_call(imp, op, args)
    bl.validate(op, L, args, to_host(fn()))           # never time an unvalidated result
    flop, nbytes = bl.pool_napkin(op, L)
    benchmark.group = f"{op} {L.name} ({L.describe()})"
    benchmark.extra_info.update(
        kind="op", op=op, layer=L.name, shape=L.describe(), impl=imp.label,
        backend=imp.backend, version=imp.version, device=imp.device, flop=flop,
        bytes=nbytes, metric="GB/s", peer=imp.backend == "torch")
    bl.run_timed(benchmark, fn, imp, budget=0.4 if L.n > 8 else 0.2)


@pytest.mark.parametrize("op,L,imp", _params(CASES, naive=False))
def test_pool2d(benchmark, op, L, imp):
    _bench(benchmark, op, L, imp)


@pytest.mark.parametrize("op,L,imp", _params(TINY, naive=True))
def test_pool2d_tiny(benchmark, op, L, imp):
    _bench(benchmark, op, L, imp)


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
