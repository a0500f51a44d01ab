"""Apple's growable disk images: ``.sparseimage`` (one file) and ``.sparsebundle`` (a folder).

Both hold a raw disk (here the HFS+ volume, with no container checksums) cut into *bands*;
a band that was never written does not exist and reads as zeros, so a 10 GB volume with 5 MB of
files takes about 5 MB (``hdiutil create -type SPARSE|SPARSEBUNDLE``).

``.sparseimage`` (facts from libyal's libmodi documentation "Mac OS sparse image format" and the
header structures in Simon Gander's fsdump): a 4096-byte header, big-endian: ``"sprs"``,
version 3, sectors per band, flags (1), the disk size in sectors (32 bits), the offset of a next
index node (0: none), the disk size in sectors (64 bits), then from offset 64 an array of 1008
band numbers: entry *i* holds (1 + the disk band stored at file offset ``4096 + i * band_bytes``)
or 0. Bands are stored in the order they were first written. Apple's tools chain further
4096-byte index nodes when more than 1008 bands are in use; we size the bands so that one
header indexes them all (at least 1 MiB; 11 MiB for a 10 GiB volume), which is what libmodi
reads, and this reader refuses index chains.

``.sparsebundle`` (libmodi's "sparse bundle" notes; Apple's Time Machine layout): a folder with
``Info.plist`` (``CFBundleInfoDictionaryVersion`` 6.0, ``band-size``, ``bundle-backingstore-
version`` 1, ``diskimage-bundle-type`` ``com.apple.diskimage.sparsebundle``, ``size``), its
copy ``Info.bckup``, an empty ``token`` (it holds the encryption header when encrypted), and
``bands/`` with one file per written band named by its number in lowercase hex (``0``, ``1``,
... ``a``...). A band file shorter than the band reads as zeros beyond its end.

Writers stream: the disk arrives as the same pieces the UDIF writer takes (bytes, an int for
that many zero bytes, :class:`~imaging.udif.FileSpan`); all-zero stretches are never written.
"""

from __future__ import annotations

import hashlib
import os
import plistlib
import struct
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from pool.errors import BusyError, ImageCorruptError, NotFoundError, UnsupportedError, UsageError

from .udif import SECTOR_BYTES, FileSpan, Piece
from .udif_read import open_image

SPRS_MAGIC = b"sprs"
SPRS_HEADER_BYTES = 4096
SPRS_HEADER = struct.Struct(">4sIIIIQQ28s")  # magic, version, sectors/band, flags, sectors32, next, sectors64
SPRS_MAX_BANDS = (SPRS_HEADER_BYTES - SPRS_HEADER.size) // 4  #: 1008 band numbers in the header
assert SPRS_HEADER.size == 64
MIB = 1 << 20
BUNDLE_BAND_BYTES = 8 * MIB  #: hdiutil's default band size for sparse bundles
BUNDLE_TYPE = "com.apple.diskimage.sparsebundle"
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


def _is_zero(data: bytes) -> bool:
    return data == _ZEROS[: len(data)] if len(data) <= _SLICE_BYTES else data.count(0) == len(data)


@dataclass
class SparseResult:
    """What a sparse writer made (sizes in bytes)."""

    disk_bytes: int
    band_bytes: int
    bands_written: int
    image_bytes: int  #: bytes the image takes on disk (allocated: unwritten parts of bands are holes)


class _BandWriter:
    """Feeds disk pieces into bands; subclasses store a band's bytes."""

    def __init__(self, disk_bytes: int, band_bytes: int, progress: Callable[[int], None] | None) -> None:
        self.disk_bytes = disk_bytes
        self.band_bytes = band_bytes
        self.progress = progress
        self.pos = 0

    def has(self, band: int) -> bool:
        raise NotImplementedError

    def put(self, band: int, offset: int, data: bytes) -> None:
        raise NotImplementedError

    def feed(self, pieces: Iterable[Piece]) -> None:
        for s in piece_slices(pieces):
            n = s if isinstance(s, int) else len(s)
            if self.pos + n > self.disk_bytes:
                raise UsageError(f"the volume is larger than the {self.disk_bytes}-byte disk")
            if not isinstance(s, int):
                view = memoryview(s)
                at = 0
                while at < n:
                    band, off = divmod(self.pos + at, self.band_bytes)
                    take = min(n - at, self.band_bytes - off)
                    part = bytes(view[at : at + take])
                    if self.has(band) or not _is_zero(part):
                        self.put(band, off, part)
                    at += take
            self.pos += n
            if self.progress is not None:
                self.progress(n)
        if self.pos != self.disk_bytes:
            raise UsageError(f"the volume holds {self.pos} bytes, the disk {self.disk_bytes}")


def sparseimage_band_bytes(disk_bytes: int) -> int:
    """Band size for a ``.sparseimage`` of *disk_bytes*: 1 MiB, or the smallest whole number of
    MiB that keeps the bands within the header's 1008 entries (11 MiB for 10 GiB)."""
    return max(1, -(-disk_bytes // (SPRS_MAX_BANDS * MIB))) * MIB


class _SparseImageWriter(_BandWriter):
    def __init__(self, fd: int, disk_bytes: int, progress: Callable[[int], None] | None) -> None:
        super().__init__(disk_bytes, sparseimage_band_bytes(disk_bytes), progress)
        self.fd = fd
        self.slots: dict[int, int] = {}  # disk band -> slot in the file

    def has(self, band: int) -> bool:
        return band in self.slots

    def put(self, band: int, offset: int, data: bytes) -> None:
        slot = self.slots.setdefault(band, len(self.slots))
        os.pwrite(self.fd, data, SPRS_HEADER_BYTES + slot * self.band_bytes + offset)

    def header(self) -> bytes:
        sectors = self.disk_bytes // SECTOR_BYTES
        head = SPRS_HEADER.pack(SPRS_MAGIC, 3, self.band_bytes // SECTOR_BYTES, 1, sectors, 0, sectors, bytes(28))
        numbers = [0] * SPRS_MAX_BANDS
        for band, slot in self.slots.items():
            numbers[slot] = band + 1
        return head + struct.pack(f">{SPRS_MAX_BANDS}I", *numbers) + bytes(SPRS_HEADER_BYTES - 64 - 4 * SPRS_MAX_BANDS)


def write_sparseimage(
    output: Path, pieces: Iterable[Piece], disk_bytes: int, *, progress: Callable[[int], None] | None = None
) -> SparseResult:
    """Write a ``.sparseimage`` of the disk *pieces* describes (replaced atomically when complete).

    Raises:
        UsageError: *disk_bytes* is not whole sectors, over 2 TiB, or differs from the pieces' total.
        BusyError: a source file changed size while it was read.
    """
    if disk_bytes % SECTOR_BYTES or disk_bytes // SECTOR_BYTES > 0xFFFFFFFF:
        raise UsageError("a sparse image holds whole sectors, at most 2 TiB")
    output = Path(output)
    tmp = output.with_name(f".{output.name}.part")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        w = _SparseImageWriter(fd, disk_bytes, progress)
        w.feed(pieces)
        size = SPRS_HEADER_BYTES + len(w.slots) * w.band_bytes
        os.ftruncate(fd, size)  # the last band's unwritten tail must exist (as a hole)
        os.pwrite(fd, w.header(), 0)
        os.fsync(fd)
        os.close(fd)
        fd = -1
        os.replace(tmp, output)
    finally:
        if fd >= 0:
            os.close(fd)
        tmp.unlink(missing_ok=True)
    return SparseResult(disk_bytes, w.band_bytes, len(w.slots), os.stat(output).st_blocks * 512)


class _BundleWriter(_BandWriter):
    def __init__(self, bands: Path, disk_bytes: int, band_bytes: int, progress: Callable[[int], None] | None) -> None:
        super().__init__(disk_bytes, band_bytes, progress)
        self.bands = bands
        self.written: set[int] = set()
        self.fd = -1
        self.fd_band = -1

    def has(self, band: int) -> bool:
        return band in self.written

    def put(self, band: int, offset: int, data: bytes) -> None:
        if band != self.fd_band:
            self.close()
            flags = os.O_WRONLY | os.O_CREAT | (0 if band in self.written else os.O_TRUNC)
            self.fd = os.open(self.bands / f"{band:x}", flags, 0o644)
            self.fd_band = band
            self.written.add(band)
        os.pwrite(self.fd, data, offset)

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
    progress: Callable[[int], None] | None = None,
) -> SparseResult:
    """Write a ``.sparsebundle`` folder of the disk *pieces* describes; an existing *output*
    folder is replaced only once the new one is complete.

    Raises:
        UsageError: a band size that is not a positive multiple of 512, or a size mismatch.
        BusyError: a source file changed size while it was read.
    """
    if band_bytes <= 0 or band_bytes % SECTOR_BYTES:
        raise UsageError("the band size must be a positive multiple of 512 bytes")
    output = Path(output)
    tmp = output.with_name(f".{output.name}.part")
    _remove_tree(tmp)
    (tmp / "bands").mkdir(parents=True)
    w = _BundleWriter(tmp / "bands", disk_bytes, band_bytes, progress)
    try:
        w.feed(pieces)
        w.close()
        for band in w.written:  # whole bands (the last one up to the disk's end) as files with holes
            os.truncate(tmp / "bands" / f"{band:x}", min(band_bytes, disk_bytes - band * band_bytes))
        info = bundle_info(disk_bytes, band_bytes)
        (tmp / "Info.plist").write_bytes(info)
        (tmp / "Info.bckup").write_bytes(info)
        (tmp / "token").write_bytes(b"")
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


# -- readers ----------------------------------------------------------------------------------


class SparseImage:
    """An open ``.sparseimage``: ``read(offset, size)`` of the disk inside (thread-safe: ``pread``).

    Raises (from the constructor):
        NotFoundError: no such file. ImageCorruptError: not a sparse image or a damaged header.
        UnsupportedError: an image with chained index nodes (over 1008 bands in use).
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.fd = open_image(self.path)
        try:
            self._parse()
        except BaseException:
            os.close(self.fd)
            raise

    def _parse(self) -> None:
        name = self.path.name
        head = os.pread(self.fd, SPRS_HEADER_BYTES, 0)
        if len(head) < SPRS_HEADER_BYTES or head[:4] != SPRS_MAGIC:
            raise ImageCorruptError(f"{name}: not a sparse image (no sprs header)")
        _m, _v, spb, _flags, sectors32, next_node, sectors64, _r = SPRS_HEADER.unpack_from(head)
        if next_node:
            raise UnsupportedError(f"{name}: sparse images with index nodes (over 1008 bands) are not read yet")
        if spb == 0:
            raise ImageCorruptError(f"{name}: sparse image header says 0 sectors per band")
        self.band_bytes = spb * SECTOR_BYTES
        self.size_bytes = (sectors64 or sectors32) * SECTOR_BYTES
        file_bytes = os.fstat(self.fd).st_size
        self.offsets: dict[int, int] = {}  # disk band -> file offset
        for slot, number in enumerate(struct.unpack_from(f">{SPRS_MAX_BANDS}I", head, 64)):
            if not number:
                continue
            at = SPRS_HEADER_BYTES + slot * self.band_bytes
            if (number - 1) * self.band_bytes >= self.size_bytes or at >= file_bytes or number - 1 in self.offsets:
                raise ImageCorruptError(f"{name}: band table entry {slot} (band {number}) is damaged")
            self.offsets[number - 1] = at

    def read(self, offset: int, size: int) -> bytes:
        """Up to *size* bytes of the disk from *offset* (zeros where no band was written)."""
        return _read_bands(offset, size, self.size_bytes, self.band_bytes, self._band)

    def _band(self, band: int, off: int, n: int) -> bytes:
        at = self.offsets.get(band)
        if at is None:
            return bytes(n)
        data = os.pread(self.fd, n, at + off)
        return data + bytes(n - len(data))

    def close(self) -> None:
        os.close(self.fd)

    def __enter__(self) -> SparseImage:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _read_bands(
    offset: int, size: int, disk_bytes: int, band_bytes: int, band: Callable[[int, int, int], bytes]
) -> bytes:
    size = max(0, min(size, disk_bytes - offset))
    out = bytearray()
    while size > 0:
        b, off = divmod(offset, band_bytes)
        take = min(size, band_bytes - off)
        out += band(b, off, take)
        offset += take
        size -= take
    return bytes(out)


class SparseBundle:
    """An open ``.sparsebundle`` folder: ``read(offset, size)`` of the disk inside.

    Raises (from the constructor):
        NotFoundError: no such folder. ImageCorruptError: no readable ``Info.plist`` or a bad one.
        UnsupportedError: an encrypted bundle (a non-empty ``token``).
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        if not self.path.is_dir():
            raise NotFoundError(f"no such sparse bundle: {path}")
        name = self.path.name
        try:
            info = plistlib.loads((self.path / "Info.plist").read_bytes())
            self.band_bytes = int(info["band-size"])
            self.size_bytes = int(info["size"])
        except FileNotFoundError:
            raise ImageCorruptError(f"{name}: no Info.plist (not a sparse bundle)") from None
        except Exception as e:
            raise ImageCorruptError(f"{name}: Info.plist unreadable ({type(e).__name__})") from None
        if info.get("diskimage-bundle-type") != BUNDLE_TYPE or self.band_bytes <= 0 or self.size_bytes < 0:
            raise ImageCorruptError(f"{name}: Info.plist does not describe a sparse bundle")
        token = self.path / "token"
        if token.exists() and token.stat().st_size:
            raise UnsupportedError(f"{name}: encrypted sparse bundles are not read yet")
        self.bands = self.path / "bands"

    def _band(self, band: int, off: int, n: int) -> bytes:
        try:
            with open(self.bands / f"{band:x}", "rb", buffering=0) as f:
                data = os.pread(f.fileno(), n, off)
        except FileNotFoundError:
            return bytes(n)
        return data + bytes(n - len(data))

    def read(self, offset: int, size: int) -> bytes:
        """Up to *size* bytes of the disk from *offset* (zeros where no band exists)."""
        return _read_bands(offset, size, self.size_bytes, self.band_bytes, self._band)

    def close(self) -> None:
        pass

    def __enter__(self) -> SparseBundle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# -- SHA-256 sidecar of a bundle (one sha256sum line per file) --------------------------------


def bundle_files(bundle: Path) -> list[Path]:
    """Every file of *bundle*, in a stable order."""
    return sorted((p for p in Path(bundle).rglob("*") if p.is_file()), key=lambda p: p.relative_to(bundle).parts)


def bundle_digests(bundle: Path) -> dict[str, str]:
    """``{"<bundle name>/<path>": sha256 hex}`` for every file of *bundle*."""
    bundle = Path(bundle)
    out = {}
    for p in bundle_files(bundle):
        h = hashlib.sha256()
        with open(p, "rb", buffering=0) as f:
            while data := f.read(MIB):
                h.update(data)
        out[f"{bundle.name}/{p.relative_to(bundle).as_posix()}"] = h.hexdigest()
    return out


def write_bundle_sidecar(bundle: Path) -> Path:
    """Write ``<bundle>.sha256``: one ``sha256sum`` line per file, so ``sha256sum -c`` run in the
    bundle's parent folder checks it."""
    side = Path(bundle).with_name(Path(bundle).name + ".sha256")
    lines = "".join(f"{d}  {name}\n" for name, d in bundle_digests(bundle).items())
    tmp = side.with_name(side.name + ".tmp")
    tmp.write_text(lines)
    os.replace(tmp, side)
    return side


def check_bundle_sidecar(bundle: Path) -> list[str] | None:
    """None when *bundle* has no sidecar, else the problems found (empty: every file matches)."""
    side = Path(bundle).with_name(Path(bundle).name + ".sha256")
    try:
        text = side.read_text()
    except FileNotFoundError:
        return None
    want = {}
    for line in text.splitlines():
        digest, _, name = line.partition("  ")
        want[name] = digest
    have = bundle_digests(bundle)
    problems = [f"{n}: SHA-256 does not match the sidecar" for n in want if n in have and have[n] != want[n]]
    problems += [f"{n}: missing (listed in the sidecar)" for n in want if n not in have]
    problems += [f"{n}: not listed in the sidecar" for n in have if n not in want]
    return problems
