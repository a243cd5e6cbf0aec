"""``--threads N`` must act before NumPy (and its BLAS) is imported: the thread count of
OpenBLAS/MKL/OpenMP is fixed when the library loads. Imports nothing heavy."""
import os
import sys

_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS")


def early_threads(argv):
    """Set the thread-count variables from ``--threads N`` in ``argv``. Returns True when
    they were set before NumPy was loaded (so they take effect), False when too late, None
    when ``--threads`` was not given (or is not a positive integer: argparse reports it)."""
    n = None
    for i, a in enumerate(argv):
        if a == "--threads" and i + 1 < len(argv):
            n = argv[i + 1]
        elif a.startswith("--threads="):
            n = a.split("=", 1)[1]
    if n is None or not n.isdigit() or int(n) < 1:
        return None
    for var in _VARS:
        os.environ[var] = n
    return "numpy" not in sys.modules
