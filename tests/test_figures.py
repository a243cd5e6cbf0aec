"""Tests of scae_np.figures: the PNGs are written (atomically, nothing left behind), they open with
matplotlib and have sane sizes; the filter mosaic behind the grids is checked pixel by pixel."""
import os
import stat

import matplotlib.image as mpimg
import numpy as np
import pytest

from scae_np import figures as F


def read_png(path):
    assert path.is_file() and path.stat().st_size > 200
    img = mpimg.imread(path)
    assert img.ndim == 3 and img.shape[2] in (3, 4) and img.dtype == np.float32
    return img


def only(folder, *names):
    assert sorted(p.name for p in folder.iterdir()) == sorted(names)   # no temporary files left


# ------------------------------------------------------------------------------- the mosaic

def test_mosaic_normalises_each_filter_and_leaves_white_gaps():
    w = np.zeros((5, 1, 3, 4))
    w[0, 0] = np.arange(12).reshape(3, 4)           # 0..11  -> 0..1
    w[1, 0] = -100 * np.arange(12).reshape(3, 4)    # other scale, reversed
    w[2, 0] = 7.0                                   # constant -> mid grey
    w[3, 0, 1, 2] = 1e-3                            # tiny -> still full contrast
    img = F.filter_mosaic(w, ncols=3, gap=1)
    assert img.shape == (2 * 3 + 1, 3 * 4 + 2)      # 2 rows x 3 columns of 3x4 tiles
    np.testing.assert_allclose(img[0:3, 0:4], np.arange(12).reshape(3, 4) / 11)
    np.testing.assert_allclose(img[0:3, 5:9], 1 - np.arange(12).reshape(3, 4) / 11)
    np.testing.assert_allclose(img[0:3, 10:14], 0.5)
    t3 = img[4:7, 0:4]
    assert t3[1, 2] == 1.0 and t3.sum() == 1.0
    assert (img[3, :] == 1.0).all() and (img[:, 4] == 1.0).all()        # gaps
    assert (img[4:7, 10:14] == 1.0).all()                               # unused cell stays blank
    assert img.min() >= 0 and img.max() <= 1


def test_mosaic_rgb_keeps_colour_and_other_channel_counts_show_every_channel():
    rng = np.random.default_rng(0)
    w = rng.standard_normal((7, 3, 5, 5))
    img = F.filter_mosaic(w)                        # default: ceil(sqrt(7)) = 3 columns
    assert img.shape == (3 * 5 + 2, 3 * 5 + 2, 3)
    t = w[4].transpose(1, 2, 0)                     # one normalisation for the filter's 3 channels
    np.testing.assert_allclose(img[6:11, 6:11], (t - t.min()) / (t.max() - t.min()))
    deep = F.filter_mosaic(rng.standard_normal((4, 10, 3, 3)))   # one filter per row
    assert deep.shape == (4 * 3 + 3, 10 * 3 + 9)
    grey = F.filter_mosaic(rng.standard_normal((6, 5, 5)))       # (F, kh, kw) is grey too
    assert grey.ndim == 2
    with pytest.raises(ValueError, match="filters must be"):
        F.filter_mosaic(np.zeros((2, 2, 2, 2, 2)))


# --------------------------------------------------------------------------------- the PNGs

def test_filter_grid_png(tmp_path):
    w = np.random.default_rng(1).standard_normal((20, 1, 7, 7)).astype(np.float32)
    out = F.filter_grid(w, tmp_path / "figs" / "filters.png", title="CAE 20@7x7")
    assert out == tmp_path / "figs" / "filters.png"
    img = read_png(out)
    mosaic = F.filter_mosaic(w)                      # 4 x 5 tiles of 7x7 + gaps = 31 x 39
    h, wd = img.shape[:2]
    assert wd >= mosaic.shape[1] * 4 and h >= mosaic.shape[0] * 4       # magnified, not tiny
    assert wd < 2000 and h < 2000
    only(out.parent, "filters.png")
    assert stat.S_IMODE(os.stat(out).st_mode) & 0o044                   # readable by others


def test_filter_grid_rgb_is_coloured(tmp_path):
    w = -np.ones((4, 3, 5, 5))
    w[:, 0] = 1.0                                   # red channel at the top of each filter's range
    img = read_png(F.filter_grid(w, tmp_path / "rgb.png"))
    rgb = img[..., :3]
    red = (rgb[..., 0] > 0.9) & (rgb[..., 1] < 0.1) & (rgb[..., 2] < 0.1)
    assert red.sum() > 100


def test_filter_figure_four_panels(tmp_path):
    rng = np.random.default_rng(2)
    panels = [(c, rng.standard_normal((20, 1, 7, 7))) for c in
              ("plain", "50% noise", "max-pooling", "max-pooling + 30% noise")]
    one = read_png(F.filter_figure(panels[:1], tmp_path / "one.png"))
    four = read_png(F.filter_figure(panels, tmp_path / "fig1.png", title="Fig. 1"))
    assert four.shape[1] > 3 * one.shape[1]          # side by side
    read_png(F.filter_figure(dict(panels), tmp_path / "dict.png"))
    with pytest.raises(ValueError, match="at least one"):
        F.filter_figure([], tmp_path / "none.png")


def test_reconstructions_png(tmp_path):
    rng = np.random.default_rng(3)
    x = rng.random((12, 1, 28, 28)).astype(np.float32)
    r = x + 0.3 * rng.standard_normal(x.shape)      # outside [0, 1]: clipped, not an error
    img = read_png(F.reconstructions(x, r, tmp_path / "rec.png", n=10))
    h, w = img.shape[:2]
    assert w > 2 * h and w >= 10 * 28               # a wide two-row strip, at least 1 px per pixel
    read_png(F.reconstructions(x[:3, 0], r[:3, 0], tmp_path / "rec3.png"))   # (N, H, W) works
    c = rng.random((4, 3, 32, 32))
    read_png(F.reconstructions(c, c, tmp_path / "rgb.png", n=4))
    with pytest.raises(ValueError, match="differ in shape"):
        F.reconstructions(x, r[:, :, :20], tmp_path / "bad.png")


def test_learning_curves_png(tmp_path):
    recs = [{"epoch": e, "train_loss": 1.0 / e, "val_loss": 1.1 / e, "val_error": 0.1 / e,
             "lr": 0.01, "images_per_s": 900.0} for e in range(1, 7)]
    recs[2].pop("val_loss")                          # a missing value leaves a gap
    full = read_png(F.learning_curves(recs, tmp_path / "curves.png", title="run"))
    loss_only = read_png(F.learning_curves([{"train_loss": v} for v in (3, 2, 1)],
                                           tmp_path / "loss.png"))
    assert full.shape[1] > 1.5 * loss_only.shape[1]  # two panels vs one
    with pytest.raises(ValueError, match="no numeric metric"):
        F.learning_curves([{"epoch": 1, "note": "x"}], tmp_path / "none.png")
    with pytest.raises(ValueError, match="at least one record"):
        F.learning_curves([], tmp_path / "empty.png")
    only(tmp_path, "curves.png", "loss.png")


def test_failed_save_leaves_no_partial_file(tmp_path, monkeypatch):
    from matplotlib.figure import Figure

    def boom(self, *a, **k):
        raise RuntimeError("disk full (fake)")
    monkeypatch.setattr(Figure, "savefig", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        F.filter_grid(np.ones((2, 1, 3, 3)), tmp_path / "f.png")
    only(tmp_path)


# ------------------------------------------------------------------------------ embeddings

def test_pca_projection_finds_the_main_direction_with_a_fixed_sign():
    rng = np.random.default_rng(4)
    t = rng.standard_normal(200)
    direction = np.array([3.0, -1.0, 0.5, 0.0, 2.0])
    z = t[:, None] * direction + 0.01 * rng.standard_normal((200, 5)) + 7.0
    xy, method = F.project_2d(z, method="pca")
    assert method == "pca" and xy.shape == (200, 2)
    assert abs(np.corrcoef(xy[:, 0], t)[0, 1]) > 0.999          # component 1 = the line
    assert xy[:, 0].var() > 1e4 * xy[:, 1].var()
    np.testing.assert_allclose(xy.mean(axis=0), 0, atol=1e-9)    # centred
    assert np.corrcoef(xy[:, 0], t)[0, 1] > 0                    # largest loading (3.0) positive
    flipped, _ = F.project_2d(-z, method="pca")                  # the same picture, sign fixed
    np.testing.assert_allclose(np.abs(flipped), np.abs(xy), atol=1e-9)
    one_d, _ = F.project_2d(z[:, :1], method="pca")              # 1 feature: second axis 0
    assert one_d.shape == (200, 2) and not one_d[:, 1].any()
    with pytest.raises(ValueError, match="method"):
        F.project_2d(z, method="umap")
    with pytest.raises(ValueError, match="at least 2"):
        F.project_2d(z[:1])


def test_tsne_projection_keeps_clusters_apart():
    pytest.importorskip("sklearn", reason="t-SNE is the optional 'embed' extra")
    rng = np.random.default_rng(5)
    y = np.repeat(np.arange(3), 40)
    z = rng.standard_normal((120, 30)) * 0.1 + np.eye(3, 30)[y] * 5
    xy, method = F.project_2d(z, method="tsne")
    assert method == "tsne" and xy.shape == (120, 2) and np.isfinite(xy).all()
    assert F.nearest_neighbour_accuracy(xy, y) == 1.0
    assert F.project_2d(z)[1] == "tsne"                         # auto picks it when installed


def test_auto_projection_falls_back_to_pca_without_sklearn(monkeypatch):
    import builtins
    real = builtins.__import__

    def no_sklearn(name, *a, **k):
        if name.startswith("sklearn"):
            raise ImportError("No module named 'sklearn' (test)")
        return real(name, *a, **k)
    monkeypatch.setattr(builtins, "__import__", no_sklearn)
    z = np.random.default_rng(6).standard_normal((30, 4))
    assert F.project_2d(z)[1] == "pca"
    with pytest.raises(ImportError, match=r"\.\[embed\]"):
        F.project_2d(z, method="tsne")


def test_nearest_neighbour_accuracy():
    z = np.array([[0.0], [0.1], [5.0], [5.2], [10.0]])
    assert F.nearest_neighbour_accuracy(z, [0, 0, 1, 1, 0]) == 4 / 5   # 10.0: nearest is 5.2
    assert F.nearest_neighbour_accuracy(z, [0, 1, 0, 1, 0]) == 0.0


def test_embedding_figure_png(tmp_path):
    rng = np.random.default_rng(7)
    y = rng.integers(0, 10, 90)
    panels = [("random filters", rng.standard_normal((90, 2))),
              ("trained CAE stack", rng.standard_normal((90, 2)))]
    one = read_png(F.embedding_figure(panels[:1], y, tmp_path / "one.png"))
    two = read_png(F.embedding_figure(panels, y, tmp_path / "emb.png", title="codes",
                                      class_names=[str(i) for i in range(10)]))
    assert two.shape[1] > 1.5 * one.shape[1]
    with pytest.raises(ValueError, match=r"must be \(90, 2\)"):
        F.embedding_figure([("bad", np.zeros((90, 3)))], y, tmp_path / "bad.png")
    with pytest.raises(ValueError, match="at least one"):
        F.embedding_figure([], y, tmp_path / "none.png")
    only(tmp_path, "one.png", "emb.png")
