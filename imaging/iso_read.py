"""Read an ISO image: one directory tree (Rock Ridge, else UDF, else Joliet, else plain ISO 9660).

pycdlib parses the volume descriptors and directory trees (it checks UDF descriptor tags and
CRCs as it goes); the reader keeps one node per entry and reads file data with ``pread`` on the
image's byte extents, so it is safe from several threads (the FUSE view serves reads from worker
threads). :class:`IsoReader` implements the ``vfs.imagefs.ImageView`` protocol.

pycdlib refuses an image whose MBR starts with the isohybrid code but has no active partition (a
protective MBR with the BIOS code, as ``--hybrid --bios --uefi`` writes and the UEFI spec wants);
such images are parsed again with the MBR hidden from pycdlib, which needs nothing from it.
"""

from __future__ import annotations

import calendar
import io
import logging
import os
import stat
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pycdlib
from pycdlib.pycdlibexception import PyCdlibException

from pool.errors import ImageCorruptError, NotFoundError

log = logging.getLogger(__name__)


def _fix_inline_ads() -> None:
    """Make pycdlib read UDF data embedded in File Entries (ICB allocation type 3) where it is.

    pycdlib's ``parse_file_entry`` gives an embedded ("inline") allocation descriptor the File
    Entry's *absolute* block, while every reader of ``log_block_num`` (its own directory walk and
    ours) adds the partition start: embedded directories read as empty whenever the partition
    does not start at block 0. Wrapped here to store the partition-relative block, as for short_ads.
    """
    import pycdlib.udf as udfmod

    original = udfmod.parse_file_entry
    if getattr(original, "darkstorage_fixed", False):
        return

    def parse_file_entry(icbdata: Any, abs_extent: int, rel_block: int, parent: Any) -> Any:
        entry = original(icbdata, abs_extent, rel_block, parent)
        if entry is not None:
            for ad in entry.alloc_descs:
                if isinstance(ad, udfmod.UDFInlineAD):
                    ad.log_block_num = rel_block
        return entry

    parse_file_entry.darkstorage_fixed = True  # type: ignore[attr-defined]
    udfmod.parse_file_entry = parse_file_entry  # type: ignore[assignment]


_fix_inline_ads()

ROOT_INO = 1
_READ_BYTES = 1 << 20


@dataclass
class IsoNode:
    """One entry of the image as the reader shows it (the ``getattr`` shape of ImageView).

    Attributes:
        rel: ``/``-separated path from the root (``""`` for the root), surrogateescape str.
        mode: st_mode; uid, gid; size in bytes; times in ns since the epoch.
        extents: (byte offset in the image, length) runs holding the data, in file order.
        target: symlink target bytes.
    """

    rel: str
    mode: int
    uid: int = 0
    gid: int = 0
    size: int = 0
    mtime_ns: int = 0
    nlink: int = 1
    extents: list[tuple[int, int]] = field(default_factory=list)
    target: bytes = b""
    children: dict[bytes, int] = field(default_factory=dict)

    @property
    def atime_ns(self) -> int:
        return self.mtime_ns

    @property
    def ctime_ns(self) -> int:
        return self.mtime_ns

    @property
    def kind(self) -> str:
        return "dir" if stat.S_ISDIR(self.mode) else "symlink" if stat.S_ISLNK(self.mode) else "file"


def _dr_time_ns(rec: Any) -> int:
    d = rec.date
    try:
        secs = calendar.timegm((1900 + d.years_since_1900, d.month, d.day_of_month, d.hour, d.minute, d.second))
        return (secs - d.gmtoffset * 15 * 60) * 10**9
    except (AttributeError, ValueError, OverflowError):
        return 0


def _udf_time_ns(ts: Any) -> int:
    try:
        secs = calendar.timegm((ts.year, ts.month, ts.day, ts.hour, ts.minute, ts.second))
        tz = ts.tz & 0xFFF
        offset_min = tz - 0x1000 if tz & 0x800 else tz
        return (secs - (offset_min * 60 if offset_min != -2047 else 0)) * 10**9
    except (AttributeError, ValueError, OverflowError):
        return 0


def _udf_mode(perms: int, kind: str) -> int:
    bits = 0
    for shift_posix, shift_udf in ((0, 0), (3, 5), (6, 10)):
        bits |= ((perms >> shift_udf) & 7) << shift_posix
    fmt = {"dir": stat.S_IFDIR, "symlink": stat.S_IFLNK}.get(kind, stat.S_IFREG)
    return fmt | bits


def _udf_symlink_target(data: bytes) -> bytes:
    """Decode UDF path components (ECMA-167 4/14.16) into a POSIX path."""
    parts: list[bytes] = []
    absolute = False
    i = 0
    while i + 4 <= len(data):
        ctype, length = data[i], data[i + 1]
        ident = data[i + 4 : i + 4 + length]
        i += 4 + length
        if ctype in (1, 2):
            absolute, parts = True, []
        elif ctype == 3:
            parts.append(b"..")
        elif ctype == 4:
            parts.append(b".")
        elif ctype == 5 and ident:
            parts.append(ident[1:].decode("utf-16-be").encode() if ident[0] == 16 else ident[1:])
    return (b"/" if absolute else b"") + b"/".join(parts)


class _HiddenMbr(io.RawIOBase):
    """The image file with its first 512 bytes (the MBR) read as zeros."""

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        base = {os.SEEK_SET: 0, os.SEEK_CUR: self._pos, os.SEEK_END: os.fstat(self._fd).st_size}[whence]
        self._pos = base + offset
        return self._pos

    def tell(self) -> int:
        return self._pos

    def readinto(self, buf: Any) -> int:
        view = memoryview(buf).cast("B")
        data = os.pread(self._fd, len(view), self._pos)
        n = len(data)
        view[:n] = data
        if self._pos < 512:
            hide = min(512 - self._pos, n)
            view[:hide] = bytes(hide)
        self._pos += n
        return n

    def close(self) -> None:
        os.close(self._fd)
        super().close()


class IsoReader:
    """A read-only view of an ISO image (the ``vfs.imagefs.ImageView`` protocol).

    Args:
        path: the image file.
        tree: ``"rr"``, ``"udf"``, ``"joliet"``, ``"iso"`` or None for the richest one present.

    Raises:
        NotFoundError: *path* does not exist.
        ImageCorruptError: pycdlib cannot parse the image (the message says what is wrong).
    """

    def __init__(self, path: Path, *, tree: str | None = None) -> None:
        self.path = Path(path)
        try:
            self._fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            raise NotFoundError(f"no such image: {path}") from None
        self._fp: Any = os.fdopen(os.dup(self._fd), "rb")
        self.iso = pycdlib.PyCdlib()
        try:
            try:
                self.iso.open_fp(self._fp)
            except PyCdlibException as e:
                if "IsoHybrid" not in str(e):
                    raise
                self._fp.close()
                self._fp = io.BufferedReader(_HiddenMbr(os.dup(self._fd)))
                self.iso = pycdlib.PyCdlib()
                self.iso.open_fp(self._fp)
        except PyCdlibException as e:
            self.close()
            raise ImageCorruptError(f"{self.path.name}: not a readable ISO image: {e}") from None
        except (OSError, ValueError, IndexError, KeyError) as e:  # truncated or garbled structures
            self.close()
            raise ImageCorruptError(f"{self.path.name}: damaged ISO structure: {e}") from None
        self._choose_tree(tree)
        try:
            self._load()
        except PyCdlibException as e:
            self.close()
            raise ImageCorruptError(f"{self.path.name}: damaged directory tree: {e}") from None

    def _choose_tree(self, tree: str | None) -> None:
        """Pick the tree to show (*tree*, or the richest one present) and reset the node table."""
        if tree is None:
            has = self.iso.has_rock_ridge(), self.iso.has_udf(), self.iso.has_joliet()
            tree = "rr" if has[0] else "udf" if has[1] else "joliet" if has[2] else "iso"
        self.tree = tree
        self._key = {"rr": "rr_path", "udf": "udf_path", "joliet": "joliet_path", "iso": "iso_path"}[tree]
        self.nodes: list[IsoNode] = [IsoNode(rel="", mode=stat.S_IFDIR | 0o555)]  # index 0 unused
        self._lock = threading.Lock()

    def _pread(self, size: int, offset: int) -> bytes:
        """*size* bytes of the image at *offset* (every data read goes through here)."""
        return os.pread(self._fd, size, offset)

    # -- loading -------------------------------------------------------------------------------
    def _name(self, rec: Any) -> bytes:
        if self.tree == "rr":
            return bytes(rec.rock_ridge.name()) if rec.rock_ridge is not None else rec.file_identifier().split(b";")[0]
        if self.tree == "udf":
            fi = rec.file_ident
            return (
                b"" if fi is None else bytes(fi.fi).decode(fi.encoding or "latin-1").encode("utf-8", "surrogateescape")
            )
        if self.tree == "joliet":
            return rec.file_identifier().decode("utf-16-be").split(";")[0].encode("utf-8", "surrogateescape")
        ident = rec.file_identifier().split(b";")[0]
        return ident[:-1] if ident.endswith(b".") else ident

    def _udf_runs(self, rec: Any) -> list[tuple[int, int]]:
        part_start = self.iso.udf_main_descs.partitions[0].part_start_location
        return [((part_start + d.log_block_num) * 2048 + d.offset, d.extent_length) for d in rec.alloc_descs]

    def _node(self, group: list[Any], rel: str) -> IsoNode:
        rec = group[0]
        if self.tree == "udf":
            kind = "dir" if rec.is_dir() else "symlink" if rec.is_symlink() else "file"
            node = IsoNode(
                rel=rel,
                mode=_udf_mode(rec.perms, kind),
                uid=rec.uid if rec.uid != 0xFFFFFFFF else 0,
                gid=rec.gid if rec.gid != 0xFFFFFFFF else 0,
                mtime_ns=_udf_time_ns(rec.mod_time),
            )
            if kind == "file":
                node.extents = self._udf_runs(rec)
            elif kind == "symlink":
                node.target = _udf_symlink_target(b"".join(self._pread(n, o) for o, n in self._udf_runs(rec)))
        else:
            rr = rec.rock_ridge if self.tree in ("rr", "iso") else None
            if rr is not None and rr.is_symlink():
                node = IsoNode(
                    rel=rel, mode=stat.S_IFLNK | 0o777, mtime_ns=_dr_time_ns(rec), target=bytes(rr.symlink_path())
                )
            elif self.tree == "rr" and rr is not None:
                node = IsoNode(rel=rel, mode=rr.get_file_mode(), mtime_ns=_dr_time_ns(rec))
            else:
                node = IsoNode(
                    rel=rel,
                    mode=(stat.S_IFDIR | 0o555) if rec.is_dir() else (stat.S_IFREG | 0o444),
                    mtime_ns=_dr_time_ns(rec),
                )
            if self.tree == "rr" and rr is not None:
                px = rr.dr_entries.px_record
                if px is not None:
                    node.uid, node.gid, node.nlink = px.posix_user_id, px.posix_group_id, px.posix_file_links
                    if not node.target:
                        node.mode = px.posix_file_mode
                if node.target:
                    node.mode = stat.S_IFLNK | stat.S_IMODE(node.mode)
                elif rr.child_link_record_exists() or rr.cl_to_moved_dr is not None:
                    node.mode = stat.S_IFDIR | stat.S_IMODE(node.mode)
            if node.kind == "file":  # multi-extent files: one record per chunk, in order
                node.extents = [(r.extent_location() * 2048, r.data_length) for r in group]
        if node.kind == "file":
            node.size = sum(n for _, n in node.extents)
        elif node.kind == "symlink":
            node.size = len(node.target)
        return node

    def _kids(self, rec: Any) -> Iterator[Any]:
        if self.tree == "udf":
            for fi in rec.fi_descs.values():
                if not fi.is_parent() and fi.file_entry is not None:
                    yield fi.file_entry
            return
        for child in rec.children:
            if child is None or child.is_dot() or child.is_dotdot():
                continue
            rr = child.rock_ridge
            if self.tree == "rr" and rr is not None and rr.relocated_record():
                continue  # shown where its CL entry is
            yield child

    def _dir_of(self, rec: Any) -> Any:
        rr = rec.rock_ridge if self.tree == "rr" else None
        return rr.cl_to_moved_dr if rr is not None and rr.cl_to_moved_dr is not None else rec

    def _load(self) -> None:
        root = self.nodes[0]
        root_rec: Any
        if self.tree == "udf":
            root_rec = self.iso.udf_root
        elif self.tree == "joliet":
            root_rec = self.iso.joliet_vd.root_directory_record()  # type: ignore[union-attr]
        else:
            root_rec = self.iso.pvd.root_directory_record()
        dot = root_rec.children[0] if self.tree != "udf" and root_rec.children else root_rec
        real_root = self._node([dot], "")
        root.mode = stat.S_IFDIR | stat.S_IMODE(real_root.mode)
        root.uid, root.gid, root.mtime_ns = real_root.uid, real_root.gid, real_root.mtime_ns
        self.nodes.append(root)  # inode 1
        stack: list[tuple[int, Any]] = [(ROOT_INO, root_rec)]
        while stack:
            ino, rec = stack.pop()
            parent = self.nodes[ino]
            groups: dict[bytes, list[Any]] = {}
            for child in self._kids(rec):
                name = self._name(child)
                if name:
                    groups.setdefault(name, []).append(child)
            for name, group in groups.items():
                shown = name.decode("utf-8", "surrogateescape")
                rel = f"{parent.rel}/{shown}" if parent.rel else shown
                node = self._node(group, rel)
                self.nodes.append(node)
                parent.children[name] = len(self.nodes) - 1
                if node.kind == "dir":
                    stack.append((len(self.nodes) - 1, self._dir_of(group[0])))

    # -- ImageView -----------------------------------------------------------------------------
    def _get(self, ino: int) -> IsoNode:
        if ino < 1 or ino >= len(self.nodes):
            raise KeyError(ino)
        return self.nodes[ino]

    def getattr(self, ino: int) -> IsoNode:
        return self._get(ino)

    def lookup(self, parent: int, name: bytes) -> int:
        return self._get(parent).children[name]

    def readdir(self, ino: int) -> Sequence[tuple[bytes, int]]:
        return list(self._get(ino).children.items())

    def readlink(self, ino: int) -> bytes:
        return self._get(ino).target

    def read(self, ino: int, offset: int, size: int) -> bytes:
        node = self._get(ino)
        out: list[bytes] = []
        pos = 0
        for start, length in node.extents:
            if size <= 0:
                break
            if offset < pos + length:
                skip = max(0, offset - pos)
                n = min(length - skip, size)
                out.append(self._pread(n, start + skip))
                size -= n
                offset += n
            pos += length
        return b"".join(out)

    def listxattr(self, ino: int) -> Sequence[bytes]:
        self._get(ino)
        return []

    def getxattr(self, ino: int, name: bytes) -> bytes:
        raise KeyError(name)

    # -- helpers for ls / extract / verify -----------------------------------------------------
    def walk(self) -> Iterator[tuple[int, IsoNode]]:
        """Every entry but the root, parents before children, siblings in image order."""
        stack = [ROOT_INO]
        while stack:
            ino = stack.pop()
            kids = list(self.nodes[ino].children.values())
            for child in kids:
                yield child, self.nodes[child]
            stack.extend(reversed([c for c in kids if self.nodes[c].kind == "dir"]))

    def chunks(self, ino: int) -> Iterator[bytes]:
        """The data of *ino* in pieces of at most 1 MiB (memory stays flat)."""
        for start, length in self._get(ino).extents:
            pos = 0
            while pos < length:
                data = self._pread(min(_READ_BYTES, length - pos), start + pos)
                if not data:
                    raise ImageCorruptError(f"{self.path.name}: {self.nodes[ino].rel} runs past the end of the image")
                yield data
                pos += len(data)

    def close(self) -> None:
        """Release the image."""
        try:
            self.iso.close()
        except Exception:  # noqa: BLE001 - pycdlib refuses close() on a half-opened image
            pass
        self._fp.close()
        os.close(self._fd)

    def __enter__(self) -> IsoReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
