"""Models of scae_np.models on the NumPy backend: finite-difference gradients (float64,
tiny shapes), learning on tiny data, CAE-stack initialisation, .npz save/load."""
import numpy as np
import pytest

from kernels import OPS, get_backend
from kernels.testing import assert_gradient_close, distinct_values, numerical_gradient
from scae_np.layers import softmax_cross_entropy
from scae_np.models import CAE, CNN, CAEStack, load_npz, save_npz


@pytest.fixture(scope="module")
def be():
    return get_backend("numpy")


def tiny_cnn(be, dtype=np.float64, seed=1, **kw):
    args = dict(in_channels=2, input_hw=(11, 10), n_classes=3, maps=(3, 4), kernels=(3, 2),
                pools=(2, 1), hidden=5)
    args.update(kw)
    return CNN(be, seed=seed, dtype=dtype, **args)


@pytest.mark.parametrize("hidden", [5, 0])
def test_cnn_gradients(be, rng, hidden):
    cnn = tiny_cnn(be, hidden=hidden)
    for p in cnn.params.values():             # non-zero biases exercise every term
        if p.ndim == 1:
            p[:] = rng.standard_normal(p.shape) * 0.1
    x = distinct_values(rng, (3, 2, 11, 10))
    y = np.array([0, 2, 1])
    _, grads = cnn.loss_and_grads(x, y)
    grads = {k: v.copy() for k, v in grads.items()}
    assert set(grads) == set(cnn.params)
    loss = lambda _: np.array(softmax_cross_entropy(cnn.forward(x), y, np)[0])
    for name, p in cnn.params.items():
        assert_gradient_close(grads[name], numerical_gradient(loss, p, np.array(1.0)), name=name)


@pytest.mark.parametrize("pool,noise,output", [(1, 0.0, "logistic"), (2, 0.0, "logistic"),
                                              (2, 0.5, "logistic"), (3, 0.0, "logistic"),
                                              (2, 0.0, "tanh"), (1, 0.2, "linear")])
def test_cae_gradients(be, rng, pool, noise, output):
    _check_cae_gradients(be, rng, pool, noise, output)


@pytest.mark.parametrize("rung", [0, 1, 2], ids=["naive", "im2col-argmax", "fast"])
def test_cae_gradients_on_every_numpy_version(rng, rung):
    """The composed CAE chain (conv, pooling with switches, unpooling, the tied decoder,
    both uses of W) on each rung of the NumPy ladders of all eight ops: the naive loops,
    im2col (conv) / argmax (pooling), the fast CPU path."""
    be = get_backend("numpy")
    for op in OPS:
        be.set_default(op, be.versions(op)[rung])
    _check_cae_gradients(be, rng, 2, 0.0, "tanh")


def _check_cae_gradients(be, rng, pool, noise, output):
    """``CAE.loss_and_grads`` against finite differences of its own loss (float64)."""
    cae = CAE(be, in_channels=2, n_maps=3, kernel=3, pool=pool, noise=noise, seed=4,
              dtype=np.float64, output=output)
    cae.params["b"][:] = rng.standard_normal(3) * 0.1
    cae.params["c"][:] = rng.standard_normal(2) * 0.1
    x = distinct_values(rng, (2, 2, 9, 8), scale=0.5) + 0.5
    x_in = cae.corrupt(x)
    if noise:
        assert (x_in == 0).sum() > (x == 0).sum() + 10
    _, grads = cae.loss_and_grads(x, x_in)
    grads = {k: v.copy() for k, v in grads.items()}
    loss = lambda _: np.array(cae.loss_and_grads(x, x_in)[0])
    for name, p in cae.params.items():
        assert_gradient_close(grads[name], numerical_gradient(loss, p, np.array(1.0)), name=name)


def test_cae_decoder_is_the_flipped_kernel_correlation(be, rng):
    """The decoder: r = logistic(sum_k u_k * W~_k + c), W~ = W flipped in both dimensions."""
    cae = CAE(be, in_channels=1, n_maps=2, kernel=3, pool=1, seed=0, dtype=np.float64)
    cae.params["c"][:] = 0.25
    x = rng.random((1, 1, 6, 6))
    h = 1.7159 * np.tanh(2 / 3 * be.conv2d_forward(x, cae.params["W"], cae.params["b"]))
    wf = cae.params["W"][:, 0, ::-1, ::-1]
    hp = np.pad(h[0], ((0, 0), (2, 2), (2, 2)))
    a = np.zeros((6, 6))
    for k in range(2):
        for i in range(6):
            for j in range(6):
                a[i, j] += (hp[k, i:i + 3, j:j + 3] * wf[k]).sum()
    np.testing.assert_allclose(cae.reconstruct(x)[0, 0], 1 / (1 + np.exp(-(a + 0.25))),
                               rtol=1e-12)


def test_cae_noise_zeroes_the_requested_share(be):
    cae = CAE(be, noise=0.3, seed=0)
    x = np.ones((50, 1, 20, 20), np.float32)
    frac = float((cae.corrupt(x) == 0).mean())
    assert 0.28 < frac < 0.32
    assert CAE(be, noise=0.0).corrupt(x) is x


def test_cae_encode_shapes_and_pooled_codes(be, rng):
    cae = CAE(be, in_channels=1, n_maps=4, kernel=5, pool=2, seed=0)
    x = rng.random((3, 1, 28, 28), dtype=np.float32)
    h = cae.encode(x)
    assert h.shape == (3, 4, 12, 12) and h.dtype == np.float32
    assert cae.reconstruct(x).shape == x.shape
    full = CAE(be, in_channels=1, n_maps=4, kernel=5, pool=1, seed=0).encode(x)
    assert full.shape == (3, 4, 24, 24)
    np.testing.assert_array_equal(h, full.reshape(3, 4, 12, 2, 12, 2).max(axis=(3, 5)))


def bars(rng, n, size=12):
    """Three classes of 12x12 images: a horizontal bar, a vertical bar, a diagonal; random
    position, additive noise."""
    x = rng.random((n, 1, size, size)).astype(np.float32) * 0.3
    y = rng.integers(0, 3, n)
    for i in range(n):
        a, b = rng.integers(1, size - 5, 2)
        if y[i] == 0:
            x[i, 0, a, b:b + 5] = 1
        elif y[i] == 1:
            x[i, 0, a:a + 5, b] = 1
        else:
            x[i, 0, np.arange(a, a + 5), np.arange(b, b + 5)] = 1
    return x, y


def test_cae_learns(be, rng):
    x, _ = bars(rng, 64)
    cae = CAE(be, in_channels=1, n_maps=6, kernel=5, pool=2, noise=0.2, seed=0)
    before = float(cae.loss_and_grads(x)[0])
    for epoch in range(15):
        for i in range(0, 64, 8):
            cae.train_step(x[i:i + 8], lr=0.05, momentum=0.9)
    after = float(cae.loss_and_grads(x)[0])
    assert after < 0.5 * before, (before, after)


def test_small_cnn_learns(be):
    rng = np.random.default_rng(0)
    x, y = bars(rng, 240)
    xt, yt = bars(rng, 150)
    cnn = CNN(be, in_channels=1, input_hw=(12, 12), n_classes=3, maps=(6, 8), kernels=(3, 3),
              pools=(2, 1), hidden=16, seed=0)
    losses = []
    for epoch in range(6):
        for i in range(0, 240, 10):
            losses.append(cnn.train_step(x[i:i + 10], y[i:i + 10], lr=0.05, momentum=0.9))
    assert np.mean(losses[-10:]) < 0.5 * np.mean(losses[:10])
    acc = float((cnn.predict(xt, batch_size=64).argmax(1) == yt).mean())
    assert acc > 0.8, acc                    # chance: 1/3


def test_predict_in_batches_equals_one_batch(be, rng):
    cnn = tiny_cnn(be, dtype=np.float32)
    x = rng.random((7, 2, 11, 10), dtype=np.float32)
    np.testing.assert_allclose(cnn.predict(x, batch_size=3), cnn.predict(x), rtol=1e-5,
                               atol=1e-6)


def test_same_seed_same_model_and_steps(be, rng):
    x, y = bars(rng, 20)
    a = CNN(be, 1, (12, 12), 3, maps=(4, 5), kernels=(3, 3), pools=(2, 1), hidden=8, seed=7)
    b = CNN(be, 1, (12, 12), 3, maps=(4, 5), kernels=(3, 3), pools=(2, 1), hidden=8, seed=7)
    c = CNN(be, 1, (12, 12), 3, maps=(4, 5), kernels=(3, 3), pools=(2, 1), hidden=8, seed=8)
    assert not np.array_equal(a.params["conv1.W"], c.params["conv1.W"])
    for m in (a, b):
        for _ in range(3):
            m.train_step(x, y, 0.1, 0.5)
    for k in a.params:
        np.testing.assert_array_equal(a.params[k], b.params[k])


def test_paper_cnn_shapes(be):
    cnn = CNN(be)
    assert cnn.describe() == ("conv 100@5x5 -> maxpool 2x2 -> conv 150@5x5 -> maxpool 2x2 -> "
                              "conv 200@3x3 -> fc 300 -> softmax 10")
    assert cnn.params["conv2.W"].shape == (150, 100, 5, 5)
    assert cnn.params["fc1.W"].shape == (300, 200 * 2 * 2)
    assert cnn.params["fc2.W"].shape == (10, 300)
    cifar = CNN(be, in_channels=3, input_hw=(32, 32))
    assert cifar.params["conv1.W"].shape == (100, 3, 5, 5)
    assert cifar.params["fc1.W"].shape == (300, 200 * 3 * 3)


def test_cnn_bad_shapes(be, rng):
    with pytest.raises(ValueError, match="does not fit"):
        CNN(be, input_hw=(12, 12))
    cnn = tiny_cnn(be)
    with pytest.raises(ValueError, match="built for inputs of shape"):
        cnn.forward(np.zeros((1, 1, 11, 10)))
    with pytest.raises(ValueError, match="noise"):
        CAE(be, noise=1.0)


def test_fractional_sizes_are_refused_not_truncated(be):
    with pytest.raises(ValueError, match=r"input_hw must hold whole numbers, got \(8.7, 8.2\)"):
        CNN(be, input_hw=(8.7, 8.2), maps=(2,), kernels=(3,), pools=(1,), hidden=0)
    with pytest.raises(ValueError, match="kernels must hold whole numbers"):
        CNN(be, input_hw=(12, 12), maps=(2,), kernels=(2.5,), pools=(1,), hidden=0)
    cnn = CNN(be, input_hw=(12.0, np.int64(12)), maps=(2,), kernels=(3,), pools=(1,), hidden=0)
    assert cnn.input_hw == (12, 12)


def test_stack_initialises_the_cnn(be, rng):
    kw = dict(maps=(4, 5, 6), kernels=(5, 5, 3))
    stack = CAEStack(be, in_channels=1, pools=(2, 2, 2), seed=3, **kw)
    assert stack.caes[1].in_channels == 4 and stack.caes[2].in_channels == 5
    assert [c.output for c in stack.caes] == ["logistic", "tanh", "tanh"]
    x = rng.random((2, 1, 28, 28), dtype=np.float32)
    assert stack.encode(x, 1).shape == (2, 4, 12, 12)
    assert stack.encode(x, 2).shape == (2, 5, 4, 4)
    assert stack.encode(x).shape == (2, 6, 1, 1)
    cnn = CNN(be, seed=0, hidden=10, **kw)
    fc_before = cnn.params["fc1.W"].copy()
    cnn.init_from_caes(stack)
    for i in range(3):
        np.testing.assert_array_equal(cnn.params[f"conv{i + 1}.W"], stack.params[f"cae{i + 1}.W"])
        np.testing.assert_array_equal(cnn.params[f"conv{i + 1}.b"], stack.params[f"cae{i + 1}.b"])
    np.testing.assert_array_equal(cnn.params["fc1.W"], fc_before)
    with pytest.raises(ValueError, match="cae1.W has shape"):
        CNN(be, maps=(3, 5, 6), kernels=(5, 5, 3)).init_from_caes(stack)


def test_save_load_npz_plain_names(be, tmp_path, rng):
    cnn = tiny_cnn(be, dtype=np.float32)
    path = tmp_path / "w.npz"
    cnn.save(path)
    with np.load(path) as z:                       # plain numpy, no project code needed
        assert sorted(z.files) == ["conv1.W", "conv1.b", "conv2.W", "conv2.b", "fc1.W", "fc1.b",
                                   "fc2.W", "fc2.b"]
        np.testing.assert_array_equal(z["conv1.W"], cnn.params["conv1.W"])
    other = tiny_cnn(be, dtype=np.float32, seed=99)
    other.load(path)
    x = rng.random((2, 2, 11, 10), dtype=np.float32)
    np.testing.assert_array_equal(other.predict(x), cnn.predict(x))
    bad = dict(load_npz(path))
    bad["conv1.W"] = bad["conv1.W"][:1]
    save_npz(tmp_path / "bad.npz", bad)
    with pytest.raises(ValueError, match="conv1.W has shape"):
        other.load(tmp_path / "bad.npz")
    cae = CAE(be, n_maps=3, kernel=3)
    cae.save(tmp_path / "cae.npz")
    assert sorted(load_npz(tmp_path / "cae.npz")) == ["W", "b", "c"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp")]
