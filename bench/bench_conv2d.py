"""Convolution benchmarks: every backend x version of the four conv ops, and the PyTorch
peer (torch.nn.functional / torch.nn.grad: oneDNN on a CPU, cuDNN on a GPU), at the
paper's layer shapes (MNIST and CIFAR-10 conv1/2/3, batch 128).

One pytest-benchmark group per (op, layer), so each table compares like with like. Every
implementation's result is validated against the reference (benchlib.reference) on the
same inputs before it is timed. The explicit-loop ``numpy/naive`` versions are timed only
in the ``tiny`` groups. Run:  pytest --benchmark-only bench/bench_conv2d.py
"""
import pytest

import benchlib as bl


@pytest.mark.parametrize("op,L,imp", bl.family_params(bl.CONV_LAYERS, bl.CONV_OPS, bl.TINY_CONV))
def test_conv2d(benchmark, op, L, imp):
    bl.bench_op(benchmark, op, L, imp, inputs=bl.conv_inputs, napkin=bl.conv_napkin,
                metric=bl.W.metric(op), budget=0.6 if L.n > 8 else 0.3)


def test_roof_sgemm(benchmark):
    """The CPU's measured GEMM roof: NumPy float32 matmul 2048^3 on BLAS's threads (the
    '% of peak' of CPU convolutions is relative to this; validated against float64)."""
    import numpy as np
    rng = np.random.default_rng(0)
    n = 2048
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    c = np.empty((n, n), dtype=np.float32)
    ref = a[:64].astype(np.float64) @ b.astype(np.float64)
    np.matmul(a, b, out=c)
    assert np.abs(c[:64] - ref).max() <= 1e-3 * np.abs(ref).max()
    benchmark.group = "roof: NumPy sgemm 2048^3 (BLAS)"
    benchmark.extra_info.update(kind="roof", op="roof_sgemm", layer="roof", shape="2048^3",
                                impl="numpy/sgemm", backend="numpy", version="blas",
                                device="cpu", flop=2 * n ** 3, bytes=3 * n * n * 4,
                                metric="GFLOP/s", peer=False)
    imp = bl.Impl("numpy/sgemm", "numpy", "blas", "cpu")
    bl.run_timed(benchmark, lambda: np.matmul(a, b, out=c), imp, budget=1.0)
