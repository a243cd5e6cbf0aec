"""``python -m scae_np`` is ``python -m scae_np.run``."""
import sys

from .run import main

sys.exit(main())
