"""HFS+ volume writer in pure Python, streamed block by block (Apple TN1150).

The volume is HFS+ (signature ``H+``, case-insensitive: catalog keys in FastUnicodeCompare
order), what macOS users expect and what every HFS+ reader handles (the Linux ``hfsplus``
tools read nothing else). When a folder holds names that differ only in case (``README`` and
``readme``: common in buckets and Linux trees), a case-insensitive volume cannot hold both, so
the whole volume becomes HFSX (signature ``HX``, binary key order), the case-sensitive flavour
macOS also mounts natively ("Mac OS Extended (Case-sensitive)"), and a warning says so.
Names are stored in Apple's decomposed form either way.

Layout (no partition map: the whole disk is the volume, as ``hdiutil create -layout NONE``
makes; macOS, 7-Zip, dmg2img + hfsplus tools all read it): block 0 holds the volume header at
byte 1024; then the allocation bitmap, the extents overflow B-tree, the catalog B-tree, the
attributes B-tree (only when there are extended attributes), every file's data in walk order
(contiguous), free space, and the alternate volume header 1024 bytes before the end.

Hard links (files of the tree sharing one inode) stay links, as TN1150 "Hard Links" describes:
the data lives once, in an *indirect node* file ``iNode<n>`` inside the hidden root folder
``\0\0\0\0HFS+ Private Data`` (its BSD ``special`` field holds the link count); each path is
a file record of type ``hlnk``, creator ``hfs+``, with no data and ``special`` = *n* (the
indirect node's CNID), created at the private folder's creation date. As Mac OS X 10.5+ writes
them, links and their indirect node also carry the link chain flag (0x20): each link's
``reserved1``/``textEncoding`` hold the next/previous link's CNID and the indirect node's
``reserved1`` the first link's (xnu ``hfs_format.h``: ``hl_nextLinkID``, ``hl_prevLinkID``,
``hl_firstLinkID``); libfshfs recognises only such chained links.

Generated entries (:class:`ExtraEntry`: a ``.DS_Store``, a ``.VolumeIcon.icns``, ...) join the
walked tree with content from bytes and Finder info of their own; a generator function sees the
planned volume (every entry's CNID, the volume's dates) before it produces its bytes, so a file
can describe another one by CNID (an alias in a ``.DS_Store``).

Everything is planned from the walked tree before the first byte is produced (the metadata is
built in memory: about 350 bytes per file), then :meth:`HfsPlusWriter.stream` yields the
volume in order, reading each file once; memory does not grow with the data.
"""

from __future__ import annotations

import hashlib
import logging
import os
import stat
import struct
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

from pool.errors import UnsupportedError, UsageError

from .common import SourceTree, TreeEntry
from .hfsplus_btree import BTreeSpec, build_btree
from .hfsplus_format import (
    ATTR_FORK,
    ATTR_INLINE,
    BSD_INFO,
    BT_BIG_KEYS,
    BT_VARIABLE_INDEX_KEYS,
    CNID_FIRST_USER,
    CNID_ROOT_FOLDER,
    CNID_ROOT_PARENT,
    FILE_HAS_ATTRIBUTES,
    FILE_HAS_LINK_CHAIN,
    FILE_RECORD,
    FILE_THREAD_EXISTS,
    FOLDER_RECORD,
    KEY_COMPARE_BINARY,
    MAX_EXTENTS,
    PRIVATE_DIR_NAME,
    REC_FILE,
    REC_FILE_THREAD,
    REC_FOLDER,
    REC_FOLDER_THREAD,
    SIG_HFSPLUS,
    SIG_HFSX,
    UNKNOWN_ID,
    VERSION_HFSPLUS,
    VERSION_HFSX,
    VH_OFFSET,
    VOLUME_HEADER,
    VOLUME_UNMOUNTED,
    ExtraEntry,
    PlannedEntry,
    attr_key,
    catalog_key,
    encode_name,
    extent_key,
    extents_field,
    fold_key,
    fork_data,
    hfs_date,
    uni_str,
)
from .udif import FileSpan, Piece

log = logging.getLogger(__name__)

BLOCK_BYTES = 4096
CATALOG_SPEC = BTreeSpec(8192, 516, BT_BIG_KEYS | BT_VARIABLE_INDEX_KEYS)
CATALOG_SPEC_HFSX = BTreeSpec(8192, 516, BT_BIG_KEYS | BT_VARIABLE_INDEX_KEYS, KEY_COMPARE_BINARY)
EXTENTS_SPEC = BTreeSpec(4096, 10, BT_BIG_KEYS)
ATTRIBUTES_SPEC = BTreeSpec(8192, 266, BT_BIG_KEYS | BT_VARIABLE_INDEX_KEYS)
INLINE_ATTR_MAX = 3802  #: larger extended attributes go to a fork of their own (as macOS does)
MIN_VOLUME_BLOCKS = 256  #: 1 MiB: the smallest volume we make
_SKIPPED_XATTRS = {"com.apple.FinderInfo", "com.apple.ResourceFork"}


@dataclass
class HfsOptions:
    """What goes into the volume besides names and data.

    Attributes:
        volume_name: the volume's name (shown in Finder), at most 255 UTF-16 units.
        include_permissions: keep owner, group and mode bits; otherwise files belong to
            "unknown" (99, shown as the current user) with 0644/0755 modes.
        include_metadata: keep ``user.*`` extended attributes (stored without the ``user.``
            prefix, as macOS names them).
        source_date_epoch: reproducible mode: volume dates are this time (s since the Unix
            epoch), file dates are clamped to it, access/change dates follow the modification date.
        size_bytes: volume size; None for just large enough.
        max_extent_blocks: longest extent written (splitting files into several extents; only
            tests lower it, to exercise the extents overflow B-tree on small files).
        extras: generated files and folders added to the tree (parents before children).
        root_finder_flags: Finder flags of the root folder (``DInfo.frFlags``), e.g.
            :data:`FINDER_HAS_CUSTOM_ICON` for a volume icon in ``.VolumeIcon.icns``.
    """

    volume_name: str = "Untitled"
    include_permissions: bool = False
    include_metadata: bool = False
    source_date_epoch: int | None = None
    size_bytes: int | None = None
    max_extent_blocks: int = 0xFFFFFFFF
    extras: list[ExtraEntry] = field(default_factory=list)
    root_finder_flags: int = 0


HARD_LINK_INFO = struct.pack(">4s4sH4sH", b"hlnk", b"hfs+", 0, bytes(4), 0)  #: FInfo of a hard link file
PRIVATE_DIR_INFO = struct.pack(">8sH4sH", bytes(8), 0x5000, bytes(4), 0)  #: DInfo: invisible, name locked


@dataclass
class _Item:
    entry: TreeEntry
    cnid: int
    parent: int
    units: bytes
    valence: int = 0
    role: str = ""  # "" plain, "private" (the private folder), "inode" (indirect node), "link"
    special: int = 0  # BSD special: link count (inode) or indirect node number (link)
    chain_prev: int = 0  # link chain: previous link's CNID (links)
    chain_next: int = 0  # link chain: next link's CNID (links), first link's CNID (indirect node)
    start: int = 0  # first allocation block of the data (files and symlinks)
    blocks: int = 0
    data_bytes: int = 0
    xattrs: list[tuple[bytes, bytes]] = field(default_factory=list)  # (name units, value)
    xattr_forks: dict[bytes, int] = field(default_factory=dict)  # name units -> start block
    extra: ExtraEntry | None = None  # a generated entry (content from bytes)
    content: bytes | None = None


def _blocks(n_bytes: int) -> int:
    return -(-n_bytes // BLOCK_BYTES)


def split_extents(start: int, count: int, max_blocks: int) -> list[tuple[int, int]]:
    """A contiguous run of *count* blocks from *start* as extents of at most *max_blocks*."""
    out = []
    while count > 0:
        n = min(count, max_blocks)
        out.append((start, n))
        start += n
        count -= n
    return out


class HfsPlusWriter:
    """Plans an HFSX volume for a walked tree and streams it.

    Raises (from the constructor):
        UnsupportedError: a name that HFS+ cannot store (not UTF-8, over 255 UTF-16 units).
        UsageError: ``size_bytes`` is smaller than the tree needs.
    """

    def __init__(self, tree: SourceTree, opts: HfsOptions) -> None:
        self.tree = tree
        self.opts = opts
        epoch = opts.source_date_epoch
        self.volume_date = hfs_date((epoch if epoch is not None else int(time.time())) * 1_000_000_000)
        try:
            self.volume_units = encode_name(opts.volume_name or "Untitled")
        except ValueError as e:
            raise UsageError(f"volume name {opts.volume_name!r}: {e}") from None
        self.items: list[_Item] = []
        self._plan_items()
        self._plan_layout()

    # -- planning -------------------------------------------------------------------------

    def _extra_entries(self) -> list[tuple[TreeEntry, ExtraEntry | None]]:
        """The tree's entries then the generated ones, as tree entries (dated at the build time)."""
        epoch = self.opts.source_date_epoch
        now_ns = (epoch if epoch is not None else int(time.time())) * 1_000_000_000
        out: list[tuple[TreeEntry, ExtraEntry | None]] = [(e, None) for e in self.tree.entries]
        for x in self.opts.extras:
            kind = "dir" if x.data is None else "file"
            mode = (stat.S_IFDIR | 0o755) if kind == "dir" else (stat.S_IFREG | 0o644)
            size = len(x.data) if isinstance(x.data, bytes) else 0
            e = TreeEntry(x.rel, kind, mode, UNKNOWN_ID, UNKNOWN_ID, size, now_ns, now_ns, now_ns, 1, 0, 0, "", "")
            out.append((e, x))
        return out

    def _plan_items(self) -> None:
        by_rel: dict[str, _Item] = {}
        cnid = CNID_FIRST_USER
        for e, extra in self._extra_entries():
            if e.rel == "":
                item = _Item(e, CNID_ROOT_FOLDER, CNID_ROOT_PARENT, self.volume_units)
            else:
                parent_rel = e.rel.rsplit("/", 1)[0] if "/" in e.rel else ""
                parent = by_rel.get(parent_rel)
                if parent is None or parent.entry.kind != "dir":
                    raise UsageError(f"generated entry {e.rel!r}: its folder is not in the volume")
                try:
                    units = encode_name(e.name)
                except ValueError as err:
                    raise UnsupportedError(f"cannot store {e.rel!r} in HFS+: {err}") from None
                item = _Item(e, cnid, parent.cnid, units)
                parent.valence += 1
                cnid += 1
            if e.kind == "file":
                item.data_bytes = e.size
            elif e.kind == "symlink":
                item.data_bytes = len(os.fsencode(e.target))
            item.blocks = _blocks(item.data_bytes)
            if self.opts.include_metadata and extra is None:
                item.xattrs = self._xattrs(e)
            item.extra = extra
            by_rel[e.rel] = item
            self.items.append(item)
        self._by_rel = by_rel
        cnid = self._plan_hard_links(cnid)
        self.next_cnid = cnid
        for item in self.items:  # generated contents, now that every CNID is known
            x = item.extra
            if x is not None and x.data is not None:
                item.content = x.data if isinstance(x.data, bytes) else x.data(self)
                item.data_bytes = len(item.content)
                item.blocks = _blocks(item.data_bytes)
        self.case_sensitive = self._needs_case_sensitive()
        self.file_count = sum(1 for i in self.items if i.entry.kind != "dir")
        self.folder_count = sum(1 for i in self.items if i.entry.kind == "dir") - 1

    def _plan_hard_links(self, cnid: int) -> int:
        """Turn each group of paths sharing an inode into link records plus one indirect node
        file in the private folder (TN1150 "Hard Links"); returns the next free CNID."""
        groups: dict[tuple[int, int], list[_Item]] = {}
        for item in self.items:
            if item.entry.kind == "file" and item.entry.nlink > 1:
                groups.setdefault((item.entry.dev, item.entry.ino), []).append(item)
        links = [g for g in groups.values() if len(g) > 1]
        if not links:
            return cnid
        root = self.items[0]
        private = _Item(root.entry, cnid, CNID_ROOT_FOLDER, encode_name(PRIVATE_DIR_NAME), role="private")
        root.valence += 1
        cnid += 1
        self.items.append(private)
        for group in links:
            first = group[0]
            node = _Item(first.entry, cnid, private.cnid, encode_name(f"iNode{cnid}"), role="inode")
            node.special = len(group)
            node.data_bytes, node.blocks, node.xattrs = first.data_bytes, first.blocks, first.xattrs
            private.valence += 1
            node.chain_next = group[0].cnid
            for i, item in enumerate(group):
                item.role, item.special = "link", cnid
                item.data_bytes = item.blocks = 0
                item.xattrs = []
                item.chain_prev = group[i - 1].cnid if i else 0
                item.chain_next = group[i + 1].cnid if i + 1 < len(group) else 0
            self.items.append(node)
            cnid += 1
        return cnid

    def planned(self, rel: str) -> PlannedEntry:
        """Where the entry at *rel* (``/``-separated, ``""`` for the root) sits in the volume.

        Raises:
            KeyError: no such entry.
        """
        item = self._by_rel[rel]
        return PlannedEntry(item.cnid, item.parent, item.entry.name, self._dates(item.entry)[0])

    def _needs_case_sensitive(self) -> bool:
        seen: dict[tuple[int, bytes], _Item] = {}
        exact: set[tuple[int, bytes]] = set()
        clash = None
        for item in self.items[1:]:
            if (item.parent, item.units) in exact:
                raise UnsupportedError(f"two names in one folder become the same HFS+ name: {item.entry.rel!r}")
            exact.add((item.parent, item.units))
            key = (item.parent, fold_key(item.units))
            if key in seen and clash is None:
                clash = (seen[key].entry.rel, item.entry.rel)
            seen[key] = item
        if clash:
            log.warning("%r and %r differ only in case: making a case-sensitive (HFSX) volume", *clash)
        return clash is not None

    def _sort_key(self, parent: int, units: bytes) -> tuple[int, bytes]:
        return (parent, units if self.case_sensitive else fold_key(units))

    def _xattrs(self, e: TreeEntry) -> list[tuple[bytes, bytes]]:
        out = []
        for name, value in self.tree.xattrs(e).items():
            if not name.startswith("user."):
                log.info("%s: extended attribute %s not kept (only user.* attributes go into HFS+)", e.rel, name)
                continue
            mac = name[len("user.") :]
            if mac in _SKIPPED_XATTRS or not mac:
                log.warning("%s: extended attribute %s not kept (HFS+ stores it elsewhere)", e.rel, name)
                continue
            units = mac.encode("utf-16-be")
            if len(units) > 254:
                log.warning("%s: extended attribute %s not kept (name over 127 characters)", e.rel, name)
                continue
            out.append((units, value))
        out.sort()
        return out

    def _plan_layout(self) -> None:
        # B-tree sizes depend only on record lengths, so a first build with the data at block 0
        # gives the node counts; the second build (in stream()) uses the real positions.
        self.data_start = 0
        self._assign_data_blocks()
        cat, ext, att = self._trees()
        self.catalog_blocks = len(cat) * CATALOG_SPEC.node_bytes // BLOCK_BYTES
        self.extents_blocks = len(ext) * EXTENTS_SPEC.node_bytes // BLOCK_BYTES
        self.attributes_blocks = len(att) * ATTRIBUTES_SPEC.node_bytes // BLOCK_BYTES if att else 0
        meta = self.extents_blocks + self.catalog_blocks + self.attributes_blocks
        alloc = 1
        while True:
            used = 1 + alloc + meta + self.data_blocks + 1
            total = max(used, MIN_VOLUME_BLOCKS)
            if self.opts.size_bytes is not None:
                total = self.opts.size_bytes // BLOCK_BYTES
            need_alloc = _blocks(-(-total // 8))
            if need_alloc == alloc:
                break
            alloc = need_alloc
        if total < used:
            raise UsageError(
                f"--size {self.opts.size_bytes} bytes is too small: the tree needs {used * BLOCK_BYTES} bytes"
            )
        if total > 0xFFFFFFFF:
            raise UsageError("volume too large for 4 KiB blocks (16 TiB limit)")
        self.total_blocks = total
        self.alloc_blocks = alloc
        self.extents_start = 1 + alloc
        self.catalog_start = self.extents_start + self.extents_blocks
        self.attributes_start = self.catalog_start + self.catalog_blocks
        self.data_start = self.attributes_start + self.attributes_blocks
        self._assign_data_blocks()
        self.used_blocks = self.data_start + self.data_blocks  # blocks [0, used) are in use
        self.free_blocks = total - self.used_blocks - 1

    def _assign_data_blocks(self) -> None:
        pos = self.data_start
        for item in self.items:
            item.start = pos
            pos += item.blocks
            for units, value in item.xattrs:
                if len(value) > INLINE_ATTR_MAX:
                    item.xattr_forks[units] = pos
                    pos += _blocks(len(value))
        self.data_blocks = pos - self.data_start

    @property
    def size_bytes(self) -> int:
        """Bytes of the volume."""
        return self.total_blocks * BLOCK_BYTES

    # -- records --------------------------------------------------------------------------

    def _dates(self, e: TreeEntry) -> tuple[int, int, int, int]:
        """(create, content mod, attribute mod, access) HFS+ dates of an entry; the root folder
        is created with the volume (as ``newfs_hfs`` makes it: what an alias records as the
        volume's creation date)."""
        epoch = self.opts.source_date_epoch
        if epoch is None:
            m = hfs_date(e.mtime_ns)
            dates = m, m, hfs_date(e.ctime_ns), hfs_date(e.atime_ns)
        else:
            m = hfs_date(min(e.mtime_ns, epoch * 1_000_000_000))
            dates = m, m, m, m
        return (self.volume_date, *dates[1:]) if e.rel == "" else dates

    def _bsd(self, e: TreeEntry, special: int = 0) -> bytes:
        kind = stat.S_IFMT(e.mode)
        if self.opts.include_permissions:
            return BSD_INFO.pack(e.uid, e.gid, 0, 0, e.mode & 0xFFFF, special)
        if e.kind == "symlink":
            perm = 0o755
        elif e.kind == "dir" or e.mode & 0o111:
            perm = 0o755
        else:
            perm = 0o644
        return BSD_INFO.pack(UNKNOWN_ID, UNKNOWN_ID, 0, 0, kind | perm, special)

    def _fork(self, item: _Item) -> tuple[bytes, list[tuple[int, int]]]:
        extents = split_extents(item.start, item.blocks, self.opts.max_extent_blocks)
        return fork_data(item.data_bytes, item.blocks, extents), extents

    def _catalog_records(self) -> tuple[list[tuple[bytes, bytes]], list[tuple[bytes, bytes]]]:
        """Catalog records and extents-overflow records, each sorted in key order."""
        cat: list[tuple[tuple[int, bytes], bytes, bytes]] = []
        ext: list[tuple[bytes, bytes]] = []
        for item in self.items:
            e = item.entry
            c, m, a, acc = self._dates(e)
            flags = FILE_HAS_ATTRIBUTES if item.xattrs else 0
            if item.role == "private":  # its create date marks the links (the volume's date)
                c = m = a = acc = self.volume_date
                bsd = BSD_INFO.pack(0, 0, 0, 0, stat.S_IFDIR, 0)
                rec = FOLDER_RECORD.pack(
                    REC_FOLDER, 0, item.valence, item.cnid, c, m, a, acc, 0, bsd, PRIVATE_DIR_INFO, bytes(16), 0, 0
                )
                thread_type = REC_FOLDER_THREAD
            elif e.kind == "dir":
                flags_f = self.opts.root_finder_flags if item.cnid == CNID_ROOT_FOLDER else 0
                if item.extra is not None:
                    flags_f = item.extra.finder_flags
                rec = FOLDER_RECORD.pack(
                    REC_FOLDER,
                    flags,
                    item.valence,
                    item.cnid,
                    c,
                    m,
                    a,
                    acc,
                    0,
                    self._bsd(e),
                    struct.pack(">8sH6s", bytes(8), flags_f, bytes(6)),  # DInfo: frFlags at 8
                    bytes(16),
                    0,
                    0,
                )
                thread_type = REC_FOLDER_THREAD
            else:
                fork, extents = self._fork(item)
                for k in range(MAX_EXTENTS, len(extents), MAX_EXTENTS):
                    first_rel = sum(n for _, n in extents[:k])
                    ext.append((extent_key(item.cnid, first_rel), extents_field(extents[k : k + MAX_EXTENTS])))
                user_info = (
                    struct.pack(">4s4sH4sH", b"slnk", b"rhap", 0, bytes(4), 0) if e.kind == "symlink" else bytes(16)
                )
                if item.extra is not None:  # FInfo: type, creator, fdFlags
                    x = item.extra
                    user_info = struct.pack(">4s4sH6s", x.type_code, x.creator_code, x.finder_flags, bytes(6))
                if item.role == "link":
                    user_info = HARD_LINK_INFO
                    c = self.volume_date  # = the private folder's create date, as macOS expects
                if item.role:  # link chain (Mac OS X 10.5): reserved1 = next link / first link
                    flags |= FILE_HAS_LINK_CHAIN
                rec = FILE_RECORD.pack(
                    REC_FILE,
                    flags | FILE_THREAD_EXISTS,
                    item.chain_next,
                    item.cnid,
                    c,
                    m,
                    a,
                    acc,
                    0,
                    self._bsd(e, item.special),
                    user_info,
                    bytes(16),
                    item.chain_prev,  # textEncoding holds the previous link of a chained link
                    0,
                    fork,
                    bytes(80),
                )
                thread_type = REC_FILE_THREAD
            cat.append((self._sort_key(item.parent, item.units), catalog_key(item.parent, item.units), rec))
            thread = struct.pack(">hhI", thread_type, 0, item.parent) + uni_str(item.units)
            cat.append(((item.cnid, b""), catalog_key(item.cnid, b""), thread))
        cat.sort(key=lambda r: r[0])
        ext.sort()
        return [(k, d) for _, k, d in cat], ext

    def _attribute_records(self) -> list[tuple[bytes, bytes]]:
        recs = []
        for item in self.items:
            for units, value in item.xattrs:
                key = attr_key(item.cnid, units)
                if units in item.xattr_forks:
                    n = _blocks(len(value))
                    fork = fork_data(len(value), n, [(item.xattr_forks[units], n)])
                    recs.append((key, struct.pack(">II", ATTR_FORK, 0) + fork))
                else:
                    recs.append((key, struct.pack(">IIII", ATTR_INLINE, 0, 0, len(value)) + value))
        return recs  # items are in CNID order and names sorted: already key order

    def _trees(self) -> tuple[list[bytes], list[bytes], list[bytes]]:
        cat_recs, ext_recs = self._catalog_records()
        per_block = max(1, BLOCK_BYTES // CATALOG_SPEC.node_bytes)
        cat = build_btree(CATALOG_SPEC_HFSX if self.case_sensitive else CATALOG_SPEC, cat_recs, min_nodes=per_block)
        ext = build_btree(EXTENTS_SPEC, ext_recs)
        attr_recs = self._attribute_records()
        att = build_btree(ATTRIBUTES_SPEC, attr_recs) if attr_recs else []
        return cat, ext, att

    def _volume_header(self) -> bytes:
        def special(start: int, n_blocks: int) -> bytes:
            size = n_blocks * BLOCK_BYTES
            return fork_data(size, n_blocks, [(start, n_blocks)] if n_blocks else [], size)

        epoch = self.opts.source_date_epoch
        seed = f"{self.opts.volume_name}|{epoch}|{self.file_count}|{self.folder_count}|{self.used_blocks}".encode()
        volume_id = hashlib.sha256(seed).digest()[:8] if epoch is not None else os.urandom(8)
        finder = bytes(24) + volume_id
        return VOLUME_HEADER.pack(
            SIG_HFSX if self.case_sensitive else SIG_HFSPLUS,
            VERSION_HFSX if self.case_sensitive else VERSION_HFSPLUS,
            VOLUME_UNMOUNTED,
            b"10.0",
            0,
            self.volume_date,
            self.volume_date,
            0,
            self.volume_date,
            self.file_count,
            self.folder_count,
            BLOCK_BYTES,
            self.total_blocks,
            self.free_blocks,
            self.used_blocks if self.used_blocks < self.total_blocks else 0,
            65536,
            65536,
            self.next_cnid,
            1,
            1,
            finder,
            special(1, self.alloc_blocks),
            special(self.extents_start, self.extents_blocks),
            special(self.catalog_start, self.catalog_blocks),
            special(self.attributes_start, self.attributes_blocks),
            bytes(80),
        )

    # -- streaming ------------------------------------------------------------------------

    def _bitmap(self) -> Iterator[bytes | int]:
        used = self.used_blocks
        full, rest = divmod(used, 8)
        head = b"\xff" * full + (bytes([(0xFF << (8 - rest)) & 0xFF]) if rest else b"")
        last = self.total_blocks - 1
        total = self.alloc_blocks * BLOCK_BYTES
        tail_byte = last // 8
        if tail_byte < len(head):  # the last block shares a byte with the used ones
            buf = bytearray(head)
            buf[tail_byte] |= 0x80 >> (last % 8)
            yield bytes(buf)
            yield total - len(buf)
            return
        yield head
        yield tail_byte - len(head)
        yield bytes([0x80 >> (last % 8)])
        yield total - tail_byte - 1

    def _file_data(self, item: _Item) -> Iterator[Piece]:
        e = item.entry
        if item.content is not None:
            yield item.content
            yield item.blocks * BLOCK_BYTES - len(item.content)
            return
        if e.kind == "symlink":
            data = os.fsencode(e.target)
            yield data
            yield item.blocks * BLOCK_BYTES - len(data)
            return
        yield FileSpan(e.path, e.size, e.rel)  # read by the UDIF writer, which checks the size
        pad = item.blocks * BLOCK_BYTES - e.size
        if pad:
            yield pad

    def stream(self) -> Iterator[Piece]:
        """The volume's bytes in order: ``bytes`` pieces, ints meaning that many zero bytes, and
        :class:`~imaging.udif.FileSpan` for file contents (the consumer reads them and raises
        BusyError when a file changed size; :func:`~imaging.udif.piece_bytes` materialises one).
        """
        cat, ext, att = self._trees()
        vh = self._volume_header()
        # Bytes 0-1023 are the boot blocks, left zero as Apple's newfs_hfs leaves them (TN1150:
        # reserved, ignored by HFS+ implementations). Debian's libhfsp 1.0.4 (hpmount) looks for the
        # alternate header of an unwrapped volume in sector 1, a reader bug (docs/dmg.md); the
        # alternate header is where TN1150 puts it, 1024 bytes before the volume's end.
        yield bytes(VH_OFFSET) + vh + bytes(BLOCK_BYTES - VH_OFFSET - len(vh))
        yield from self._bitmap()
        yield b"".join(ext)
        yield b"".join(cat)
        if att:
            yield b"".join(att)
        for item in self.items:
            if item.entry.kind != "dir" and item.blocks:
                yield from self._file_data(item)
            for units, value in item.xattrs:
                if units in item.xattr_forks:
                    yield value
                    yield _blocks(len(value)) * BLOCK_BYTES - len(value)
        if self.free_blocks:
            yield self.free_blocks * BLOCK_BYTES
        yield bytes(BLOCK_BYTES - VH_OFFSET) + vh + bytes(VH_OFFSET - len(vh))
