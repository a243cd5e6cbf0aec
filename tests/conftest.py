import zlib

import numpy as np
import pytest


@pytest.fixture
def rng(request):
    """A generator seeded from the test's id: different per test, the same on every run."""
    return np.random.default_rng(zlib.crc32(request.node.nodeid.encode()))
