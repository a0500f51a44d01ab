"""UDIF (Apple Universal Disk Image Format, ``.dmg``) writer.

A UDIF file is a *data fork* of chunks followed by an XML property list and a 512-byte
``koly`` trailer. The plist's ``resource-fork/blkx`` array holds, per partition, a ``mish``
table mapping runs of 512-byte sectors to chunks (zero fill, raw, zlib, bzip2, LZFSE, LZMA/xz).
Checksums: the CRC-32 of the data fork (in ``koly``), the CRC-32 of each partition's
uncompressed sectors (in its ``mish``), and a master CRC-32 over the partition checksums
(in ``koly``). Layout facts from the public descriptions of the format: Jonathan Levin's
"Demystifying the DMG File Format", and the readers in 7-Zip (``DmgHandler.cpp``), dmg2img
and libdmg-hfsplus.

The writer streams: the volume arrives as an iterator of byte strings (or ints, meaning that
many zero bytes), is cut into 1 MiB chunks that compress in parallel (threads for zlib, bzip2
and LZMA, which release the GIL; processes for LZFSE, whose binding holds it) with a bounded
number of chunks in flight, so memory stays flat whatever the image size.
"""

from __future__ import annotations

import bz2
import collections
import concurrent.futures as cf
import hashlib
import lzma
import os
import plistlib
import struct
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import BinaryIO

from pool.errors import UnsupportedError, UsageError

SECTOR_BYTES = 512
CHUNK_SECTORS = 2048  #: 1 MiB of sectors per chunk (what hdiutil uses for UDZO)
CHUNK_BYTES = CHUNK_SECTORS * SECTOR_BYTES

KOLY_MAGIC = b"koly"
MISH_MAGIC = b"mish"
CHECKSUM_CRC32 = 2

# chunk ("block run") types of a mish table
CHUNK_ZERO = 0x00000000
CHUNK_RAW = 0x00000001
CHUNK_IGNORE = 0x00000002
CHUNK_ADC = 0x80000004
CHUNK_ZLIB = 0x80000005
CHUNK_BZIP2 = 0x80000006
CHUNK_LZFSE = 0x80000007
CHUNK_LZMA = 0x80000008  #: an xz stream (7-Zip names it XZ)
CHUNK_COMMENT = 0x7FFFFFFE
CHUNK_END = 0xFFFFFFFF

CHUNK_NAMES = {
    CHUNK_ZERO: "zero",
    CHUNK_RAW: "raw",
    CHUNK_IGNORE: "ignore",
    CHUNK_ADC: "adc",
    CHUNK_ZLIB: "zlib",
    CHUNK_BZIP2: "bzip2",
    CHUNK_LZFSE: "lzfse",
    CHUNK_LZMA: "lzma",
    CHUNK_COMMENT: "comment",
    CHUNK_END: "end",
}

#: image format → the chunk type its data chunks use
FORMATS = {"UDZO": CHUNK_ZLIB, "UDBZ": CHUNK_BZIP2, "ULFO": CHUNK_LZFSE, "ULMO": CHUNK_LZMA, "UDRO": CHUNK_RAW}

ZLIB_LEVEL = 6
KOLY = struct.Struct(">4sIIIQQQQQII16sII128sQQ120sII128sIQ12s")
MISH_HEADER = struct.Struct(">4sIQQQII24sII128sI")
MISH_CHUNK = struct.Struct(">IIQQQQ")
assert KOLY.size == 512 and MISH_HEADER.size == 204 and MISH_CHUNK.size == 40


def compress_chunk(chunk_type: int, data: bytes) -> bytes:
    """Compress one chunk with the codec of *chunk_type* (raw returns *data*)."""
    if chunk_type == CHUNK_ZLIB:
        return zlib.compress(data, ZLIB_LEVEL)
    if chunk_type == CHUNK_BZIP2:
        return bz2.compress(data, 9)
    if chunk_type == CHUNK_LZMA:
        return lzma.compress(data, format=lzma.FORMAT_XZ, check=lzma.CHECK_CRC32)
    if chunk_type == CHUNK_LZFSE:
        import lzfse

        return bytes(lzfse.compress(data))
    return data


def _encode(chunk_type: int, data: bytes) -> tuple[int, bytes]:
    """The (type, payload) stored for a chunk: raw when compressing does not make it smaller."""
    packed = compress_chunk(chunk_type, data)
    if chunk_type != CHUNK_RAW and len(packed) >= len(data):
        return CHUNK_RAW, data
    return chunk_type, packed


def checksum_field(crc: int) -> bytes:
    """A UDIF checksum's 128-byte value area holding one big-endian CRC-32."""
    return struct.pack(">I", crc) + bytes(124)


@dataclass
class ChunkRun:
    """One mish entry: *sector_count* sectors from *first_sector* (relative to the partition)."""

    chunk_type: int
    first_sector: int
    sector_count: int
    offset: int  #: byte offset of the payload in the file (0 for zero fill)
    length: int  #: payload bytes


@dataclass
class UdifResult:
    """What :func:`write_udif` wrote: sizes in bytes, checksums as CRC-32 integers."""

    sector_count: int
    data_fork_bytes: int
    file_bytes: int
    data_crc32: int
    partition_crc32: int
    master_crc32: int
    chunk_counts: dict[str, int] = field(default_factory=dict)
    sha256: str = ""


def mish_table(runs: list[ChunkRun], sector_count: int, crc: int, *, descriptor: int) -> bytes:
    """Serialise a ``mish`` block table for one partition starting at sector 0 of the disk."""
    entries = [*runs, ChunkRun(CHUNK_END, sector_count, 0, runs[-1].offset + runs[-1].length if runs else 0, 0)]
    buffers = max((r.sector_count for r in runs if r.chunk_type not in (CHUNK_ZERO, CHUNK_IGNORE)), default=0)
    head = MISH_HEADER.pack(
        MISH_MAGIC,
        1,
        0,
        sector_count,
        0,
        max(buffers, CHUNK_SECTORS) + 8,
        descriptor,
        bytes(24),
        CHECKSUM_CRC32,
        32,
        checksum_field(crc),
        len(entries),
    )
    body = b"".join(
        MISH_CHUNK.pack(r.chunk_type, 0, r.first_sector, r.sector_count, r.offset, r.length) for r in entries
    )
    return head + body


def plist_xml(partition_name: str, mish: bytes, *, descriptor: int) -> bytes:
    """The XML property list with one ``blkx`` resource (keys sorted, ``Name`` after ``Data``
    as dmg2img's text parser expects)."""
    entry = {
        "Attributes": "0x0050",
        "CFName": partition_name,
        "Data": mish,
        "ID": str(descriptor),
        "Name": partition_name,
    }
    doc = {"resource-fork": {"blkx": [entry]}}
    return plistlib.dumps(doc, fmt=plistlib.FMT_XML, sort_keys=True)


def koly_trailer(res: UdifResult, xml_offset: int, xml_length: int, segment_id: bytes) -> bytes:
    """The 512-byte ``koly`` trailer (version 4, flattened image, one segment)."""
    return KOLY.pack(
        KOLY_MAGIC,
        4,
        512,
        1,
        0,
        0,
        res.data_fork_bytes,
        0,
        0,
        1,
        1,
        segment_id,
        CHECKSUM_CRC32,
        32,
        checksum_field(res.data_crc32),
        xml_offset,
        xml_length,
        bytes(120),
        CHECKSUM_CRC32,
        32,
        checksum_field(res.master_crc32),
        1,
        res.sector_count,
        bytes(12),
    )


class _Sink:
    """Writes payloads in order, keeping the data-fork CRC-32, SHA-256 and offset."""

    def __init__(self, out: BinaryIO) -> None:
        self.out = out
        self.offset = 0
        self.crc = 0
        self.sha = hashlib.sha256()

    def write(self, data: bytes, *, in_data_fork: bool = True) -> None:
        self.out.write(data)
        if in_data_fork:
            self.crc = zlib.crc32(data, self.crc)
        self.sha.update(data)
        self.offset += len(data)


_ZERO_CHUNK = bytes(CHUNK_BYTES)


def zero_crc32(n_bytes: int, crc: int) -> int:
    """Extend CRC-32 *crc* over *n_bytes* zero bytes."""
    full, rest = divmod(n_bytes, CHUNK_BYTES)
    for _ in range(full):
        crc = zlib.crc32(_ZERO_CHUNK, crc)
    return zlib.crc32(_ZERO_CHUNK[:rest], crc)


def _executor(chunk_type: int, workers: int) -> cf.Executor:
    if chunk_type == CHUNK_LZFSE:
        try:
            import lzfse  # noqa: F401
        except ImportError:
            raise UnsupportedError("ULFO needs the LZFSE codec: pip install lzfse") from None
        return cf.ProcessPoolExecutor(max_workers=workers)
    return cf.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="udif")


def write_udif(
    out: BinaryIO,
    blocks: Iterable[bytes | int],
    *,
    fmt: str,
    partition_name: str,
    segment_id: bytes,
    workers: int | None = None,
    progress: Callable[[int], None] | None = None,
) -> UdifResult:
    """Write a UDIF image of the disk whose bytes *blocks* yields, as one partition.

    Args:
        out: a binary file open for writing at offset 0.
        blocks: the disk's bytes in order: ``bytes`` pieces of any size, or an ``int`` meaning
            that many zero bytes (free space, written as zero-fill runs without allocating).
            The total must be a multiple of 512.
        fmt: ``UDZO`` (zlib), ``UDBZ`` (bzip2), ``ULFO`` (LZFSE), ``ULMO`` (LZMA/xz) or ``UDRO`` (raw).
        partition_name: the ``blkx`` entry's name, e.g. ``"disk image (Apple_HFS : 0)"``.
        segment_id: 16 bytes identifying the image (a UUID).
        workers: compressing threads/processes (default: the CPU count).
        progress: called with the number of disk bytes consumed after each chunk.

    Returns:
        a :class:`UdifResult` (the SHA-256 covers the whole file, for the sidecar).

    Raises:
        UsageError: unknown format or a disk size that is not whole sectors.
        UnsupportedError: the codec for *fmt* is not installed.
    """
    if fmt not in FORMATS:
        raise UsageError(f"unknown DMG format {fmt!r} (one of {', '.join(FORMATS)})")
    chunk_type = FORMATS[fmt]
    workers = workers or os.cpu_count() or 1
    sink = _Sink(out)
    runs: list[ChunkRun] = []
    counts: collections.Counter[str] = collections.Counter()
    part_crc = 0
    sector = 0
    pending: collections.deque[tuple[int, int, cf.Future[tuple[int, bytes]]]] = collections.deque()
    max_pending = 2 * workers + 2

    def drain(limit: int) -> None:
        while len(pending) > limit:
            first, count, fut = pending.popleft()
            ctype, payload = fut.result()
            runs.append(ChunkRun(ctype, first, count, sink.offset, len(payload)))
            counts[CHUNK_NAMES[ctype]] += 1
            sink.write(payload)

    def add_zero_run(n_sectors: int) -> None:
        nonlocal sector
        drain(0)
        last = runs[-1] if runs else None
        if last is not None and last.chunk_type == CHUNK_ZERO and last.first_sector + last.sector_count == sector:
            last.sector_count += n_sectors
        else:
            runs.append(ChunkRun(CHUNK_ZERO, sector, n_sectors, sink.offset, 0))
            counts["zero"] += 1
        sector += n_sectors

    def add_chunk(data: bytes, ex: cf.Executor) -> None:
        nonlocal part_crc, sector
        n_sectors = len(data) // SECTOR_BYTES
        part_crc = zlib.crc32(data, part_crc)
        if data == (_ZERO_CHUNK if len(data) == CHUNK_BYTES else bytes(len(data))):
            add_zero_run(n_sectors)
        else:
            pending.append((sector, n_sectors, ex.submit(_encode, chunk_type, data)))
            sector += n_sectors
            drain(max_pending)
        if progress is not None:
            progress(len(data))

    buf = bytearray()
    with _executor(chunk_type, workers) as ex:
        for piece in blocks:
            if isinstance(piece, int):
                n = piece
                if buf:  # complete the partial chunk with zeros first
                    take = min(n, CHUNK_BYTES - len(buf))
                    buf += _ZERO_CHUNK[:take]
                    n -= take
                    if len(buf) == CHUNK_BYTES:
                        add_chunk(bytes(buf), ex)
                        buf.clear()
                whole = n - n % CHUNK_BYTES
                if whole:
                    add_zero_run(whole // SECTOR_BYTES)
                    part_crc = zero_crc32(whole, part_crc)
                    if progress is not None:
                        progress(whole)
                buf += _ZERO_CHUNK[: n - whole]
                continue
            buf += piece
            while len(buf) >= CHUNK_BYTES:
                add_chunk(bytes(buf[:CHUNK_BYTES]), ex)
                del buf[:CHUNK_BYTES]
        if len(buf) % SECTOR_BYTES:
            raise UsageError(f"disk size is not a whole number of {SECTOR_BYTES}-byte sectors")
        if buf:
            add_chunk(bytes(buf), ex)
        drain(0)

    data_fork_bytes = sink.offset
    res = UdifResult(
        sector_count=sector,
        data_fork_bytes=data_fork_bytes,
        file_bytes=0,
        data_crc32=sink.crc,
        partition_crc32=part_crc,
        master_crc32=zlib.crc32(struct.pack(">I", part_crc)),
        chunk_counts=dict(counts),
    )
    xml = plist_xml(partition_name, mish_table(runs, sector, part_crc, descriptor=0), descriptor=0)
    sink.write(xml, in_data_fork=False)
    sink.write(koly_trailer(res, data_fork_bytes, len(xml), segment_id), in_data_fork=False)
    res.file_bytes = sink.offset
    res.sha256 = sink.sha.hexdigest()
    return res
