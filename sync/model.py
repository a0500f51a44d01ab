"""Plain data shared by the scanner, journal, planner and executor.

Paths inside a root (``rel``) are ``/``-separated and relative, spelled exactly as that side spells
them. Sides are numbered 1 (the first root, ``path1``) and 2 (``path2``). Two spellings name the
same file when their **key** is equal: the Unicode NFC form (UAX #15), case-folded as well when
either side is case-insensitive (:func:`key_of`).
"""

from __future__ import annotations

import marshal
import os
import unicodedata
from collections.abc import Iterable
from typing import NamedTuple
from zlib import crc32

import xxhash

FILE, DIR, LINK = "file", "dir", "link"
TEMP_PREFIX = ".dsync-tmp-"  #: temporary names of transfers in progress (never synced)
GROUP_BUCKETS = 4  #: print groups per folder (see group_of)
GROUP_MARK = "\x1f"  #: between a group's folder and its one-digit bucket (so the id is unambiguous)


def temp_name(tag: str = "") -> str:
    """A fresh temporary name (:data:`TEMP_PREFIX`, *tag*, 12 random hex digits)."""
    return f"{TEMP_PREFIX}{tag}{os.urandom(6).hex()}"


def key_of(rel: str, *, fold_case: bool) -> str:
    """The matching key of *rel*: NFC (UAX #15 canonical composition), case-folded if asked."""
    k = rel if rel.isascii() else unicodedata.normalize("NFC", rel)
    return k.casefold() if fold_case else k


def group_print(items: Iterable[tuple[object, ...]]) -> bytes:
    """The print of one group's entries (see :func:`group_of`): XXH3-128 (16 bytes) of their
    sorted ``(rel, kind, size, mtime_ns, mode, None, etag, target)`` tuples (the fields of an
    :class:`Entry` with no hash; folders with size and mtime 0: a folder's own mtime moves with
    every temporary name made in it), serialised by :func:`marshal.dumps` version 2, whose bytes
    depend only on the values (str, int, None; no back-references, which came with version 3).

    Equal prints of a group's scan and of its journal rows mean every entry there is exactly
    as the journal recorded it (see :mod:`sync.journal`, table ``group_prints``)."""
    return xxhash.xxh3_128_digest(marshal.dumps(sorted(items), 2))


def group_heads(folder: str) -> list[str]:
    """The ids of the :data:`GROUP_BUCKETS` groups of *folder*, indexed by :func:`name_bucket`."""
    return [f"{folder}{GROUP_MARK}{b}" for b in range(GROUP_BUCKETS)]


def name_bucket(name: str) -> int:
    """Which group of its folder *name* falls in: CRC-32 (ISO-HDLC, :func:`zlib.crc32`) of its
    UTF-8 bytes modulo :data:`GROUP_BUCKETS`. Defined for every str: lone surrogates (bytes
    that were not UTF-8) are encoded as they stand, though scans skip such names."""
    try:
        return crc32(name.encode()) % GROUP_BUCKETS
    except UnicodeEncodeError:
        return crc32(name.encode("utf-8", "surrogatepass")) % GROUP_BUCKETS


def group_of(key: str) -> str:
    """The print group of *key*: its folder and the bucket of its name (:func:`name_bucket`),
    spelled ``"<folder><GROUP_MARK><bucket>"``. Prints cover a group rather than a whole folder
    so that one changed file leaves the rest of its folder settled (see :mod:`sync.engine`)."""
    i = key.rfind("/")
    folder, name = (key[:i], key[i + 1 :]) if i >= 0 else ("", key)
    return f"{folder}{GROUP_MARK}{name_bucket(name)}"


def parent_of(rel: str) -> str:
    """``a/b/c`` → ``a/b``; a top-level name → ``""``."""
    i = rel.rfind("/")
    return rel[:i] if i >= 0 else ""


class Entry(NamedTuple):
    """One file, directory or symlink as a side shows it now (or did at the last sync).

    A named tuple: scans and journal loads make one per path, so it has to be cheap to build.

    Attributes:
        rel: path relative to the root, as this side spells it.
        kind: ``"file"``, ``"dir"`` or ``"link"``.
        size: bytes (0 for directories, the target's length for links).
        mtime_ns: modification time in ns since the epoch, at the side's precision.
        mode: permission bits (``0o7777`` part) where the side has them, else None.
        hash: XXH3-128 hex digest of the content (of the target for links) when known.
        etag: remote ETag / version id where the store has one, else None.
        target: symlink target (links only).
    """

    rel: str
    kind: str
    size: int = 0
    mtime_ns: int = 0
    mode: int | None = None
    hash: str | None = None
    etag: str | None = None
    target: str | None = None

    def with_hash(self, digest: str | None) -> Entry:
        return self._replace(hash=digest)

    def with_rel(self, rel: str) -> Entry:
        return self._replace(rel=rel)
