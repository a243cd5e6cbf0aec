"""Atomic file writes: readers (and a run killed mid-write) see the old file or the new one,
never half of one. Used for checkpoints, weights, metrics, figures and downloads.

A write that fails (a full disk, a read-only folder) raises the OSError with the file's name
attached (``name_os_error``) and leaves no temporary file behind; a *kill* during a write can
leave one (``.<name>.<random>.part``), which :func:`remove_partial_files` deletes (a resumed
run does, under its folder lock).
"""
from __future__ import annotations

import contextlib
import os
import pathlib
import tempfile

#: how the temporary files of :func:`atomic_open` are named: ``.<name>.<random>.part``
PART_SUFFIX = ".part"
#: opens the temporary file's descriptor (``os.fdopen``; tests put a failing disk here)
_fdopen = os.fdopen


def _umask():
    u = os.umask(0o022)
    os.umask(u)
    return u


def name_os_error(e, path):
    """``e`` itself if it names a file, else the same error (errno, message) naming ``path``:
    a failing ``write`` on an open file says neither which file nor where."""
    if getattr(e, "filename", None) is not None or e.errno is None:
        return e
    try:
        return type(e)(e.errno, e.strerror or str(e), str(path))
    except Exception:  # noqa: BLE001 - an OSError subclass with another signature
        return e


@contextlib.contextmanager
def atomic_open(path, mode="wb"):
    """Open a temporary file beside ``path`` for writing. On a clean exit of the ``with``
    block it is flushed, fsync'ed, given the usual permissions (mkstemp makes 0600) and
    renamed onto ``path`` with ``os.replace``; if the block raises, it is removed and
    ``path`` is left as it was. OSErrors name ``path``."""
    path = pathlib.Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix="." + path.name + ".", suffix=PART_SUFFIX,
                                   dir=path.parent)
    except OSError as e:
        raise name_os_error(e, path) from e
    try:
        try:
            with _fdopen(fd, mode) as f:
                yield f
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, 0o666 & ~_umask())
            os.replace(tmp, path)
        except OSError as e:
            raise name_os_error(e, path) from e
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def remove_partial_files(folder, subfolders=("checkpoints", "weights", "figures")):
    """Delete the temporary files a killed writer left (``.*.part``) in ``folder`` and its
    ``subfolders``; returns their paths. Only safe while no other process writes there (the
    run folder's lock)."""
    removed = []
    for d in [folder] + [os.path.join(folder, s) for s in subfolders]:
        if not os.path.isdir(d):
            continue
        for name in sorted(os.listdir(d)):
            if name.startswith(".") and name.endswith(PART_SUFFIX):
                p = os.path.join(d, name)
                if os.path.isfile(p):
                    os.unlink(p)
                    removed.append(p)
    return removed
