"""The pycdlib image builder, kept for UDF images while :mod:`imaging.udf_write` is not there.

Lay out an ISO image from a source tree with pycdlib: ISO 9660 level 3, Rock Ridge, Joliet, UDF.

pycdlib builds every directory structure (ECMA-119 directory records and path tables, RRIP 1.12
PX/TF/NM/SL entries, Joliet SVD, UDF 2.60 descriptors, El Torito catalog) and assigns each file
its extent; :mod:`imaging.iso_write` then writes the bytes. What pycdlib lacks is added here:

* timestamps from the files: pycdlib stamps every record with ``time.time()``, so while a record
  is created its clock is pinned to the entry's mtime (:class:`_Clock`); the volume dates are the
  build time, or ``source_date_epoch`` for reproducible builds (reproducible-builds.org spec);
* reproducible bytes: UDF's random unique id generator is seeded from ``source_date_epoch``;
* owners: Rock Ridge PX and UDF File Entries carry the source uid/gid and permission bits
  (pycdlib leaves them 0 / -1);
* hard links share one extent; files over 4 GiB become ISO 9660 multi-extent records (pycdlib
  1.22) and single UDF File Entries.
"""

from __future__ import annotations

import functools
import io
import logging
import math
import os
import random
import stat
import sys
import time as _time
from collections.abc import Callable, Generator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import pycdlib
import pycdlib.dr
import pycdlib.udf
import pycdlib.utils
from pycdlib.pycdlibexception import PyCdlibException

from pool.errors import NotFoundError, UsageError

from .common import SourceTree, TreeEntry
from .iso_build import IsoLayout, IsoOptions, paused_gc, udf_perms, volume_id
from .iso_layout import BootEntry, DataExtent
from .iso_names import DirNames, is_utf8_name

log = logging.getLogger(__name__)

FORMATS = ("iso9660", "rock-ridge", "joliet", "udf")
BOOT_CATALOG = "boot.cat"
_CLOCKED_MODULES = ("pycdlib.pycdlib", "pycdlib.headervd", "pycdlib.udf", "pycdlib.dates", "pycdlib.utils")


@dataclass
class _PyLayout:
    """A laid-out image: the pycdlib object plus what the writer and the report need.

    Attributes:
        iso: the pycdlib image, every file added (data still unread).
        sources: tree-relative path of each regular file whose data is in the image, in tree order.
        inodes: tree-relative path → the pycdlib inode holding its data (hard links share one).
        skipped: tree-relative paths left out (with the reason logged).
        generated: names of files made from option text (copyright/abstract).
        build_time_s: the volume creation time written.
    """

    iso: IsoImage
    sources: list[str] = field(default_factory=list)
    inodes: dict[str, Any] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)
    generated: list[str] = field(default_factory=list)
    build_time_s: float = 0.0
    seed: int | None = None
    _buffers: list[io.BytesIO] = field(default_factory=list)


class _Clock:
    """Stands in for the ``time`` module inside pycdlib: a settable ``time()``, UTC local time."""

    def __init__(self, now: float) -> None:
        self.now = now

    def time(self) -> float:
        return self.now

    @staticmethod
    def gmtime(secs: float | None = None) -> _time.struct_time:
        # many entries share a second: one struct per second (pycdlib asks 5-8 times per entry)
        return _gmtime_s(math.floor(secs)) if secs is not None else _time.gmtime()

    localtime = gmtime

    def __getattr__(self, name: str) -> Any:
        return getattr(_time, name)


@functools.lru_cache(maxsize=4096)
def _gmtime_s(secs: int) -> _time.struct_time:
    return _time.gmtime(secs)


@contextmanager
def pinned_clock(now: float, seed: int | None) -> Iterator[_Clock]:
    modules = [sys.modules[name] for name in _CLOCKED_MODULES]
    saved = [m.time for m in modules]  # type: ignore[attr-defined]
    saved_random = pycdlib.udf.random  # type: ignore[attr-defined]
    clock = _Clock(now)
    for m in modules:
        m.time = clock  # type: ignore[attr-defined]
    pycdlib.udf.random = random.Random(seed)  # type: ignore[attr-defined,assignment]
    saved_normpath = pycdlib.utils.normpath
    pycdlib.utils.normpath = _normpath
    try:
        yield clock
    finally:
        for m, t in zip(modules, saved, strict=True):
            m.time = t  # type: ignore[attr-defined]
        pycdlib.udf.random = saved_random  # type: ignore[attr-defined]
        pycdlib.utils.normpath = saved_normpath


_pycdlib_normpath = pycdlib.utils.normpath


def _normpath(path: str) -> bytes:
    """pycdlib's ``utils.normpath`` with a shortcut for paths already normal (all of ours)."""
    if (
        path.startswith("/")
        and len(path) > 1
        and not path.endswith(("/", "/.", "/.."))
        and "//" not in path
        and "/./" not in path
        and "/../" not in path
    ):
        return path.encode("utf-8")
    return _pycdlib_normpath(path)


class IsoImage(pycdlib.PyCdlib):
    """A pycdlib image whose file data a caller may write itself (see :mod:`imaging.iso_write`).

    ``inode_writer(outfp, inode)`` replaces pycdlib's read/write copy loop for each file's data;
    it must yield the number of bytes it wrote (pycdlib's progress protocol).
    """

    inode_writer: Callable[[Any, Any], Iterator[int]] | None = None

    def _output_file_data(self, outfp: Any, blocksize: int, ino: Any) -> Generator[Any, None, None]:
        if self.inode_writer is None:
            yield from super()._output_file_data(outfp, blocksize, ino)  # type: ignore[misc]
        else:
            yield from self.inode_writer(outfp, ino)


class _Builder:
    def __init__(self, tree: SourceTree, opts: IsoOptions, clock: _Clock) -> None:
        self.tree = tree
        self.opts = opts
        self.clock = clock
        self.iso = IsoImage()
        self.layout = _PyLayout(self.iso)
        self.names: dict[str, DirNames] = {}
        self.iso_paths: dict[str, str] = {"": ""}
        self.joliet_paths: dict[str, str] = {"": ""}
        self.udf_paths: dict[str, str] = {"": ""}
        self.links: dict[tuple[int, int], str] = {}
        self.file_iso_paths: dict[str, str] = {}
        # owners/modes are patched into the records once the layout is final: pycdlib's record
        # lookups re-lay the whole image out while changes are pending (quadratic if done per add)
        self.pending: list[tuple[TreeEntry, str, str | None]] = []
        self.pending_dirs: list[tuple[TreeEntry, str]] = []

    def apply_owners(self) -> None:
        for entry, iso_path in self.pending_dirs:
            self._dir_owner(self.iso.get_record(iso_path=iso_path), entry)
        for entry, iso_path, udf in self.pending:
            self._owners(entry, iso_path, udf)

    # -- paths ---------------------------------------------------------------------------------
    def _paths(self, entry: TreeEntry) -> tuple[str, str | None, str | None, str | None]:
        parent = entry.rel.rpartition("/")[0]
        names = self.names.setdefault(parent, DirNames())
        iso_name = names.iso(entry.name, is_dir=entry.kind == "dir")
        iso_path = f"{self.iso_paths[parent]}/{iso_name}"
        joliet = f"{self.joliet_paths[parent]}/{names.joliet(entry.name)}" if self.opts.joliet else None
        udf = f"{self.udf_paths[parent]}/{entry.name}" if self.opts.udf else None
        rr = entry.name if self.opts.rock_ridge else None
        return iso_path, rr, joliet, udf

    # -- entries -------------------------------------------------------------------------------
    def add(self, entry: TreeEntry) -> None:
        if not is_utf8_name(entry.name) and (self.opts.rock_ridge or self.opts.udf):
            log.warning("skipping %r: its name is not UTF-8", entry.rel)
            self.layout.skipped.append(entry.rel)
            return
        parent = entry.rel.rpartition("/")[0]
        if parent not in self.iso_paths:  # its directory was skipped
            self.layout.skipped.append(entry.rel)
            return
        iso_path, rr, joliet, udf = self._paths(entry)
        self.clock.now = entry.mtime_ns / 1e9
        mode = stat.S_IMODE(entry.mode)
        if entry.kind == "dir":
            self.iso.add_directory(
                iso_path=iso_path,
                rr_name=rr,
                joliet_path=joliet,
                udf_path=udf,
                file_mode=(stat.S_IFDIR | mode) if rr else None,
            )
            self.iso_paths[entry.rel] = iso_path
            if rr:
                self.pending_dirs.append((entry, iso_path))
            if joliet:
                self.joliet_paths[entry.rel] = joliet
            if udf:
                self.udf_paths[entry.rel] = udf
        elif entry.kind == "symlink":
            if not (self.opts.rock_ridge or self.opts.udf):
                log.warning("skipping symlink %r: plain ISO 9660 and Joliet cannot hold symlinks", entry.rel)
                self.layout.skipped.append(entry.rel)
                return
            if not is_utf8_name(entry.target):
                log.warning("skipping symlink %r: its target is not UTF-8", entry.rel)
                self.layout.skipped.append(entry.rel)
                return
            self.iso.add_symlink(
                symlink_path=iso_path if rr else None,
                rr_symlink_name=rr,
                rr_path=entry.target if rr else None,
                udf_symlink_path=udf,
                udf_target=entry.target if udf else None,
            )
        else:
            key = (entry.dev, entry.ino)
            first = self.links.get(key) if entry.nlink > 1 and entry.size <= 0xFFFFF800 else None
            if first is not None:
                self._hard_link(first, iso_path, rr, joliet, udf)
            else:
                # add_file() without its stat (the walk has the size): same records, same layout
                added = self.iso._add_fp(  # type: ignore[attr-defined]
                    str(entry.path),
                    entry.size,
                    True,
                    iso_path,
                    rr,
                    joliet,
                    udf,
                    (stat.S_IFREG | mode) if rr else None,
                    False,
                    None,
                )
                self.iso._finish_add(0, added)  # type: ignore[attr-defined]
                if entry.nlink > 1:
                    self.links[key] = iso_path
                self._file_owner(entry, self.iso.inodes[-1])
            self.layout.sources.append(entry.rel)
            self.file_iso_paths[entry.rel] = iso_path
            if first is None:
                return
        self.pending.append((entry, iso_path, udf))

    def _file_owner(self, entry: TreeEntry, ino: Any) -> None:
        """Owner and mode on the records of a file just added (its inode lists them all)."""
        self.layout.inodes[entry.rel] = ino
        for rec, _ in ino.linked_records:
            if isinstance(rec, pycdlib.dr.DirectoryRecord):  # ISO 9660 (each multi-extent chunk) or Joliet
                px = rec.rock_ridge.dr_entries.px_record if rec.rock_ridge is not None else None
                if px is not None:
                    px.posix_user_id, px.posix_group_id = entry.uid, entry.gid
            else:  # UDF (Extended) File Entry
                rec.uid, rec.gid = entry.uid, entry.gid
                rec.perms = udf_perms(entry.mode)

    def _dir_owner(self, rec: Any, entry: TreeEntry) -> None:
        """Mode and owner on a directory's record and its "." record (readers take either)."""
        if rec is None:
            return
        for r in (rec, rec.children[0] if rec.children else None):
            if r is not None and r.rock_ridge is not None and r.rock_ridge.dr_entries.px_record is not None:
                px = r.rock_ridge.dr_entries.px_record
                px.posix_file_mode = stat.S_IFDIR | stat.S_IMODE(entry.mode)
                px.posix_user_id, px.posix_group_id = entry.uid, entry.gid

    def _hard_link(self, first: str, iso_path: str, rr: str | None, joliet: str | None, udf: str | None) -> None:
        self.iso.add_hard_link(iso_old_path=first, iso_new_path=iso_path, rr_name=rr)
        if joliet:
            self.iso.add_hard_link(iso_old_path=first, joliet_new_path=joliet)
        if udf:
            self.iso.add_hard_link(iso_old_path=first, udf_new_path=udf)

    def _owners(self, entry: TreeEntry, iso_path: str, udf: str | None) -> None:
        rec: Any
        if not self.opts.rock_ridge and entry.kind == "file":
            rec = self.iso.get_record(iso_path=iso_path)
            if rec.inode is not None:
                self.layout.inodes[entry.rel] = rec.inode
        if self.opts.rock_ridge:
            rec = self.iso.get_record(iso_path=iso_path)
            chunks = [rec]
            if entry.kind == "file" and entry.size > 0xFFFFF800:  # multi-extent: one record per chunk
                chunks = [c for c in rec.parent.children if c is not None and c.file_ident == rec.file_ident]
            for chunk in chunks:
                px = chunk.rock_ridge.dr_entries.px_record if chunk.rock_ridge else None
                if px is not None:
                    px.posix_user_id, px.posix_group_id = entry.uid, entry.gid
                    if entry.kind == "symlink":
                        px.posix_file_mode = entry.mode
            if entry.kind == "file" and rec.inode is not None:
                self.layout.inodes[entry.rel] = rec.inode
        if udf:
            fe: Any = self.iso.get_record(udf_path=udf)
            fe.uid, fe.gid = entry.uid, entry.gid
            fe.perms = udf_perms(entry.mode)

    # -- volume-level --------------------------------------------------------------------------
    def root_file(self, text: str, default_name: str) -> str:
        """A root file name for a PVD file field: an existing root file, or one made from *text*."""
        if not text:
            return ""
        if text in self.file_iso_paths:  # a file in the tree's root
            return self.file_iso_paths[text].lstrip("/").split(";")[0]
        data = (text.rstrip("\n") + "\n").encode()
        buf = io.BytesIO(data)
        self.layout._buffers.append(buf)
        self.clock.now = self.layout.build_time_s
        entry_name = default_name
        names = self.names.setdefault("", DirNames())
        iso_name = names.iso(entry_name, is_dir=False)
        self.iso.add_fp(
            buf,
            len(data),
            iso_path=f"/{iso_name}",
            rr_name=entry_name if self.opts.rock_ridge else None,
            joliet_path=f"/{names.joliet(entry_name)}" if self.opts.joliet else None,
            udf_path=f"/{entry_name}" if self.opts.udf else None,
            file_mode=0o100444 if self.opts.rock_ridge else None,
        )
        self.layout.generated.append(entry_name)
        return iso_name.split(";")[0]

    def boot(self) -> None:
        opts = self.opts
        cat = self._boot_catalog_paths() if (opts.boot_image or opts.efi_image) else None
        for rel, efi in ((opts.boot_image, False), (opts.efi_image, True)):
            if not rel:
                continue
            rel = rel.strip("/")
            iso_path = self.file_iso_paths.get(rel)
            if iso_path is None:
                what = "EFI image" if efi else "boot image"
                raise NotFoundError(f"{what} {rel!r} is not a file in the source tree")
            assert cat is not None
            kw: dict[str, Any] = {
                "bootcatfile": cat[0],
                "rr_bootcatname": cat[1],
                "joliet_bootcatfile": cat[2],
                "udf_bootcatfile": cat[3],
            }
            self.clock.now = self.layout.build_time_s
            if efi:
                self.iso.add_eltorito(iso_path, efi=True, platform_id=0xEF, media_name="noemul", **kw)
            else:
                self.iso.add_eltorito(iso_path, boot_load_size=4, boot_info_table=True, media_name="noemul", **kw)

    def _boot_catalog_paths(self) -> tuple[str, str | None, str | None, str | None]:
        names = self.names.setdefault("", DirNames())
        taken = {e.name for e in self.tree.entries if e.depth == 1}
        name = BOOT_CATALOG
        n = 1
        while name in taken:
            name = f"boot{n}.cat"
            n += 1
        iso = "/" + names.iso(name, is_dir=False)
        return (
            iso,
            name if self.opts.rock_ridge else None,
            "/" + names.joliet(name) if self.opts.joliet else None,
            "/" + name if self.opts.udf else None,
        )


def build_layout_pycdlib(
    tree: SourceTree, opts: IsoOptions, *, on_entry: Callable[[TreeEntry], None] | None = None
) -> IsoLayout:
    """Lay out the image of *tree* with pycdlib (see :func:`imaging.iso_build.build_layout`).

    Args:
        tree: the walked source (see :func:`imaging.common.walk_tree`).
        opts: formats, identifiers and boot entries.
        on_entry: called after each entry (for a progress display).

    Raises:
        NotFoundError: a boot/EFI image named in *opts* is not a file of the tree.
        UsageError: pycdlib refused the tree (the message says which entry).
    """
    build_time = float(opts.source_date_epoch) if opts.source_date_epoch is not None else _time.time()
    seed = opts.source_date_epoch
    with paused_gc(), pinned_clock(build_time, seed) as clock:
        b = _Builder(tree, opts, clock)
        b.layout.build_time_s = build_time
        b.layout.seed = seed
        b.iso.new(
            interchange_level=3,
            vol_ident=volume_id(opts.volume_name),
            sys_ident="LINUX",
            pub_ident_str=opts.publisher[:128],
            app_ident_str=opts.application[:128],
            preparer_ident_str="DARKSTORAGE",
            vol_set_ident=volume_id(opts.volume_name),
            rock_ridge="1.12" if opts.rock_ridge else None,
            joliet=3 if opts.joliet else None,
            udf="2.60" if opts.udf else None,
        )
        if opts.joliet and b.iso.joliet_vd is not None:
            name = opts.volume_name[:16].encode("utf-16-be")
            b.iso.joliet_vd.volume_identifier = name + (b"\x00 " * 16)[len(name) :]
        if opts.rock_ridge:
            b._dir_owner(b.iso.pvd.root_dir_record, tree.entries[0])
        for entry in tree.entries[1:]:
            try:
                b.add(entry)
            except PyCdlibException as e:
                raise UsageError(f"cannot add {entry.rel!r} to the image: {e}") from None
            if on_entry is not None:
                on_entry(entry)
        copyright_id = b.root_file(opts.copyright, "COPYRIGHT.TXT")
        abstract_id = b.root_file(opts.abstract, "ABSTRACT.TXT")
        for vd in [b.iso.pvd] + ([b.iso.joliet_vd] if b.iso.joliet_vd is not None else []):
            vd.copyright_file_identifier = copyright_id.encode().ljust(37, b" ")[:37]
            vd.abstract_file_identifier = abstract_id.encode().ljust(37, b" ")[:37]
        b.boot()
        try:
            b.iso.force_consistency()
        except PyCdlibException as e:
            raise UsageError(f"cannot lay out the image: {e}") from None
        b.apply_owners()
    return _neutral(b.layout)


def _neutral(lay: _PyLayout) -> IsoLayout:
    """The pycdlib layout in the writer's shape: one :class:`DataExtent` per inode with data."""
    iso = lay.iso
    by_inode: dict[int, DataExtent] = {}
    for ino in iso.inodes:
        length = ino.get_data_length()
        block = ino.extent_location() if length else 0
        if ino.manage_fp:
            ext = DataExtent(block, length, source=Path(ino.data_fp))
        else:  # generated in memory (copyright/abstract text)
            fp = ino.data_fp
            fp.seek(ino.fp_offset)
            ext = DataExtent(block, length, data=fp.read(length))
        if ino.boot_info_table is not None:  # El Torito boot info table at byte 8
            ext.patch = ino.boot_info_table.record()
        by_inode[id(ino)] = ext
    boot: list[BootEntry] = []
    cat = iso.eltorito_boot_catalog
    if cat is not None:
        first = (cat.validation_entry.platform_id, cat.initial_entry)
        rest = [(s.platform_id, e) for s in cat.sections for e in s.section_entries]
        for platform, entry in [first, *rest]:
            boot.append(BootEntry(platform, by_inode[id(entry.inode)], entry.sector_count))
    files = {rel: by_inode[id(ino)] for rel, ino in lay.inodes.items() if id(ino) in by_inode}
    for rel, ext in files.items():
        ext.rel = ext.rel or rel

    def write_metadata(fd: int) -> None:
        records = _RecordWriter(fd)
        iso.inode_writer = _no_data  # the copier writes the data afterwards
        try:
            with paused_gc(), pinned_clock(lay.build_time_s, lay.seed):  # pycdlib stamps the date now
                iso.write_fp(cast(Any, records), progress_cb=lambda d, t, _o: None)
            records.flush()
        finally:
            iso.inode_writer = None
            _forget_lookups()

    return IsoLayout(
        volume_blocks=iso.pvd.space_size,
        write_metadata=write_metadata,
        extents=sorted((e for e in by_inode.values() if e.length), key=lambda e: e.block),
        files=files,
        sources=lay.sources,
        skipped=lay.skipped,
        generated=lay.generated,
        boot=boot,
        udf=iso.has_udf(),
        build_time_s=lay.build_time_s,
        seed=lay.seed,
    )


class _RecordWriter:
    """The file object pycdlib writes its records to: contiguous writes become one ``pwrite``."""

    mode = "w+b"

    def __init__(self, fd: int, limit: int = 1 << 20) -> None:
        self.fd = fd
        self.limit = limit
        self.pos = 0
        self.buf = bytearray()
        self.buf_start = 0

    def tell(self) -> int:
        return self.pos

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        if whence == os.SEEK_END:
            self.flush()
            self.pos = os.fstat(self.fd).st_size + offset
        elif whence == os.SEEK_CUR:
            self.pos += offset
        else:
            self.pos = offset
        return self.pos

    def write(self, data: bytes) -> int:
        if self.pos != self.buf_start + len(self.buf) or len(self.buf) >= self.limit:
            self.flush()
            self.buf_start = self.pos
        self.buf += data
        self.pos += len(data)
        return len(data)

    def flush(self) -> None:
        view = memoryview(self.buf)
        done = 0
        while done < len(view):
            done += os.pwrite(self.fd, view[done:], self.buf_start + done)
        view.release()
        self.buf.clear()
        self.buf_start = self.pos


def _forget_lookups() -> None:
    """Empty pycdlib's record lookup caches: shared by every image, they keep written ones alive."""
    for cached in (
        pycdlib.PyCdlib._find_iso_record,  # type: ignore[attr-defined]
        pycdlib.PyCdlib._find_rr_record,  # type: ignore[attr-defined]
        pycdlib.PyCdlib._find_joliet_record,  # type: ignore[attr-defined]
        pycdlib.PyCdlib._find_udf_record,  # type: ignore[attr-defined]
    ):
        cached.cache_clear()


def _no_data(outfp: Any, ino: Any) -> Iterator[int]:
    yield 0
