"""UDIF (``.dmg``) reader: random access to the disk inside, and full verification.

Parses the ``koly`` trailer, the XML property list and each ``blkx`` resource's ``mish``
table (facts from the sources listed in :mod:`imaging.udif`). Reads decompress only the chunks
they touch (a small LRU cache, thread-safe: FUSE reads come from worker threads).
:meth:`UdifImage.verify` checks every checksum the format has and names the bad chunk.
"""

from __future__ import annotations

import bisect
import bz2
import collections
import concurrent.futures as cf
import lzma
import os
import plistlib
import struct
import threading
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, cast

from zlib_ng import zlib_ng

from pool.errors import ImageCorruptError, NotFoundError, UnsupportedError

from .udif import (
    CHECKSUM_CRC32,
    CHUNK_BZIP2,
    CHUNK_COMMENT,
    CHUNK_END,
    CHUNK_IGNORE,
    CHUNK_LZFSE,
    CHUNK_LZMA,
    CHUNK_NAMES,
    CHUNK_RAW,
    CHUNK_ZERO,
    CHUNK_ZLIB,
    KOLY,
    KOLY_MAGIC,
    MISH_CHUNK,
    MISH_HEADER,
    MISH_MAGIC,
    SECTOR_BYTES,
    ChunkRun,
    zero_crc32,
)

_CACHE_CHUNKS = 32
_ZLIB_NG_ERROR = cast("type[Exception]", zlib_ng.error)  # its stub declares an instance, not the class
_ZERO_TYPES = (CHUNK_ZERO, CHUNK_IGNORE)


@dataclass
class Partition:
    """One ``blkx`` entry: a run of the disk's sectors and the chunks that hold them."""

    index: int
    name: str
    first_sector: int
    sector_count: int
    crc32: int | None  #: CRC-32 of the uncompressed sectors, None when not CRC-32
    runs: list[ChunkRun] = field(default_factory=list)


def decompress_chunk(run: ChunkRun, payload: bytes, where: str) -> bytes:
    """Decode one chunk's payload into ``run.sector_count * 512`` bytes.

    Raises:
        ImageCorruptError: the payload does not decode, or decodes to the wrong size (*where*
            names the chunk in the message).
        UnsupportedError: ADC or an unknown chunk type.
    """
    want = run.sector_count * SECTOR_BYTES
    ctype = run.chunk_type
    try:
        if ctype in _ZERO_TYPES:
            return bytes(want)
        if ctype == CHUNK_RAW:
            data = payload
        elif ctype == CHUNK_ZLIB:
            data = zlib_ng.decompress(payload)
        elif ctype == CHUNK_BZIP2:
            data = bz2.decompress(payload)
        elif ctype == CHUNK_LZMA:
            data = lzma.decompress(payload)
        elif ctype == CHUNK_LZFSE:
            import lzfse

            data = bytes(lzfse.decompress(payload))
        else:
            raise UnsupportedError(f"{where}: chunk type {CHUNK_NAMES.get(ctype, hex(ctype))} is not supported")
    except (_ZLIB_NG_ERROR, zlib.error, OSError, lzma.LZMAError, ValueError, EOFError) as e:
        raise ImageCorruptError(f"{where}: {CHUNK_NAMES[ctype]} data does not decode ({e})") from None
    except Exception as e:  # the lzfse binding raises its own error type
        if type(e).__module__.startswith("lzfse"):
            raise ImageCorruptError(f"{where}: lzfse data does not decode ({e})") from None
        raise
    if len(data) != want:
        raise ImageCorruptError(f"{where}: decodes to {len(data)} bytes, expected {want}")
    return data


def _parse_mish(raw: bytes, where: str) -> tuple[int, int, int | None, list[ChunkRun]]:
    if len(raw) < MISH_HEADER.size:
        raise ImageCorruptError(f"{where}: mish table truncated")
    (magic, version, first, count, _data_off, _bufs, _desc, _r, ck_type, ck_bits, ck_data, n_runs) = (
        MISH_HEADER.unpack_from(raw)
    )
    if magic != MISH_MAGIC or version != 1:
        raise ImageCorruptError(f"{where}: bad mish signature")
    if len(raw) != MISH_HEADER.size + n_runs * MISH_CHUNK.size:
        raise ImageCorruptError(f"{where}: mish table length does not match its {n_runs} runs")
    runs: list[ChunkRun] = []
    expect = 0
    for i in range(n_runs):
        ctype, _c, rfirst, rcount, off, length = MISH_CHUNK.unpack_from(raw, MISH_HEADER.size + i * MISH_CHUNK.size)
        if ctype == CHUNK_END:
            break
        if ctype == CHUNK_COMMENT or rcount == 0:
            continue
        if rfirst != expect:
            raise ImageCorruptError(f"{where} run {i}: sectors not contiguous (starts at {rfirst}, expected {expect})")
        runs.append(ChunkRun(ctype, rfirst, rcount, off, length))
        expect += rcount
    if expect != count:
        raise ImageCorruptError(f"{where}: runs cover {expect} sectors, table says {count}")
    crc = struct.unpack_from(">I", ck_data)[0] if ck_type == CHECKSUM_CRC32 and ck_bits == 32 else None
    return first, count, crc, runs


class Source(Protocol):
    """Where the UDIF file's bytes come from: the file itself, or the plaintext of an encrypted
    image (:class:`imaging.dmg_crypt.EncryptedFile`)."""

    size_bytes: int

    def pread(self, size: int, offset: int) -> bytes: ...

    def close(self) -> None: ...


def open_image(path: Path) -> int:
    """A read-only descriptor of the image file at *path*.

    Raises:
        NotFoundError: no such file.
    """
    try:
        return os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        raise NotFoundError(f"no such image: {path}") from None


class _PlainFile:
    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.size_bytes = os.fstat(fd).st_size

    def pread(self, size: int, offset: int) -> bytes:
        return os.pread(self.fd, size, offset)

    def close(self) -> None:
        os.close(self.fd)


class UdifImage:
    """An open ``.dmg``: its partitions, a ``read`` of the whole disk, and ``verify``.

    Raises (from the constructor):
        NotFoundError: no such file.
        ImageCorruptError: not a UDIF image, or its trailer or plist is damaged.
    """

    def __init__(self, path: Path, *, source: Source | None = None) -> None:
        self.path = Path(path)
        self.source = source or _PlainFile(open_image(self.path))
        try:
            self._parse()
        except BaseException:
            self.source.close()
            raise
        self._lock = threading.Lock()
        self._cache: collections.OrderedDict[int, bytes] = collections.OrderedDict()

    def _parse(self) -> None:
        self.file_bytes = self.source.size_bytes
        if self.file_bytes < 512:
            raise ImageCorruptError(f"{self.path.name}: too small to be a DMG")
        tail = self.source.pread(512, self.file_bytes - 512)
        f = KOLY.unpack(tail)
        if f[0] != KOLY_MAGIC:
            raise ImageCorruptError(f"{self.path.name}: no koly trailer (not a UDIF image)")
        (
            _m,
            self.version,
            _hs,
            _flags,
            _running,
            self.data_fork_offset,
            self.data_fork_bytes,
            _ro,
            _rl,
            _sn,
            _sc,
            self.segment_id,
            dtype,
            dbits,
            dck,
            self.xml_offset,
            self.xml_bytes,
            _r1,
            mtype,
            mbits,
            mck,
            _variant,
            self.sector_count,
            _r2,
        ) = f
        self.data_crc32 = struct.unpack_from(">I", dck)[0] if dtype == CHECKSUM_CRC32 and dbits == 32 else None
        self.master_crc32 = struct.unpack_from(">I", mck)[0] if mtype == CHECKSUM_CRC32 and mbits == 32 else None
        end = self.file_bytes - 512
        if self.data_fork_offset + self.data_fork_bytes > end or self.xml_offset + self.xml_bytes > end:
            raise ImageCorruptError(f"{self.path.name}: koly trailer points past the end of the file")
        if not self.xml_bytes:
            raise ImageCorruptError(f"{self.path.name}: no XML property list (old resource-fork images unsupported)")
        try:
            doc = plistlib.loads(self.source.pread(self.xml_bytes, self.xml_offset))
            blkx = doc["resource-fork"]["blkx"]
            self.resources: dict[str, Any] = {k: v for k, v in doc["resource-fork"].items() if k != "blkx"}
        except Exception as e:
            raise ImageCorruptError(f"{self.path.name}: property list unreadable ({type(e).__name__})") from None
        self.partitions: list[Partition] = []
        sector = 0
        for i, entry in enumerate(blkx):
            name = str(entry.get("Name") or entry.get("CFName") or f"partition {i}")
            first, count, crc, runs = _parse_mish(bytes(entry.get("Data", b"")), f"blkx {i} ({name})")
            if first != sector:
                raise ImageCorruptError(f"blkx {i} ({name}): starts at sector {first}, expected {sector}")
            self.partitions.append(Partition(i, name, first, count, crc, runs))
            sector += count
        if sector != self.sector_count:
            raise ImageCorruptError(
                f"{self.path.name}: partitions hold {sector} sectors, trailer says {self.sector_count}"
            )
        self._starts: list[int] = []
        self._index: list[tuple[int, int]] = []
        for p in self.partitions:
            for j, r in enumerate(p.runs):
                self._starts.append(p.first_sector + r.first_sector)
                self._index.append((p.index, j))

    @property
    def size_bytes(self) -> int:
        """Bytes of the disk inside (sectors × 512)."""
        return self.sector_count * SECTOR_BYTES

    @property
    def license_text(self) -> str | None:
        """The licence agreement macOS shows before mounting (``TEXT`` decoded from Mac OS
        Roman, or ``RTF `` source), None when the image has none (:mod:`imaging.udif_sla`)."""
        from .udif_sla import license_from_resources

        return license_from_resources(self.resources)

    @property
    def chunk_types(self) -> set[int]:
        return {r.chunk_type for p in self.partitions for r in p.runs}

    def close(self) -> None:
        self.source.close()

    def __enter__(self) -> UdifImage:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _where(self, pi: int, ri: int) -> str:
        p = self.partitions[pi]
        r = p.runs[ri]
        start = p.first_sector + r.first_sector
        return f"blkx {pi} ({p.name}) chunk {ri} (sectors {start}-{start + r.sector_count - 1})"

    def _payload(self, r: ChunkRun, where: str) -> bytes:
        if r.chunk_type in _ZERO_TYPES:
            return b""
        if r.offset + r.length > self.data_fork_offset + self.data_fork_bytes:
            raise ImageCorruptError(f"{where}: payload lies outside the data fork")
        return self.source.pread(r.length, self.data_fork_offset + r.offset)

    def _chunk(self, k: int) -> bytes:
        with self._lock:
            hit = self._cache.get(k)
            if hit is not None:
                self._cache.move_to_end(k)
                return hit
        pi, ri = self._index[k]
        r = self.partitions[pi].runs[ri]
        where = self._where(pi, ri)
        data = decompress_chunk(r, self._payload(r, where), where)
        if r.chunk_type not in _ZERO_TYPES:
            with self._lock:
                self._cache[k] = data
                while len(self._cache) > _CACHE_CHUNKS:
                    self._cache.popitem(last=False)
        return data

    def read(self, offset: int, size: int) -> bytes:
        """Up to *size* bytes of the disk from byte *offset* (short at the end of the disk)."""
        size = max(0, min(size, self.size_bytes - offset))
        out = bytearray()
        while size > 0:
            k = bisect.bisect_right(self._starts, offset // SECTOR_BYTES) - 1
            pi, ri = self._index[k]
            r = self.partitions[pi].runs[ri]
            base = self._starts[k] * SECTOR_BYTES
            end = base + r.sector_count * SECTOR_BYTES
            take = min(size, end - offset)
            if r.chunk_type in _ZERO_TYPES:
                out += bytes(take)
            else:
                data = self._chunk(k)
                out += data[offset - base : offset - base + take]
            offset += take
            size -= take
        return bytes(out)

    def iter_chunks(self, workers: int = 2) -> Iterator[tuple[int, int, bytes]]:
        """Every chunk in disk order as ``(partition index, run index, data)``, decoded on
        *workers* threads with a bounded window (memory stays flat)."""
        window: collections.deque[tuple[int, int, cf.Future[bytes]]] = collections.deque()
        with cf.ThreadPoolExecutor(max_workers=workers) as ex:
            for p in self.partitions:
                for ri, r in enumerate(p.runs):
                    where = self._where(p.index, ri)
                    if r.chunk_type in _ZERO_TYPES:
                        fut: cf.Future[bytes] = cf.Future()
                        fut.set_result(b"")
                    else:
                        fut = ex.submit(decompress_chunk, r, self._payload(r, where), where)
                    window.append((p.index, ri, fut))
                    while len(window) > 2 * workers + 2:
                        pi, rj, f = window.popleft()
                        yield pi, rj, f.result()
            while window:
                pi, rj, f = window.popleft()
                yield pi, rj, f.result()

    def verify(self, progress: Callable[[int], None] | None = None) -> list[str]:
        """Check the data-fork CRC-32, every chunk, every partition CRC-32 and the master CRC-32.

        Returns:
            the names of the structures that failed, each with what is wrong (empty: all good).
            A chunk that does not decode stops the partition's check there.
        """
        problems: list[str] = []
        if self.data_crc32 is not None:
            crc = 0
            pos = self.data_fork_offset
            end = pos + self.data_fork_bytes
            while pos < end:
                piece = self.source.pread(min(1 << 20, end - pos), pos)
                if not piece:
                    break
                crc = zlib_ng.crc32(piece, crc)
                pos += len(piece)
            if crc != self.data_crc32:
                problems.append(f"data fork: CRC-32 {crc:08x} does not match the trailer's {self.data_crc32:08x}")
        crcs = [0] * len(self.partitions)
        failed: set[int] = set()
        try:
            for pi, ri, data in self.iter_chunks(workers=os.cpu_count() or 1):
                if pi in failed:
                    continue
                r = self.partitions[pi].runs[ri]
                n = r.sector_count * SECTOR_BYTES
                if r.chunk_type in _ZERO_TYPES:
                    crcs[pi] = zero_crc32(n, crcs[pi])
                else:
                    crcs[pi] = zlib_ng.crc32(data, crcs[pi])
                if progress is not None:
                    progress(n)
        except ImageCorruptError as e:
            problems.append(str(e))
            failed.add(-1)
        if -1 not in failed:
            for p in self.partitions:
                if p.crc32 is not None and crcs[p.index] != p.crc32:
                    problems.append(
                        f"blkx {p.index} ({p.name}): CRC-32 {crcs[p.index]:08x} of its sectors does not"
                        f" match the recorded {p.crc32:08x}"
                    )
        if self.master_crc32 is not None and all(p.crc32 is not None for p in self.partitions):
            master = zlib.crc32(b"".join(struct.pack(">I", p.crc32 or 0) for p in self.partitions))
            if master != self.master_crc32:
                problems.append(
                    f"koly master checksum: {master:08x} does not match the recorded {self.master_crc32:08x}"
                )
        return problems
