"""scae_np.diagnostics: effective rank of data with a known rank, saturation, filter scale,
the per-layer diagnostics of a CAE stack and a CNN, and the activation-spread rescaling."""
import numpy as np
import pytest

from kernels import get_backend
from scae_np import diagnostics as D
from scae_np.layers import TANH_A
from scae_np.models import CAEStack, CNN


@pytest.mark.parametrize("rank", [1, 3, 7])
def test_effective_rank_of_data_with_a_known_rank(rank):
    rng = np.random.default_rng(rank)
    x = rng.standard_normal((300, rank)) @ rng.standard_normal((rank, 23)) + 5.0   # offset: centred
    assert D.effective_rank(x) == rank
    noisy = x + 1e-6 * rng.standard_normal(x.shape)                                # tiny noise: same rank
    assert D.effective_rank(noisy) == rank


def test_effective_rank_counts_the_directions_holding_the_share():
    # variances 100, 4, 1e-4 along three axes: 99% of 104.0001 needs two directions, 90% one
    rng = np.random.default_rng(0)
    z = rng.standard_normal((4000, 3))
    z = (z - z.mean(0)) / z.std(0)
    x = z * np.array([10.0, 2.0, 0.01])
    assert D.effective_rank(x, 0.99) == 2
    assert D.effective_rank(x, 0.90) == 1
    assert D.effective_rank(x, 1.0) == 3
    assert D.effective_rank(np.ones((10, 4))) == 0
    with pytest.raises(ValueError, match="samples, features"):
        D.effective_rank(np.ones(5))


def test_code_samples_reads_channels_as_features():
    rng = np.random.default_rng(1)
    base = rng.standard_normal((50, 2))
    mix = rng.standard_normal((2, 9))
    # 9 maps of 5x5, every position a mix of the same 2 hidden factors (per image and position)
    codes = np.einsum("npk,kc->ncp", rng.standard_normal((50, 25, 2)), mix).reshape(50, 9, 5, 5)
    s = D.code_samples(codes)
    assert s.shape == (50 * D.MAX_POSITIONS, 9)
    assert D.effective_rank(s) == 2
    assert D.layer_stats(codes)["channels"] == 9
    del base


def test_saturation_and_filter_scale():
    y = np.array([0.0, 0.5, 0.94 * TANH_A, 0.95 * TANH_A, -TANH_A, -0.96 * TANH_A])
    assert D.saturation(y) == pytest.approx(3 / 6)
    rng = np.random.default_rng(2)
    fan_in = 3 * 5 * 5
    w = rng.uniform(-1, 1, (400, 3, 5, 5)) * np.sqrt(3.0 / fan_in)   # LeCun uniform
    assert D.filter_scale(w) == pytest.approx(1.0, rel=0.02)
    assert D.filter_scale(0.1 * w) == pytest.approx(0.1, rel=0.02)


def _net(be, seed):
    return CNN(be, 1, (13, 13), 3, maps=(4, 5), kernels=(3, 3), pools=(2, 1), hidden=6,
               seed=seed)


def test_stack_and_cnn_diagnostics_shapes_and_ranges():
    be = get_backend("numpy")
    rng = np.random.default_rng(3)
    x = rng.random((40, 1, 13, 13)).astype(np.float32)
    stack = CAEStack(be, 1, maps=(4, 5), kernels=(3, 3), pools=(2, 1), seed=0)
    sd = D.stack_diagnostics(be, stack, x)
    assert [d["layer"] for d in sd] == [1, 2]
    for d, ch in zip(sd, (4, 5)):
        assert 1 <= d["effective_rank"] <= ch == d["channels"]
        assert 0.0 <= d["saturated"] <= 1.0 and d["val_loss"] > 0
        assert d["filter_scale"] == pytest.approx(0.1, rel=0.5)      # the CAEs start at 0.1 x
    cnn = _net(be, 0)
    cd = D.cnn_diagnostics(be, cnn, x)
    assert [d["name"] for d in cd] == ["conv1", "conv2"]
    assert all(d["preact_rms"] > 0 for d in cd)
    lines = D.compare_inits(cd, cd) + D.stack_lines(sd)
    assert len(lines) == 2 + 2 + 2 + 2


def test_match_activation_spread_equalises_each_layers_rms():
    be = get_backend("numpy")
    rng = np.random.default_rng(4)
    x = rng.random((30, 1, 13, 13)).astype(np.float32)
    ref, cnn = _net(be, 0), _net(be, 1)
    for name in ("conv1", "conv2"):          # a small start, as a CAE-trained one
        cnn.params[f"{name}.W"] *= np.float32(0.05)
    f = D.match_activation_spread(be, cnn, ref, x)
    assert all(v > 3 for v in f)
    got = [d["preact_rms"] for d in D.cnn_diagnostics(be, cnn, x)]
    want = [d["preact_rms"] for d in D.cnn_diagnostics(be, ref, x)]
    np.testing.assert_allclose(got, want, rtol=1e-4)
