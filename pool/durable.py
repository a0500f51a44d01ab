"""Making what was written to a local filesystem durable, once for many files.

``syncfs(2)`` (Linux) flushes every dirty page and the journal of the filesystem holding a
path: one call makes a batch of new files and their renames durable, where an ``fsync(2)`` per
file costs a disk flush each. Python's :mod:`os` has no ``syncfs``, so it is called through
ctypes; where libc lacks it, :func:`os.sync` (every filesystem) is the fallback.
"""

from __future__ import annotations

import functools
import os
from typing import Any


@functools.cache
def _libc() -> Any:
    import ctypes  # here: most commands never flush

    return ctypes.CDLL(None, use_errno=True)  # this process's own symbols, libc's among them


def boot_id() -> str:
    """This boot's identifier (Linux ``/proc/sys/kernel/random/boot_id``), ``""`` where there is
    none. Two equal values mean no reboot (and so no power cut) happened in between: what a
    killed process wrote is still in the page cache, complete."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip()
    except OSError:
        return ""


def sync_filesystem(path: str | os.PathLike[str]) -> None:
    """Make everything written so far on the filesystem holding *path* durable.

    Raises:
        OSError: *path* cannot be opened.
    """
    fd = os.open(path, os.O_RDONLY)
    try:
        syncfs = getattr(_libc(), "syncfs", None)
        if syncfs is not None and syncfs(fd) == 0:
            return
        os.sync()
    finally:
        os.close(fd)
