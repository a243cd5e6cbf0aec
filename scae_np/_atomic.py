"""Atomic file writes: readers (and a run killed mid-write) see the old file or the new one,
never half of one. Used for checkpoints, weights, metrics, figures and downloads."""
from __future__ import annotations

import contextlib
import os
import pathlib
import tempfile


def _umask():
    u = os.umask(0o022)
    os.umask(u)
    return u


@contextlib.contextmanager
def atomic_open(path, mode="wb"):
    """Open a temporary file beside ``path`` for writing. On a clean exit of the ``with``
    block it is flushed, fsync'ed, given the usual permissions (mkstemp makes 0600) and
    renamed onto ``path`` with ``os.replace``; if the block raises, it is removed and
    ``path`` is left as it was."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix="." + path.name + ".", suffix=".part", dir=path.parent)
    try:
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
