"""Content hashing: XXH3-128 (xxhash), streamed in fixed-size chunks.

XXH3 is specified at https://github.com/Cyan4973/xxHash/blob/dev/doc/xxhash_spec.md; digests are
stored and compared as 32-character lowercase hex strings.
"""

from __future__ import annotations

import os
from typing import BinaryIO

import xxhash

CHUNK_BYTES = 1 << 20


def new_hasher() -> xxhash.xxh3_128:
    return xxhash.xxh3_128()


def hash_stream(f: BinaryIO) -> tuple[str, int]:
    """XXH3-128 of everything left in *f*: ``(hex digest, bytes read)``."""
    h, n = xxhash.xxh3_128(), 0
    while chunk := f.read(CHUNK_BYTES):
        h.update(chunk)
        n += len(chunk)
    return h.hexdigest(), n


def hash_fd(fd: int) -> tuple[str, int]:
    """XXH3-128 of a whole open file descriptor, read with pread: ``(hex digest, bytes)``."""
    h, off = xxhash.xxh3_128(), 0
    while chunk := os.pread(fd, CHUNK_BYTES, off):
        h.update(chunk)
        off += len(chunk)
    return h.hexdigest(), off
