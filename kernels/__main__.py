"""``python -m kernels OP ...``: validate and time every version of one op (see
:mod:`kernels.runner`, ``python -m kernels --help``)."""
import sys

from .runner import main

sys.exit(main())
