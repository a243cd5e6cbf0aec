"""Where the time of a NumPy training step goes: a per-op, per-phase profile of the paper's
MNIST CNN step and of one CAE layer's step (batch 128, the models of bench_train_step.py).

    python bench/profile_step.py [--threads 1 2] [--steps 12] [--kinds cnn cae]
                                 [--label TEXT] [--markdown FILE]

How: the step runs unchanged; timers are wrapped, for the duration of the profile only,
around

* every backend op call (``conv2d_forward``, ``maxpool2d_backward``, ...), labelled with its
  op and its occurrence in the step (``conv2d_forward#2`` is the step's second forward
  convolution: conv2 of the CNN, the decoder adjoint of the CAE);
* the layers' and models' NumPy work outside the ops: ``ScaledTanh`` forward/backward and the
  tanh / logistic gradients (activations), ``Dense`` forward/backward (fully connected),
  the losses, ``sgd_update`` (update);
* inside the NumPy ``fast`` convolutions, the module-level pieces of
  ``kernels/conv2d/numpy_ops.py``: im2col and layout copies (``_cols_rows``,
  ``_cols_planes``, ``_dy_rows``), the GEMMs (``_gemm``), col2im (``_col2im_*``) and the
  NHWC -> NCHW copy back (``_nhwc_to_nchw``); what remains of a convolution op (allocation,
  zero fills, partial-sum reductions, the task pool's overhead) is its ``rest``.

Phase times inside the batch tasks are *thread* seconds summed over the threads (with 2
threads they can exceed the op's wall time); op and step times are wall times. ``glue`` is
the step's wall time not inside any timed call (Python, reshapes, the corruption mask).
Minor page faults per step count fresh memory being touched (new big temporaries).
Medians over ``--steps`` steps after two warm-up steps. The timers cost a few microseconds
per call (a few hundred calls per step: well under 1%).
"""
from __future__ import annotations

import argparse
import collections
import functools
import os
import resource
import sys
import threading
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)

import benchlib as bl                                     # noqa: E402
import bench_train_step as bts                            # noqa: E402
from kernels import numpy_threads                         # noqa: E402
from kernels.conv2d import numpy_ops as conv_ops          # noqa: E402
from scae_np import layers, models                        # noqa: E402

#: conv pieces: module attribute -> phase name
CONV_PHASES = {"_cols_rows": "im2col", "_cols_planes": "im2col", "_dy_rows": "layout copy",
               "_gemm": "GEMM", "_col2im_rows": "col2im", "_col2im_planes": "col2im",
               "_nhwc_to_nchw": "layout copy"}
#: models-module functions (imported there by name) -> category
MODEL_FUNCS = {"softmax_cross_entropy": "loss", "half_squared_error": "loss",
               "sgd_update": "update", "scaled_tanh_grad_from_output": "activation",
               "logistic_": "activation"}
LAYER_METHODS = {(layers.ScaledTanh, "forward"): "activation",
                 (layers.ScaledTanh, "backward"): "activation",
                 (layers.Dense, "forward"): "fully connected",
                 (layers.Dense, "backward"): "fully connected"}


class Profiler:
    def __init__(self):
        self.lock = threading.Lock()
        self.current = None                     # the top-level label being timed
        self.counts = collections.Counter()     # occurrences per name within a step
        self.top = {}                           # label -> (category, wall s) this step
        self.phase = collections.defaultdict(float)   # (label, phase) -> thread s
        self.steps = []                         # per step: (wall, top, phase, faults)
        self._undo = []

    # -------------------------------------------------------------- wrapping
    def _top(self, name, category, fn):
        prof = self

        @functools.wraps(fn)
        def wrapped(*a, **k):
            if prof.current is not None or threading.current_thread() is not threading.main_thread():
                return fn(*a, **k)              # nested: the outer timer has it
            prof.counts[name] += 1
            label = f"{name}#{prof.counts[name]}"
            prof.current = label
            t0 = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                dt = time.perf_counter() - t0
                prof.current = None
                cat, old = prof.top.get(label, (category, 0.0))
                prof.top[label] = (cat, old + dt)
        return wrapped

    def _phase(self, phase, fn):
        prof = self

        @functools.wraps(fn)
        def wrapped(*a, **k):
            t0 = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                dt = time.perf_counter() - t0
                label = prof.current
                if label is not None:
                    with prof.lock:
                        prof.phase[(label, phase)] += dt
        return wrapped

    def _patch(self, obj, attr, new):
        self._undo.append((obj, attr, getattr(obj, attr)))
        setattr(obj, attr, new)

    def install(self, be):
        for op in list(be._versions):
            cat = "pooling" if ("pool" in op) else "convolution"
            if op == "conv2d_backward_bias":
                cat = "bias gradient"
            self._patch(be, op, self._top(op, cat, getattr(be, op)))
        for attr, phase in CONV_PHASES.items():
            self._patch(conv_ops, attr, self._phase(phase, getattr(conv_ops, attr)))
        for name, cat in MODEL_FUNCS.items():
            self._patch(models, name, self._top(name, cat, getattr(models, name)))
        for (cls, meth), cat in LAYER_METHODS.items():
            self._patch(cls, meth, self._top(f"{cls.__name__}.{meth}", cat,
                                             getattr(cls, meth)))

    def uninstall(self):
        for obj, attr, old in reversed(self._undo):
            if isinstance(obj, type) or obj is conv_ops or obj is models:
                setattr(obj, attr, old)
            else:
                delattr(obj, attr)              # back to the class's method
        self._undo.clear()

    # -------------------------------------------------------------- stepping
    def step(self, fn):
        self.counts.clear()
        self.top, self.phase = {}, collections.defaultdict(float)
        f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        t0 = time.perf_counter()
        fn()
        wall = time.perf_counter() - t0
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0
        self.steps.append((wall, self.top, dict(self.phase), faults))


def profile(kind, threads, steps):
    torch = bl.torch_module()
    bts._set_threads(threads, torch)
    be = bl.get_backend("numpy")
    x, y = bts.batch()
    model = bts._model(kind, be)
    fn = ((lambda: model.train_step(x, y, bts.LR)) if kind == "cnn"
          else (lambda: model.train_step(x, bts.LR)))
    fn()
    fn()
    prof = Profiler()
    prof.install(be)
    try:
        for _ in range(steps):
            prof.step(fn)
    finally:
        prof.uninstall()
    return prof


def _med(vals):
    return float(np.median(vals)) if vals else 0.0


def report(kind, threads, prof):
    walls = [s[0] for s in prof.steps]
    labels = list(prof.steps[-1][1])
    phases = sorted({p for s in prof.steps for (_, p) in s[2]})
    rows = []
    for lab in labels:
        cat = prof.steps[-1][1][lab][0]
        tot = _med([s[1].get(lab, (cat, 0.0))[1] for s in prof.steps])
        ph = {p: _med([s[2].get((lab, p), 0.0) for s in prof.steps]) for p in phases}
        rows.append((lab, cat, tot, ph))
    glue = _med([s[0] - sum(v for _, v in s[1].values()) for s in prof.steps])
    wall = _med(walls)
    out = [f"#### {kind} step, {threads} thread{'s' if threads > 1 else ''}: median "
           f"{wall*1e3:.1f} ms, min {min(walls)*1e3:.1f} ms over {len(walls)} steps; "
           f"{_med([s[3] for s in prof.steps]):.0f} minor page faults per step", ""]
    # by category
    cats = collections.defaultdict(float)
    for _, cat, tot, _ in rows:
        cats[cat] += tot
    cats["glue (outside timed calls)"] = glue
    ph_tot = collections.defaultdict(float)
    for _, cat, _, ph in rows:
        for p, v in ph.items():
            ph_tot[p] += v
    out += ["| category | ms | share |", "|---|---|---|"]
    for cat, v in sorted(cats.items(), key=lambda kv: -kv[1]):
        out.append(f"| {cat} | {v*1e3:.1f} | {v / wall:.0%} |")
    out += ["", "Convolution phases (thread ms, all convolution ops): " + ", ".join(
        f"{p} {v*1e3:.1f}" for p, v in sorted(ph_tot.items(), key=lambda kv: -kv[1])), ""]
    out += ["| call | category | wall ms | " + " | ".join(phases) + " | rest |",
            "|---|---|---|" + "---|" * (len(phases) + 1)]
    for lab, cat, tot, ph in sorted(rows, key=lambda r: -r[2]):
        if tot * 1e3 < 0.05:
            continue
        rest = tot - sum(ph.values()) if threads == 1 else float("nan")
        cells = " | ".join(f"{ph[p]*1e3:.1f}" if ph[p] else "" for p in phases)
        rest_s = f"{rest*1e3:.1f}" if threads == 1 and ph and any(ph.values()) else ""
        out.append(f"| {lab} | {cat} | {tot*1e3:.1f} | {cells} | {rest_s} |")
    return "\n".join(out) + "\n"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--kinds", nargs="+", default=["cnn", "cae"], choices=["cnn", "cae"])
    ap.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--label", default="")
    ap.add_argument("--markdown", help="append the report to this file")
    a = ap.parse_args(argv)
    load0 = bl.loadavg()
    parts = [f"### profile {a.label}: {bl.lscpu().get('Model name', '?')}, "
             f"{len(os.sched_getaffinity(0))} CPUs, NumPy {np.__version__}, "
             f"load average at start {load0}", ""]
    for t in a.threads:
        for k in a.kinds:
            parts.append(report(k, t, profile(k, t, a.steps)))
    parts.append(f"load average at end {bl.loadavg()}\n")
    text = "\n".join(parts)
    print(text)
    if a.markdown:
        with open(a.markdown, "a") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
