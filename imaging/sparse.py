"""Apple's growable disk images: ``.sparseimage`` (one file) and ``.sparsebundle`` (a folder):
the format, the readers and the bundle sidecar (writers: :mod:`imaging.sparse_write`).

Both hold a raw disk (here the HFS+ volume, with no container checksums) cut into *bands*;
a band that was never written does not exist and reads as zeros, so a 10 GB volume with 5 MB of
files takes about 5 MB (``hdiutil create -type SPARSE|SPARSEBUNDLE``).

``.sparseimage`` (facts from libyal's libmodi documentation "Mac OS sparse image format", the
header and index node structures in Simon Gander's fsdump and apfs-fuse): a 4096-byte header,
big-endian: ``"sprs"``, version 3, sectors per band, flags (1), the disk size in sectors (32
bits), the offset of the first index node (0: none), the disk size in sectors (64 bits), then
from offset 64 an array of 1008 band numbers: entry *i* holds (1 + the disk band stored at file
offset ``4096 + i * band_bytes``) or 0. Bands are stored in the order they were first written.
When all 1008 entries are in use, a 4096-byte *index node* is appended where the next band
would go: ``"sprs"``, its number (0 for the first), flags (1), the offset of the next node (64
bits), 36 zero bytes, then from offset 0x38 an array of 1010 band numbers for the bands stored
right after the node (``node + 4096 + i * band_bytes``); the header and each node point to the
next node. hdiutil's default band is 1 MiB, so its images of more than 1008 MiB of data chain
nodes. libmodi reads neither chains nor disks of more than 1008 bands, so our writer's default
band (a power of two of at least 1 MiB) keeps the disk within one header's entries (16 MiB
bands for 10 GB); a smaller ``--band-size`` chains nodes as hdiutil does.

``.sparsebundle`` (libmodi's "sparse bundle" notes; Apple's Time Machine layout): a folder with
``Info.plist`` (``CFBundleInfoDictionaryVersion`` 6.0, ``band-size``, ``bundle-backingstore-
version`` 1, ``diskimage-bundle-type`` ``com.apple.diskimage.sparsebundle``, ``size``), its
copy ``Info.bckup``, a ``token`` (empty, or the encryption header when encrypted), and
``bands/`` with one file per written band named by its number in lowercase hex (``0``, ``1``,
... ``a``...). A band file shorter than the band reads as zeros beyond its end.

Encrypted (``hdiutil create -encryption``, container of :mod:`imaging.dmg_crypt`): a
``.sparseimage`` is wrapped whole, as a ``.dmg`` is: the file is an encrcdsa header followed by
the encrypted ``sprs`` file (header, bands, index nodes), block *n* being the ``sprs`` file's
bytes ``[4096 n, 4096 (n + 1))``. A sparse bundle keeps the encrcdsa header (its data length 0)
in ``token`` and its bands encrypted in place: block *n* is the disk's bytes ``[4096 n, 4096
(n + 1))``, stored at that offset of its band file, IV from the disk block number. Sources: the
sparse bundle readers of apfs-fuse (DiskImageFile/DeviceSparsebundle, Jief Luce) and
sparsebundlefs, and the layout table of sample images published as "alienjax/UDIF" (header
then encrypted data for a .dmg, a .sparseimage and a joined bundle alike). Blocks stored as all
zeros (holes: free space the writer skipped) read as zeros.
"""

from __future__ import annotations

import hashlib
import os
import plistlib
import struct
from collections.abc import Callable
from pathlib import Path

from pool.errors import ImageCorruptError, NotFoundError, UnsupportedError, UsageError

from .dmg_crypt import MAGIC as ENCRYPTED_MAGIC
from .dmg_crypt import crypt_blocks, open_container
from .udif import SECTOR_BYTES
from .udif_read import Source, open_image

SPRS_MAGIC = b"sprs"
SPRS_HEADER_BYTES = 4096  #: the header and each index node
SPRS_HEADER = struct.Struct(">4sIIIIQQ28s")  # magic, version, sectors/band, flags, sectors32, next, sectors64
SPRS_MAX_BANDS = (SPRS_HEADER_BYTES - SPRS_HEADER.size) // 4  #: 1008 band numbers in the header
SPRS_NODE = struct.Struct(">4sIIQ36s")  # magic, node number, flags, next node offset
SPRS_NODE_BANDS = (SPRS_HEADER_BYTES - SPRS_NODE.size) // 4  #: 1010 band numbers in an index node
assert SPRS_HEADER.size == 64 and SPRS_NODE.size == 0x38
MIB = 1 << 20
BUNDLE_BAND_BYTES = 8 * MIB  #: hdiutil's default band size for sparse bundles
BUNDLE_TYPE = "com.apple.diskimage.sparsebundle"


class SparseImage:
    """An open ``.sparseimage``: ``read(offset, size)`` of the disk inside (thread-safe: ``pread``).

    Args:
        path: the file.
        source: where its bytes come from when not the file itself (the plaintext of an
            encrypted image, :class:`imaging.dmg_crypt.EncryptedFile`); closed with the image.

    Raises (from the constructor):
        NotFoundError: no such file. ImageCorruptError: not a sparse image, a damaged header or
        index node (a chain that loops or leaves the file, a band listed twice).
    """

    def __init__(self, path: Path, source: Source | None = None) -> None:
        self.path = Path(path)
        if source is None:
            fd = open_image(self.path)
            self.file_bytes = os.fstat(fd).st_size
            self._pread: Callable[[int, int], bytes] = lambda n, off: os.pread(fd, n, off)
            self._close: Callable[[], None] = lambda: os.close(fd)
        else:
            self.file_bytes = source.size_bytes
            self._pread, self._close = source.pread, source.close
        try:
            self._parse()
        except BaseException:
            self._close()
            raise

    def _parse(self) -> None:
        name = self.path.name
        head = self._pread(SPRS_HEADER_BYTES, 0)
        if len(head) < SPRS_HEADER_BYTES or head[:4] != SPRS_MAGIC:
            raise ImageCorruptError(f"{name}: not a sparse image (no sprs header)")
        _m, _v, spb, _flags, sectors32, node, sectors64, _r = SPRS_HEADER.unpack_from(head)
        if spb == 0:
            raise ImageCorruptError(f"{name}: sparse image header says 0 sectors per band")
        self.band_bytes = spb * SECTOR_BYTES
        self.size_bytes = (sectors64 or sectors32) * SECTOR_BYTES
        self.offsets: dict[int, int] = {}  # disk band -> file offset
        self.index_nodes: list[int] = []  # file offsets of the chained index nodes
        self._add(head, SPRS_HEADER.size, SPRS_MAX_BANDS, SPRS_HEADER_BYTES, "header")
        while node:
            where = f"index node at {node}"
            if node in self.index_nodes or node % SECTOR_BYTES or node + SPRS_HEADER_BYTES > self.file_bytes:
                raise ImageCorruptError(f"{name}: the {where} is damaged (loops or lies outside the file)")
            data = self._pread(SPRS_HEADER_BYTES, node)
            magic, _nr, _flags, next_node, _r = SPRS_NODE.unpack_from(data)
            if magic != SPRS_MAGIC:
                raise ImageCorruptError(f"{name}: the {where} has no sprs signature")
            self.index_nodes.append(node)
            self._add(data, SPRS_NODE.size, SPRS_NODE_BANDS, node + SPRS_HEADER_BYTES, where)
            node = next_node

    def _add(self, data: bytes, at: int, count: int, base: int, where: str) -> None:
        """Map the band numbers of one header or index node (stored from *base* on)."""
        for slot, number in enumerate(struct.unpack_from(f">{count}I", data, at)):
            if not number:
                continue
            off = base + slot * self.band_bytes
            if (
                (number - 1) * self.band_bytes >= self.size_bytes
                or off >= self.file_bytes
                or number - 1 in self.offsets
            ):
                raise ImageCorruptError(f"{self.path.name}: {where} band entry {slot} (band {number}) is damaged")
            self.offsets[number - 1] = off

    def read(self, offset: int, size: int) -> bytes:
        """Up to *size* bytes of the disk from *offset* (zeros where no band was written)."""
        return _read_bands(offset, size, self.size_bytes, self.band_bytes, self._band)

    def _band(self, band: int, off: int, n: int) -> bytes:
        at = self.offsets.get(band)
        if at is None:
            return bytes(n)
        data = self._pread(n, at + off)
        return data + bytes(n - len(data))

    def close(self) -> None:
        self._close()

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


def bundle_is_encrypted(path: Path) -> bool:
    """True when the sparse bundle folder *path* has an encrcdsa ``token``."""
    try:
        with open(Path(path) / "token", "rb") as f:
            return f.read(len(ENCRYPTED_MAGIC)) == ENCRYPTED_MAGIC
    except (FileNotFoundError, NotADirectoryError, PermissionError):
        return False


class SparseBundle:
    """An open ``.sparsebundle`` folder: ``read(offset, size)`` of the disk inside.

    Args:
        path: the folder.
        password: the password of an encrypted bundle (ignored for a plain one).

    Attributes:
        key_bits: 128 or 256 when encrypted, else None.

    Raises (from the constructor):
        NotFoundError: no such folder. ImageCorruptError: no readable ``Info.plist`` or a bad
        one, a damaged ``token``. UsageError: encrypted and no password. AuthError: wrong password.
    """

    def __init__(self, path: Path, password: str | None = None) -> None:
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
        self.bands = self.path / "bands"
        self.key_bits: int | None = None
        token = self.path / "token"
        if token.exists() and token.stat().st_size and not bundle_is_encrypted(self.path):
            raise UnsupportedError(f"{name}: its token is not an encrcdsa header (unknown encryption)")
        if bundle_is_encrypted(self.path):
            if password is None:
                raise UsageError(f"{name} is encrypted: give its password")
            with open(token, "rb", buffering=0) as f:
                c = open_container(lambda n, off: os.pread(f.fileno(), n, off), password, name)
            if self.band_bytes % c.block_bytes:
                raise ImageCorruptError(f"{name}: band size {self.band_bytes} is not whole encrypted blocks")
            self.keys, self.block_bytes, self.key_bits = c.keys, c.block_bytes, c.key_bits

    def _band(self, band: int, off: int, n: int) -> bytes:
        if self.key_bits is None:
            return self._stored(band, off, n)
        block = self.block_bytes
        first = off // block * block
        end = -(-(off + n) // block) * block
        raw = self._stored(band, first, end - first)
        plain = crypt_blocks(self.keys, (band * self.band_bytes + first) // block, raw, encrypt=False, block=block)
        return plain[off - first : off - first + n]

    def _stored(self, band: int, off: int, n: int) -> bytes:
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
