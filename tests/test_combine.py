import json

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
