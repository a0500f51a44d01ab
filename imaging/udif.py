"""UDIF (Apple Universal Disk Image Format, ``.dmg``) writer.

A UDIF file is a *data fork* of chunks followed by an XML property list and a 512-byte
``koly`` trailer. The plist's ``resource-fork/blkx`` array holds, per partition, a ``mish``
table mapping runs of 512-byte sectors to chunks (zero fill, raw, zlib, bzip2, LZFSE, LZMA/xz).
Checksums: the CRC-32 of the data fork (in ``koly``), the CRC-32 of each partition's
uncompressed sectors (in its ``mish``), and a master CRC-32 over the partition checksums
(in ``koly``). Layout facts from the public descriptions of the format: Jonathan Levin's
"Demystifying the DMG File Format", and the readers in 7-Zip (``DmgHandler.cpp``), dmg2img
and libdmg-hfsplus.

The writer streams: the volume arrives as an iterator of byte strings, ints (that many zero
bytes) and :class:`FileSpan` (a file read straight into the chunk buffers), is cut into 1 MiB
chunks that compress in parallel (threads for zlib, bzip2 and LZMA, which release the GIL;
processes for LZFSE, whose binding holds it) with a bounded number of chunks in flight, so
memory stays flat whatever the image size. zlib chunks are deflated by zlib-ng (level 6, as
hdiutil's default): standard zlib streams, about 1.8x less CPU than zlib 1.2 at the same
level for ~0.3 % more bytes.
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
from pathlib import Path
from typing import Any, BinaryIO

from zlib_ng import zlib_ng

from pool.errors import BusyError, UnsupportedError, UsageError

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


def compress_chunk(chunk_type: int, data: bytes | memoryview) -> bytes:
    """Compress one chunk with the codec of *chunk_type* (raw returns a copy of *data*)."""
    if chunk_type == CHUNK_ZLIB:
        return zlib_ng.compress(data, ZLIB_LEVEL)
    if chunk_type == CHUNK_BZIP2:
        return bz2.compress(data, 9)
    if chunk_type == CHUNK_LZMA:
        return lzma.compress(data, format=lzma.FORMAT_XZ, check=lzma.CHECK_CRC32)
    if chunk_type == CHUNK_LZFSE:
        import lzfse

        return bytes(lzfse.compress(bytes(data)))
    return bytes(data)


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


def plist_xml(
    partition_name: str, mish: bytes, *, descriptor: int, resources: dict[str, list[dict[str, Any]]] | None = None
) -> bytes:
    """The XML property list with one ``blkx`` resource (keys sorted, ``Name`` after ``Data``
    as dmg2img's text parser expects) plus *resources* (other resource types, e.g. a licence
    agreement's ``LPic``/``STR#``/``TEXT``, :mod:`imaging.udif_sla`)."""
    entry = {
        "Attributes": "0x0050",
        "CFName": partition_name,
        "Data": mish,
        "ID": str(descriptor),
        "Name": partition_name,
    }
    doc = {"resource-fork": {**(resources or {}), "blkx": [entry]}}
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


@dataclass(frozen=True)
class FileSpan:
    """A stream piece standing for the whole content of a file, *size* bytes long.

    :func:`write_udif` reads it straight into its chunk buffers (no intermediate copies) and
    checks that the file still has that size.

    Attributes:
        path: the file to read (str or Path).
        size: its size in bytes when the volume was planned.
        label: how errors name it (e.g. its path in the tree).
    """

    path: str | Path
    size: int
    label: str


Piece = bytes | int | FileSpan  #: bytes, a count of zero bytes, or a file's content


def piece_bytes(piece: Piece) -> bytes:
    """The bytes a stream piece stands for (reads a :class:`FileSpan` whole; small volumes and tests).

    Raises:
        BusyError: a file no longer has its planned size.
    """
    if isinstance(piece, int):
        return bytes(piece)
    if isinstance(piece, FileSpan):
        data = Path(piece.path).read_bytes()
        if len(data) != piece.size:
            raise BusyError(f"{piece.label} changed size while it was being imaged: rerun when it is not changing")
        return data
    return piece


_ZERO_CHUNK = bytes(CHUNK_BYTES)


def zero_crc32(n_bytes: int, crc: int = 0) -> int:
    """``zlib.crc32(bytes(n_bytes), crc)`` without the bytes (any size, O(log n)).

    Appending zeros multiplies the CRC register (the complemented CRC) by x^(8n) modulo the
    polynomial, which is what ``crc32_combine`` does to its first CRC (zlib ``crc32.c``).
    """
    return zlib_ng.crc32_combine(crc ^ 0xFFFFFFFF, 0, n_bytes) ^ 0xFFFFFFFF


def _encode(chunk_type: int, buf: bytearray, n_bytes: int) -> tuple[int, bytes, int, int]:
    """Encode the first *n_bytes* of *buf* (runs in a compression worker).

    Returns:
        (stored chunk type, payload, CRC-32 of the *n_bytes* raw bytes, CRC-32 of the payload).
        All-zero data is stored as a zero run (empty payload); data that does not shrink is
        stored raw.
    """
    data = memoryview(buf)[:n_bytes]
    raw_crc = zlib_ng.crc32(data)
    if buf == _ZERO_CHUNK if n_bytes == CHUNK_BYTES else data == _ZERO_CHUNK[:n_bytes]:
        return CHUNK_ZERO, b"", raw_crc, 0
    payload = compress_chunk(chunk_type, data) if chunk_type != CHUNK_RAW else b""
    if chunk_type == CHUNK_RAW or len(payload) >= n_bytes:
        chunk_type, payload = CHUNK_RAW, bytes(data)
    return chunk_type, payload, raw_crc, zlib_ng.crc32(payload)


def _executor(chunk_type: int, workers: int) -> cf.Executor:
    if chunk_type == CHUNK_LZFSE:
        try:
            import lzfse  # noqa: F401
        except ImportError:
            raise UnsupportedError("ULFO needs the LZFSE codec: pip install lzfse") from None
        return cf.ProcessPoolExecutor(max_workers=workers)
    return cf.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="udif")


class _Pipeline:
    """Cuts the disk into chunks in reused buffers, compresses them on a pool, writes in order.

    The main thread only fills buffers (``readinto`` for files) and writes finished payloads;
    CRC-32s are computed per chunk in the workers and joined with zlib-ng's ``crc32_combine``. At most
    *window* chunks are in flight (one buffer each), so memory stays flat.
    """

    def __init__(
        self, out: BinaryIO, ex: cf.Executor, chunk_type: int, window: int, progress: Callable[[int], None] | None
    ) -> None:
        self.out = out
        self.ex = ex
        self.chunk_type = chunk_type
        self.window = window
        self.progress = progress
        self.free: list[bytearray] = []  # buffers back from the workers (at most window + 1 exist)
        self.buf = bytearray(CHUNK_BYTES)
        self.view = memoryview(self.buf)
        self.pos = 0  # bytes filled in self.buf
        self.sector = 0  # disk sector where self.buf starts
        # (first sector, sectors, future or None for a zero run, buffer to give back)
        self.pending: collections.deque[
            tuple[int, int, cf.Future[tuple[int, bytes, int, int]] | None, bytearray | None]
        ]
        self.pending = collections.deque()
        self.runs: list[ChunkRun] = []
        self.counts: collections.Counter[str] = collections.Counter()
        self.offset = 0  # bytes written
        self.data_crc = 0
        self.part_crc = 0
        self.sha = hashlib.sha256()
        self.probe = bytearray(1)

    # -- filling --------------------------------------------------------------------------

    def put(self, piece: Piece) -> None:
        if isinstance(piece, int):
            self.put_zeros(piece)
        elif isinstance(piece, FileSpan):
            self.put_file(piece)
        else:
            self.put_bytes(piece)

    def put_bytes(self, piece: bytes) -> None:
        src = memoryview(piece)
        while src:
            take = min(len(src), CHUNK_BYTES - self.pos)
            self.view[self.pos : self.pos + take] = src[:take]
            self.pos += take
            src = src[take:]
            if self.pos == CHUNK_BYTES:
                self._submit()

    def put_zeros(self, n_bytes: int) -> None:
        if self.pos:  # complete the partial chunk with zeros first
            take = min(n_bytes, CHUNK_BYTES - self.pos)
            self.view[self.pos : self.pos + take] = _ZERO_CHUNK[:take]
            self.pos += take
            n_bytes -= take
            if self.pos < CHUNK_BYTES:
                return
            self._submit()
        whole = n_bytes - n_bytes % CHUNK_BYTES
        if whole:
            n_sectors = whole // SECTOR_BYTES
            self._queue(self.sector, n_sectors, None, None)
            self.sector += n_sectors
            if self.progress is not None:
                self.progress(whole)
        rest = n_bytes - whole
        self.view[:rest] = _ZERO_CHUNK[:rest]
        self.pos = rest

    def put_file(self, span: FileSpan) -> None:
        fd = os.open(span.path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        try:
            left = span.size
            while True:
                want = min(left, CHUNK_BYTES - self.pos)
                target = self.view[self.pos : self.pos + want]
                final = want == left  # the file's last bytes: read one more to see it did not grow
                got = os.readv(fd, [target, self.probe] if final else [target])
                if got > want:
                    raise BusyError(f"{span.label} grew while it was being imaged: rerun when it is not changing")
                if got == 0 and want:
                    raise BusyError(f"{span.label} shrank while it was being imaged: rerun when it is not changing")
                self.pos += got
                left -= got
                if self.pos == CHUNK_BYTES:
                    self._submit()
                if final and got == want:
                    return
        finally:
            os.close(fd)

    def finish(self) -> None:
        if self.pos % SECTOR_BYTES:
            raise UsageError(f"disk size is not a whole number of {SECTOR_BYTES}-byte sectors")
        if self.pos:
            self._submit()
        while self.pending:
            self._drain_one()

    # -- compressing and writing ----------------------------------------------------------

    def _submit(self) -> None:
        n_sectors = self.pos // SECTOR_BYTES
        fut = self.ex.submit(_encode, self.chunk_type, self.buf, self.pos)
        self._queue(self.sector, n_sectors, fut, self.buf)
        self.sector += n_sectors
        if self.progress is not None:
            self.progress(self.pos)
        if self.free:
            self.buf = self.free.pop()
        else:
            self.buf = bytearray(CHUNK_BYTES)
        self.view = memoryview(self.buf)
        self.pos = 0

    def _queue(
        self,
        first: int,
        n_sectors: int,
        fut: cf.Future[tuple[int, bytes, int, int]] | None,
        buf: bytearray | None,
    ) -> None:
        self.pending.append((first, n_sectors, fut, buf))
        while len(self.pending) > self.window:
            self._drain_one()

    def _drain_one(self) -> None:
        first, n_sectors, fut, buf = self.pending.popleft()
        n_bytes = n_sectors * SECTOR_BYTES
        if fut is None:
            self._zero_run(first, n_sectors)
            self.part_crc = zero_crc32(n_bytes, self.part_crc)
            return
        ctype, payload, raw_crc, payload_crc = fut.result()
        assert buf is not None
        self.free.append(buf)
        self.part_crc = zlib_ng.crc32_combine(self.part_crc, raw_crc, n_bytes)
        if ctype == CHUNK_ZERO:
            self._zero_run(first, n_sectors)
            return
        self.runs.append(ChunkRun(ctype, first, n_sectors, self.offset, len(payload)))
        self.counts[CHUNK_NAMES[ctype]] += 1
        self.data_crc = zlib_ng.crc32_combine(self.data_crc, payload_crc, len(payload))
        self.write(payload)

    def _zero_run(self, first: int, n_sectors: int) -> None:
        last = self.runs[-1] if self.runs else None
        if last is not None and last.chunk_type == CHUNK_ZERO and last.first_sector + last.sector_count == first:
            last.sector_count += n_sectors
        else:
            self.runs.append(ChunkRun(CHUNK_ZERO, first, n_sectors, self.offset, 0))
            self.counts["zero"] += 1

    def write(self, data: bytes) -> None:
        self.out.write(data)
        self.sha.update(data)
        self.offset += len(data)


def write_udif(
    out: BinaryIO,
    blocks: Iterable[Piece],
    *,
    fmt: str,
    partition_name: str,
    segment_id: bytes,
    workers: int | None = None,
    progress: Callable[[int], None] | None = None,
    resources: dict[str, list[dict[str, Any]]] | None = None,
) -> UdifResult:
    """Write a UDIF image of the disk whose bytes *blocks* yields, as one partition.

    Args:
        out: a binary file open for writing at offset 0.
        blocks: the disk's bytes in order: ``bytes`` pieces of any size, an ``int`` meaning
            that many zero bytes (free space, written as zero-fill runs without allocating),
            or a :class:`FileSpan` (a file's content, read here straight into the chunk
            buffers). The total must be a multiple of 512.
        fmt: ``UDZO`` (zlib), ``UDBZ`` (bzip2), ``ULFO`` (LZFSE), ``ULMO`` (LZMA/xz) or ``UDRO`` (raw).
        partition_name: the ``blkx`` entry's name, e.g. ``"disk image (Apple_HFS : 0)"``.
        segment_id: 16 bytes identifying the image (a UUID).
        workers: compressing threads/processes (default: the CPU count).
        progress: called with the number of disk bytes consumed after each chunk.
        resources: more ``resource-fork`` entries for the property list (type → list of
            ``{Attributes, Data, ID, Name}``), e.g. :func:`imaging.udif_sla.license_resources`.

    Returns:
        a :class:`UdifResult` (the SHA-256 covers the whole file, for the sidecar).

    Raises:
        UsageError: unknown format or a disk size that is not whole sectors.
        UnsupportedError: the codec for *fmt* is not installed.
        BusyError: a :class:`FileSpan`'s file changed size while it was read.
    """
    if fmt not in FORMATS:
        raise UsageError(f"unknown DMG format {fmt!r} (one of {', '.join(FORMATS)})")
    chunk_type = FORMATS[fmt]
    workers = workers or os.cpu_count() or 1
    with _executor(chunk_type, workers) as ex:
        pipe = _Pipeline(out, ex, chunk_type, 2 * workers + 2, progress)
        for piece in blocks:
            pipe.put(piece)
        pipe.finish()
    data_fork_bytes = pipe.offset
    res = UdifResult(
        sector_count=pipe.sector,
        data_fork_bytes=data_fork_bytes,
        file_bytes=0,
        data_crc32=pipe.data_crc,
        partition_crc32=pipe.part_crc,
        master_crc32=zlib.crc32(struct.pack(">I", pipe.part_crc)),
        chunk_counts=dict(pipe.counts),
    )
    mish = mish_table(pipe.runs, pipe.sector, pipe.part_crc, descriptor=0)
    xml = plist_xml(partition_name, mish, descriptor=0, resources=resources)
    pipe.write(xml)
    pipe.write(koly_trailer(res, data_fork_bytes, len(xml), segment_id))
    res.file_bytes = pipe.offset
    res.sha256 = pipe.sha.hexdigest()
    return res
