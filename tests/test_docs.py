"""The code shown in the docs is code the tests run: the doctest of the ``kernels``
package, every ```python block of the README, and the ``python -m kernels``
commands of README.md and kernels/README.md (the tour): every one names a real op, versions
and shape; the README's run here (they are the small ones), the tour's in the slow tier."""
import doctest
import os
import pathlib
import re
import shlex
import subprocess
import sys

import pytest

from kernels import get_backend
from kernels import runner as R

ROOT = pathlib.Path(__file__).resolve().parents[1]
DOCS = (ROOT / "README.md", ROOT / "kernels" / "README.md")


def _blocks(path):
    return re.findall(r"```python\n(.*?)```", path.read_text(), re.S)


def _runner_commands(path):
    """Every ``python -m kernels ...`` command in the file (code blocks and inline code),
    as argv lists without the program; output lines ('$ ...' prompts) included once."""
    text = path.read_text()
    found = re.findall(r"(?:^|`|\$ )python -m kernels([^`\n#]*)", text, re.M)
    out = []
    for tail in found:
        argv = shlex.split(tail)
        if not argv or argv[0] == "OP":           # prose: "`python -m kernels OP` is ..."
            continue
        if argv not in out:
            out.append(argv)
    return out


README_BLOCKS = _blocks(ROOT / "README.md")
README_CMDS = _runner_commands(ROOT / "README.md")
TOUR_CMDS = _runner_commands(ROOT / "kernels" / "README.md")


def test_readme_python_blocks_run():
    assert README_BLOCKS, "README.md lost its ```python example"
    for i, code in enumerate(README_BLOCKS):
        exec(compile(code, f"README.md block {i}", "exec"), {})


def test_kernels_package_doctest():
    import kernels
    failures, tried = doctest.testmod(kernels, verbose=False)
    assert tried > 0 and failures == 0


def test_the_docs_show_the_runner():
    assert len(README_CMDS) >= 3 and len(TOUR_CMDS) >= 10
    ops = {argv[0] for argv in TOUR_CMDS if argv and not argv[0].startswith("-")}
    assert len(ops) >= 5                              # the tour walks through most ops


@pytest.mark.parametrize("argv", README_CMDS + TOUR_CMDS, ids=" ".join)
def test_doc_commands_name_real_ops_versions_and_shapes(argv):
    """Cheap: parse each command and resolve its op, versions and shape (no kernel runs)."""
    args = R.build_parser().parse_args(argv)
    if args.list:
        return
    assert args.op in R.OPS
    name = args.backend or "cupy"
    be = get_backend(name, emulate=name != "numpy")
    assert set(args.version or ()) <= set(be.versions(args.op)), args.version

    class Emulated:
        emulated, name = args.emulate, args.backend or "cupy"
    R.pick_layer(args.op, args.shape, args.sizes, args.batch, Emulated)


@pytest.mark.parametrize("argv", README_CMDS, ids=" ".join)
def test_readme_runner_commands_run(argv):
    """The README's commands, as a reader types them (a fresh process each: numba's mode)."""
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"}
    p = subprocess.run([sys.executable, "-m", "kernels", *argv], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr
    if "--list" not in argv:
        assert "every version run matches the reference" in p.stdout


@pytest.mark.slow
@pytest.mark.parametrize("argv", TOUR_CMDS, ids=" ".join)
def test_tour_commands_run(argv):
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"}
    p = subprocess.run([sys.executable, "-m", "kernels", *argv], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=900)
    if p.returncode == 2 and "cannot run here" in p.stderr:
        pytest.skip(p.stderr.splitlines()[0])           # a GPU-only command
    assert p.returncode == 0, p.stderr
