"""Combine the CNN results of several runs into one table beside the paper's numbers.

    python -m scae_np.combine RUN_DIR [RUN_DIR ...] [--out table.md]

Each RUN_DIR is an output folder of ``python -m scae_np.run`` (it reads ``results.json``).
Runs that split the protocol (one training-set size, or some seeds, per run) are pooled by
(training-set size, init): mean ± sample standard deviation over all seeds found; where both
inits ran with the same seeds (same subset, same seed), the mean paired difference CAE -
random with its 95% t-interval (:func:`paired_difference`).
"""
from __future__ import annotations

import argparse
import json
import pathlib
import sys

import numpy as np


def load_runs(dirs):
    runs = []
    for d in dirs:
        p = pathlib.Path(d) / "results.json"
        if not p.is_file():
            raise SystemExit(f"error: {p} not found; pass output folders of python -m scae_np.run")
        runs.append(json.loads(p.read_text()))
    return runs


def pool_cells(runs):
    """{(size, init): [(seed, test_error, run)]} over every CNN run of every folder."""
    cells = {}
    for run in runs:
        for name, r in run.get("cnn", {}).items():
            cells.setdefault((int(r["size"]), r["init"]), []).append(
                (int(r["seed"]), float(r["test_error"]), name))
    for v in cells.values():
        seeds = [s for s, _, _ in v]
        if len(seeds) != len(set(seeds)):
            raise SystemExit(f"error: seed repeated within one cell: {sorted(v)}")
    return cells


def _cell(v):
    if not v:
        return "–"
    errs = np.array([e for _, e, _ in v])
    if len(errs) == 1:
        return f"{errs[0]:.2f} (n=1)"           # one seed: no spread to report
    return f"{errs.mean():.2f} ± {errs.std(ddof=1):.2f} (n={len(errs)})"


#: Two-sided 95% quantiles of Student's t for 1..30 degrees of freedom (standard tables).
T95 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179,
       2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064,
       2.060, 2.056, 2.052, 2.048, 2.045, 2.042)


def t95(df):
    """The two-sided 95% quantile of Student's t with ``df`` degrees of freedom (beyond 30:
    the normal's 1.96 plus the first-order correction 2.4/df)."""
    if df < 1:
        raise ValueError(f"a t-interval needs at least 1 degree of freedom, got {df}")
    return T95[df - 1] if df <= len(T95) else 1.96 + 2.4 / df


def paired_difference(cae, random):
    """Mean paired difference CAE - random (error points; negative: CAE init better) over
    the seeds both lists hold (``[(seed, error, run)]``), with its 95% t-interval; None with
    fewer than 2 pairs."""
    a = {s: e for s, e, _ in cae}
    b = {s: e for s, e, _ in random}
    seeds = sorted(set(a) & set(b))
    if len(seeds) < 2:
        return None
    d = np.array([a[s] - b[s] for s in seeds])
    half = t95(len(d) - 1) * d.std(ddof=1) / np.sqrt(len(d))
    return {"n": len(d), "seeds": seeds, "mean": float(d.mean()),
            "ci95": (float(d.mean() - half), float(d.mean() + half)),
            "wins": int((d < 0).sum())}


def table_markdown(runs):
    cells = pool_cells(runs)
    paper = next((r["paper"] for r in runs if r.get("paper")), {})
    note = next((r["paper_note"] for r in runs if r.get("paper_note")), "")
    sizes = sorted({s for s, _ in cells})
    lines = ["| training images | ours: random init | ours: CAE init | paper: random init "
             "| paper: CAE init |", "|---:|---:|---:|---:|---:|"]
    for s in sizes:
        p = paper.get(str(s), {})
        lines.append(f"| {s} | {_cell(cells.get((s, 'random'), []))} | "
                     f"{_cell(cells.get((s, 'cae'), []))} | {p.get('random', '–')} | "
                     f"{p.get('cae', '–')} |")
    lines += ["", "Test error %, mean ± sample standard deviation over seeds. " + note, ""]
    diffs = [(s, paired_difference(cells.get((s, "cae"), []), cells.get((s, "random"), [])))
             for s in sizes]
    if any(d for _, d in diffs):
        lines += ["| training images | paired seeds | CAE − random, mean (points) | 95% "
                  "t-interval | seeds where CAE wins |", "|---:|---:|---:|---:|---:|"]
        for s, d in diffs:
            if d:
                lines.append(f"| {s} | {d['n']} | {d['mean']:+.2f} | [{d['ci95'][0]:+.2f}, "
                             f"{d['ci95'][1]:+.2f}] | {d['wins']} of {d['n']} |")
        lines.append("")
    lines += ["| training images | init | seed | test error % | run |", "|---:|---|---:|---:|---|"]
    for (s, init), v in sorted(cells.items()):
        for seed, err, name in sorted(v):
            lines.append(f"| {s} | {init} | {seed} | {err:.2f} | {name} |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m scae_np.combine", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", metavar="RUN_DIR", help="output folders of scae_np.run")
    ap.add_argument("--out", help="also write the table to this markdown file")
    a = ap.parse_args(argv)
    md = table_markdown(load_runs(a.runs))
    sys.stdout.write(md)
    if a.out:
        from ._atomic import atomic_open
        with atomic_open(a.out, "w") as f:
            f.write(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
