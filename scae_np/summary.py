"""What ``python -m scae_np.run`` tells its reader, beyond the numbers: one short backend
line, errors that name the command's own fix, the table's verdict in words, and the
embedding figure of the CAE stack's codes. Kept out of :mod:`scae_np.run`'s main flow.

* :func:`backend_line`       "numpy: no GPU backend (CuPy not installed: pip install ...)"
* :func:`unavailable_message` the error for a ``--backend`` that cannot run here, pointing to
                             ``--emulate`` (not to ``get_backend(...)``)
* :func:`verdict_lines`      does CAE init beat random init in this run, by how much, on how
                             many seeds, and how far to trust it; :func:`with_verdict` puts it
                             under the table of a ``results.md``
* :func:`embedding_figure`   the stack's top-layer codes of test images in 2-D beside those of
                             its random start, coloured by class, with their 1-NN accuracy
"""
from __future__ import annotations

import os

import numpy as np


# ------------------------------------------------------------------------------ backend
def backend_line(desc, why):
    """One short line for the backend ``desc`` (e.g. "numpy"); when it is NumPy because no
    GPU backend works here (``why``: {backend: full reason}), the shortest reason with its
    fix. The full reasons go to config.json and ``--verbose``."""
    if not why:
        return desc
    import importlib.util
    from kernels import unavailable_reason
    if importlib.util.find_spec("cupy") is None:
        short = "CuPy not installed: pip install -e '.[cuda13]'"
    else:
        first = unavailable_reason(next(iter(why.values())))
        short = first if len(first) <= 100 else first[:97] + "..."
    return f"{desc}: no GPU backend ({short})"


def reasons_text(why):
    """The full reasons no GPU backend works here (``--verbose``): one indented line each,
    each line preceded by a newline; empty when there are none."""
    return "".join(f"\n  {name}: {reason}" for name, reason in (why or {}).items())


def unavailable_message(name, emulate, err):
    """The error for ``--backend name`` that cannot run here: why, then this command's own
    fixes (``--emulate``, ``--backend numpy``, the GPU extra)."""
    from kernels import unavailable_reason
    from kernels.backend import EMULATED
    if emulate or name not in EMULATED:
        return f"the {name} backend is not available here: {err}"
    return (f"the {name} backend is not available here: {unavailable_reason(err)}. Add "
            f"--emulate to run {EMULATED[name]} without a GPU (slow: for checking, not "
            f"for speed), use --backend numpy, or install the GPU extra on a machine with an "
            f"NVIDIA GPU: pip install -e '.[cuda13]' (or '.[cuda12]')")


# ------------------------------------------------------------------------------ verdict
def verdict_lines(cfg, rows):
    """In words, what the table (``Run.table_rows()``) shows: does CAE init beat random init
    here, by how much, on how many seeds, and how far that can be trusted; then where the
    full protocol is. Markdown lines, each paragraph preceded by a blank line."""
    out = []
    for r in rows:
        rnd, cae = r.get("random"), r.get("cae")
        if not (rnd and cae):
            continue
        gap = rnd["mean"] - cae["mean"]
        word = "better" if gap > 0 else "worse" if gap < 0 else "no different"
        if rnd["n"] == 1 and cae["n"] == 1:
            out.append(f"**What this run shows** ({r['size']} training images, one seed): CAE "
                       f"init {cae['mean']:.2f}% error, random init {rnd['mean']:.2f}%: CAE "
                       f"init is {abs(gap):.2f} points {word} here. One seed at this size is "
                       f"noisy: the gap between seeds can be as large as this one (RESULTS.md "
                       f"measures it), so this run shows that the pipeline works, not which "
                       f"init is better. Add `--seeds 0,1,2` for a mean and spread.")
            continue
        from .combine import paired_difference
        pd = paired_difference(*[list(zip(c.get("seeds", range(c["n"])), c["errors"],
                                          [None] * c["n"])) for c in (cae, rnd)])
        if pd is None:
            continue
        n, lo, hi = pd["n"], pd["ci95"][0], pd["ci95"][1]
        clear = lo > 0 or hi < 0
        out.append(f"**What this run shows** ({r['size']} training images, {n} paired seeds): "
                   f"CAE init beat random init on {pd['wins']} of {n} seeds; on average it is "
                   f"{abs(gap):.2f} points {word} ({cae['mean']:.2f}% vs {rnd['mean']:.2f}%). "
                   f"The mean paired difference CAE − random is {pd['mean']:+.2f} points, "
                   f"95% t-interval [{lo:+.2f}, {hi:+.2f}]: "
                   + ("it excludes zero, so the difference is more than seed-to-seed noise."
                      if clear else "it holds zero, so the inits are not yet distinguishable "
                                    "from seed-to-seed noise."))
    if out:
        quick = cfg.get("experiment") == "default"
        if quick and any(r.get("cae") and r.get("random") and r["cae"]["mean"] > r["random"]["mean"]
                         for r in rows):
            out.append("**The quick preset cannot show CAE init >= random init within minutes** "
                       "on a CPU: its stack and CNNs are trained far less than the validated "
                       "recipe. See RESULTS.md (stack diagnostics, recipe and Table 1 at 1k) "
                       "before reading this table as the paper's result.")
        out.append(("This was the quick preset (short training, not converged). " if quick
                    else "") + "RESULTS.md has the full protocol (more epochs, 1k/10k/50k "
                   "training images, several seeds): its numbers, commands and a discussion.")
    return [line for p in out for line in ("", p)]


def with_verdict(md, cfg, rows):
    """``md`` (a results.md) with :func:`verdict_lines` inserted after the error table and
    its caption: before the next heading after the table's, or at the end."""
    lines = verdict_lines(cfg, rows)
    if not lines:
        return md
    text = md.rstrip("\n").split("\n")
    at = len(text)
    table = next((i for i, t in enumerate(text) if t.startswith("## ") and "of the CNN" in t),
                 None)
    if table is not None:
        at = next((i for i in range(table + 1, len(text)) if text[i].startswith("#")), at)
    head, tail = text[:at], text[at:]
    while head and not head[-1].strip():                 # one blank line between paragraphs
        head.pop()
    while tail and not tail[0].strip():
        tail.pop(0)
    return "\n".join(head + lines + ([""] + tail if tail else [])) + "\n"


# ------------------------------------------------------------------------------ embedding
def embedding_figure(run, seed, stack):
    """Draw ``figures/embedding_s<seed>.png`` for a :class:`scae_np.run.Run`: the top-layer
    codes of its first ``embed_images`` test images under the trained ``stack`` and under the
    same stack before training (same seed: its random filters), projected to 2-D
    (:func:`scae_np.figures.project_2d`) and coloured by class, each with the leave-one-out
    1-NN accuracy of the codes. Records what it drew in ``run.results["embedding"]``."""
    from . import figures
    from .models import CAEStack
    from .run import EMBED_IMAGES
    from .train import encode_batches
    c = run.cfg
    n = min(int(c.get("embed_images", EMBED_IMAGES)), len(run.test_x))
    if n < 2:
        return None
    x, y = run.test_x[:n], np.asarray(run.test_y[:n])
    scale = {"init_scale": c["cae_init_scale"]} if "cae_init_scale" in c else {}
    start = CAEStack(run.be, run.in_channels, stack.maps, stack.kernels, stack.pools,
                     noise=stack.noises, seed=seed, **scale)      # the same seed: its start
    panels, info = [], {"images": n, "accuracy_1nn": {}}
    for key, caption, model in (("random", "random filters (the stack before training)", start),
                                ("cae", "trained CAE stack", stack)):
        codes = encode_batches(run.be, model.encode, x, c["eval_batch_size"]).reshape(n, -1)
        acc = figures.nearest_neighbour_accuracy(codes, y)
        xy, info["method"] = figures.project_2d(codes, seed=seed)
        info["accuracy_1nn"][key] = acc
        panels.append((f"{caption}\n1-NN accuracy of the {codes.shape[1]}-d codes: "
                       f"{100 * acc:.0f}%", xy))
    method = {"tsne": "t-SNE", "pca": "PCA"}[info["method"]]
    path = run.fig_path(f"embedding_s{seed}.png")
    figures.embedding_figure(panels, y, path, class_names=run.ds.classes,
                             title=f"top-layer codes of {n} {run.ds.name} test images, "
                                   f"{method} to 2-D, coloured by class")
    info["figure"] = os.path.relpath(path, run.out)
    run.results["embedding"] = info
    run.echo(f"[embedding] {info['figure']}: {method} of the top-layer codes of {n} test "
             f"images; 1-NN accuracy {100 * info['accuracy_1nn']['random']:.0f}% with random "
             f"filters, {100 * info['accuracy_1nn']['cae']:.0f}% after CAE training")
    return info
