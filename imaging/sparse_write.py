"""Writers of ``.sparseimage`` files and ``.sparsebundle`` folders, plain or encrypted (the
formats are described in :mod:`imaging.sparse`).

Writers stream: the disk arrives as the same pieces the UDIF writer takes (bytes, an int for
that many zero bytes, :class:`~imaging.udif.FileSpan`), in order; memory stays at about 1 MiB.

Plain images never store an all-zero stretch (it reads back as zeros). Encrypted images cannot
do that: a reader that decrypts whatever a band holds (apfs-fuse does, and so may macOS) would
turn a hole into garbage. So an encrypted image stores every 4096-byte block except those inside
the *free* ranges the caller names (the filesystem's unallocated space, which no reader
interprets), and a band exists only if it holds a stored block.
"""

from __future__ import annotations

import os
import plistlib
import struct
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from pool.errors import BusyError, UsageError

from .dmg_crypt import BLOCK_BYTES, DATA_OFFSET, Sealer
from .sparse import (
    BUNDLE_BAND_BYTES,
    BUNDLE_TYPE,
    MIB,
    SPRS_HEADER,
    SPRS_HEADER_BYTES,
    SPRS_MAGIC,
    SPRS_MAX_BANDS,
    SPRS_NODE,
    SPRS_NODE_BANDS,
)
from .udif import SECTOR_BYTES, FileSpan, Piece

Ranges = Sequence[tuple[int, int]]  #: ``(start, end)`` byte ranges of the disk, sorted, not overlapping
_SLICE_BYTES = MIB
_ZEROS = bytes(_SLICE_BYTES)


def piece_slices(pieces: Iterable[Piece]) -> Iterator[bytes | int]:
    """The disk's bytes as ``bytes`` of at most 1 MiB or ints (that many zero bytes).

    Raises:
        BusyError: a :class:`FileSpan`'s file changed size while it was read.
    """
    for piece in pieces:
        if isinstance(piece, int):
            if piece:
                yield piece
        elif isinstance(piece, FileSpan):
            with open(piece.path, "rb", buffering=0) as f:
                left = piece.size
                while left:
                    data = f.read(min(left, _SLICE_BYTES))
                    if not data:
                        raise BusyError(
                            f"{piece.label} shrank while it was being imaged: rerun when it is not changing"
                        )
                    left -= len(data)
                    yield data
                if f.read(1):
                    raise BusyError(f"{piece.label} grew while it was being imaged: rerun when it is not changing")
        else:
            for i in range(0, len(piece), _SLICE_BYTES):
                yield piece[i : i + _SLICE_BYTES]


def _is_zero(data: bytes | memoryview) -> bool:
    return data == _ZEROS[: len(data)] if len(data) <= _SLICE_BYTES else bytes(data).count(0) == len(data)


def _free_split(slices: Iterable[bytes | int], free: Ranges) -> Iterator[bytes | int]:
    """*slices* with their zero runs as ``bytes`` to keep, or ints: that many bytes of whole
    blocks inside *free*, starting at a block boundary, to skip."""
    pos = i = 0
    for s in slices:
        if not isinstance(s, int):
            yield s
            pos += len(s)
            continue
        n = s
        while n:
            while i < len(free) and free[i][1] <= pos:
                i += 1
            inside = i < len(free) and free[i][0] <= pos
            step = min(n, free[i][1] - pos) // BLOCK_BYTES * BLOCK_BYTES if inside and not pos % BLOCK_BYTES else 0
            if step:
                yield step
            else:  # zeros to keep: up to the next free range, or to a block boundary inside one
                limit = (-pos % BLOCK_BYTES or BLOCK_BYTES) if inside else (free[i][0] - pos if i < len(free) else n)
                step = min(n, limit, _SLICE_BYTES)
                yield _ZEROS[:step]
            pos += step
            n -= step


def kept_blocks(slices: Iterable[bytes | int], free: Ranges) -> Iterator[tuple[int, bytes]]:
    """``(disk offset, data)`` covering every 4096-byte block of the disk except the whole blocks
    inside *free*; *data* is whole blocks (about 1 MiB at most), the last one zero-padded."""
    buf = bytearray()
    at = 0  # buf holds the disk's bytes from `at`, a block boundary
    for s in _free_split(slices, free):
        if isinstance(s, int):
            if buf:
                yield at, bytes(buf)
            at += len(buf) + s
            buf.clear()
            continue
        buf += s
        if len(buf) >= _SLICE_BYTES:
            whole = len(buf) - len(buf) % BLOCK_BYTES
            yield at, bytes(buf[:whole])
            del buf[:whole]
            at += whole
    if buf:
        buf += bytes(-len(buf) % BLOCK_BYTES)
        yield at, bytes(buf)


@dataclass
class SparseResult:
    """What a sparse writer made (sizes in bytes)."""

    disk_bytes: int
    band_bytes: int
    bands_written: int
    image_bytes: int  #: bytes the image takes on disk (allocated: unwritten parts of bands are holes)
    index_nodes: int = 0  #: chained index nodes (``.sparseimage`` with more than 1008 bands written)


class _BandWriter:
    """Feeds disk pieces into bands; subclasses store a band's bytes (``put``), encrypting them
    when a :class:`Sealer` is given."""

    def __init__(
        self,
        disk_bytes: int,
        band_bytes: int,
        progress: Callable[[int], None] | None,
        seal: Sealer | None,
        free: Ranges,
    ) -> None:
        if seal is not None and band_bytes % BLOCK_BYTES:
            raise UsageError(f"an encrypted image needs a band size in whole {BLOCK_BYTES}-byte blocks")
        self.disk_bytes = disk_bytes
        self.band_bytes = band_bytes
        self.progress = progress
        self.seal = seal
        self.free = sorted(free)

    def has(self, band: int) -> bool:
        raise NotImplementedError

    def put(self, band: int, offset: int, data: bytes | memoryview) -> None:
        raise NotImplementedError

    def _counted(self, pieces: Iterable[Piece]) -> Iterator[bytes | int]:
        pos = 0
        for s in piece_slices(pieces):
            n = s if isinstance(s, int) else len(s)
            if pos + n > self.disk_bytes:
                raise UsageError(f"the volume is larger than the {self.disk_bytes}-byte disk")
            yield s
            pos += n
            if self.progress is not None:
                self.progress(n)
        if pos != self.disk_bytes:
            raise UsageError(f"the volume holds {pos} bytes, the disk {self.disk_bytes}")

    def feed(self, pieces: Iterable[Piece]) -> None:
        if self.seal is not None:
            for at, data in kept_blocks(self._counted(pieces), self.free):
                self._split(at, memoryview(data), force=True)
            return
        pos = 0
        for s in self._counted(pieces):
            if not isinstance(s, int):
                self._split(pos, memoryview(s), force=False)
            pos += s if isinstance(s, int) else len(s)

    def _split(self, pos: int, view: memoryview, *, force: bool) -> None:
        """Hand *view* (the disk's bytes at *pos*) to ``put`` band by band; without *force*,
        all-zero parts of bands not yet stored are dropped."""
        at = 0
        while at < len(view):
            band, off = divmod(pos + at, self.band_bytes)
            take = min(len(view) - at, self.band_bytes - off)
            part = view[at : at + take]
            if force or self.has(band) or not _is_zero(part):
                self.put(band, off, part)
            at += take


def sparseimage_band_bytes(disk_bytes: int) -> int:
    """Default band size for a ``.sparseimage`` of *disk_bytes*: the smallest power of two, at
    least 1 MiB, that keeps the disk within the header's 1008 entries (16 MiB for 10 GB)."""
    band = MIB
    while -(-disk_bytes // band) > SPRS_MAX_BANDS:
        band *= 2
    return band


def sparseimage_slot_offset(slot: int, band_bytes: int) -> int:
    """Where the *slot*-th stored band starts in a ``.sparseimage``: after the header's 1008
    slots, each index node of 1010 slots is followed by its bands (fsdump's and hdiutil's layout)."""
    if slot < SPRS_MAX_BANDS:
        return SPRS_HEADER_BYTES + slot * band_bytes
    node, i = divmod(slot - SPRS_MAX_BANDS, SPRS_NODE_BANDS)
    return _node_offset(node, band_bytes) + SPRS_HEADER_BYTES + i * band_bytes


def _node_offset(node: int, band_bytes: int) -> int:
    return SPRS_HEADER_BYTES + SPRS_MAX_BANDS * band_bytes + node * (SPRS_HEADER_BYTES + SPRS_NODE_BANDS * band_bytes)


class _SparseImageWriter(_BandWriter):
    def __init__(self, fd: int, disk_bytes: int, band_bytes: int, progress: Callable[[int], None] | None,
                 seal: Sealer | None, free: Ranges) -> None:  # fmt: skip
        super().__init__(disk_bytes, band_bytes, progress, seal, free)
        self.fd = fd
        self.base = DATA_OFFSET if seal is not None else 0  # where the sprs file starts in ours
        self.slots: dict[int, int] = {}  # disk band -> slot in the file

    def has(self, band: int) -> bool:
        return band in self.slots

    def put(self, band: int, offset: int, data: bytes | memoryview) -> None:
        slot = self.slots.setdefault(band, len(self.slots))
        self._write(sparseimage_slot_offset(slot, self.band_bytes) + offset, data)

    def _write(self, at: int, data: bytes | memoryview) -> None:
        """Write *data* at offset *at* of the sprs file (encrypted: whole blocks at a block boundary)."""
        if self.seal is not None:
            data = self.seal.encrypt(at // BLOCK_BYTES, data)
        os.pwrite(self.fd, data, self.base + at)

    def finish(self) -> tuple[int, int]:
        """Write the header and index nodes; the sprs file's length and the number of nodes."""
        nodes = max(0, -(-(len(self.slots) - SPRS_MAX_BANDS) // SPRS_NODE_BANDS))
        numbers = [0] * (SPRS_MAX_BANDS + nodes * SPRS_NODE_BANDS)
        for band, slot in self.slots.items():
            numbers[slot] = band + 1
        sectors = self.disk_bytes // SECTOR_BYTES
        first = _node_offset(0, self.band_bytes) if nodes else 0
        head = SPRS_HEADER.pack(SPRS_MAGIC, 3, self.band_bytes // SECTOR_BYTES, 1, sectors & 0xFFFFFFFF, first,
                                sectors, bytes(28))  # fmt: skip
        self._write(0, _node_block(head, numbers[:SPRS_MAX_BANDS]))
        for n in range(nodes):
            nxt = _node_offset(n + 1, self.band_bytes) if n + 1 < nodes else 0
            lo = SPRS_MAX_BANDS + n * SPRS_NODE_BANDS
            node = SPRS_NODE.pack(SPRS_MAGIC, n, 1, nxt, bytes(36))
            self._write(_node_offset(n, self.band_bytes), _node_block(node, numbers[lo : lo + SPRS_NODE_BANDS]))
        return (sparseimage_slot_offset(len(self.slots), self.band_bytes) if self.slots else SPRS_HEADER_BYTES), nodes


def _node_block(head: bytes, numbers: list[int]) -> bytes:
    return (head + struct.pack(f">{len(numbers)}I", *numbers)).ljust(SPRS_HEADER_BYTES, b"\0")


def write_sparseimage(
    output: Path,
    pieces: Iterable[Piece],
    disk_bytes: int,
    *,
    band_bytes: int | None = None,
    seal: Sealer | None = None,
    free: Ranges = (),
    progress: Callable[[int], None] | None = None,
) -> SparseResult:
    """Write a ``.sparseimage`` of the disk *pieces* describes (replaced atomically when complete).

    Args:
        band_bytes: band size (default :func:`sparseimage_band_bytes`); more than 1008 stored
            bands chain index nodes.
        seal: encrypt (the encrcdsa container around the whole file).
        free: disk ranges an encrypted image need not store (the filesystem's free space).

    Raises:
        UsageError: *disk_bytes* is not whole sectors, over 2 TiB, or differs from the pieces'
        total; a band size that is not whole sectors (whole 4096-byte blocks when encrypted).
        BusyError: a source file changed size while it was read.
    """
    if disk_bytes % SECTOR_BYTES or disk_bytes // SECTOR_BYTES > 0xFFFFFFFF:
        raise UsageError("a sparse image holds whole sectors, at most 2 TiB")
    band_bytes = band_bytes or sparseimage_band_bytes(disk_bytes)
    if band_bytes % SECTOR_BYTES or not 0 < band_bytes // SECTOR_BYTES <= 0xFFFFFFFF:
        raise UsageError("the band size must be a positive multiple of 512 bytes")
    output = Path(output)
    tmp = output.with_name(f".{output.name}.part")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        w = _SparseImageWriter(fd, disk_bytes, band_bytes, progress, seal, free)
        w.feed(pieces)
        plain_bytes, nodes = w.finish()
        os.ftruncate(fd, w.base + plain_bytes)  # the last band's unwritten tail must exist (as a hole)
        if seal is not None:
            os.pwrite(fd, seal.header(plain_bytes), 0)
        os.fsync(fd)
        os.close(fd)
        fd = -1
        os.replace(tmp, output)
    finally:
        if fd >= 0:
            os.close(fd)
        tmp.unlink(missing_ok=True)
    return SparseResult(disk_bytes, band_bytes, len(w.slots), os.stat(output).st_blocks * 512, nodes)


class _BundleWriter(_BandWriter):
    def __init__(self, bands: Path, disk_bytes: int, band_bytes: int, progress: Callable[[int], None] | None,
                 seal: Sealer | None, free: Ranges) -> None:  # fmt: skip
        super().__init__(disk_bytes, band_bytes, progress, seal, free)
        self.bands = bands
        self.written: set[int] = set()
        self.fd = -1
        self.fd_band = -1

    def has(self, band: int) -> bool:
        return band in self.written

    def put(self, band: int, offset: int, data: bytes | memoryview) -> None:
        if band != self.fd_band:
            self.close()
            flags = os.O_WRONLY | os.O_CREAT | (0 if band in self.written else os.O_TRUNC)
            self.fd = os.open(self.bands / f"{band:x}", flags, 0o644)
            self.fd_band = band
            self.written.add(band)
        if self.seal is not None:  # IVs from the disk's block number: the bands are one disk
            data = self.seal.encrypt((band * self.band_bytes + offset) // BLOCK_BYTES, data)
        os.pwrite(self.fd, data, offset)

    def band_length(self, band: int) -> int:
        """A stored band's file length: the band, or up to the disk's end (whole blocks when encrypted)."""
        tail = self.disk_bytes - band * self.band_bytes
        if self.seal is not None:
            tail = -(-tail // BLOCK_BYTES) * BLOCK_BYTES
        return min(self.band_bytes, tail)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
            self.fd_band = -1


def bundle_info(disk_bytes: int, band_bytes: int) -> bytes:
    """The ``Info.plist`` of a sparse bundle (XML property list)."""
    return plistlib.dumps(
        {
            "CFBundleInfoDictionaryVersion": "6.0",
            "band-size": band_bytes,
            "bundle-backingstore-version": 1,
            "diskimage-bundle-type": BUNDLE_TYPE,
            "size": disk_bytes,
        },
        fmt=plistlib.FMT_XML,
        sort_keys=True,
    )


def write_sparsebundle(
    output: Path,
    pieces: Iterable[Piece],
    disk_bytes: int,
    *,
    band_bytes: int = BUNDLE_BAND_BYTES,
    seal: Sealer | None = None,
    free: Ranges = (),
    progress: Callable[[int], None] | None = None,
) -> SparseResult:
    """Write a ``.sparsebundle`` folder of the disk *pieces* describes; an existing *output*
    folder is replaced only once the new one is complete.

    Args:
        seal: encrypt (header in ``token``, bands encrypted in place).
        free: disk ranges an encrypted bundle need not store (the filesystem's free space).

    Raises:
        UsageError: a band size that is not a positive multiple of 512 (4096 when encrypted),
        or a size mismatch.
        BusyError: a source file changed size while it was read.
    """
    if band_bytes <= 0 or band_bytes % SECTOR_BYTES:
        raise UsageError("the band size must be a positive multiple of 512 bytes")
    output = Path(output)
    tmp = output.with_name(f".{output.name}.part")
    _remove_tree(tmp)
    (tmp / "bands").mkdir(parents=True)
    w = _BundleWriter(tmp / "bands", disk_bytes, band_bytes, progress, seal, free)
    try:
        w.feed(pieces)
        w.close()
        for band in w.written:  # whole bands (the last one up to the disk's end) as files with holes
            os.truncate(tmp / "bands" / f"{band:x}", w.band_length(band))
        info = bundle_info(disk_bytes, band_bytes)
        (tmp / "Info.plist").write_bytes(info)
        (tmp / "Info.bckup").write_bytes(info)
        (tmp / "token").write_bytes(seal.header(0) if seal is not None else b"")
        old = output.with_name(f".{output.name}.old")
        if output.exists():
            os.replace(output, old)
        os.replace(tmp, output)
        _remove_tree(old)
    finally:
        w.close()
        _remove_tree(tmp)
    used = sum(os.stat(output / "bands" / f"{b:x}").st_blocks * 512 for b in w.written)
    return SparseResult(disk_bytes, band_bytes, len(w.written), used)


def _remove_tree(path: Path) -> None:
    if not path.exists():
        return
    for p in sorted(path.rglob("*"), key=lambda q: len(q.parts), reverse=True):
        p.rmdir() if p.is_dir() and not p.is_symlink() else p.unlink()
    path.rmdir()
