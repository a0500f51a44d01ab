"""Lay out and serialise the ISO 9660 side of an image: directory trees, extents, descriptors.

One pass over the walked tree makes a node per entry (names mangled by :mod:`imaging.iso_names`);
each directory's children are sorted once (ECMA-119 9.3: by name, then extension); then blocks
are assigned in one sweep:

====================  ==============================================================
block 16              Primary Volume Descriptor (ECMA-119 8.4)
17 (El Torito)        Boot Record (El Torito 1.0, 2.0)
next (Joliet)         Joliet Supplementary Volume Descriptor (ECMA-119 8.5, ``%/E``)
next                  Volume Descriptor Set Terminator (ECMA-119 8.3)
next (UDF)            UDF Volume Recognition Sequence and descriptors (:mod:`imaging.udf_write`)
then                  L and M path tables (ISO 9660, then Joliet; ECMA-119 9.4)
then                  ISO 9660 directories in path table order, then Joliet's
then                  SUSP Continuation Areas (RRIP names, links and the ER that do not fit)
then (UDF)            the UDF metadata area (start of the UDF partition)
then                  El Torito boot catalog
then                  file data, in walk order; hard links share one extent; files over
                      0xFFFFF800 bytes are several contiguous extents (multi-extent records)
====================  ==============================================================

Rock Ridge (RRIP 1.12) gives every record PX (mode, links, uid, gid, serial number), TF
(modify, access, change times) and NM (the real name), SL for symlinks; the root's "." record
starts with SUSP SP and its ER entry names ``IEEE_P1282``. Directories deeper than 8 levels stay
where they are (no ``RR_MOVED`` relocation, as ``mkisofs -D`` and xorriso with Rock Ridge do):
Linux, xorriso, 7-Zip and pycdlib read them.

:func:`serialise` returns the metadata bytes of blocks ``[0, first data block)`` plus the
boot catalog; :mod:`imaging.iso_write` copies the file data.
"""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pool.errors import NotFoundError

from . import iso9660_write as w
from .common import SourceTree, TreeEntry
from .iso_names import DirNames, is_utf8_name
from .udf_format import symlink_bytes
from .udf_write import UdfNode

log = logging.getLogger(__name__)

BLOCK = w.BLOCK
BOOT_CATALOG = "boot.cat"


@dataclass(eq=False)
class DataExtent:
    """Where one file's data goes in the image and where it comes from.

    Attributes:
        block: first 2048-byte block (0 for empty files).
        length: bytes of data (the extent is padded to whole blocks).
        source: path of the file to copy from, or None when *data* holds the bytes.
        data: in-memory contents (generated copyright/abstract files).
        patch: bytes to write at byte 8 of the extent after the copy (El Torito boot info table).
        rel: tree-relative path of the first name (for messages).
    """

    block: int
    length: int
    source: str | None = None
    data: bytes | None = None
    patch: bytes | None = None
    rel: str = ""


@dataclass(frozen=True)
class BootEntry:
    """One El Torito no-emulation entry: platform (0 BIOS, 0xEF UEFI), the image, 512-byte sectors."""

    platform: int
    extent: DataExtent
    sectors: int


class _Node:
    __slots__ = (
        "name",
        "iso_id",
        "joliet_id",
        "is_dir",
        "target",
        "mode",
        "uid",
        "gid",
        "dates",
        "data",
        "fixed",
        "children",
        "parent",
        "block",
        "size",
        "jblock",
        "jsize",
        "number",
        "jnumber",
        "serial",
        "subdirs",
        "records",
        "jrecords",
    )

    def __init__(self, name: bytes, iso_id: bytes, joliet_id: bytes | None, is_dir: bool) -> None:
        self.name = name
        self.iso_id = iso_id
        self.joliet_id = joliet_id
        self.is_dir = is_dir
        self.target: bytes | None = None
        self.mode = 0
        self.uid = 0
        self.gid = 0
        self.dates = (b"", b"", b"")
        self.data: DataExtent | None = None
        self.fixed: tuple[int, int] | None = None  # (block, length) of the boot catalog
        self.parent: _Node = self
        if is_dir:  # the rest only exists on directories
            self.children: list[_Node] = []
            self.block = 0
            self.size = 0
            self.jblock = 0
            self.jsize = 0
            self.number = 0
            self.jnumber = 0
            self.serial = 0
            self.subdirs = 0
            # (identifier, System Use, node, piece, pieces, CE areas → then their (offset, length))
            self.records: list[tuple[bytes, bytes, _Node, int, int, list[Any]]] = []
            self.jrecords: list[tuple[bytes, _Node, int, int]] = []


def _udf_node(e: TreeEntry, name: str) -> UdfNode:
    # access and change times are the mtime (see Builder._attrs: reproducible bytes)
    return UdfNode(
        name,
        e.kind,
        mode=e.mode,
        uid=e.uid,
        gid=e.gid,
        mtime_ns=e.mtime_ns,
        atime_ns=e.mtime_ns,
        ctime_ns=e.mtime_ns,
        size=e.size if e.kind == "file" else 0,
        target=e.target if e.kind == "symlink" else "",
    )


def _secs(ns: int) -> int:
    return ns // 1_000_000_000


def _iso_key(node: _Node) -> tuple[bytes, bytes]:
    name, _, ext = node.iso_id.partition(b";")[0].partition(b".")
    return name, ext


def _joliet_key(node: _Node) -> tuple[bytes, bytes]:
    assert node.joliet_id is not None
    base, dot, ext = node.joliet_id.decode("utf-16-be", "surrogatepass").rpartition(".")
    if not dot:
        base, ext = ext, ""
    return base.encode("utf-16-be", "surrogatepass"), ext.encode("utf-16-be", "surrogatepass")


def _ucs2(name: str) -> bytes:
    return name.encode("utf-16-be", "surrogatepass")


def _pieces(length: int) -> list[int]:
    """Lengths of the extents of a file of *length* bytes (ECMA-119 6.5.1 multi-extent)."""
    if length <= w.MAX_EXTENT:
        return [length]
    full, rest = divmod(length, w.MAX_EXTENT)
    return [w.MAX_EXTENT] * full + ([rest] if rest else [])


@dataclass
class IsoPlan:
    """A laid-out ISO 9660 (+ Rock Ridge, Joliet, El Torito) volume, ready to serialise.

    Attributes:
        extents: every extent holding file data, in block order (hard links once).
        files: tree-relative path of each regular file → its extent.
        sources: tree files whose data is in the image, in tree order.
        skipped: tree-relative paths left out; generated: names of files made from option text.
        boot: El Torito entries (BIOS first).
        data_start: first block of file data; volume_blocks: blocks of the ISO volume.
    """

    rock_ridge: bool
    joliet: bool
    root: _Node
    build_time_s: float
    extents: list[DataExtent] = field(default_factory=list)
    files: dict[str, DataExtent] = field(default_factory=dict)
    sources: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    generated: list[str] = field(default_factory=list)
    boot: list[BootEntry] = field(default_factory=list)
    copyright_id: str = ""
    abstract_id: str = ""
    data_start: int = 0
    reserved_start: int = 0
    volume_blocks: int = 0
    # assigned by layout()
    dirs: list[_Node] = field(default_factory=list)
    jdirs: list[_Node] = field(default_factory=list)
    descriptors: list[tuple[str, int]] = field(default_factory=list)
    pt_blocks: tuple[int, int, int, int] = (0, 0, 0, 0)
    pt_bytes: tuple[bytes, bytes, bytes, bytes] = (b"", b"", b"", b"")
    ce_start: int = 0
    ce_areas: list[tuple[int, list[bytes], tuple[int, int] | None]] = field(default_factory=list)
    catalog_block: int = 0
    nodes_by_rel: dict[str, _Node] = field(default_factory=dict)


class Builder:
    """Makes the nodes of an :class:`IsoPlan` from a walked tree (see :func:`plan_iso`)."""

    def __init__(self, tree: SourceTree, *, rock_ridge: bool, joliet: bool, udf: bool, build_time_s: float) -> None:
        self.tree = tree
        self.rr = rock_ridge
        self.joliet = joliet
        self.udf = udf
        self.build_time_s = build_time_s
        root_entry = tree.entries[0]
        root = _Node(b"", b"\x00", b"\x00" if joliet else None, True)
        self._attrs(root, root_entry)
        self.plan = IsoPlan(rock_ridge, joliet, root, build_time_s)
        self.dirs: dict[str, _Node] = {"": root}
        self.names: dict[str, DirNames] = {}
        self.links: dict[tuple[int, int], DataExtent] = {}
        # the UDF tree, made in the same pass (see imaging.iso_udf): rel → directory node,
        # extent id → the first UDF node of that data (hard links point to it)
        self.udf_root: UdfNode | None = _udf_node(root_entry, "") if udf else None
        self.udf_dirs: dict[str, UdfNode] = {"": self.udf_root} if self.udf_root is not None else {}
        self.udf_files: list[tuple[UdfNode, DataExtent]] = []
        self.udf_by_extent: dict[int, UdfNode] = {}
        self.udf_names: dict[str, set[str]] = {}
        self.udf_extra: list[tuple[UdfNode, _Node]] = []  # generated files and the boot catalog

    @staticmethod
    def _attrs(node: _Node, e: TreeEntry) -> None:
        node.mode = e.mode
        node.uid = e.uid
        node.gid = e.gid
        # TF access and change times are the mtime too: reading the tree moves atime and ctime
        # moves with links and chmod, so recording them would make builds unreproducible
        date = w.dr_date(_secs(e.mtime_ns))
        node.dates = (date, date, date)

    def add_all(self, on_entry: Callable[[TreeEntry], None] | None = None) -> None:
        """Add every entry of the tree but the root."""
        for entry in self.tree.entries[1:]:
            self.add(entry)
            if on_entry is not None:
                on_entry(entry)

    def add(self, entry: TreeEntry) -> None:
        plan = self.plan
        name = entry.name
        utf8 = is_utf8_name(name)
        if (self.rr or self.udf) and not utf8:
            log.warning("skipping %r: its name is not UTF-8", entry.rel)
            plan.skipped.append(entry.rel)
            return
        parent_rel = entry.rel.rpartition("/")[0]
        parent = self.dirs.get(parent_rel)
        if parent is None:  # its directory was skipped
            plan.skipped.append(entry.rel)
            return
        kind = entry.kind
        if kind == "symlink":
            if not (self.rr or self.udf):
                log.warning("skipping symlink %r: plain ISO 9660 and Joliet cannot hold symlinks", entry.rel)
                plan.skipped.append(entry.rel)
                return
            if not is_utf8_name(entry.target):
                log.warning("skipping symlink %r: its target is not UTF-8", entry.rel)
                plan.skipped.append(entry.rel)
                return
        udf_parent = self.udf_dirs.get(parent_rel) if self.udf else None
        if udf_parent is not None and kind == "symlink":
            try:
                symlink_bytes(entry.target)
            except ValueError as e:
                log.warning("leaving symlink %r out of the UDF tree: %s", entry.rel, e)
                udf_parent = None
        if kind == "symlink" and not self.rr:  # UDF only: no ISO 9660 record (as before)
            if udf_parent is not None:
                udf_parent.children.append(_udf_node(entry, self._udf_name(parent_rel, name)))
            return
        names = self.names.get(parent_rel)
        if names is None:
            names = self.names[parent_rel] = DirNames()
        is_dir = kind == "dir"
        iso_name = names.iso(name, is_dir=is_dir)
        joliet = None
        if self.joliet and kind != "symlink":
            # undecodable bytes (plain ISO 9660 + Joliet keep such names) become U+FFFD
            shown = name if utf8 else os.fsencode(name).decode("utf-8", "replace")
            joliet = _ucs2(names.joliet(shown))
        node = _Node(name.encode("utf-8", "surrogateescape"), iso_name.encode("ascii"), joliet, is_dir)
        self._attrs(node, entry)
        node.parent = parent
        parent.children.append(node)
        if is_dir:
            self.dirs[entry.rel] = node
            parent.subdirs += 1
        elif kind == "symlink":
            node.target = entry.target.encode("utf-8", "surrogateescape")
            node.mode = stat.S_IFLNK | stat.S_IMODE(entry.mode)
        else:
            key = (entry.dev, entry.ino)
            ext = self.links.get(key) if entry.nlink > 1 and entry.size <= w.MAX_EXTENT else None
            if ext is None:
                ext = DataExtent(0, entry.size, source=entry.path, rel=entry.rel)
                plan.extents.append(ext)
                if entry.nlink > 1:
                    self.links[key] = ext
            node.data = ext
            plan.files[entry.rel] = ext
            plan.sources.append(entry.rel)
        if udf_parent is not None:
            unode = _udf_node(entry, self._udf_name(parent_rel, name))
            if node.data is not None:
                first = self.udf_by_extent.get(id(node.data))
                if first is not None:
                    unode.link_to = first
                else:
                    self.udf_by_extent[id(node.data)] = unode
                    self.udf_files.append((unode, node.data))
            elif is_dir:
                self.udf_dirs[entry.rel] = unode
            udf_parent.children.append(unode)

    def _file_node(self, rel: str) -> _Node | None:
        """The node of the regular file at tree-relative *rel* (None: not a file of the image)."""
        parent_rel, _, name = rel.rpartition("/")
        parent = self.dirs.get(parent_rel)
        if parent is None or rel not in self.plan.files:
            return None
        raw = name.encode("utf-8", "surrogateescape")
        return next((c for c in parent.children if c.name == raw and c.data is not None), None)

    def _udf_name(self, parent_rel: str, name: str) -> str:
        """*name* in the UDF tree: whole when it fits (254 Latin-1 or 127 UTF-16 units, UDF 2.1.1),
        else shortened like Joliet names (extension kept, ``~N`` when the cut collides)."""
        taken = self.udf_names.get(parent_rel)
        if taken is None:
            taken = self.udf_names[parent_rel] = set()
        if len(name) <= 63 or (len(name) <= 254 and name.isascii()):  # fits whatever the characters
            if name not in taken:
                taken.add(name)
                return name
        limit = 254 if all(ord(c) < 256 for c in name) else 127
        if len(name.encode("utf-16-be", "surrogatepass")) // 2 <= limit and name not in taken:
            taken.add(name)
            return name
        base, dot, ext = name.rpartition(".")
        if not dot or not base or len(ext) > 16:
            base, ext = name, ""
        n = 0
        while True:
            suffix = f"~{n}" if n else ""
            room = limit - len(suffix) - (len(ext) + 1 if ext else 0)
            candidate = base[:room] + suffix + ("." + ext if ext else "")
            if candidate not in taken:
                taken.add(candidate)
                log.warning("%r is shortened to %r in the UDF tree (UDF names are shorter)", name, candidate)
                return candidate
            n += 1

    def _root_node(self, name: str, mode: int) -> _Node:
        names = self.names.setdefault("", DirNames())
        iso_name = names.iso(name, is_dir=False)
        node = _Node(name.encode(), iso_name.encode("ascii"), _ucs2(names.joliet(name)) if self.joliet else None, False)
        node.mode = mode
        date = w.dr_date(int(self.build_time_s))
        node.dates = (date, date, date)
        node.parent = self.plan.root
        self.plan.root.children.append(node)
        if self.udf_root is not None:
            ns = int(self.build_time_s) * 1_000_000_000
            unode = UdfNode(name, "file", mode=mode, mtime_ns=ns, atime_ns=ns, ctime_ns=ns)
            self.udf_root.children.append(unode)
            self.udf_extra.append((unode, node))
        return node

    def root_file(self, text: str, default_name: str) -> str:
        """A root file name for a PVD file field: an existing tree file, or one made from *text*."""
        if not text:
            return ""
        node = self._file_node(text)
        if node is not None:
            parts = []
            while node.parent is not node:
                parts.append(node.iso_id.decode("ascii"))
                node = node.parent
            return "/".join(reversed(parts)).split(";")[0]
        data = (text.rstrip("\n") + "\n").encode()
        node = self._root_node(default_name, stat.S_IFREG | 0o444)
        node.data = DataExtent(0, len(data), data=data, rel=default_name)
        self.plan.extents.append(node.data)
        self.plan.generated.append(default_name)
        return node.iso_id.decode().split(";")[0]

    def boot(self, boot_image: str | None, efi_image: str | None) -> None:
        """Add the El Torito catalog file and entries (BIOS: 4 sectors + boot info table).

        Raises:
            NotFoundError: an image is not a regular file of the tree.
        """
        if not (boot_image or efi_image):
            return
        taken = {e.name for e in self.tree.entries if e.depth == 1}
        name = BOOT_CATALOG
        n = 1
        while name in taken:
            name = f"boot{n}.cat"
            n += 1
        for rel, efi in ((boot_image, False), (efi_image, True)):
            if not rel:
                continue
            rel = rel.strip("/")
            node = self._file_node(rel)
            if node is None or node.data is None:
                what = "EFI image" if efi else "boot image"
                raise NotFoundError(f"{what} {rel!r} is not a file in the source tree")
            ext = node.data
            if efi:
                self.plan.boot.append(BootEntry(0xEF, ext, -(-ext.length // BLOCK) * 4))
            else:
                ext.patch = b""  # filled with the boot info table once the extent is known
                self.plan.boot.append(BootEntry(0, ext, 4))
        cat = self._root_node(name, stat.S_IFREG | 0o444)
        cat.fixed = (0, BLOCK)


def layout(plan: IsoPlan, first_block: int, *, before_data: int = 0) -> None:
    """Assign every block from *first_block* (the block after the volume descriptors) on.

    *before_data* blocks are left free after the ISO 9660 metadata (from ``plan.reserved_start``:
    the UDF metadata area), before the boot catalog and the file data.

    Sets the path tables, directory extents and sizes, Continuation Areas, the boot catalog,
    each file's extent and ``plan.volume_blocks``.

    Raises:
        ValueError: a name makes a directory record longer than 255 bytes (cannot happen with
            :mod:`imaging.iso_names` names).
    """
    rr = plan.rock_ridge
    root = plan.root
    # -- ISO 9660 directories in path table order (ECMA-119 9.4.3) -------------------------------
    dirs = [root]
    i = 0
    while i < len(dirs):
        d = dirs[i]
        d.number = i + 1
        d.children.sort(key=_iso_key)
        for c in d.children:
            if c.is_dir:
                dirs.append(c)
        i += 1
    plan.dirs = dirs
    jdirs: list[_Node] = []
    if plan.joliet:
        jdirs = [root]
        i = 0
        while i < len(jdirs):
            d = jdirs[i]
            d.jnumber = i + 1
            kids = [c for c in d.children if c.joliet_id is not None]
            kids.sort(key=_joliet_key)
            d.jrecords = [(c.joliet_id, c, 0, 0) for c in kids]  # type: ignore[misc]
            for c in kids:
                if c.is_dir:
                    jdirs.append(c)
            i += 1
    plan.jdirs = jdirs
    pt_size = _path_table_size(dirs, joliet=False)
    jpt_size = _path_table_size(jdirs, joliet=True)
    pt_blocks = -(-pt_size // BLOCK)
    jpt_blocks = -(-jpt_size // BLOCK)
    blk = first_block
    l_blk, m_blk = blk, blk + pt_blocks
    blk += 2 * pt_blocks
    jl_blk, jm_blk = blk, blk + jpt_blocks
    blk += 2 * jpt_blocks
    # -- record sizes (and System Use splits) --------------------------------------------------
    serial = 0
    ce_pos = 0  # bytes into the Continuation Area region
    ce_areas: list[tuple[int, list[bytes], tuple[int, int] | None]] = []

    def place_areas(areas: list[list[bytes]]) -> list[tuple[int, int]]:
        """Give a record's chain of areas their places; each area but the last ends with a CE
        placeholder pointing at the next one."""
        nonlocal ce_pos
        spots = []
        for area in areas:
            n = sum(map(len, area))
            if ce_pos % BLOCK + n > BLOCK:
                ce_pos += -ce_pos % BLOCK
            spots.append((ce_pos, n))
            ce_pos += n
        for k, area in enumerate(areas):
            ce_areas.append((spots[k][0], area, spots[k + 1] if k + 1 < len(spots) else None))
        return spots

    serials: dict[int, int] = {}
    links: dict[int, int] = {}  # names sharing an extent (RRIP 4.1.1 PX "links")
    for d in dirs:
        serial += 1
        d.serial = serial
        for c in d.children:
            if c.data is not None:
                links[id(c.data)] = links.get(id(c.data), 0) + 1
    budget = w.SU_BUDGET
    tf_of: dict[bytes, bytes] = {}  # one TF entry per distinct date
    sizes: list[int] = []
    for d in dirs:
        records: list[tuple[bytes, bytes, _Node, int, int, list[Any]]] = []
        if rr:
            dot_entries = _rr_entries(d, d.serial, 2 + d.subdirs)
            if d is root:
                dot_entries = [w.SUSP_SP, *dot_entries, w.susp_er()]
            dot_su, areas = w.pack_su(dot_entries, budget - 34)
            records.append((b"\x00", dot_su, d, 0, 1, place_areas(areas) if areas else []))
            p = d.parent
            dotdot_su, areas2 = w.pack_su(_rr_entries(p, p.serial, 2 + p.subdirs), budget - 34)
            records.append((b"\x01", dotdot_su, p, 0, 1, place_areas(areas2) if areas2 else []))
        else:
            records.append((b"\x00", b"", d, 0, 1, []))
            records.append((b"\x01", b"", d.parent, 0, 1, []))
        pos = 0
        for r in records:
            pos += 34 + len(r[1])  # "." and ".." always fit the first block
        for c in d.children:
            ident = c.iso_id
            li = len(ident)
            head = 33 + li + (0 if li & 1 else 1)
            su = b""
            spots: list[tuple[int, int]] = []
            data = c.data
            if rr:
                if c.is_dir:
                    nlink = 2 + c.subdirs
                    ser = c.serial
                elif data is not None:
                    key = id(data)
                    nlink = links[key]
                    ser = serials.get(key, 0)
                    if not ser:
                        serial += 1
                        ser = serials[key] = serial
                else:
                    nlink = 1
                    serial += 1
                    ser = serial
                date = c.dates[0]
                tf = tf_of.get(date)
                if tf is None:
                    tf = tf_of[date] = w.rr_tf(*c.dates)
                px = w.rr_px(c.mode, nlink, c.uid, c.gid, ser)
                name = c.name
                ln = len(name)
                if c.target is None and 75 + ln <= budget - head:  # PX + TF + NM fit: the usual case
                    su = px + tf + b"NM" + bytes((5 + ln, 1, 0)) + name
                    if not ln & 1:  # 75 + ln bytes: keep the record even
                        su += b"\x00"
                else:
                    entries = [px, tf, *w.rr_nm(name)]
                    if c.target is not None:
                        entries.extend(w.rr_sl(c.target))
                    su, areas = w.pack_su(entries, budget - head)
                    if areas:  # the pieces of a multi-extent file share one Continuation Area
                        spots = place_areas(areas)
            n = head + len(su)
            if data is not None and data.length > w.MAX_EXTENT:
                count = len(_pieces(data.length))
                for k in range(count):
                    records.append((ident, su, c, k, count, spots))
                    if pos % BLOCK + n > BLOCK:
                        pos += -pos % BLOCK
                    pos += n
            else:
                records.append((ident, su, c, 0, 1, spots))
                if pos % BLOCK + n > BLOCK:
                    pos += -pos % BLOCK
                pos += n
        d.records = records
        sizes.append(-(-pos // BLOCK) * BLOCK)
    # -- directory extents ---------------------------------------------------------------------
    for d, size in zip(dirs, sizes, strict=True):
        d.block = blk
        d.size = size
        blk += size // BLOCK
    for d in jdirs:
        pos = 0
        for ident, _node, _k, _n in _joliet_records(d):
            n = 33 + len(ident) + (0 if len(ident) & 1 else 1)
            if pos % BLOCK + n > BLOCK:
                pos += -pos % BLOCK
            pos += n
        d.jblock = blk
        d.jsize = -(-pos // BLOCK) * BLOCK
        blk += d.jsize // BLOCK
    # -- Continuation Areas (placed above, relative to this block) ------------------------------
    plan.ce_start = blk
    blk += -(-ce_pos // BLOCK)
    plan.ce_areas = ce_areas
    # -- free blocks (UDF metadata: pycdlib looks for the File Set Descriptor at the start of the
    # UDF partition, so this comes first after the ISO metadata), boot catalog, file data -------
    plan.reserved_start = blk
    blk += before_data
    if plan.boot:
        plan.catalog_block = blk
        blk += 1
        for d in dirs:
            for c in d.children:
                if c.fixed is not None:
                    c.fixed = (plan.catalog_block, BLOCK)
    plan.data_start = blk
    for ext in plan.extents:
        if ext.length:
            ext.block = blk
            blk += -(-ext.length // BLOCK)
    plan.volume_blocks = blk
    plan.pt_blocks = (l_blk, m_blk, jl_blk, jm_blk)
    # path tables need the directory blocks: built now
    plan.pt_bytes = (
        _path_table(dirs, joliet=False, big_endian=False),
        _path_table(dirs, joliet=False, big_endian=True),
        _path_table(jdirs, joliet=True, big_endian=False),
        _path_table(jdirs, joliet=True, big_endian=True),
    )
    for entry in plan.boot:
        if entry.extent.patch is not None:
            entry.extent.patch = _boot_info(entry.extent)


def _joliet_records(d: _Node) -> list[tuple[bytes, _Node, int, int]]:
    recs = [(b"\x00", d, 0, 1), (b"\x01", d.parent, 0, 1)]
    for ident, c, _a, _b in d.jrecords:
        n = len(_pieces(c.data.length)) if c.data is not None and c.data.length > w.MAX_EXTENT else 1
        recs.extend((ident, c, k, n) for k in range(n))
    return recs


def _boot_info(ext: DataExtent) -> bytes:
    if ext.source is not None:
        with open(ext.source, "rb") as f:
            data = f.read()
    else:
        data = ext.data or b""
    return w.boot_info_table(16, ext.block, ext.length, w.boot_checksum(data))


def _rr_entries(node: _Node, serial: int, nlink: int) -> list[bytes]:
    m, a, c = node.dates
    return [w.rr_px(node.mode, nlink, node.uid, node.gid, serial), w.rr_tf(m, a, c)]


def _path_table_size(dirs: list[_Node], *, joliet: bool) -> int:
    """Bytes of the path table of *dirs* (ECMA-119 9.4: 8 + identifier, padded to even)."""
    total = 0
    for d in dirs:
        ident = (d.joliet_id if joliet else d.iso_id) if d.parent is not d else b"\x00"
        n = len(ident or b"")
        total += 8 + n + (n & 1)
    return total


def _path_table(dirs: list[_Node], *, joliet: bool, big_endian: bool) -> bytes:
    """The L (little-endian) or M (big-endian) path table of *dirs*, in path table order."""
    out = []
    for d in dirs:
        if d.parent is d:
            ident, blk = b"\x00", (d.jblock if joliet else d.block)
        elif joliet:
            ident, blk = d.joliet_id or b"", d.jblock
        else:
            ident, blk = d.iso_id, d.block
        parent = d.parent.jnumber if joliet else d.parent.number
        out.append(w.path_table_record(ident, blk, parent, big_endian=big_endian))
    return b"".join(out)


def _file_flags(node: _Node, k: int, n: int) -> int:
    if node.is_dir:
        return w.FLAG_DIR
    return w.FLAG_MULTI_EXTENT if k < n - 1 else 0


def _extent(node: _Node, k: int, joliet: bool) -> tuple[int, int]:
    if node.is_dir:
        return (node.jblock, node.jsize) if joliet else (node.block, node.size)
    if node.fixed is not None:
        return node.fixed
    if node.data is None or node.data.length == 0:
        return 0, 0
    pieces = _pieces(node.data.length)
    return node.data.block + k * (w.MAX_EXTENT // BLOCK), pieces[k]


def serialise_dirs(plan: IsoPlan, out: bytearray, base_block: int) -> None:
    """Write the directories, path tables and Continuation Areas into *out* (starting at *base_block*)."""
    mv = out
    off0 = -base_block * BLOCK
    ce_start = plan.ce_start
    pack = w.dir_record_into
    flag_dir = w.FLAG_DIR
    for d in plan.dirs:
        pos = d.block * BLOCK + off0
        end_blk = pos + BLOCK
        for ident, su, node, k, n, spots in d.records:
            if spots:  # fill the CE placeholder (last entry, before an optional pad byte)
                at = su.rindex(b"CE" + bytes(w.CE_LEN - 2))
                ce = w.susp_ce(ce_start + spots[0][0] // BLOCK, spots[0][0] % BLOCK, spots[0][1])
                su = su[:at] + ce + su[at + w.CE_LEN :]
            li = len(ident)
            if pos + 33 + li + (0 if li & 1 else 1) + len(su) > end_blk:  # records never cross a block
                pos = end_blk
                end_blk += BLOCK
            ext = node.data
            if node.is_dir:
                pos += pack(mv, pos, ident, node.block, node.size, node.dates[0], flag_dir, su)
            elif n == 1 and ext is not None:
                pos += pack(mv, pos, ident, ext.block, ext.length, node.dates[0], 0, su)
            else:
                blk_, length = _extent(node, k, False)
                pos += pack(mv, pos, ident, blk_, length, node.dates[0], _file_flags(node, k, n), su)
            if pos == end_blk:
                end_blk += BLOCK
    for ce_off, area, nxt in plan.ce_areas:
        data = b"".join(area)
        if nxt is not None:  # the CE placeholder that ends this area points at the next one
            data = data[: -w.CE_LEN] + w.susp_ce(ce_start + nxt[0] // BLOCK, nxt[0] % BLOCK, nxt[1])
        start = ce_start * BLOCK + ce_off + off0
        mv[start : start + len(data)] = data
    for d in plan.jdirs:
        pos = d.jblock * BLOCK + off0
        end_blk = pos + BLOCK
        for ident, node, k, n in _joliet_records(d):
            blk_, length = _extent(node, k, True)
            li = len(ident)
            if pos + 33 + li + (0 if li & 1 else 1) > end_blk:
                pos = end_blk
                end_blk += BLOCK
            pos += pack(mv, pos, ident, blk_, length, node.dates[0], _file_flags(node, k, n))
            if pos == end_blk:
                end_blk += BLOCK
    for blk_, table in zip(plan.pt_blocks, plan.pt_bytes, strict=True):
        if table:
            start = blk_ * BLOCK + off0
            mv[start : start + len(table)] = table


def root_record(plan: IsoPlan, *, joliet: bool) -> bytes:
    """The 34-byte root directory record of the PVD or Joliet SVD (ECMA-119 8.4.18)."""
    root = plan.root
    blk, size = (root.jblock, root.jsize) if joliet else (root.block, root.size)
    return w.dir_record(b"\x00", blk, size, root.dates[0], w.FLAG_DIR)


def read_head(ext: DataExtent, n: int) -> bytes:
    """The first *n* bytes of an extent's source (or in-memory data)."""
    if ext.source is None:
        return (ext.data or b"")[:n]
    fd = os.open(ext.source, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return os.pread(fd, n, 0)
    finally:
        os.close(fd)
