"""Copying one file between two local folders: the executor's path for local <-> local pairs.

A copy reads the source once, hashing the bytes as they pass (XXH3-128), writes them to a
temporary name beside the destination (:data:`sync.model.TEMP_PREFIX`, so a killed copy never
shows under the real name and the next run removes it), reads the written copy back and compares
its XXH3-128 with the source's, sets the permission bits and the mtime, and renames it into place.
The source is ``fstat``-ed before and after the read: a source that changed meanwhile is reported,
not hidden. A verification mismatch is retried (:data:`VERIFY_ATTEMPTS`), like the transfers of
:mod:`pool.transfers`; other errors propagate at once (a local disk error is not transient).

No ``fsync`` per file (as with ``cp``, rclone and unison): the kernel writes the copies back.
"""

from __future__ import annotations

import errno
import os
import stat
import time
from collections.abc import Callable
from typing import NamedTuple

import xxhash

from pool.errors import IntegrityError
from pool.hashing import CHUNK_BYTES

from .model import FILE, Entry, temp_name

VERIFY_ATTEMPTS = 3
_O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)


class LocalCopyResult(NamedTuple):
    """What :func:`copy_local` did.

    Attributes:
        digest: XXH3-128 hex of the bytes copied (read back from the destination and equal).
        after: the destination as written (rel, size, mtime_ns, mode).
        source_changed: the source's size or mtime differed from *expected*, or changed while
            it was read (the copy holds what was read; the caller leaves the rest to the next run).
        attempts: copies made (more than 1 after a verification mismatch).
        started_ns, finished_ns: wall-clock ns since the epoch.
    """

    digest: str
    after: Entry
    source_changed: bool
    attempts: int
    started_ns: int
    finished_ns: int


def _write_all(fd: int, data: bytes | memoryview) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def _read_back(fd: int, size: int) -> str:
    h, off = xxhash.xxh3_128(), 0
    while off < size and (chunk := os.pread(fd, min(CHUNK_BYTES, size - off), off)):
        h.update(chunk)
        off += len(chunk)
    if off != size or os.pread(fd, 1, off):
        raise IntegrityError(f"the copy reads back as a different length than the {size} bytes written")
    return h.hexdigest()


def _copy_once(
    src_path: str, tmp: str, expected: Entry, take: Callable[[int], None] | None, chunk: int
) -> tuple[str, os.stat_result, bool]:
    """Copy to *tmp* (created here). Returns ``(digest, destination fstat, source changed)``."""
    fin = os.open(src_path, os.O_RDONLY | _O_CLOEXEC)
    try:
        before = os.fstat(fin)
        if not stat.S_ISREG(before.st_mode):
            raise IsADirectoryError(errno.EISDIR, "not a regular file any more", src_path)
        fout = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | _O_CLOEXEC, 0o600)
        try:
            h, done = xxhash.xxh3_128(), 0
            while data := os.read(fin, chunk):
                if take is not None:
                    take(len(data))
                h.update(data)
                _write_all(fout, data)
                done += len(data)
            digest = h.hexdigest()
            if _read_back(fout, done) != digest:
                raise IntegrityError("the copy reads back with another XXH3-128 than the bytes written")
            os.fchmod(fout, stat.S_IMODE(before.st_mode))
            os.utime(fout, ns=(before.st_mtime_ns, before.st_mtime_ns))
            written = os.fstat(fout)
        finally:
            os.close(fout)
        after = os.fstat(fin)
    finally:
        os.close(fin)
    changed = (
        (before.st_size, before.st_mtime_ns) != (after.st_size, after.st_mtime_ns)
        or done != before.st_size
        or (before.st_size, before.st_mtime_ns) != (expected.size, expected.mtime_ns)
    )
    return digest, written, changed


def copy_local(
    src_path: str,
    dst_path: str,
    dst_rel: str,
    expected: Entry,
    *,
    take: Callable[[int], None] | None = None,
    chunk_bytes: int = CHUNK_BYTES,
) -> LocalCopyResult:
    """Copy local file *src_path* to *dst_path* (parent folders must exist), keeping mode and mtime.

    Args:
        dst_rel: the destination's rel (for the returned entry).
        expected: the source as scanned (size, mtime_ns) to tell whether it changed since.
        take: bandwidth limit: called with each chunk's size before it is written.
        chunk_bytes: read size.

    Returns:
        A :class:`LocalCopyResult`.

    Raises:
        OSError: reading, writing or renaming failed (the temporary file is removed).
        IntegrityError: the written copy read back differently :data:`VERIFY_ATTEMPTS` times.
    """
    started = time.time_ns()
    head = dst_path.rpartition("/")[0]
    attempt = 1
    while True:
        tmp = f"{head}/{temp_name()}"
        try:
            digest, st, changed = _copy_once(src_path, tmp, expected, take, chunk_bytes)
            os.rename(tmp, dst_path)
            break
        except BaseException as e:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            if not isinstance(e, IntegrityError) or attempt >= VERIFY_ATTEMPTS:
                raise
            attempt += 1
    after = Entry(dst_rel, FILE, st.st_size, st.st_mtime_ns, stat.S_IMODE(st.st_mode))
    return LocalCopyResult(digest, after, changed, attempt, started, time.time_ns())
