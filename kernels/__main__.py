"""``python -m kernels OP ...``: validate and time every version of one op (see
:mod:`kernels.runner`, ``python -m kernels --help``)."""
import os
import sys

from .runner import main

try:
    sys.exit(main())
except BrokenPipeError:          # e.g. python -m kernels --list | head: not an error
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    sys.exit(0)
