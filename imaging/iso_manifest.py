"""The per-file digest manifest an ISO written by darkstorage carries after its volume.

Layout (our own, outside every ISO 9660/Joliet/UDF directory tree, so other readers ignore it):
after the last block of the volume comes one 2048-byte header block
``DARKSTORAGE-ISO-MANIFEST 2\\n<body bytes> <body sha256>\\n`` zero-padded, then the body, one line
per file ``<digest hex>  <path>\\n`` (GNU coreutils escaping of ``\\`` and newlines in names),
zero-padded to a block. Version 2 digests are XXH3-128 (32 hex digits: they only have to name
the file whose bytes went bad; the image as a whole has its SHA-256 sidecar), version 1
(written before) SHA-256 (64 hex digits, ``sha256sum`` format); :func:`read_manifest` reads both.
The Application Use field of the Primary Volume Descriptor (ECMA-119 8.4.32, free for
applications) holds ``DARKSTORAGE-MANIFEST <header block number>``; the volume space size then
covers the manifest too, so tools see no data after the volume. ``iso verify`` uses it to name
the file whose bytes went bad.
"""

from __future__ import annotations

import hashlib
import os
import struct
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import xxhash

BLOCK = 2048
MAGIC = b"DARKSTORAGE-ISO-MANIFEST 2\n"
_MAGIC_V1 = b"DARKSTORAGE-ISO-MANIFEST 1\n"  # SHA-256 digests
_DIGEST_HEX = {MAGIC: 32, _MAGIC_V1: 64}
_READ_BYTES = 1 << 20
_PASS_BYTES = 4 << 20


def _escape(rel: str) -> tuple[bytes, bool]:
    raw = rel.encode("utf-8", "surrogateescape")
    if b"\\" in raw or b"\n" in raw:
        return raw.replace(b"\\", b"\\\\").replace(b"\n", b"\\n"), True
    return raw, False


def _unescape(raw: bytes) -> str:
    out = bytearray()
    i = 0
    while i < len(raw):
        if raw[i : i + 1] == b"\\" and i + 1 < len(raw):
            out += b"\n" if raw[i + 1 : i + 2] == b"n" else raw[i + 1 : i + 2]
            i += 2
        else:
            out += raw[i : i + 1]
            i += 1
    return out.decode("utf-8", "surrogateescape")


def _line(digest: str, rel: str) -> bytes:
    name, escaped = _escape(rel)
    return (b"\\" if escaped else b"") + digest.encode() + b"  " + name + b"\n"


def _round(n: int) -> int:
    return -(-n // BLOCK) * BLOCK


def manifest_size(layout: Any) -> int:
    """Bytes the manifest of *layout* takes after the volume (header block + padded body)."""
    body = sum(len(_line("0" * 32, rel)) for rel in layout.sources)
    return BLOCK + _round(body)


def digest_image(
    fd: int,
    layout: Any,
    volume_bytes: int,
    *,
    progress: Callable[[int], None] | None = None,
    ready: Callable[[int], None] | None = None,
) -> tuple[Any, dict[str, str]]:
    """Hash the volume ``[0, volume_bytes)`` of the image open at *fd* in one sequential pass.

    *ready(offset)*, when given, is called before bytes up to *offset* are read and returns once
    they are written (so the pass can follow a writer that is still filling the image).

    Returns:
        (a hashlib SHA-256 object fed with the volume, so the caller can add the tail;
        tree-relative path → XXH3-128 hex of that file's data as written in the image).
    """
    image = hashlib.sha256()
    buf = bytearray(_READ_BYTES)
    view = memoryview(buf)
    # the image digest runs on a second thread (hashlib releases the GIL for big buffers), beside
    # the per-file XXH3 digests; two buffers let a read and both hashes overlap
    pass_bufs = [memoryview(bytearray(_PASS_BYTES)) for _ in range(2)]
    pending: list[Future[None] | None] = [None, None]
    by_inode: dict[int, list[str]] = {}
    spans: list[tuple[int, int, int]] = []
    digests: dict[str, str] = {}
    empty = xxhash.xxh3_128_hexdigest(b"")
    for rel in layout.sources:
        ext = layout.files.get(rel)
        if ext is None or ext.length == 0:  # no extent at all
            digests[rel] = empty
            continue
        if id(ext) not in by_inode:
            by_inode[id(ext)] = []
            spans.append((ext.block * BLOCK, ext.length, id(ext)))
        by_inode[id(ext)].append(rel)
    spans.sort()
    ordered: list[tuple[int, int, int]] = []  # extents in image order, none overlapping
    solo: list[tuple[int, int, int]] = []  # overlapping extents (not written by us): hashed on their own
    cursor = 0
    for span in spans:
        if span[0] < cursor:
            solo.append(span)
        else:
            ordered.append(span)
            cursor = span[0] + span[1]
    hashes: dict[int, Any] = {}
    # one read per 4 MiB of image; each file's hash takes its slices of the chunks its extent spans
    nxt = 0  # next extent of `ordered` not started yet
    cur: tuple[int, int, int] | None = None
    cur_hash: Any = None
    pos = 0
    k = 0
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="iso-image-digest") as pool:
        while pos < volume_bytes:
            want = min(_PASS_BYTES, volume_bytes - pos)
            if ready is not None:
                ready(pos + want)
            previous = pending[k]
            if previous is not None:
                previous.result()  # this buffer's bytes are in the image digest: reuse it
            n = os.preadv(fd, [pass_bufs[k][:want]], pos)
            if n == 0:
                raise OSError(f"image ended at byte {pos}, expected {volume_bytes}")
            chunk = pass_bufs[k][:n]
            pending[k] = pool.submit(image.update, chunk)
            end = pos + n
            while cur is not None or (nxt < len(ordered) and ordered[nxt][0] < end):
                if cur is None:
                    cur = ordered[nxt]
                    nxt += 1
                    cur_hash = hashes[cur[2]] = xxhash.xxh3_128()
                stop = cur[0] + cur[1]
                cur_hash.update(chunk[max(cur[0], pos) - pos : min(stop, end) - pos])
                if stop > end:
                    break
                cur = None
            pos = end
            k ^= 1
            if progress is not None:
                progress(n)
        for fut in pending:
            if fut is not None:
                fut.result()
    for start, length, key in solo:
        h = hashes[key] = xxhash.xxh3_128()
        done = 0
        while done < length:
            n = os.preadv(fd, [view[: min(_READ_BYTES, length - done)]], start + done)
            if n == 0:
                raise OSError(f"image ended at byte {start + done}, expected {start + length}")
            h.update(view[:n])
            done += n
    if cur is not None or nxt < len(ordered):
        raise OSError(f"a file extent ends after the volume ({volume_bytes} bytes)")
    for key, rels in by_inode.items():
        hexdigest = hashes[key].hexdigest()
        for rel in rels:
            digests[rel] = hexdigest
    return image, digests


def write_manifest(fd: int, layout: Any, digests: dict[str, str], volume_bytes: int) -> bytes:
    """Write the manifest at *volume_bytes*; returns the bytes written (header + padded body)."""
    body = b"".join(_line(digests[rel], rel) for rel in layout.sources)
    header = MAGIC + f"{len(body)} {hashlib.sha256(body).hexdigest()}\n".encode()
    data = header.ljust(BLOCK, b"\0") + body.ljust(_round(len(body)), b"\0")
    os.pwrite(fd, data, volume_bytes)
    return data


LOCATOR = b"DARKSTORAGE-MANIFEST "
_APP_USE_OFFSET = 883  # ECMA-119 8.4.32: 512 bytes of Application Use in the PVD


def write_locator(fd: int, header_block: int) -> None:
    """Record where the manifest header is in the PVD's Application Use field."""
    os.pwrite(fd, (LOCATOR + str(header_block).encode()).ljust(512, b" "), 16 * BLOCK + _APP_USE_OFFSET)


def manifest_offset(fd: int) -> int:
    """Byte offset of the manifest header named by the PVD locator; 0 when there is none."""
    pvd = os.pread(fd, BLOCK, 16 * BLOCK)
    if len(pvd) < BLOCK or pvd[1:6] != b"CD001":
        return 0
    field = pvd[_APP_USE_OFFSET : _APP_USE_OFFSET + 512]
    if not field.startswith(LOCATOR):
        return 0
    try:
        return int(field[len(LOCATOR) :].split()[0]) * BLOCK
    except (ValueError, IndexError):
        return 0


def set_volume_blocks(fd: int, blocks: int) -> None:
    """Set the volume space size (ECMA-119 8.4.8, both-endian) in the PVD and every SVD."""
    lba = 16
    while True:
        vd = os.pread(fd, 8, lba * BLOCK)
        if len(vd) < 6 or vd[1:6] != b"CD001" or vd[0] == 255:
            return
        if vd[0] in (1, 2):
            os.pwrite(fd, struct.pack("<I", blocks) + struct.pack(">I", blocks), lba * BLOCK + 80)
        lba += 1


def read_manifest(fd: int) -> dict[str, str] | None:
    """The manifest of the image at *fd* as path → digest hex (XXH3-128, or SHA-256 in version 1
    manifests: see :func:`file_hasher`); None when the image has none.

    Raises:
        ValueError: a manifest header is there but its body does not match its digest.
    """
    start = manifest_offset(fd)
    header = os.pread(fd, BLOCK, start) if start else b""
    magic = header[: len(MAGIC)]
    width = _DIGEST_HEX.get(magic)
    if width is None:
        return None
    fields = header[len(magic) :].split(b"\n", 1)[0].split()
    length, expected = int(fields[0]), fields[1].decode()
    body = os.pread(fd, length, start + BLOCK)
    if hashlib.sha256(body).hexdigest() != expected:
        raise ValueError("the per-file manifest after the volume is damaged")
    out: dict[str, str] = {}
    for line in body.splitlines():
        escaped = line.startswith(b"\\")
        if escaped:
            line = line[1:]
        digest, name = line[:width].decode(), line[width + 2 :]
        out[_unescape(name) if escaped else name.decode("utf-8", "surrogateescape")] = digest
    return out


def file_hasher(digest: str) -> Any:
    """A fresh hash object of the algorithm a manifest *digest* was made with (by its length):
    XXH3-128 for 32 hex digits, SHA-256 for 64."""
    return xxhash.xxh3_128() if len(digest) == 32 else hashlib.sha256()
