"""An exclusive lock on a run folder, held for the life of the process that runs there.

``fcntl.flock`` on ``<folder>/.lock``: the kernel releases it when the process ends, however
it ends (``kill -9`` included), so a stale lock is impossible and the file itself is never
removed (removing a lock file races with a process that has just opened it). The holder
writes its PID, host, start time and command into the file; a process that finds the folder
locked reads them back for its error message (:class:`FolderLocked`).

Parallel stages (a later ``--jobs N``): the parent process holds the lock for the whole run;
workers never take it (a second ``flock`` on a new open of the file would fail, even in a
child). Forked workers inherit the parent's lock descriptor, so the folder stays locked until
the last of them exits, even if the parent is killed; spawned ones do not (the descriptor is
not inheritable) and rely on the parent. Every file a worker writes belongs to its own stage
and is written atomically (``scae_np._atomic``); ``metrics.jsonl``, ``results.*`` and
``config.json`` are written by the parent only.
"""
from __future__ import annotations

import json
import os
import socket
import time

try:
    import fcntl
except ImportError:          # not POSIX (Windows): no lock, a warning instead
    fcntl = None

LOCK_NAME = ".lock"


class FolderLocked(RuntimeError):
    """Another process holds the folder's lock; ``holder`` is what it wrote (pid, host,
    started, command), possibly empty."""

    def __init__(self, folder, holder):
        self.folder, self.holder = folder, holder
        pid = holder.get("pid", "unknown")
        since = holder.get("started")
        where = "" if holder.get("host") in (None, socket.gethostname()) else \
            f" on {holder['host']}"
        what = f"; its command: {holder['command']}" if holder.get("command") else ""
        super().__init__(
            f"{folder} is in use by another run (PID {pid}{where}"
            + (f", started {since}" if since else "") + f"{what}). Wait for it to finish or "
            f"stop it, or choose another --out")


class RunLock:
    """``with RunLock(folder, command):`` -- or ``acquire()`` / ``release()``."""

    def __init__(self, folder, command=None):
        self.folder = str(folder)
        self.path = os.path.join(self.folder, LOCK_NAME)
        self.command = command
        self._fd = None
        self.warning = None          # why no lock is held, where locking is not possible

    def acquire(self):
        """Take the lock or raise :class:`FolderLocked`. OSErrors of creating the lock file
        (a read-only folder, say) propagate."""
        if fcntl is None:
            self.warning = f"cannot lock {self.folder} on this system: make sure no other run uses it"
            return self
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise FolderLocked(self.folder, self.read_holder()) from None
        except OSError as e:       # a file system without flock (some network mounts)
            os.close(fd)
            self.warning = (f"cannot lock {self.folder} ({e.strerror}): make sure no other run "
                            f"uses it")
            return self
        self._fd = fd
        info = {"pid": os.getpid(), "host": socket.gethostname(),
                "started": time.strftime("%Y-%m-%d %H:%M:%S"), "command": self.command}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(info) + "\n").encode(), 0)
        return self

    def read_holder(self):
        """What the holder wrote into the lock file ({} if unreadable or half written)."""
        try:
            with open(self.path) as f:
                return json.loads(f.read() or "{}")
        except (OSError, ValueError):
            return {}

    @property
    def held(self):
        return self._fd is not None

    def release(self):
        if self._fd is not None:
            try:
                fcntl.flock(self._fd, fcntl.LOCK_UN)
            finally:
                os.close(self._fd)
                self._fd = None

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()

