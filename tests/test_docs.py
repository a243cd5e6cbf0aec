"""The code shown in the docs is code the tests run: every ```python block of the README
and the doctest of the ``kernels`` package."""
import doctest
import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _blocks(path):
    return re.findall(r"```python\n(.*?)```", path.read_text(), re.S)


@pytest.mark.parametrize("i", range(len(_blocks(ROOT / "README.md"))))
def test_readme_python_blocks_run(i, capsys):
    code = _blocks(ROOT / "README.md")[i]
    exec(compile(code, f"README.md block {i}", "exec"), {})
    out = capsys.readouterr().out
    if "print(np.abs(y - ref).max())" in code:
        assert float(out.split()[-1]) < 1e-4


def test_kernels_package_doctest():
    import kernels
    failures, tried = doctest.testmod(kernels, verbose=False)
    assert tried > 0 and failures == 0
