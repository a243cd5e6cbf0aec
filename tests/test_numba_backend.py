"""The numba backend's process-mode guard (NUMBA_ENABLE_CUDASIM must be chosen before numba's
first import) and the runnable doc snippet of kernels/conv2d/numba_kernels.py.

The guard tests need fresh interpreters (the mode of this pytest process is already fixed
by tests/conftest.py), so each runs a few lines in a subprocess and checks the error it
prints. ~2-4 s each: every subprocess imports numba.
"""
import os
import re
import subprocess
import sys
import textwrap

import pytest

import kernels
from kernels import BackendUnavailableError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(code, sim_env=None):
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"}
    if sim_env is not None:
        env["NUMBA_ENABLE_CUDASIM"] = sim_env
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def _has_gpu():
    try:
        import cupy
        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:
        return False


def test_doc_snippet_runs_in_a_fresh_process():
    """The module docstring's example, verbatim, in a process with no NUMBA_ENABLE_CUDASIM:
    get_backend('numba', emulate=True) must set it before numba's import, by itself."""
    from kernels.conv2d import __file__ as conv_init
    src = open(os.path.join(os.path.dirname(conv_init), "numba_kernels.py")).read()
    doc = src.split('"""', 2)[1]
    block = doc.split("tests/test_numba_backend.py``::", 1)[1]
    lines = []
    for line in block.splitlines()[1:]:
        if line.strip() and not line.startswith("    "):
            break
        lines.append(line[4:])
    snippet = "\n".join(lines).strip()
    assert "get_backend(\"numba\", emulate=True)" in snippet and "assert" in snippet
    out = _run(snippet + "\nimport os; print('SIM', os.environ['NUMBA_ENABLE_CUDASIM'])")
    assert "SIM 1" in out


def _get_backend_error(emulate, sim_env=None, imports="kernels"):
    """What ``get_backend("numba", emulate=...)`` prints in a fresh process after
    ``import <imports>``: "ERR <message>" when it refuses, then whether numba got imported."""
    return _run(f"""
        import sys, {imports}
        try:
            kernels.get_backend("numba", emulate={emulate})
        except kernels.BackendUnavailableError as e:
            print("ERR", e)
        print("NUMBA_IMPORTED", "numba" in sys.modules)
    """, sim_env=sim_env)


def test_emulate_after_gpu_mode_import_says_start_fresh():
    out = _get_backend_error(True, imports="numba, kernels")
    assert "ERR" in out and "fresh process" in out and "NUMBA_ENABLE_CUDASIM=1" in out


def test_gpu_backend_in_simulator_process_says_why():
    out = _get_backend_error(False, sim_env="1")
    assert "ERR" in out and "simulator" in out and "SCAE_NP_GPU_TESTS=1" in out


def test_explicit_cudasim_0_reserves_the_process_for_the_gpu():
    out = _get_backend_error(True, sim_env="0")
    assert "ERR NUMBA_ENABLE_CUDASIM=0" in out and "NUMBA_IMPORTED False" in out


@pytest.mark.skipif(_has_gpu(), reason="checks the no-GPU message; this machine has a GPU")
def test_no_gpu_error_leaves_the_simulator_possible():
    """Asking for the GPU backend on a machine without one must not import numba, so the
    same process can still fall back to the simulator, as the error message suggests."""
    out = _run("""
        import sys, kernels
        try:
            kernels.get_backend("numba")
        except kernels.BackendUnavailableError as e:
            print("ERR", e)
        print("NUMBA_IMPORTED", "numba" in sys.modules)
        be = kernels.get_backend("numba", emulate=True)
        print("EMULATED", be.emulated, be.xp.__name__)
    """)
    assert "ERR" in out and "emulate=True" in out
    assert "NUMBA_IMPORTED False" in out and "EMULATED True numpy" in out


def test_this_process_mode_and_switch_interval():
    """In the pytest process: simulator sessions refuse the GPU backend with the reason, and
    a simulator launch restores the interpreter's switch interval."""
    if os.environ.get("SCAE_NP_GPU_TESTS") == "1":
        pytest.skip("GPU session: the simulator is not available in this process")
    with pytest.raises(BackendUnavailableError, match="simulator"):
        kernels.get_backend("numba")
    be = kernels.get_backend("numba", emulate=True)
    import numpy as np
    before = sys.getswitchinterval()
    be.conv2d_backward_bias(np.ones((1, 2, 3, 3), np.float32), version="naive")
    assert sys.getswitchinterval() == before
    assert re.match(r"<NumbaBackend 'numba', emulated>", repr(be))


def test_read_only_inputs_work_in_the_simulator():
    """The simulator writes array arguments back after a launch; read-only inputs (dataset
    slices are read-only) must still work, and stay unchanged."""
    import subprocess
    import sys
    import textwrap
    code = textwrap.dedent("""
        import numpy as np, kernels
        be = kernels.get_backend("numba", emulate=True)
        x = np.arange(2 * 1 * 5 * 5, dtype=np.float32).reshape(2, 1, 5, 5)
        w = np.ones((2, 1, 3, 3), np.float32); b = np.zeros(2, np.float32)
        for a in (x, w, b):
            a.flags.writeable = False
        y = be.conv2d_forward(x, w, b)
        ref = kernels.get_backend("numpy").conv2d_forward(x.copy(), w.copy(), b.copy())
        assert np.allclose(y, ref), (y, ref)
        p, s = be.maxpool2d_forward(x, 2)
        assert p.shape == (2, 1, 2, 2)
        print("ok")
    """)
    env = dict(__import__("os").environ, NUMBA_ENABLE_CUDASIM="1")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "ok" in out.stdout
