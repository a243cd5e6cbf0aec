"""Whole training steps (forward, backward, SGD update) at batch 128:

* ``cnn``: the paper's MNIST CNN (scae_np.models.CNN: conv 100@5x5 -> pool 2 -> scaled
  tanh -> conv 150@5x5 -> pool 2 -> tanh -> conv 200@3x3 -> tanh -> fc 300 -> tanh ->
  fc 10, softmax cross-entropy, plain SGD);
* ``cae``: one CAE layer (scae_np.models.CAE: 20 maps 7x7 on 28x28, 2x2 max-pooling with
  switch unpooling, tied-weight decoder, logistic output, half squared error, SGD).

Implementations: the model on each backend that runs here (``numpy`` with its default =
fastest versions; ``numpy-before``: the same model on the versions this project started
with -- ``im2col`` convolutions and ``argmax`` pooling -- to show the before/after), and
the PyTorch peer: the same architecture in torch.nn / torch.nn.functional with autograd
and torch.optim.SGD, torch threads = NumPy's BLAS threads. Before timing, each model's
first step is checked against the peer's first step from the same weights (loss and
updated parameters). The CPU target: numpy / torch <= 1.3 for the CNN step.
"""
import numpy as np
import pytest

import benchlib as bl

LR = 0.01
N = bl.BATCH

models = pytest.importorskip("scae_np.models", reason="scae_np.models (branch train) missing")
from scae_np.layers import TANH_A, TANH_S  # noqa: E402


# ------------------------------------------------------------------------ torch peers
def torch_cnn(torch, params, device="cpu"):
    """The CNN in torch.nn with the given NumPy parameters (names of scae_np.models.CNN)."""
    nn, F = torch.nn, torch.nn.functional
    A, S = TANH_A, TANH_S        # scae_np.layers: f(a) = A tanh(S a)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(1, 100, 5)
            self.conv2 = nn.Conv2d(100, 150, 5)
            self.conv3 = nn.Conv2d(150, 200, 3)
            self.fc1 = nn.Linear(800, 300)
            self.fc2 = nn.Linear(300, 10)

        def forward(self, x):
            # same order as scae_np.models.CNN: conv -> pool -> scaled tanh
            x = A * torch.tanh(S * F.max_pool2d(self.conv1(x), 2))
            x = A * torch.tanh(S * F.max_pool2d(self.conv2(x), 2))
            x = A * torch.tanh(S * self.conv3(x))
            x = A * torch.tanh(S * self.fc1(torch.flatten(x, 1)))
            return self.fc2(x)

    net = Net()
    with torch.no_grad():
        for name, mod in net.named_children():
            mod.weight.copy_(torch.from_numpy(params[f"{name}.W"]))
            mod.bias.copy_(torch.from_numpy(params[f"{name}.b"]))
    net = net.to(device)
    opt = torch.optim.SGD(net.parameters(), lr=LR)

    def params_np():
        return {f"{n}.{'W' if p == 'weight' else 'b'}": t.detach().cpu().numpy().copy()
                for n, mod in net.named_children() for p, t in mod.named_parameters()}

    def step(x, y):
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(net(x), y)
        loss.backward()
        opt.step()
        return loss.item()
    return step, params_np


def torch_cae(torch, params, device="cpu"):
    """The CAE layer in torch: tied weights (the decoder is conv_transpose2d with W)."""
    F = torch.nn.functional
    A, S = TANH_A, TANH_S        # scae_np.layers: f(a) = A tanh(S a)
    W = torch.tensor(params["W"], device=device, requires_grad=True)
    b = torch.tensor(params["b"], device=device, requires_grad=True)
    c = torch.tensor(params["c"], device=device, requires_grad=True)
    opt = torch.optim.SGD([W, b, c], lr=LR)

    def step(x):
        opt.zero_grad(set_to_none=True)
        h = A * torch.tanh(S * F.conv2d(x, W, b))
        p, idx = F.max_pool2d(h, 2, return_indices=True)
        u = F.max_unpool2d(p, idx, 2, output_size=h.shape[2:])
        r = torch.sigmoid(F.conv_transpose2d(u, W) + c.view(1, -1, 1, 1))
        loss = ((r - x) ** 2).sum() * (0.5 / x.shape[0])
        loss.backward()
        opt.step()
        return loss.item()

    def params_np():
        return {"W": W.detach().cpu().numpy().copy(), "b": b.detach().cpu().numpy().copy(),
                "c": c.detach().cpu().numpy().copy()}
    return step, params_np


# ------------------------------------------------------------------------ inputs
def batch(seed=0):
    rng = np.random.default_rng(seed)
    x = rng.random((N, 1, 28, 28), dtype=np.float32)
    y = rng.integers(0, 10, N).astype(np.int64)
    return x, y


OLD_VERSIONS = {op: "im2col" for op in bl.CONV_OPS} | {op: "argmax" for op in bl.POOL_OPS}


def _impls():
    out = []
    for name in ("numpy", "cupy", "numba"):
        be, why = bl.backend_for(name)
        dev = "cpu" if name == "numpy" else "cuda"
        out.append(bl.Impl(name, name, "default", dev, be=be, skip=why))
        if name == "numpy":
            out.append(bl.Impl("numpy-before", name, "before", dev, be=None, skip=why))
    torch = bl.torch_module()
    out.append(bl.Impl("torch/cpu", "torch", "cpu", "cpu",
                       skip="" if torch is not None else "torch is not installed"))
    ok, why = bl.gpu_available()
    cuda_ok = ok and torch is not None and torch.cuda.is_available()
    out.append(bl.Impl("torch/cuda", "torch", "cuda", "cuda",
                       skip="" if cuda_ok else f"torch CUDA peer needs a GPU ({why})"))
    return [pytest.param(i, id=i.label, marks=[pytest.mark.skip(reason=i.skip)] if i.skip
                         else []) for i in out]


def _backend(imp):
    if imp.version == "before":
        be = bl.get_backend("numpy")
        for op, v in OLD_VERSIONS.items():
            be.set_default(op, v)
        return be
    return imp.be


def _close(name, a, b, rtol):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    scale = max(np.abs(b).max(), 1e-30)
    err = np.abs(a - b).max() / scale
    assert err <= rtol, f"{name}: max |difference| / max |peer| = {err:.3g} > {rtol}"


def _validate(kind, model, be, torch, x, y):
    """One step of the model and of the torch peer from the same weights: same loss, same
    parameter updates (relative to the update's size), float32 tolerances."""
    p0 = model.state_dict()
    dev = "cpu" if be.name == "numpy" else "cuda"
    tx = torch.from_numpy(x).to(dev)
    if kind == "cnn":
        tstep, tparams = torch_cnn(torch, p0, dev)
        loss_t = tstep(tx, torch.from_numpy(y).to(dev))
        loss_m = model.train_step(be.to_device(x), be.to_device(y), LR)
    else:
        tstep, tparams = torch_cae(torch, p0, dev)
        loss_t = tstep(tx)
        loss_m = model.train_step(be.to_device(x), LR)
    assert abs(loss_m - loss_t) <= 1e-4 * max(abs(loss_t), 1.0), (loss_m, loss_t)
    p1m, p1t = model.state_dict(), tparams()
    for k in p0:
        _close(f"{kind} update of {k}", p1m[k] - p0[k], p1t[k] - p0[k], rtol=2e-3)


def _model(kind, be):
    if kind == "cnn":
        return models.CNN(be, in_channels=1, input_hw=(28, 28), n_classes=10, seed=0,
                          dtype=np.float32)
    return models.CAE(be, in_channels=1, n_maps=20, kernel=7, pool=2, noise=0.0, seed=0)


@pytest.mark.parametrize("kind", ["cnn", "cae"])
@pytest.mark.parametrize("imp", _impls())
def test_train_step(benchmark, kind, imp):
    torch = bl.torch_module()
    x, y = batch()
    if imp.backend == "torch":
        ref = _model(kind, bl.get_backend("numpy"))
        params = ref.state_dict()
        if kind == "cnn":
            step_fn, _ = torch_cnn(torch, params, imp.version)
            tx = torch.from_numpy(x).to(imp.version)
            ty = torch.from_numpy(y).to(imp.version)
            fn = lambda: step_fn(tx, ty)                                    # noqa: E731
        else:
            step_fn, _ = torch_cae(torch, params, imp.version)
            tx = torch.from_numpy(x).to(imp.version)
            fn = lambda: step_fn(tx)                                        # noqa: E731
        # the peer is validated by the models' checks below (same step, same numbers)
    else:
        be = _backend(imp)
        if torch is not None:
            _validate(kind, _model(kind, be), be, torch, x, y)
        model = _model(kind, be)
        dx, dy = be.to_device(x), be.to_device(y)
        if kind == "cnn":
            fn = lambda: model.train_step(dx, dy, LR)                       # noqa: E731
        else:
            fn = lambda: model.train_step(dx, LR)                           # noqa: E731
    flop = bl.cnn_step_flop() if kind == "cnn" else bl.cae_step_flop()
    benchmark.group = (f"train step {kind}-mnist N={N}" +
                       (" (paper CNN: 100@5x5-150@5x5-200@3x3-300-10)" if kind == "cnn"
                        else " (CAE layer: 20@7x7, pool 2, tied decoder)"))
    benchmark.extra_info.update(
        kind="step", op=f"{kind}_train_step", layer=f"{kind}-mnist", shape=f"N={N}",
        impl=imp.label, backend=imp.backend, version=imp.version, device=imp.device,
        flop=flop, bytes=0, metric="GFLOP/s", peer=imp.backend == "torch")
    bl.run_timed(benchmark, fn, imp, budget=6.0 if kind == "cnn" else 2.0, min_rounds=7)


@pytest.fixture(params=["all-threads", "1-thread"])
def threads(request, monkeypatch):
    """'1-thread': NumPy's BLAS, its batch tasks and torch all on one thread -- a per-core
    comparison, much less sensitive than thread teams to a busy shared machine."""
    if request.param == "all-threads":
        yield None
        return
    from kernels import numpy_threads
    torch = bl.torch_module()
    ctl = numpy_threads.blas_controls()
    old_t = torch.get_num_threads() if torch is not None else None
    old_b = ctl[0]() if ctl else None
    monkeypatch.setenv("SCAE_NP_THREADS", "1")
    if torch is not None:
        torch.set_num_threads(1)
    if ctl:
        ctl[1](1)
    try:
        yield 1
    finally:
        if torch is not None:
            torch.set_num_threads(old_t)
        if ctl:
            ctl[1](old_b)


def _paired_steps(kind, torch):
    """One numpy model and its torch twin (same weights), validated against each other;
    returns (numpy step, torch step) as argument-free callables on one batch."""
    be = bl.get_backend("numpy")
    x, y = batch()
    _validate(kind, _model(kind, be), be, torch, x, y)
    model = _model(kind, be)
    tstep, _ = (torch_cnn if kind == "cnn" else torch_cae)(torch, model.state_dict())
    tx, ty = torch.from_numpy(x), torch.from_numpy(y)
    if kind == "cnn":
        return (lambda: model.train_step(x, y, LR)), (lambda: tstep(tx, ty))
    return (lambda: model.train_step(x, LR)), (lambda: tstep(tx))


@pytest.mark.parametrize("kind", ["cnn", "cae"])
def test_train_step_paired(benchmark, kind, threads):
    """numpy step and torch step *interleaved* (torch in pedantic's untimed setup, timed
    by hand; numpy timed by pytest-benchmark and by hand): each round's ratio numpy/torch
    is taken under the same machine load, which a shared machine needs. The group's
    extra_info holds the per-round times and ratios."""
    import time
    torch = bl.torch_module()
    if torch is None:
        pytest.skip("torch is not installed")
    np_fn, t_fn = _paired_steps(kind, torch)
    t_torch, t_numpy = [], []

    def torch_round():
        t0 = time.perf_counter()
        t_fn()
        t_torch.append(time.perf_counter() - t0)

    def numpy_round():
        t0 = time.perf_counter()
        np_fn()
        t_numpy.append(time.perf_counter() - t0)

    for _ in range(2):                                   # warm-up both
        torch_round()
        numpy_round()
    t_torch.clear()
    t_numpy.clear()
    tag = "" if threads is None else ", 1 thread each"
    benchmark.group = (f"train step {kind}-mnist N={N}, paired rounds (numpy timed, torch "
                       f"between){tag}")
    benchmark.pedantic(numpy_round, setup=torch_round, rounds=15 if kind == "cnn" else 25,
                       warmup_rounds=0, iterations=1)
    ratios = [a / b for a, b in zip(t_numpy, t_torch)]
    benchmark.extra_info.update(
        kind="paired", op=f"{kind}_train_step", shape=f"N={N}",
        layer=f"{kind}-mnist" + ("" if threads is None else " (1 thread)"),
        impl="numpy (paired with torch/cpu)", backend="numpy", version="default",
        device="cpu", flop=bl.cnn_step_flop() if kind == "cnn" else bl.cae_step_flop(),
        bytes=0, metric="GFLOP/s", peer=False,
        torch_times=t_torch, numpy_times=t_numpy,
        paired_ratio_median=float(np.median(ratios)),
        ratio_of_mins=min(t_numpy) / min(t_torch),
        ratio_of_medians=float(np.median(t_numpy) / np.median(t_torch)))


# ------------------------------------------------------------------ command line: paired
def _set_threads(n, torch):
    """NumPy side (the project's pool + BLAS) and torch on ``n`` threads."""
    from kernels import numpy_threads
    numpy_threads.set_threads(n)
    torch.set_num_threads(n)


def paired(kind, threads, rounds, warmup=3):
    """``rounds`` interleaved (numpy step, torch step) pairs on ``threads`` threads each;
    the order inside a pair alternates. Returns a dict of times (s) and ratios."""
    import time
    torch = bl.torch_module()
    _set_threads(threads, torch)
    np_fn, t_fn = _paired_steps(kind, torch)
    tn, tt = [], []

    def timed(fn, out):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    load0 = bl.loadavg()
    for r in range(warmup + rounds):
        pair = [(np_fn, tn), (t_fn, tt)]
        for fn, out in (pair if r % 2 == 0 else pair[::-1]):
            timed(fn, out)
    tn, tt = tn[warmup:], tt[warmup:]
    ratios = [a / b for a, b in zip(tn, tt)]
    return dict(kind=kind, threads=threads, rounds=rounds, numpy_median=float(np.median(tn)),
                numpy_min=min(tn), torch_median=float(np.median(tt)), torch_min=min(tt),
                ratio_median=float(np.median(ratios)), ratio_of_mins=min(tn) / min(tt),
                load_start=load0, load_end=bl.loadavg())


def main(argv=None):
    """``python bench/bench_train_step.py [--kinds cnn cae] [--threads 1 2] [--rounds 30]
    [--markdown FILE]``: paired interleaved rounds in one process, a markdown table."""
    import argparse
    import json
    ap = argparse.ArgumentParser(description=main.__doc__)
    ap.add_argument("--kinds", nargs="+", default=["cnn", "cae"], choices=["cnn", "cae"])
    ap.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--label", default="")
    ap.add_argument("--markdown", help="append the table to this file")
    ap.add_argument("--json", help="write the raw results here")
    a = ap.parse_args(argv)
    rows = [paired(k, t, a.rounds) for t in a.threads for k in a.kinds]
    model = bl.lscpu().get("Model name", "?")
    lines = [f"### paired train steps {a.label} (batch {N}, {model}, "
             f"{len(__import__('os').sched_getaffinity(0))} CPUs)", "",
             "| step | threads | rounds | numpy median | numpy min | torch median | torch min "
             "| median per-round ratio | ratio of mins | load avg start → end |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(
            f"| {r['kind']} | {r['threads']} | {r['rounds']} | {r['numpy_median']*1e3:.1f} ms "
            f"| {r['numpy_min']*1e3:.1f} ms | {r['torch_median']*1e3:.1f} ms "
            f"| {r['torch_min']*1e3:.1f} ms | **{r['ratio_median']:.2f}** "
            f"| {r['ratio_of_mins']:.2f} | {r['load_start'][0]:.2f} → {r['load_end'][0]:.2f} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if a.markdown:
        with open(a.markdown, "a") as f:
            f.write(text + "\n")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    import os as _os
    import sys as _sys
    _sys.path.insert(0, _os.path.dirname(_os.path.dirname(_os.path.abspath(__file__))))
    main()
