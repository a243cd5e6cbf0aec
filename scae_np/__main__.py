"""``python -m scae_np`` is ``python -m scae_np.run``."""
import sys

from ._threads import early_threads

_applied = early_threads(sys.argv[1:])

from . import run  # noqa: E402

run._THREADS_APPLIED = _applied
sys.exit(run.main())
