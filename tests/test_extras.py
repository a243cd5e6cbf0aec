"""setup.cfg's extras: the GPU extras' CuPy and numba-cuda CUDA flavours agree (cu12 with
cu12, cu13 with cu13), they pull the CUDA libraries as wheels, and ``test`` pins no flavour
(so ``.[test,cuda12]`` and ``.[test,cuda13]`` both resolve; pip's dry runs are recorded in
docs/install.md). Reads the file; no network."""
import configparser
import os
import re

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def extras():
    cfg = configparser.ConfigParser()
    cfg.read(os.path.join(ROOT, "setup.cfg"))
    raw = cfg["options.extras_require"]
    return {k: [ln.strip() for ln in v.splitlines() if ln.strip()] for k, v in raw.items()}


def flavours(reqs):
    """{package: CUDA major} named by each requirement: cupy-cudaXXx, numba-cuda[cuXX],
    nvidia-*-cuXX, cuda-toolkit==XX.*."""
    out = {}
    for r in reqs:
        name = re.match(r"[A-Za-z0-9_.-]+", r).group(0).lower()
        m = (re.match(r"cupy-cuda(\d+)x", name) or re.search(r"\[cu(\d+)\]", r)
             or re.search(r"-cu(\d+)$", name) or re.search(r"cuda-toolkit.*==(\d+)", r))
        if m:
            out[name] = int(m.group(1))
    return out


@pytest.mark.parametrize("extra,major", [("cuda12", 12), ("cuda13", 13)])
def test_gpu_extra_flavours_agree(extra, major):
    reqs = extras()[extra]
    fl = flavours(reqs)
    assert {"numba-cuda", f"cupy-cuda{major}x"} <= set(fl), reqs
    assert set(fl.values()) == {major}, f"{extra} mixes CUDA flavours: {fl}"
    cupy = [r for r in reqs if r.startswith("cupy-")][0]
    assert "[ctk]" in cupy, f"{cupy}: without [ctk] CuPy brings no CUDA libraries (cuBLAS)"


def test_flavours_parser_sees_a_mismatch():
    assert flavours(["cupy-cuda12x[ctk]>=14", "numba-cuda[cu13]>=0.30"]) == {
        "cupy-cuda12x": 12, "numba-cuda": 13}


def test_the_test_extra_combines_with_both_gpu_extras():
    ex = extras()
    assert flavours(ex["test"]) == {}, f"test pins a CUDA flavour: {ex['test']}"
    assert any(r.startswith("numba-cuda") for r in ex["test"])
    for a, b in (("test", "cuda12"), ("test", "cuda13"), ("cpu", "cuda13")):
        assert len(set(flavours(ex[a] + ex[b]).values())) <= 1, (a, b)
