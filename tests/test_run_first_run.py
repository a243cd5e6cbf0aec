"""A friendlier first run of ``python -m scae_np.run``: a one-line backend summary (the full
reasons in config.json and under --verbose), an unavailable --backend that points to the
command's own --emulate, a verdict in words under the table, and the embedding figure of
the CAE stack's codes beside its random start."""
import json

import numpy as np
import pytest

from scae_np import summary as S
from test_run import TINY, run_main, tiny  # noqa: F401  (tiny: a fixture)

NO_BACKEND = [a for i, a in enumerate(TINY) if a != "--backend" and TINY[i - 1] != "--backend"]


# ------------------------------------------------------------------ the backend line
def test_backend_line_is_one_short_line(monkeypatch):
    import importlib.util
    why = {"cupy": "the cupy backend needs CuPy, which is not installed (No module named "
                   "'cupy'); install the GPU extra: pip install -e '.[cuda13]' ..., or use "
                   "get_backend('cupy', emulate=True) ...",
           "numba": "the numba GPU backend computes on CuPy arrays and CuPy is missing; ..."}
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "cupy" else real(name, *a))
    assert S.backend_line("numpy", why) == (
        "numpy: no GPU backend (CuPy not installed: pip install -e '.[cuda13]')")
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: object())
    why = {"cupy": "the cupy backend found no CUDA GPU on this machine (CUDARuntimeError: "
                   "no device); use get_backend('cupy', emulate=True) ...", "numba": "..."}
    line = S.backend_line("numpy", why)
    assert line.startswith("numpy: no GPU backend (the cupy backend found no CUDA GPU")
    assert "get_backend" not in line and len(line) < 140
    assert S.backend_line("numpy", None) == "numpy"


def test_fallback_run_prints_one_line_and_keeps_the_reasons(tiny, tmp_path, capsys):
    out = tmp_path / "run"
    rc, stdout, err = run_main(capsys, "mnist", "--data-dir", tiny, "--out", out, "-e", "cnn",
                               "--init", "random", "--epochs", "1", "--verbose", *NO_BACKEND)
    assert rc == 0, err
    first = next(line for line in stdout.splitlines() if line.startswith("scae-np:"))
    if "no GPU backend" not in first:
        pytest.skip(f"a GPU backend works here: {first}")
    assert first.startswith("scae-np: mnist, experiment cnn, backend numpy: no GPU backend (")
    assert len(first) < 160 and "get_backend" not in first
    cfg = json.loads((out / "config.json").read_text())
    assert set(cfg["backend_reasons"]) == {"cupy", "numba"}
    assert stdout.startswith("why no GPU backend:\n")          # --verbose: the full reasons
    for name, reason in cfg["backend_reasons"].items():
        assert f"\n  {name}: {reason}\n" in stdout


def test_unavailable_gpu_backend_suggests_the_commands_emulate(tiny, tmp_path, capsys):
    from kernels import BackendUnavailableError, get_backend
    try:
        get_backend("cupy")
        pytest.skip("a GPU works here: the cupy backend is available")
    except BackendUnavailableError:
        pass
    rc, _, err = run_main(capsys, "mnist", "--data-dir", tiny, "--out", tmp_path / "o",
                          *NO_BACKEND, "--backend", "cupy")
    assert rc == 2 and "Add --emulate" in err and "get_backend(" not in err


# ------------------------------------------------------------------ the verdict
def _row(size, random, cae):
    cell = lambda errs: {"mean": float(np.mean(errs)), "n": len(errs), "errors": list(errs),
                         "std": float(np.std(errs, ddof=1)) if len(errs) > 1 else 0.0}
    return {"size": size, "random": cell(random), "cae": cell(cae)}


def test_verdict_one_seed_says_it_is_noisy_and_points_to_results():
    text = "\n".join(S.verdict_lines({"experiment": "default"}, [_row(1000, [5.54], [5.68])]))
    assert "1000 training images, one seed" in text and "0.14 points worse" in text
    assert "noisy" in text and "--seeds 0,1,2" in text
    assert "quick preset" in text and "RESULTS.md" in text
    text = S.verdict_lines({"experiment": "table"}, [_row(1000, [6.0], [5.0])])[1]
    assert "1.00 points better" in text


def test_verdict_several_seeds_counts_wins_and_weighs_the_spread():
    clear = "\n".join(S.verdict_lines({"experiment": "table"},
                                      [_row(1000, [6.0, 6.1, 5.9], [5.0, 5.2, 4.9])]))
    assert "3 seeds" in clear and "on 3 of 3 seeds" in clear and "more than seed-to-seed" in clear
    assert "quick preset" not in clear
    noisy = "\n".join(S.verdict_lines({"experiment": "table"},
                                      [_row(1000, [5.2, 6.3, 5.8], [5.9, 5.0, 5.4])]))
    assert "on 2 of 3 seeds" in noisy and "not yet distinguishable" in noisy
    assert S.verdict_lines({}, [{"size": 10, "random": None}]) == []


# ------------------------------------------------------------------ the embedding figure
def test_table_run_draws_the_embedding_and_says_what_it_shows(tiny, tmp_path, capsys):
    out = tmp_path / "run"
    rc, stdout, err = run_main(capsys, "mnist", "--data-dir", tiny, "--out", out, "-e", "table",
                               *TINY, "--seeds", "0", "--embed-images", "20")
    assert rc == 0, err
    res = json.loads((out / "results.json").read_text())
    emb = res["embedding"]
    assert emb["images"] == 20 and emb["method"] in ("tsne", "pca")
    assert set(emb["accuracy_1nn"]) == {"random", "cae"}
    assert all(0.0 <= a <= 1.0 for a in emb["accuracy_1nn"].values())
    png = out / emb["figure"]
    assert emb["figure"] == "figures/embedding_s0.png" and png.read_bytes()[:4] == b"\x89PNG"
    assert "[embedding] figures/embedding_s0.png" in stdout
    md = (out / "results.md").read_text()
    assert "**What this run shows** (30 training images, one seed)" in md and "RESULTS.md" in md
    assert "What this run shows" in stdout                    # printed with the table
    # under the table and its caption, before the next section
    assert md.index("| 30 |") < md.index("Ours: test error") < md.index("What this run shows") \
        < md.index("### Every CNN run")
    assert "\n\n\n" not in md[:md.index("### Every CNN run")]


def test_with_verdict_leaves_a_results_md_without_the_table_alone():
    md = "# results\n\n## Fig. 1 CAEs\n\nsomething\n"
    assert S.with_verdict(md, {}, []) == md
    row = {"size": 5, "random": {"mean": 1.0, "n": 1, "errors": [1.0], "std": 0.0},
           "cae": {"mean": 2.0, "n": 1, "errors": [2.0], "std": 0.0}}
    assert S.with_verdict("# r\n", {}, [row]).startswith("# r\n\n**What this run shows**")


def test_embed_images_0_draws_none(tiny, tmp_path, capsys):
    out = tmp_path / "run"
    rc, _, err = run_main(capsys, "mnist", "--data-dir", tiny, "--out", out, "-e", "cnn",
                          "--init", "cae", "--epochs", "1", *TINY, "--embed-images", "0")
    assert rc == 0, err
    assert json.loads((out / "results.json").read_text())["embedding"] is None
    assert not (out / "figures" / "embedding_s0.png").exists()
