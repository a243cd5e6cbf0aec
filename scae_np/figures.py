"""Figures for scae-np runs, as PNG files (matplotlib, Agg canvas: no display needed).

- :func:`filter_grid`      one grid of filters in the style of the paper's Fig. 1/2 (Masci et al. 2011):
                           every filter normalised on its own, grey for 1 channel, RGB for 3, thin gaps.
- :func:`filter_figure`    several filter grids side by side with captions (the four Fig. 1 CAEs).
- :func:`reconstructions`  inputs (top row) above their reconstructions (bottom row).
- :func:`learning_curves`  per-epoch metrics (losses, errors) from a list of dicts.
- :func:`filter_mosaic`    the image array behind a filter grid (for your own plots).
- :func:`project_2d`       codes (N, D) -> 2-D points: t-SNE (scikit-learn, the ``embed`` extra) or PCA.
- :func:`embedding_figure` 2-D points of several codings side by side, coloured by class.
- :func:`nearest_neighbour_accuracy`  leave-one-out 1-NN accuracy of codes: how well they separate classes.

Every function takes NumPy arrays (CuPy arrays are copied to the host), writes its PNG atomically
(temporary file in the same folder, then rename: a killed run never leaves half a PNG) and returns
the path as a :class:`pathlib.Path`. pyplot is not used, so nothing global is touched.
"""
from __future__ import annotations

import math
import pathlib

import matplotlib
import numpy as np

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from ._atomic import atomic_open

__all__ = ["filter_grid", "filter_figure", "reconstructions", "learning_curves", "filter_mosaic",
           "project_2d", "embedding_figure", "nearest_neighbour_accuracy"]

GAP_VALUE = 1.0          # white gaps between tiles (tiles are normalised to [0, 1])
DPI = 100


def _host(a):
    """NumPy copy of ``a`` (CuPy arrays have ``.get()``)."""
    if not isinstance(a, np.ndarray) and hasattr(a, "get"):
        a = a.get()
    return np.asarray(a, dtype=np.float64)


def _save(fig, path):
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(fig)
    with atomic_open(path) as f:
        fig.savefig(f, format="png", dpi=DPI)
    return path


def _tiles_from_filters(w, max_tiles):
    """(T, h, w) grey or (T, h, w, 3) RGB tiles, each normalised to [0, 1] on its own, plus the
    number of columns that makes one row per filter when channels are shown side by side."""
    w = _host(w)
    if w.ndim == 2:
        w = w[None]
    if w.ndim == 3:
        w = w[:, None]
    if w.ndim != 4:
        raise ValueError(f"filters must be (F, C, kh, kw), (F, kh, kw) or (kh, kw); got shape {w.shape}")
    f, c, kh, kw = w.shape
    if c == 3:
        tiles, row = w.transpose(0, 2, 3, 1), None                     # (F, kh, kw, 3)
    elif c == 1:
        tiles, row = w[:, 0], None
    else:                                                              # deeper layers: every channel
        tiles, row = w.reshape(f * c, kh, kw), c
    tiles = tiles[:max_tiles]
    axes = tuple(range(1, tiles.ndim))
    lo = tiles.min(axis=axes, keepdims=True)
    hi = tiles.max(axis=axes, keepdims=True)
    span = hi - lo
    out = np.where(span > 0, (tiles - lo) / np.where(span > 0, span, 1), 0.5)
    return out, row


def _mosaic(tiles, ncols, gap):
    """Lay (T, h, w[, 3]) tiles in [0, 1] on a grid with ``gap`` pixels of GAP_VALUE between them."""
    t, h, w = tiles.shape[:3]
    ncols = max(1, min(int(ncols), t))
    nrows = math.ceil(t / ncols)
    shape = (nrows * h + (nrows - 1) * gap, ncols * w + (ncols - 1) * gap) + tiles.shape[3:]
    m = np.full(shape, GAP_VALUE)
    for i in range(t):
        r, c = divmod(i, ncols)
        m[r * (h + gap):r * (h + gap) + h, c * (w + gap):c * (w + gap) + w] = tiles[i]
    return m


def filter_mosaic(w, ncols=None, gap=1, max_tiles=400):
    """The image of a filter grid: (H, W) grey or (H, W, 3) RGB, values in [0, 1].

    ``w``: (F, C, kh, kw) weights. C == 1 -> grey tiles, C == 3 -> RGB tiles; any other C shows every
    channel of every filter as a grey tile, one filter per row (at most ``max_tiles`` tiles).
    Each tile is min-max normalised on its own (a constant filter is mid-grey).
    """
    tiles, row = _tiles_from_filters(w, max_tiles)
    if ncols is None:
        ncols = row if row is not None and row <= 32 else math.ceil(math.sqrt(len(tiles)))
    return _mosaic(tiles, ncols, gap)


def _scale_for(width_px, target=480, most=16):
    return int(max(1, min(most, target // max(width_px, 1))))


def _imshow(ax, img):
    ax.imshow(img, cmap=None if img.ndim == 3 else "gray", vmin=0.0, vmax=1.0,
              interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    for s in ax.spines.values():
        s.set_visible(False)


def filter_grid(w, path, title=None, ncols=None):
    """PNG of the filters ``w`` (F, C, kh, kw) as a grid (see :func:`filter_mosaic`)."""
    img = filter_mosaic(w, ncols=ncols)
    s = _scale_for(img.shape[1])
    m, top = 0.05, (0.35 if title else 0.0)                            # margins, title (inches)
    wid, hei = img.shape[1] * s / DPI, img.shape[0] * s / DPI
    W, H = wid + 2 * m, hei + 2 * m + top
    fig = Figure(figsize=(W, H))
    ax = fig.add_axes([m / W, m / H, wid / W, hei / H])
    _imshow(ax, img)
    if title:
        fig.text(0.5, 1 - m / H, title, ha="center", va="top", fontsize=10)
    return _save(fig, path)


def filter_figure(panels, path, title=None, ncols=None):
    """Several filter grids side by side, each with its caption underneath.

    ``panels``: a sequence of ``(caption, w)`` pairs or a dict ``{caption: w}``, e.g. the four
    Fig. 1 CAEs: ``[("plain", w1), ("50% noise", w2), ("max-pooling", w3),
    ("max-pooling + 30% noise", w4)]``.
    """
    items = list(panels.items()) if isinstance(panels, dict) else [tuple(p) for p in panels]
    if not items:
        raise ValueError("filter_figure needs at least one (caption, filters) panel")
    imgs = [filter_mosaic(w, ncols=ncols) for _, w in items]
    s = _scale_for(max(i.shape[1] for i in imgs), target=260)
    pw = max(i.shape[1] for i in imgs) * s / DPI
    ph = max(i.shape[0] for i in imgs) * s / DPI
    fig = Figure(figsize=(len(items) * (pw + 0.3), ph + 0.6 + (0.35 if title else 0)))
    axes = fig.subplots(1, len(items), squeeze=False)[0]
    for ax, (caption, _), img in zip(axes, items, imgs):
        _imshow(ax, img)
        ax.set_xlabel(str(caption), fontsize=9)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def _images(a, n):
    """First ``n`` images of ``a`` as (n, H, W) or (n, H, W, 3), clipped to [0, 1]."""
    a = _host(a)
    if a.ndim == 3:
        a = a[:, None]
    if a.ndim != 4 or a.shape[1] not in (1, 3):
        raise ValueError(f"images must be (N, 1 or 3, H, W) or (N, H, W); got shape {a.shape}")
    a = np.clip(a[:n], 0.0, 1.0)
    return a[:, 0] if a.shape[1] == 1 else a.transpose(0, 2, 3, 1)


def reconstructions(x, r, path, n=10, title=None):
    """PNG with the first ``n`` inputs ``x`` (top row) above their reconstructions ``r`` (bottom
    row). Both (N, C, H, W) (or (N, H, W)) on the input scale [0, 1]; values are clipped to it."""
    xi, ri = _images(x, n), _images(r, n)
    if xi.shape != ri.shape:
        raise ValueError(f"inputs {xi.shape} and reconstructions {ri.shape} differ in shape")
    k = len(xi)
    img = _mosaic(np.concatenate([xi, ri]), k, gap=2)
    s = _scale_for(img.shape[1], target=900, most=8)
    left, top = 1.1, (0.35 if title else 0.05)
    wid, hei = img.shape[1] * s / DPI, img.shape[0] * s / DPI
    fig = Figure(figsize=(wid + left + 0.05, hei + top + 0.05))
    W, H = wid + left + 0.05, hei + top + 0.05
    ax = fig.add_axes([left / W, 0.05 / H, wid / W, hei / H])
    _imshow(ax, img)
    for label, y in (("input", 0.75), ("reconstruction", 0.25)):
        fig.text((left - 0.08) / W, (0.05 + y * hei) / H, label, ha="right", va="center", fontsize=9)
    if title:
        fig.text(0.5, 1 - 0.05 / H, title, ha="center", va="top", fontsize=10)
    return _save(fig, path)


_NOT_PLOTTED = {"epoch", "step", "time", "seconds", "elapsed", "wall_s", "images_per_s", "lr",
                "learning_rate", "seed"}


def learning_curves(records, path, title=None):
    """PNG of per-epoch metrics from ``records``, a list of dicts such as
    ``{"epoch": 1, "train_loss": 0.3, "val_loss": 0.35, "val_error": 0.04}``.

    Keys with 'loss' go in the left panel, keys with 'error' or 'acc' in the right one; whatever
    is present is plotted (missing values leave a gap). x is 'epoch' when present, else 1, 2, ...
    """
    records = list(records)
    if not records:
        raise ValueError("learning_curves needs at least one record")
    keys = []
    for rec in records:
        for k, v in rec.items():
            if k not in keys and k not in _NOT_PLOTTED and isinstance(v, (int, float, np.number)) \
                    and not isinstance(v, bool):
                keys.append(k)
    xs = [rec.get("epoch", i + 1) for i, rec in enumerate(records)]
    loss = [k for k in keys if "loss" in k]
    err = [k for k in keys if ("error" in k or "acc" in k) and k not in loss]
    other = [k for k in keys if k not in loss and k not in err]
    groups = [(g, lab) for g, lab in ((loss, "loss"), (err, "error / accuracy"), (other, "value"))
              if g]
    if not groups:
        raise ValueError(f"no numeric metric to plot in records (keys: {sorted(records[0])})")
    fig = Figure(figsize=(4.2 * len(groups), 3.2))
    axes = fig.subplots(1, len(groups), squeeze=False)[0]
    for ax, (group, ylabel) in zip(axes, groups):
        for k in group:
            ys = np.array([float(rec[k]) if k in rec and rec[k] is not None else np.nan
                           for rec in records])
            ax.plot(xs, ys, marker="o" if len(xs) <= 30 else None, markersize=3, label=k)
        vals = np.concatenate([[float(r[k]) for r in records if k in r and r[k] is not None]
                               for k in group])
        vals = vals[np.isfinite(vals)]
        if ylabel == "loss" and len(vals) and vals.min() > 0 and vals.max() / vals.min() > 20:
            ax.set_yscale("log")
        ax.set_xlabel("epoch")
        ax.set_ylabel(ylabel)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


# ----------------------------------------------------------------------------- embeddings
def _pca_2d(z):
    """The first two principal components of the rows of ``z`` (centred; SVD in NumPy), each
    sign fixed so that its largest loading is positive (the same picture every run)."""
    z = z - z.mean(axis=0, keepdims=True)
    u, s, vt = np.linalg.svd(z, full_matrices=False)
    k = min(2, len(s))
    signs = np.sign(vt[np.arange(k), np.abs(vt[:k]).argmax(axis=1)])
    xy = u[:, :k] * s[:k] * np.where(signs == 0, 1, signs)
    return np.pad(xy, ((0, 0), (0, 2 - k)))


def project_2d(codes, method="auto", seed=0):
    """Project codes (N, D) to 2-D points. Returns ``(points (N, 2), method used)``.

    ``method``: ``"tsne"`` (scikit-learn's TSNE, PCA-initialised, perplexity 30 or less for few
    points; install it with ``pip install -e '.[embed]'``), ``"pca"`` (NumPy SVD, always
    available), or ``"auto"``: t-SNE when scikit-learn is installed, else PCA.
    """
    z = _host(codes).reshape(len(codes), -1)
    if method not in ("auto", "tsne", "pca"):
        raise ValueError(f"method must be 'auto', 'tsne' or 'pca', got {method!r}")
    if len(z) < 2:
        raise ValueError(f"need at least 2 codes to project, got {len(z)}")
    if method == "auto":
        try:
            import sklearn.manifold  # noqa: F401
            method = "tsne" if len(z) >= 5 else "pca"
        except ImportError:
            method = "pca"
    if method == "pca":
        return _pca_2d(z), "pca"
    try:
        from sklearn.manifold import TSNE
        from threadpoolctl import threadpool_limits
    except ImportError as e:
        raise ImportError(f"t-SNE needs scikit-learn ({e}); install the extra with "
                          f"pip install -e '.[embed]', or use method='pca'") from None
    # One OpenMP thread: t-SNE of a few hundred points takes ~2 s that way, but can take a
    # minute when its threads fight a training run's BLAS threads for the cores.
    with threadpool_limits(1):
        tsne = TSNE(n_components=2, init="pca", random_state=seed,
                    perplexity=float(min(30.0, (len(z) - 1) / 3.0)))
        return tsne.fit_transform(z.astype(np.float64)), "tsne"


def nearest_neighbour_accuracy(codes, labels):
    """Leave-one-out 1-nearest-neighbour accuracy (Euclidean) of codes (N, D) for ``labels``:
    the share of codes whose nearest other code has the same class. Chance is about the
    largest class share; 1.0 = every class its own cluster."""
    z = _host(codes).reshape(len(codes), -1)
    y = np.asarray(labels)
    sq = (z * z).sum(axis=1)
    d = sq[:, None] + sq[None, :] - 2.0 * z @ z.T
    np.fill_diagonal(d, np.inf)
    return float((y[d.argmin(axis=1)] == y).mean())


def embedding_figure(panels, labels, path, class_names=None, title=None):
    """PNG of 2-D points side by side, one panel per coding, coloured by class.

    ``panels``: ``[(caption, points (N, 2)), ...]`` or a dict, e.g. the top-layer codes of test
    images under random filters and under the trained CAE stack, each from
    :func:`project_2d`. ``labels``: (N,) integer classes; ``class_names`` names them in the
    legend.
    """
    items = list(panels.items()) if isinstance(panels, dict) else [tuple(p) for p in panels]
    if not items:
        raise ValueError("embedding_figure needs at least one (caption, points) panel")
    y = np.asarray(labels).astype(int)
    classes = np.unique(y)
    fig = Figure(figsize=(4.2 * len(items) + 1.4, 4.4 + (0.3 if title else 0)))
    axes = fig.subplots(1, len(items), squeeze=False)[0]
    cmap = matplotlib.colormaps["tab10" if len(classes) <= 10 else "tab20"]
    for ax, (caption, xy) in zip(axes, items):
        xy = _host(xy)
        if xy.shape != (len(y), 2):
            raise ValueError(f"panel {caption!r}: points must be ({len(y)}, 2), got {xy.shape}")
        for i, c in enumerate(classes):
            m = y == c
            name = class_names[c] if class_names is not None else str(c)
            ax.scatter(xy[m, 0], xy[m, 1], s=7, color=cmap(i % cmap.N), label=name,
                       alpha=0.8, linewidths=0)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_xlabel(str(caption), fontsize=9)
    axes[-1].legend(loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8, markerscale=2,
                    frameon=False)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return _save(fig, path)
