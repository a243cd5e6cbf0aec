import json

import numpy as np

import pytest

from scae_np.combine import main


def _run(tmp_path, name, cnn):
    d = tmp_path / name
    d.mkdir()
    (d / "results.json").write_text(json.dumps({
        "paper": {"1000": {"random": 7.63, "cae": 7.23}}, "paper_note": "from memory",
        "cnn": cnn}))
    return d


def test_pools_seeds_across_runs(tmp_path, capsys):
    a = _run(tmp_path, "a", {"r0": {"size": 1000, "init": "random", "seed": 0, "test_error": 6.0},
                             "c0": {"size": 1000, "init": "cae", "seed": 0, "test_error": 5.0}})
    b = _run(tmp_path, "b", {"r1": {"size": 1000, "init": "random", "seed": 1, "test_error": 4.0},
                             "r2": {"size": 10000, "init": "random", "seed": 0, "test_error": 2.0}})
    out = tmp_path / "t.md"
    assert main([str(a), str(b), "--out", str(out)]) == 0
    md = out.read_text()
    assert "| 1000 | 5.00 ± 1.41 (n=2) | 5.00 (n=1) | 7.63 | 7.23 |" in md
    assert "| 10000 | 2.00 (n=1) | – | – | – |" in md
    assert md == capsys.readouterr().out


def test_repeated_seed_is_an_error(tmp_path):
    cell = {"size": 1000, "init": "random", "seed": 0, "test_error": 6.0}
    a = _run(tmp_path, "a", {"x": cell})
    b = _run(tmp_path, "b", {"y": cell})
    with pytest.raises(SystemExit, match="seed repeated"):
        main([str(a), str(b)])


def test_missing_results_names_the_file(tmp_path):
    with pytest.raises(SystemExit, match="results.json not found"):
        main([str(tmp_path)])


def test_paired_difference_and_its_t_interval():
    from scae_np.combine import paired_difference, t95
    cae = [(0, 5.0, "a"), (1, 6.0, "b"), (2, 4.0, "c"), (9, 1.0, "z")]
    rnd = [(0, 6.0, "d"), (1, 6.5, "e"), (2, 5.5, "f")]
    d = paired_difference(cae, rnd)          # seed 9 has no partner: left out
    # differences -1.0, -0.5, -1.5: mean -1, sd 0.5, half width 4.303 * 0.5 / sqrt(3)
    assert d["n"] == 3 and d["seeds"] == [0, 1, 2] and d["wins"] == 3
    assert d["mean"] == pytest.approx(-1.0)
    half = 4.303 * 0.5 / np.sqrt(3)
    assert d["ci95"] == (pytest.approx(-1.0 - half), pytest.approx(-1.0 + half))
    assert paired_difference(cae[:1], rnd) is None
    assert t95(4) == 2.776 and 1.96 < t95(100) < 2.0
    with pytest.raises(ValueError):
        t95(0)
