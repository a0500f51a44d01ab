"""DMG images of a folder tree: build, open, verify, extract.

Image kinds (``--format``): UDIF (``UDZO``, ``UDBZ``, ``ULFO``, ``ULMO``, ``UDRO``: a ``.dmg``
with checksums, :mod:`imaging.udif`), optionally inside Apple's encrypted container
(:mod:`imaging.dmg_crypt`); ``SPARSE`` (a growable ``.sparseimage``) and ``SPARSEBUNDLE`` (a
``.sparsebundle`` folder of bands), :mod:`imaging.sparse`, plain or encrypted too. The volume
inside is HFS+ streamed from :class:`imaging.hfsplus.HfsPlusWriter` (no raw image is staged), or with
``--filesystem iso-udf`` an ISO9660 + Rock Ridge + Joliet + UDF volume (what ``hdiutil
makehybrid`` makes) built by the ISO writer (:func:`imaging.iso_build.build_layout` and
:func:`imaging.iso_write.write_image`: reproducible, owners and modes kept), staged in a
temporary file because that writer fills the image out of order (metadata, then data, then
patches).
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import stat
import tempfile
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pool.errors import ImageCorruptError, UsageError

from .common import SourceTree, walk_tree, write_sidecar
from .dmg_crypt import EncryptedFile, EncryptedWriter, Keys, Sealer, is_encrypted
from .dmg_finder import FinderLayout
from .hfsplus import BLOCK_BYTES, HfsOptions, HfsPlusWriter
from .hfsplus_format import UNKNOWN_ID
from .hfsplus_read import HfsVolume
from .sparse import SPRS_MAGIC, SparseBundle, SparseImage, bundle_is_encrypted, write_bundle_sidecar
from .sparse_write import write_sparsebundle, write_sparseimage
from .udif import FORMATS as UDIF_FORMATS
from .udif import FileSpan, Piece, UdifResult, write_udif
from .udif_read import UdifImage
from .udif_sla import license_resources

log = logging.getLogger(__name__)

FILESYSTEMS = ("hfs+", "iso-udf")
SPARSE_FORMATS = ("SPARSE", "SPARSEBUNDLE")
ALL_FORMATS = (*UDIF_FORMATS, *SPARSE_FORMATS)
HFS_PARTITION = "disk image (Apple_HFS : 0)"
ISO_PARTITION = "disk image (Apple_ISO : 0)"

Password = str | Callable[[], str] | None  #: a password, a function asking for it, or none


@dataclass
class BuildResult:
    """What :func:`build_dmg` made (sizes in bytes).

    Attributes:
        image: the ``.dmg`` file, ``.sparseimage`` file or ``.sparsebundle`` folder.
        volume_bytes: size of the volume (the disk inside the image).
        image_bytes: bytes the image takes on disk.
        sha256: the image's SHA-256 (None for a bundle, whose sidecar lists every file).
        encryption: ``AES-128``/``AES-256`` or None.
        udif: the UDIF writer's result (None for sparse formats).
        license: whether a licence agreement was written.
        bands: bands written (sparse formats).
    """

    image: Path
    format: str
    filesystem: str
    case_sensitive: bool
    files: int
    folders: int
    skipped: list[str]
    volume_bytes: int
    image_bytes: int
    sha256: str | None
    encryption: str | None = None
    udif: UdifResult | None = None
    bands: int = 0
    license: bool = False


def _segment_id(tree: SourceTree, opts: HfsOptions, fmt: str) -> bytes:
    if opts.source_date_epoch is None:
        return uuid.uuid4().bytes
    seed = f"{opts.volume_name}|{opts.source_date_epoch}|{fmt}|{len(tree.entries)}|{tree.total_bytes}"
    return hashlib.sha256(seed.encode()).digest()[:16]


def _iso_tree(tree: SourceTree, include_permissions: bool) -> SourceTree:
    """*tree* as the ISO volume shows it: real owners and modes, or (without
    ``--include-permissions``) owner/group "unknown" (99) and 0644/0755, as the HFS+ volume."""
    if include_permissions:
        return tree

    def plain(e: Any) -> Any:
        perm = 0o755 if e.kind != "file" or e.mode & 0o111 else 0o644
        return dataclasses.replace(e, uid=UNKNOWN_ID, gid=UNKNOWN_ID, mode=stat.S_IFMT(e.mode) | perm)

    return dataclasses.replace(tree, entries=[plain(e) for e in tree.entries])


def _iso_volume(tree: SourceTree, opts: HfsOptions, folder: Path) -> Path:
    """Write the ISO9660 + Rock Ridge + Joliet + UDF volume of *tree* into *folder*; its path."""
    from .iso_build import IsoOptions, build_layout
    from .iso_write import write_image

    iso_opts = IsoOptions(volume_name=opts.volume_name, source_date_epoch=opts.source_date_epoch)
    layout = build_layout(_iso_tree(tree, opts.include_permissions), iso_opts)
    path = folder / "volume.iso"
    write_image(layout, path)
    return path


def _without(tree: SourceTree, reserved: list[str]) -> SourceTree:
    """*tree* less the entries at (or under) the root-relative paths in *reserved*."""
    dropped = [e.rel for e in tree.entries if any(e.rel == r or e.rel.startswith(r + "/") for r in reserved)]
    if not dropped:
        return tree
    for rel in dropped:
        if "/" not in rel:
            log.warning("%s in the source is replaced by the generated one (--icon/--background)", rel)
    gone = set(dropped)
    kept = [e for e in tree.entries if e.rel not in gone]
    total = sum(e.size for e in kept if e.kind == "file")
    return dataclasses.replace(tree, entries=kept, total_bytes=total)


def _file_stream(path: Path) -> Iterator[Piece]:
    size = path.stat().st_size
    yield FileSpan(path, size, "the ISO volume")
    yield -size % 512


def build_dmg(
    source: Path,
    output: Path,
    *,
    fmt: str = "UDZO",
    filesystem: str = "hfs+",
    opts: HfsOptions | None = None,
    workers: int | None = None,
    progress: Callable[[int], None] | None = None,
    on_plan: Callable[[int], None] | None = None,
    encrypt: str | None = None,
    password: str | None = None,
    band_bytes: int | None = None,
    finder: FinderLayout | None = None,
    license_text: str | None = None,
    tree: SourceTree | None = None,
) -> BuildResult:
    """Build ``output`` (an image of *source*) and its ``.sha256`` sidecar.

    Args:
        source: the folder to image (a mounted bucket view or any folder).
        output: the ``.dmg``/``.sparseimage`` file or ``.sparsebundle`` folder (replaced when complete).
        fmt: UDZO, UDBZ, ULFO, ULMO, UDRO, SPARSE or SPARSEBUNDLE.
        filesystem: ``hfs+`` or ``iso-udf``.
        opts: volume options (name, permissions, metadata, reproducibility, size).
        workers: compressing threads/processes (UDIF).
        progress: called with volume bytes consumed.
        on_plan: called once with the volume size in bytes before writing starts.
        encrypt: ``AES-128`` or ``AES-256`` to write Apple's encrypted container (any format).
        password: the password for *encrypt*.
        band_bytes: band size of a sparse image or bundle (default: 1 MiB or more, so that one
            header indexes the disk / 8 MiB).
        finder: volume icon and Finder window (HFS+ only, :mod:`imaging.dmg_finder`); source
            entries at the paths it creates (``.VolumeIcon.icns``, ``.background``,
            ``.DS_Store`` in the root) are left out, with a warning.
        license_text: a licence agreement macOS shows before mounting (UDIF formats only,
            :mod:`imaging.udif_sla`).
        tree: the entries to put in the image, already walked from *source* (default: all of
            *source*); an incremental image passes only what changed (:mod:`imaging.dmg_incremental`).

    Raises:
        UsageError: a bad option; NotFoundError: no such folder; UnsupportedError: a name or
        codec the image cannot hold; BusyError: a file changed while it was read.
    """
    opts = opts or HfsOptions()
    if filesystem not in FILESYSTEMS:
        raise UsageError(f"unknown filesystem {filesystem!r} (hfs+ or iso-udf)")
    if fmt not in ALL_FORMATS:
        raise UsageError(f"unknown DMG format {fmt!r} (one of {', '.join(ALL_FORMATS)})")
    if encrypt is not None and not password:
        raise UsageError("--encrypt needs a password")
    if band_bytes is not None and fmt not in SPARSE_FORMATS:
        raise UsageError("--band-size applies to SPARSE and SPARSEBUNDLE images only")
    if finder and filesystem != "hfs+":
        raise UsageError("--icon and --background need an HFS+ volume (--filesystem hfs+)")
    if license_text is not None and fmt not in UDIF_FORMATS:
        raise UsageError(f"--license needs a UDIF image (UDZO, UDBZ, ULFO, ULMO, UDRO), not {fmt}")
    if tree is None:
        tree = walk_tree(source)
    if finder:
        tree = _without(tree, finder.reserved_names)
        extras, root_flags = finder.extras(opts.volume_name)
        opts = dataclasses.replace(
            opts, extras=[*opts.extras, *extras], root_finder_flags=opts.root_finder_flags | root_flags
        )
    files = sum(1 for e in tree.entries if e.kind != "dir")
    folders = len(tree.entries) - files - 1
    case_sensitive = False
    free: list[tuple[int, int]] = []  # the volume's unallocated bytes (an encrypted sparse image skips them)
    output = Path(output)
    with tempfile.TemporaryDirectory(prefix=".dmg-", dir=output.parent) as staging:
        if filesystem == "hfs+":
            writer = HfsPlusWriter(tree, opts)
            case_sensitive = writer.case_sensitive
            stream: Iterator[Piece] = writer.stream()
            volume_bytes = writer.size_bytes
            name = HFS_PARTITION
            if writer.free_blocks:  # blocks [used, total - 1): the last one holds the alternate header
                free.append((writer.used_blocks * BLOCK_BYTES, (writer.total_blocks - 1) * BLOCK_BYTES))
        else:
            iso = _iso_volume(tree, opts, Path(staging))
            stream = _file_stream(iso)
            volume_bytes = -(-iso.stat().st_size // 512) * 512
            name = ISO_PARTITION
        if on_plan is not None:
            on_plan(volume_bytes)
        made = BuildResult(output, fmt, filesystem, case_sensitive, files, folders, tree.skipped, volume_bytes, 0, None)
        made.encryption = encrypt
        made.license = license_text is not None
        seal = Sealer(encrypt, password) if encrypt is not None and password else None
        if fmt == "SPARSE":
            sres = write_sparseimage(
                output, stream, volume_bytes, band_bytes=band_bytes, seal=seal, free=free, progress=progress
            )
            made.sha256 = write_sidecar(output)
        elif fmt == "SPARSEBUNDLE":
            kw = {"band_bytes": band_bytes} if band_bytes is not None else {}
            sres = write_sparsebundle(output, stream, volume_bytes, seal=seal, free=free, progress=progress, **kw)
            write_bundle_sidecar(output)
        else:
            resources = license_resources(license_text) if license_text is not None else None
            made.udif = _write_udif_file(
                output, stream, fmt, name, _segment_id(tree, opts, fmt), workers, progress, encrypt, password, resources
            )
            made.sha256 = write_sidecar(output, None if encrypt else made.udif.sha256)
            made.image_bytes = output.stat().st_size
            return made
    made.image_bytes = sres.image_bytes
    made.bands = sres.bands_written
    return made


def _write_udif_file(
    output: Path,
    stream: Iterator[Piece],
    fmt: str,
    name: str,
    segment_id: bytes,
    workers: int | None,
    progress: Callable[[int], None] | None,
    encrypt: str | None,
    password: str | None,
    resources: dict[str, list[dict[str, Any]]] | None = None,
) -> UdifResult:
    """Write the UDIF image to *output* (atomically), inside the encrypted container if asked."""
    tmp = output.with_name(f".{output.name}.part")
    try:
        with open(tmp, "wb") as out:
            sink: Any = out
            if encrypt is not None:
                assert password
                sink = EncryptedWriter(out, Keys.new(encrypt), password)
            res = write_udif(
                sink,
                stream,
                fmt=fmt,
                partition_name=name,
                segment_id=segment_id,
                workers=workers,
                progress=progress,
                resources=resources,
            )
            if encrypt is not None:
                sink.finish()
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, output)
    finally:
        tmp.unlink(missing_ok=True)
    return res


Disk = UdifImage | SparseImage | SparseBundle


def image_kind(path: Path) -> str:
    """``"SPARSEBUNDLE"``, ``"SPARSE"``, ``"ENCRYPTED"`` or ``"UDIF"`` by content (UDIF is the fallback)."""
    path = Path(path)
    if path.is_dir():
        return "SPARSEBUNDLE"
    if is_encrypted(path):
        return "ENCRYPTED"
    try:
        with open(path, "rb") as f:
            if f.read(4) == b"sprs":
                return "SPARSE"
    except (FileNotFoundError, PermissionError):
        pass
    return "UDIF"


def _secret(path: Path, password: Password) -> str:
    if password is None:
        raise UsageError(
            f"{Path(path).name} is encrypted: give its password (--password, --password-env VAR or --password-file FILE)"
        )
    return password() if callable(password) else password


def open_disk(path: Path, password: Password = None) -> Disk:
    """The disk inside the image at *path*: a UDIF file, a sparse image (each plain or inside
    the encrypted container) or a sparse bundle (plain or encrypted). *password* is asked for
    (when a function) only if the image is encrypted.

    Raises:
        NotFoundError: no such image. ImageCorruptError: not an image we read, or damaged.
        UsageError: the image is encrypted and no password was given. AuthError: wrong password.
    """
    kind = image_kind(path)
    if kind == "SPARSEBUNDLE":
        return SparseBundle(path, _secret(path, password) if bundle_is_encrypted(path) else None)
    if kind == "SPARSE":
        return SparseImage(path)
    if kind == "ENCRYPTED":
        plain = EncryptedFile(path, _secret(path, password))
        try:
            inner = plain.pread(len(SPRS_MAGIC), 0)
        except BaseException:
            plain.close()
            raise
        if inner == SPRS_MAGIC:
            return SparseImage(path, source=plain)
        try:
            return UdifImage(path, source=plain)
        except ImageCorruptError as e:
            raise ImageCorruptError(
                f"{Path(path).name}: the decrypted data is neither a sparse image nor a UDIF image ({e})"
            ) from None
    return UdifImage(path)


@dataclass(frozen=True)
class IsoEntry:
    """An entry of an ISO volume with its inode number: the shape :meth:`HfsVolume.walk` yields
    (sizes in bytes, times in ns since the epoch)."""

    ino: int
    kind: str
    size: int
    mode: int
    uid: int
    gid: int
    mtime_ns: int
    atime_ns: int


class DmgImage:
    """An open image (``.dmg``, encrypted ``.dmg``, ``.sparseimage`` or ``.sparsebundle``) plus a
    view of the volume inside (HFS+/HFSX, or ISO9660/UDF as ``--filesystem iso-udf`` and ``hdiutil
    makehybrid`` make), chosen by content.

    Attributes:
        disk: the container (:class:`UdifImage`, :class:`SparseImage` or :class:`SparseBundle`).
        volume: an :class:`HfsVolume` or a :class:`~imaging.dmg_iso.DmgIsoVolume` (both are
            ``vfs.imagefs.ImageView`` implementations).
        filesystem: ``"hfs+"`` or ``"iso-udf"``.

    Raises (from the constructor):
        NotFoundError: no such file; ImageCorruptError: not a DMG, or no readable HFS+ or ISO volume;
        UsageError / AuthError: an encrypted image without its password / with a wrong one.
    """

    def __init__(self, path: Path, password: Password = None) -> None:
        from .dmg_iso import DmgIsoVolume, looks_like_iso

        self.disk = open_disk(path, password)
        self.filesystem = "hfs+"
        self.volume: HfsVolume | DmgIsoVolume
        try:
            if looks_like_iso(self.disk):
                self.filesystem = "iso-udf"
                self.volume = DmgIsoVolume(self.disk)
            else:
                self.volume = HfsVolume(self.disk.read, self.disk.size_bytes)
        except ImageCorruptError:
            self.disk.close()
            raise
        except Exception as e:  # a struct error on garbage: still a damaged image, one line
            self.disk.close()
            raise ImageCorruptError(f"{self.filesystem} volume unreadable ({type(e).__name__}: {e})") from None

    def entries(self) -> Iterator[tuple[str, Any]]:
        """Every entry but the root as ``(path, entry)``, parents before children; an entry has
        ``ino``, ``kind``, ``size``, ``mode``, ``uid``, ``gid``, ``mtime_ns``, ``atime_ns``."""
        if isinstance(self.volume, HfsVolume):
            yield from self.volume.walk()
            return
        for ino, n in self.volume.walk():
            yield n.rel, IsoEntry(ino, n.kind, n.size, n.mode, n.uid, n.gid, n.mtime_ns, n.atime_ns)

    def close(self) -> None:
        if not isinstance(self.volume, HfsVolume):
            self.volume.close()
        self.disk.close()

    def __enter__(self) -> DmgImage:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
