"""Does a CAE stack carry information upward, and what does the CNN start from?

Three numbers per layer, on a few hundred validation images (never the test set):

* **effective rank** (:func:`effective_rank`): the codes of a layer, ``(N, C, H, W)``, read as
  ``N * H * W`` samples of a ``C``-vector (one per image and position), centred; the number
  of principal directions that hold ``share`` (99%) of their variance. ``C`` at most; a
  layer whose maps are copies of a few patterns scores low. (Flattening whole maps instead
  would cap the rank at ``N - 1`` and mix positions with features.)
* **saturation** (:func:`saturation`): the share of activations ``y = f(a)`` of the scaled
  tanh ``f = 1.7159 tanh(2a/3)`` with ``|y| >= 0.95 * 1.7159``, where ``f'`` is below 10% of
  its maximum (``1 - 0.95^2``), so hardly any gradient passes;
* **filter scale**: the RMS of the filters over the LeCun RMS ``1/sqrt(fan_in)`` (1.0 for a
  LeCun-uniform start), and the RMS of the pre-activations ``a`` (the activation spread).

:func:`stack_diagnostics` adds each CAE's validation reconstruction loss;
:func:`cnn_diagnostics` measures a CNN's convolution blocks (after pooling and tanh), so the
CAE-initialised CNN can be put beside the random one (:func:`compare_inits`).
:func:`match_activation_spread` rescales a CAE-initialised CNN layer by layer so that each
convolution's pre-activation RMS equals the random init's on the same inputs.
"""
from __future__ import annotations

import math

import numpy as np

from .layers import TANH_A

#: |y| >= SATURATED * 1.7159 counts as saturated (f' < 1 - 0.95^2 = 9.75% of its maximum).
SATURATED = 0.95
#: Share of the variance the effective rank keeps.
RANK_SHARE = 0.99
#: Images the diagnostics use by default, and positions sampled per image at most.
DIAG_IMAGES = 512
MAX_POSITIONS = 16


def effective_rank(x, share=RANK_SHARE):
    """Principal directions of the rows of ``x`` (``(n, d)``, centred here) holding ``share``
    of their variance: the smallest ``k`` with ``sum(s[:k]^2) >= share * sum(s^2)``. 0 for
    data without variance."""
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"effective_rank takes (samples, features), got shape {x.shape}")
    if not 0 < share <= 1:
        raise ValueError(f"share must be in (0, 1], got {share!r}")
    x = x - x.mean(axis=0, keepdims=True)
    var = np.linalg.svd(x, compute_uv=False) ** 2
    total = var.sum()
    if not total > 0:
        return 0
    cum = np.cumsum(var) / total
    return int(np.searchsorted(cum, share - 1e-12) + 1)


def code_samples(codes, max_positions=MAX_POSITIONS, seed=0):
    """``(N, C, H, W)`` codes as ``(N * P, C)`` channel vectors, ``P = min(H*W,
    max_positions)`` positions per image (a fixed random choice when there are more)."""
    c = np.asarray(codes)
    if c.ndim == 2:
        return c
    n, ch = c.shape[:2]
    flat = c.reshape(n, ch, -1)
    hw = flat.shape[2]
    if hw > max_positions:
        pos = np.sort(np.random.default_rng(seed).choice(hw, max_positions, replace=False))
        flat = flat[:, :, pos]
    return flat.transpose(0, 2, 1).reshape(-1, ch)


def saturation(y, level=SATURATED, amplitude=TANH_A):
    """Share of the scaled-tanh outputs ``y`` with ``|y| >= level * amplitude``."""
    y = np.asarray(y)
    return float(np.mean(np.abs(y) >= level * amplitude)) if y.size else float("nan")


def filter_scale(w):
    """RMS of the filters ``(F, C, K, K)`` over the LeCun RMS ``1/sqrt(C K K)``."""
    w = np.asarray(w, dtype=np.float64)
    fan_in = int(np.prod(w.shape[1:]))
    return float(np.sqrt(np.mean(w ** 2)) * math.sqrt(fan_in))


def layer_stats(codes, pre=None):
    """Effective rank, its maximum (channels), saturation (and the pre-activation RMS) of
    one layer's codes."""
    codes = np.asarray(codes)
    out = {"effective_rank": effective_rank(code_samples(codes)), "channels": int(codes.shape[1]),
           "saturated": saturation(codes)}
    if pre is not None:
        out["preact_rms"] = float(np.sqrt(np.mean(np.asarray(pre, np.float64) ** 2)))
    return out


def _host(be, a):
    return np.asarray(be.to_host(a))


def _batches(be, x, batch):
    from .train import _batch_to_device
    for i in range(0, len(x), batch):
        yield _batch_to_device(be, x[i:i + batch])


def stack_diagnostics(backend, stack, x_val, batch=256):
    """Per CAE of a :class:`~scae_np.models.CAEStack`: validation reconstruction loss (on its
    own input, the codes of the layers below), the effective rank and saturation of its
    pooled codes, and its filter scale. ``x_val``: a few hundred validation images."""
    from .train import encode_batches, evaluate_reconstruction
    x = np.asarray(x_val)
    out = []
    for i, cae in enumerate(stack.caes, start=1):
        loss, mse = evaluate_reconstruction(backend, cae, x, batch)
        codes = encode_batches(backend, cae.encode, x, batch)
        d = {"layer": i, "val_loss": loss, "val_mse": mse,
             "filter_scale": filter_scale(cae.filters())}
        d.update(layer_stats(codes))
        out.append(d)
        x = codes
    return out


def conv_block_outputs(backend, cnn, x, batch=256):
    """[(pre-activations RMS, block outputs)] of every convolution block of a CNN (after
    pooling and tanh) on host images x: a host array per block."""
    from .layers import ScaledTanh
    outs = [[] for _ in cnn.blocks]
    sq = [0.0] * len(cnn.blocks)
    count = [0] * len(cnn.blocks)
    for xb in _batches(backend, x, batch):
        h = xb
        for j, (_, conv, pool, _) in enumerate(cnn.blocks):
            a = conv.forward(h)
            if pool is not None:
                a = pool.forward(a)
            ah = _host(backend, a).astype(np.float64)
            sq[j] += float(np.sum(ah ** 2))
            count[j] += ah.size
            h = ScaledTanh(backend).forward(a)
            outs[j].append(_host(backend, h))
    return [(math.sqrt(s / max(c, 1)), np.concatenate(o)) for s, c, o in zip(sq, count, outs)]


def cnn_diagnostics(backend, cnn, x, batch=256):
    """Per convolution block of a CNN on host images x: effective rank and saturation of its
    outputs, pre-activation RMS and filter scale."""
    out = []
    for j, ((rms, h), (name, conv, _, _)) in enumerate(zip(conv_block_outputs(backend, cnn,
                                                                              x, batch),
                                                           cnn.blocks), start=1):
        d = {"layer": j, "name": name,
             "filter_scale": filter_scale(_host(backend, conv.params["W"]))}
        d.update(layer_stats(h))
        d["preact_rms"] = rms
        out.append(d)
    return out


def match_activation_spread(backend, cnn, reference, x, batch=256):
    """Rescale ``cnn``'s convolutions (W and b) layer by layer so that each one's
    pre-activation RMS on ``cnn``'s own (already rescaled) lower-layer outputs equals the RMS
    ``reference`` (e.g. the random-init CNN of the same seed) gets on its own inputs. Returns
    the factors. Matching spread rather than filter variance: trained filters are aligned
    with their inputs, so LeCun variance drives them far into saturation."""
    factors = []
    ref = [rms for rms, _ in conv_block_outputs(backend, reference, x, batch)]
    for j, (_, conv, _, _) in enumerate(cnn.blocks):
        rms = conv_block_outputs(backend, cnn, x, batch)[j][0]
        f = ref[j] / rms if rms > 0 else 1.0
        for p in ("W", "b"):
            conv.params[p][...] = conv.params[p] * np.float32(f)
        factors.append(float(f))
    return factors


def compare_inits(cae_diag, random_diag):
    """Markdown table rows: per convolution, the CAE-init CNN beside the random one."""
    lines = ["| conv | effective rank: CAE init | random init | saturated %: CAE init | "
             "random init | filter scale (× LeCun): CAE init | random init |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for a, b in zip(cae_diag, random_diag):
        lines.append(f"| {a['name']} ({a['channels']} maps) | {a['effective_rank']} | "
                     f"{b['effective_rank']} | {100 * a['saturated']:.1f} | "
                     f"{100 * b['saturated']:.1f} | {a['filter_scale']:.2f} | "
                     f"{b['filter_scale']:.2f} |")
    return lines


def stack_lines(diag):
    """Markdown table rows of :func:`stack_diagnostics`."""
    lines = ["| CAE | validation loss | effective rank / maps | saturated % | filter scale "
             "(× LeCun) |", "|---|---:|---:|---:|---:|"]
    for d in diag:
        lines.append(f"| {d['layer']} | {d['val_loss']:.4f} | {d['effective_rank']} / "
                     f"{d['channels']} | {100 * d['saturated']:.1f} | "
                     f"{d['filter_scale']:.2f} |")
    return lines
