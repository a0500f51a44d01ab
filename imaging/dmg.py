"""DMG images of a folder tree: build (HFS+ or ISO9660+UDF inside UDIF), open, verify, extract.

``build_dmg`` streams the volume from :class:`imaging.hfsplus.HfsPlusWriter` straight into
:func:`imaging.udif.write_udif` (no raw image is staged), then writes the SHA-256 sidecar from
the digest computed while writing. ``--filesystem iso-udf`` builds an ISO9660 + Joliet +
Rock Ridge + UDF volume with pycdlib (what ``hdiutil makehybrid`` makes); pycdlib needs a
seekable output, so that volume is staged in a temporary file first (the ISO helper's writer
writes to a path, not a stream, so this small pycdlib call is used instead).
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pool.errors import ImageCorruptError, UsageError

from .common import SourceTree, walk_tree, write_sidecar
from .hfsplus import HfsOptions, HfsPlusWriter
from .hfsplus_read import HfsVolume
from .udif import Piece, UdifResult, write_udif
from .udif_read import UdifImage

log = logging.getLogger(__name__)

FILESYSTEMS = ("hfs+", "iso-udf")
HFS_PARTITION = "disk image (Apple_HFS : 0)"
ISO_PARTITION = "disk image (Apple_ISO : 0)"


@dataclass
class BuildResult:
    """What :func:`build_dmg` made (sizes in bytes)."""

    image: Path
    format: str
    filesystem: str
    case_sensitive: bool
    files: int
    folders: int
    skipped: list[str]
    volume_bytes: int
    udif: UdifResult


def _segment_id(tree: SourceTree, opts: HfsOptions, fmt: str) -> bytes:
    if opts.source_date_epoch is None:
        return uuid.uuid4().bytes
    seed = f"{opts.volume_name}|{opts.source_date_epoch}|{fmt}|{len(tree.entries)}|{tree.total_bytes}"
    return hashlib.sha256(seed.encode()).digest()[:16]


def _iso_stream(tree: SourceTree, volume_name: str) -> Iterator[Piece]:
    """An ISO9660 (Rock Ridge, Joliet) + UDF volume of *tree*, staged in a temporary file."""
    import pycdlib

    iso = pycdlib.PyCdlib()
    iso.new(interchange_level=3, rock_ridge="1.09", udf="2.60", vol_ident=volume_name[:32])
    iso_paths = {"": ""}  # ISO 9660 names are generated (N<index>); Rock Ridge and UDF keep the real ones
    for n, e in enumerate(tree.entries[1:], start=1):
        parent = e.rel.rsplit("/", 1)[0] if "/" in e.rel else ""
        iso_path = f"{iso_paths[parent]}/N{n}"
        udf_path = "/" + e.rel
        if e.kind == "dir":
            iso_paths[e.rel] = iso_path
            iso.add_directory(iso_path=iso_path, rr_name=e.name, udf_path=udf_path)
        elif e.kind == "file":
            iso.add_file(str(e.path), iso_path=iso_path + ";1", rr_name=e.name, udf_path=udf_path)
        else:
            iso.add_symlink(
                symlink_path=iso_path + ";1",
                rr_symlink_name=e.name,
                rr_path=e.target,
                udf_symlink_path=udf_path,
                udf_target=e.target,
            )
    with tempfile.TemporaryFile() as tmp:
        iso.write_fp(tmp)
        iso.close()
        tmp.seek(0)
        while piece := tmp.read(1 << 20):
            yield piece
        yield -tmp.tell() % 512


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
) -> BuildResult:
    """Build ``output`` (a UDIF image of *source*) and its ``.sha256`` sidecar.

    Args:
        source: the folder to image (a mounted bucket view or any folder).
        output: the ``.dmg`` to write (replaced atomically when complete).
        fmt: UDZO, UDBZ, ULFO, ULMO or UDRO.
        filesystem: ``hfs+`` or ``iso-udf``.
        opts: volume options (name, permissions, metadata, reproducibility, size).
        workers: compressing threads/processes.
        progress: called with volume bytes consumed.
        on_plan: called once with the volume size in bytes before writing starts.

    Raises:
        UsageError: a bad option; NotFoundError: no such folder; UnsupportedError: a name or
        codec the image cannot hold; BusyError: a file changed while it was read.
    """
    opts = opts or HfsOptions()
    if filesystem not in FILESYSTEMS:
        raise UsageError(f"unknown filesystem {filesystem!r} (hfs+ or iso-udf)")
    tree = walk_tree(source)
    files = sum(1 for e in tree.entries if e.kind != "dir")
    folders = len(tree.entries) - files - 1
    case_sensitive = False
    if filesystem == "hfs+":
        writer = HfsPlusWriter(tree, opts)
        case_sensitive = writer.case_sensitive
        stream: Iterator[Piece] = writer.stream()
        volume_bytes = writer.size_bytes
        name = HFS_PARTITION
    else:
        stream = _iso_stream(tree, opts.volume_name)
        volume_bytes = tree.total_bytes
        name = ISO_PARTITION
    if on_plan is not None:
        on_plan(volume_bytes)
    output = Path(output)
    tmp = output.with_name(f".{output.name}.part")
    try:
        with open(tmp, "wb") as out:
            res = write_udif(
                out,
                stream,
                fmt=fmt,
                partition_name=name,
                segment_id=_segment_id(tree, opts, fmt),
                workers=workers,
                progress=progress,
            )
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, output)
    finally:
        tmp.unlink(missing_ok=True)
    write_sidecar(output, res.sha256)
    return BuildResult(
        output,
        fmt,
        filesystem,
        case_sensitive,
        files,
        folders,
        tree.skipped,
        res.file_bytes if filesystem == "iso-udf" else volume_bytes,
        res,
    )


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
    """An open ``.dmg``: the UDIF container plus a view of the volume inside (HFS+/HFSX, or
    ISO9660/UDF as ``--filesystem iso-udf`` and ``hdiutil makehybrid`` make), chosen by content.

    Attributes:
        udif: the container.
        volume: an :class:`HfsVolume` or a :class:`~imaging.dmg_iso.DmgIsoVolume` (both are
            ``vfs.imagefs.ImageView`` implementations).
        filesystem: ``"hfs+"`` or ``"iso-udf"``.

    Raises (from the constructor):
        NotFoundError: no such file; ImageCorruptError: not a DMG, or no readable HFS+ or ISO volume.
    """

    def __init__(self, path: Path) -> None:
        from .dmg_iso import DmgIsoVolume, looks_like_iso

        self.udif = UdifImage(path)
        self.volume: HfsVolume | DmgIsoVolume
        try:
            if looks_like_iso(self.udif):
                self.filesystem = "iso-udf"
                self.volume = DmgIsoVolume(self.udif)
            else:
                self.filesystem = "hfs+"
                self.volume = HfsVolume(self.udif.read, self.udif.size_bytes)
        except ImageCorruptError:
            self.udif.close()
            raise
        except Exception as e:  # a struct error on garbage: still a damaged image, one line
            self.udif.close()
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
        self.udif.close()

    def __enter__(self) -> DmgImage:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
