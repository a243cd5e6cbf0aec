"""``--jobs N`` throughput: a small Table 1 run (the paper's CNN and CAE stack, two seeds) with
each ``--jobs`` value, in paired rounds; training images per second of wall time.

    python bench/bench_jobs.py --data-dir ../shared/data/mnist               # jobs 1 vs 2
    python bench/bench_jobs.py --data-dir ... --jobs 1,2 --rounds 3 -o bench/results/jobs.json

Each round runs every ``--jobs`` value once, alternating the order between rounds (ABBA) so
that a drifting machine load does not favour one; each run is a fresh ``python -m
scae_np.run`` in a temporary folder. Images/s = the training images of every epoch of every
stage (CAE and CNN; from ``metrics.jsonl``) / the command's whole wall time (start-up, data,
evaluation and figures included). The 1-minute load average before and after each run is
recorded: the machine may be shared, so read the ratios of runs at low load.
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
#: the small table run: paper-sized networks, 1,000 training images, two seeds, short training
RUN = ["-e", "table", "--sizes", "1000", "--seeds", "0,1", "--epochs", "2", "--cae-epochs", "1",
       "--cae-images", "1000", "--val-images", "500", "--test-images", "1000",
       "--embed-images", "0", "--no-progress", "--backend", "numpy"]


def trained_images(out):
    """Training images of every epoch of every stage in a run folder's metrics.jsonl."""
    n = 0
    with open(os.path.join(out, "metrics.jsonl")) as f:
        for line in f:
            if line.strip():
                r = json.loads(line)
                n += int(r["size"] if r["kind"] == "cnn" else r["images"])
    return n


def one(jobs, data_dir, extra):
    with tempfile.TemporaryDirectory(prefix="bench-jobs-") as d:
        out = os.path.join(d, "run")
        cmd = [sys.executable, "-m", "scae_np.run", "mnist", "--data-dir", data_dir, *RUN,
               *extra, "--jobs", str(jobs), "--out", out]
        load0 = os.getloadavg()[0]
        t0 = time.perf_counter()
        p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        if p.returncode != 0:
            raise SystemExit(f"--jobs {jobs} failed ({p.returncode}):\n{p.stderr[-3000:]}")
        n = trained_images(out)
        res = json.load(open(os.path.join(out, "results.json")))
    return {"jobs": jobs, "wall_s": round(wall, 2), "images": n,
            "images_per_s": round(n / wall, 1), "load_before": round(load0, 2),
            "load_after": round(os.getloadavg()[0], 2),
            "test_errors": {k: v.get("test_error") for k, v in res["cnn"].items()}}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data-dir", required=True)
    ap.add_argument("--jobs", default="1,2", help="comma-separated --jobs values (default 1,2)")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("-o", "--output", help="write the runs and the summary here (JSON)")
    ap.add_argument("extra", nargs="*", help="more options for scae_np.run (after --)")
    a = ap.parse_args(argv)
    values = [int(v) for v in a.jobs.split(",")]
    runs = []
    for r in range(a.rounds):
        for j in (values if r % 2 == 0 else values[::-1]):
            runs.append(dict(one(j, a.data_dir, a.extra), round=r + 1))
            x = runs[-1]
            print(f"round {r + 1}  --jobs {j}: {x['wall_s']:7.1f} s  {x['images']} images  "
                  f"{x['images_per_s']:6.1f} img/s  load {x['load_before']:.2f} -> "
                  f"{x['load_after']:.2f}", flush=True)
    base = [x["images_per_s"] for x in runs if x["jobs"] == values[0]]
    summary = {}
    print(f"\n| --jobs | images/s (each round) | median | vs --jobs {values[0]} |\n"
          f"|---:|---|---:|---:|")
    for j in values:
        med = statistics.median(x["images_per_s"] for x in runs if x["jobs"] == j)
        bmed = statistics.median(base)
        summary[j] = {"median_images_per_s": med, "ratio": round(med / bmed, 3)}
        each = ", ".join(f"{x['images_per_s']:.1f}" for x in runs if x["jobs"] == j)
        print(f"| {j} | {each} | {med:.1f} | {med / bmed:.2f}x |")
    if a.output:
        doc = {"command": "python -m scae_np.run mnist " + " ".join(RUN + a.extra),
               "machine": {"platform": platform.platform(), "cpus": os.cpu_count()},
               "date": time.strftime("%Y-%m-%d %H:%M:%S"), "runs": runs, "summary": summary}
        pathlib.Path(a.output).parent.mkdir(parents=True, exist_ok=True)
        pathlib.Path(a.output).write_text(json.dumps(doc, indent=2) + "\n")


if __name__ == "__main__":
    main()
