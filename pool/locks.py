"""The pool's object lock: serialises the last step of every change to stored objects.

Uploads, re-keys, tier moves and trash deletion each end with "change the backend, then
commit the catalog". Two processes (a mount and a CLI command) doing that on the same key at
once could delete what the other just wrote, so that step runs under this lock: a
``threading.RLock`` for threads of one process plus ``flock(2)`` on ``<home>/objects.lock``
for other processes. It is reentrant within a thread. Hold it only around quick steps (a
rename, a delete, a commit).
"""

from __future__ import annotations

import fcntl
import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path


class ObjectLock:
    """The lock. *before_acquire* (if set) runs before every outermost acquisition: the mount
    commits its open catalog group there, so that nobody holds the catalog's write lock
    while waiting for this one (the order is always this lock, then the catalog)."""

    def __init__(self, home: Path) -> None:
        self.path = home / "objects.lock"
        self._thread_lock = threading.RLock()
        self._fd: int | None = None
        self._depth = 0
        self.before_acquire: Callable[[], None] | None = None

    @contextmanager
    def held(self) -> Iterator[None]:
        if self._depth == 0 and self.before_acquire is not None:
            self.before_acquire()
        with self._thread_lock:
            if self._fd is None:
                self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
            if self._depth == 0:
                fcntl.flock(self._fd, fcntl.LOCK_EX)
            self._depth += 1
            try:
                yield
            finally:
                self._depth -= 1
                if self._depth == 0:
                    fcntl.flock(self._fd, fcntl.LOCK_UN)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
