"""Turn a pytest-benchmark JSON (from ``pytest --benchmark-only``) into a markdown report
and PNG plots.

    python bench/report.py [bench/results/local/benchmark.json] [-o OUTDIR]

Writes ``OUTDIR/report.md`` (default: next to the JSON) and ``OUTDIR/*.png``:

* the machine (CPU model, cores, BLAS and its threads, torch and its threads, GPU, date,
  load average before/after the run);
* the training-step table (the CPU target: numpy CNN step / torch CNN step <= 1.3);
* issue 2's table: the NumPy backend's forward + backward ops of the paper's MNIST layers
  beside torch, per layer and in total;
* one table per benchmark group (one op at one layer shape): median and min time,
  GFLOP/s (convolutions, steps) or GB/s (pooling, bias) from the napkin maths in
  ``bench/benchlib.py``, the ratio to the PyTorch peer on the same device (time / peer
  time: > 1 is slower), and the percentage of peak where a peak is known: the GPU's data
  sheet (table ``GPU_PEAKS``), or on a CPU the *measured* roofs of this run (NumPy sgemm
  GFLOP/s and large-copy GB/s, the ``roof`` group) -- a CPU's data-sheet peak is not
  known reliably inside a VM, so it is not claimed.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from collections import defaultdict

from kernels.runner import format_seconds as _fmt_t

#: FP32 (non-tensor-core) peak FLOP/s and memory bandwidth (B/s), from NVIDIA data sheets.
GPU_PEAKS = [
    ("H200", 67e12, 4.8e12),
    ("H100 NVL", 60e12, 3.9e12),
    ("H100 PCIe", 51e12, 2.0e12),
    ("H100", 67e12, 3.35e12),          # SXM5 (e.g. "NVIDIA H100 80GB HBM3")
    ("A100-SXM4-80GB", 19.5e12, 2.039e12),
    ("A100-SXM4-40GB", 19.5e12, 1.555e12),
    ("A100-PCIE-40GB", 19.5e12, 1.555e12),
    ("A100 80GB PCIe", 19.5e12, 1.935e12),
    ("L4", 30.3e12, 0.3e12),
    ("T4", 8.1e12, 0.32e12),
]


def gpu_peak(name):
    if not name:
        return None
    for key, flops, bw in GPU_PEAKS:
        if key.lower() in name.lower():
            return {"flop": flops, "bw": bw, "source": f"data sheet ({key})"}
    return None


def load(path):
    with open(path) as f:
        return json.load(f)


def rows_of(data):
    out = []
    for b in data["benchmarks"]:
        e = b.get("extra_info", {})
        if not e:
            continue
        st = b["stats"]
        out.append(dict(group=b["group"], name=b["name"], median=st["median"], min=st["min"],
                        mean=st["mean"], rounds=st["rounds"], **e))
    return out


def throughput(r, t):
    if r["metric"] == "GB/s":
        return r["bytes"] / t / 1e9
    return r["flop"] / t / 1e9


def peer_of(rows, r):
    want = {"cuda": "torch/cuda", "cpu": "torch/cpu"}.get(r["device"])
    for p in rows:
        if p["group"] == r["group"] and p["impl"] == want:
            return p
    return None


def roofs(rows, machine):
    """Peaks to compare against: per device, {'flop', 'bw', 'source'} or None."""
    out = {"cpu": None, "cuda": gpu_peak((machine.get("scae_np") or {}).get("gpu"))}
    sg = [r for r in rows if r.get("op") == "roof_sgemm" and r["device"] == "cpu"]
    cp = [r for r in rows if r.get("op") == "roof_copy" and r["device"] == "cpu"]
    if sg or cp:
        out["cpu"] = {
            "flop": max((r["flop"] / r["min"] for r in sg), default=None),
            "bw": max((r["bytes"] / r["min"] for r in cp), default=None),
            "source": "measured in this run: NumPy sgemm (BLAS) and a large np.copyto",
        }
    return out


def pct_peak(r, t, peaks):
    p = peaks.get(r["device"])
    if not p:
        return None
    if r["metric"] == "GB/s":
        if r["device"] == "cpu" and r.get("kind") != "roof":
            return None     # these shapes live in L2/L3: a DRAM copy roof would mislead
        return None if not p.get("bw") else 100 * r["bytes"] / t / p["bw"]
    return None if not p.get("flop") else 100 * r["flop"] / t / p["flop"]


def machine_md(data):
    m = data.get("machine_info", {})
    s = m.get("scae_np", {})
    cpu = s.get("lscpu", {})
    blas = s.get("blas", {})
    lines = [
        f"- date (UTC): {s.get('date_utc', data.get('datetime'))}",
        f"- CPU: {cpu.get('Model name', m.get('processor'))}, {s.get('cpus_usable')} usable "
        f"CPUs ({cpu.get('Core(s) per socket')} cores/socket, {cpu.get('Thread(s) per core')} "
        f"thread/core), L2 {cpu.get('L2 cache')}, L3 {cpu.get('L3 cache')}, "
        f"AVX-512: {cpu.get('avx512f')}",
        f"- NumPy {s.get('numpy')}, BLAS: {blas.get('config', '?')} (core {blas.get('core', '?')}, "
        f"{blas.get('threads')} threads)",
        f"- torch {s.get('torch')} ({s.get('torch_threads')} threads, oneDNN "
        f"{s.get('torch_mkldnn')}, MKL {s.get('torch_mkl')})",
        f"- GPU: {s.get('gpu') or 'none'}" + (f" ({s.get('gpu_note')})" if s.get("gpu_note") else ""),
        f"- cupy {s.get('cupy')}, numba {s.get('numba')}, Python {s.get('python')}",
        f"- load average (1/5/15 min) at start {s.get('loadavg_start')}, at end "
        f"{s.get('loadavg_end')} (the machine is shared; see the notes on noise)",
        f"- commit: {(data.get('commit_info') or {}).get('id', '?')[:12]}"
        f"{' (dirty)' if (data.get('commit_info') or {}).get('dirty') else ''}",
    ]
    return "\n".join(lines)


def group_table(rows, peaks):
    lines = ["| implementation | median | min | rounds | throughput | vs torch (median) | "
             "% of peak |", "|---|---|---|---|---|---|---|"]
    for r in sorted(rows, key=lambda r: r["median"]):
        p = peer_of(rows, r)
        ratio = f"{r['median'] / p['median']:.2f}×" if p and p is not r else (
            "peer" if p is r else "–")
        pk = pct_peak(r, r["median"], peaks)
        lines.append(
            f"| {r['impl']} | {_fmt_t(r['median'])} | {_fmt_t(r['min'])} | {r['rounds']} | "
            f"{throughput(r, r['median']):.1f} {r['metric']} | {ratio} | "
            f"{'' if pk is None else f'{pk:.0f}%'} |")
    return "\n".join(lines)


def step_section(rows):
    steps = [r for r in rows if r.get("kind") == "step"]
    if not steps and not any(r.get("kind") == "paired" for r in rows):
        return "", {}
    out, ratios = ["## Training steps (batch 128)", ""], {}
    out.append("| step | implementation | median | min | GFLOP/s | vs torch (median) | "
               "vs torch (min) |")
    out.append("|---|---|---|---|---|---|---|")
    for g in sorted({r["group"] for r in steps}):
        grp = [r for r in steps if r["group"] == g]
        for r in sorted(grp, key=lambda r: r["median"]):
            p = peer_of(grp, r)
            rm = r["median"] / p["median"] if p else None
            rn = r["min"] / p["min"] if p else None
            if p is not None and p is not r:
                ratios[(r["layer"], r["impl"])] = (rm, rn)
            out.append(f"| {r['layer']} | {r['impl']} | {_fmt_t(r['median'])} | "
                       f"{_fmt_t(r['min'])} | {r['flop'] / r['median'] / 1e9:.1f} | "
                       f"{'peer' if p is r else (f'{rm:.2f}×' if rm else '–')} | "
                       f"{'peer' if p is r else (f'{rn:.2f}×' if rn else '–')} |")
    paired = [r for r in rows if r.get("kind") == "paired"]
    if paired:
        out += ["", "Paired rounds (numpy step and torch step interleaved, so each pair sees the "
                "same machine load):", "",
                "| step | rounds | numpy median | torch median | median of per-round ratios | "
                "ratio of medians | ratio of mins |", "|---|---|---|---|---|---|---|"]
        for r in sorted(paired, key=lambda r: r["layer"]):
            import statistics
            out.append(f"| {r['layer']} | {len(r['numpy_times'])} | "
                       f"{_fmt_t(statistics.median(r['numpy_times']))} | "
                       f"{_fmt_t(statistics.median(r['torch_times']))} | "
                       f"**{r['paired_ratio_median']:.2f}×** | {r['ratio_of_medians']:.2f}× | "
                       f"{r['ratio_of_mins']:.2f}× |")
            ratios[(r["layer"], "paired")] = (r["paired_ratio_median"], r["ratio_of_mins"])
    cnn = ratios.get(("cnn-mnist", "numpy"))
    if cnn:
        ok = "meets" if cnn[0] <= 1.3 else "misses"
        out += ["", f"**CPU target** (numpy CNN step ≤ 1.3× torch, same run): "
                f"**{cnn[0]:.2f}×** by median, {cnn[1]:.2f}× by min — {ok} the target."]
        pr = ratios.get(("cnn-mnist", "paired"))
        if pr:
            out.append(f"Paired (interleaved) rounds: median per-round ratio **{pr[0]:.2f}×**, "
                       f"ratio of mins {pr[1]:.2f}×.")
        p1 = ratios.get(("cnn-mnist (1 thread)", "paired"))
        if p1:
            out.append(f"One thread each (per-core work, least sensitive to the shared "
                       f"machine): median per-round ratio **{p1[0]:.2f}×**, ratio of mins "
                       f"{p1[1]:.2f}×.")
        before = ratios.get(("cnn-mnist", "numpy-before"))
        if before:
            out.append(f"Before the optimisation (same model on the original `im2col`/`argmax` "
                       f"op versions, same run): {before[0]:.2f}× by median, "
                       f"{before[1]:.2f}× by min.")
    return "\n".join(out), ratios


def issue2_section(rows):
    """NumPy fwd + all backward ops of the MNIST layers vs torch, same run."""
    layers = ["mnist-conv1", "mnist-pool1", "mnist-conv2", "mnist-pool2", "mnist-conv3"]
    out = ["## Issue 2: NumPy backend vs torch.nn.functional, paper MNIST layers (batch 128)",
           "", "Forward + every backward op of each layer (conv: forward, ∂input, ∂weight, "
           "∂bias; pooling: forward, backward), median times from the same run.", "",
           "| layer | ops | numpy/fast | numpy (original versions) | torch/cpu | numpy/fast ÷ torch |",
           "|---|---|---|---|---|---|"]
    tot = defaultdict(float)
    for lay in layers:
        rs = [r for r in rows if r.get("layer") == lay and r.get("kind") == "op"]
        if not rs:
            continue
        ops = sorted({r["op"] for r in rs if not r["op"].startswith("unpool")})
        t = {}
        for key, impls in (("fast", ("numpy/fast",)), ("old", ("numpy/im2col", "numpy/argmax")),
                           ("torch", ("torch/cpu",))):
            vals = [next((r["median"] for r in rs if r["op"] == op and r["impl"] in impls),
                         None) for op in ops]
            t[key] = None if None in vals else sum(vals)
            if t[key] is not None:
                tot[key] += t[key]
        out.append(f"| {lay} | {', '.join(o.replace('conv2d_', '').replace('maxpool2d_', '') for o in ops)} | "
                   f"{_fmt_t(t['fast']) if t['fast'] else '–'} | {_fmt_t(t['old']) if t['old'] else '–'} | "
                   f"{_fmt_t(t['torch']) if t['torch'] else '–'} | "
                   f"{t['fast'] / t['torch']:.2f}× |" if t["fast"] and t["torch"] else f"| {lay} | | | | | |")
    if tot:
        out.append(f"| **total** | | **{_fmt_t(tot['fast'])}** | {_fmt_t(tot['old'])} | "
                   f"**{_fmt_t(tot['torch'])}** | **{tot['fast'] / tot['torch']:.2f}×** |")
    return "\n".join(out)


def plots(rows, outdir):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib missing: no plots", file=sys.stderr)
        return []
    made = []
    impl_order = lambda i: (i.startswith("torch"), i)                   # noqa: E731

    def bars(sel, key, title, fname, ylabel, log=True, value=lambda r: r["median"] * 1e3):
        cats = []
        for r in sel:
            if key(r) not in cats:
                cats.append(key(r))
        impls = sorted({r["impl"] for r in sel}, key=impl_order)
        if not cats or not impls:
            return
        fig, ax = plt.subplots(figsize=(min(12, 4 + 0.6 * len(cats)), 4.5))
        width = 0.8 / len(impls)
        for j, imp in enumerate(impls):
            xs, ys = [], []
            for i, c in enumerate(cats):
                r = next((r for r in sel if key(r) == c and r["impl"] == imp), None)
                if r is not None:
                    xs.append(i + (j - (len(impls) - 1) / 2) * width)
                    ys.append(value(r))
            ax.bar(xs, ys, width, label=imp)
        ax.set_xticks(range(len(cats)))
        ax.set_xticklabels(cats, rotation=30, ha="right", fontsize=8)
        if log:
            ax.set_yscale("log")
        ax.set_ylabel(ylabel)
        ax.set_title(title, fontsize=10)
        ax.legend(fontsize=7)
        fig.tight_layout()
        path = os.path.join(outdir, fname)
        fig.savefig(path, dpi=110)
        plt.close(fig)
        made.append(path)

    short = {"conv2d_forward": "fwd", "conv2d_backward_input": "dx", "conv2d_backward_weight": "dw",
             "conv2d_backward_bias": "db", "maxpool2d_forward": "pool", "maxpool2d_backward":
             "pool-bwd", "unpool2d_forward": "unpool", "unpool2d_backward": "unpool-bwd"}
    for ds in ("mnist", "cifar"):
        sel = [r for r in rows if r.get("kind") == "op" and r["layer"].startswith(ds + "-conv")]
        bars(sel, lambda r: f"{r['layer'].split('-')[1]} {short[r['op']]}",
             f"conv2d ops, {ds.upper()} layers, batch 128: median time (log)",
             f"conv2d_{ds}_time.png", "ms")
        bars([r for r in sel if r["op"] != "conv2d_backward_bias"],
             lambda r: f"{r['layer'].split('-')[1]} {short[r['op']]}",
             f"conv2d ops, {ds.upper()} layers: GFLOP/s (napkin maths)",
             f"conv2d_{ds}_gflops.png", "GFLOP/s", log=False,
             value=lambda r: throughput(r, r["median"]))
        sel = [r for r in rows if r.get("kind") == "op" and r["layer"].startswith(ds + "-pool")]
        bars(sel, lambda r: f"{r['layer'].split('-')[1]} {short[r['op']]}",
             f"pooling ops, {ds.upper()} shapes, batch 128: GB/s of minimum traffic",
             f"pool2d_{ds}_gbs.png", "GB/s", log=False, value=lambda r: throughput(r, r["median"]))
    sel = [r for r in rows if r.get("kind") == "step"]
    bars(sel, lambda r: r["layer"], "training step, batch 128: median time", "train_step.png",
         "ms", log=False)
    return made


def build(data, outdir):
    rows = rows_of(data)
    peaks = roofs(rows, data.get("machine_info", {}))
    md = ["# Benchmark results", "", machine_md(data), ""]
    if peaks.get("cpu"):
        c = peaks["cpu"]
        md.append(f"CPU \"% of peak\" of GFLOP/s is relative to the roof {c['source']}: "
                  f"sgemm {(c['flop'] or 0) / 1e9:.0f} GFLOP/s (copy: "
                  f"{(c['bw'] or 0) / 1e9:.1f} GB/s, one thread). A CPU's data-sheet peak is not "
                  "known reliably inside a VM, so none is claimed; CPU GB/s are not given a % "
                  "(the pooling shapes live in L2/L3, a DRAM roof would mislead).")
    if peaks.get("cuda"):
        g = peaks["cuda"]
        md.append(f"GPU \"% of peak\": FP32 {g['flop'] / 1e12:.1f} TFLOP/s, "
                  f"{g['bw'] / 1e12:.2f} TB/s, {g['source']}.")
    md.append("")
    s, _ = step_section(rows)
    if s:
        md += [s, ""]
    md += [issue2_section(rows), ""]
    md += ["## Every group", "",
           "Ratio = time / time of the torch peer on the same device (> 1: slower than torch).",
           ""]
    kinds = defaultdict(list)
    for r in rows:
        if r.get("kind") not in ("step", "paired"):
            kinds[r["group"]].append(r)
    for g in sorted(kinds, key=lambda g: (kinds[g][0]["layer"], g)):
        md += [f"### {g}", "", group_table(kinds[g], peaks), ""]
    os.makedirs(outdir, exist_ok=True)
    pngs = plots(rows, outdir)
    if pngs:
        md += ["## Plots", ""] + [f"![{os.path.basename(p)}]({os.path.basename(p)})"
                                  for p in pngs] + [""]
    path = os.path.join(outdir, "report.md")
    with open(path, "w") as f:
        f.write("\n".join(md))
    summary = ["# Latest benchmark results", "", machine_md(data), ""]
    if s:
        summary += [s, ""]
    summary += [issue2_section(rows), ""]
    return path, pngs, "\n".join(summary)


def main(argv=None):
    here = os.path.dirname(os.path.abspath(__file__))
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("json", nargs="?", default=os.path.join(here, "results", "local",
                                                            "benchmark.json"))
    ap.add_argument("-o", "--outdir", default=None, help="default: the JSON's folder")
    ap.add_argument("--latest", default=None,
                    help="also write a summary (machine, steps, issue 2) to this markdown file, "
                         "linking to the full report")
    a = ap.parse_args(argv)
    outdir = a.outdir or os.path.dirname(os.path.abspath(a.json))
    path, pngs, summary = build(load(a.json), outdir)
    if a.latest:
        rel = os.path.relpath(path, os.path.dirname(os.path.abspath(a.latest)))
        with open(a.latest, "w") as f:
            f.write(summary + f"\nFull report, every group and the plots: [{rel}]({rel})\n")
        print(a.latest)
    print(path)
    for p in pngs:
        print(p)


if __name__ == "__main__":
    main()
