"""HFS+ / HFSX reader (Apple TN1150): the tree, file data, extended attributes and a
structural check, over any ``read(offset, size)`` of the disk (e.g. a UDIF image).

Implements the ``ImageView`` protocol of ``vfs.imagefs`` (duck-typed: inode = CNID - 1, so the
root folder, CNID 2, is inode 1; every hard link of a file shows the inode of its indirect node
file, TN1150 "Hard Links", whose private folder stays hidden), so ``dmg mount`` serves it read-only through FUSE. Names are
shown in NFC (Linux's usual form); the volume stores them decomposed.
"""

from __future__ import annotations

import dataclasses
import os
import stat
import struct
import unicodedata
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from pool.errors import ImageCorruptError

from .hfsplus_btree import parse_header, parse_node
from .hfsplus_format import (
    ATTR_FORK,
    ATTR_INLINE,
    BSD_INFO,
    CNID_ATTRIBUTES,
    CNID_CATALOG,
    CNID_EXTENTS,
    CNID_ROOT_FOLDER,
    FILE_RECORD,
    FOLDER_RECORD,
    NODE_LEAF,
    PRIVATE_DIR_NAME,
    REC_FILE,
    REC_FILE_THREAD,
    REC_FOLDER,
    REC_FOLDER_THREAD,
    SIG_HFSPLUS,
    SIG_HFSX,
    UNKNOWN_ID,
    VH_OFFSET,
    VOLUME_HEADER,
    ForkInfo,
    decode_name,
    parse_extents,
    unix_ns,
)

ReadFn = Callable[[int, int], bytes]
PRIVATE_DIR_UNITS = PRIVATE_DIR_NAME.encode("utf-16-be")


@dataclass
class Entry:
    """One catalog object: what ``getattr`` returns (times in ns since the Unix epoch)."""

    cnid: int
    parent: int
    name: str
    kind: str  #: "dir", "file" or "symlink"
    mode: int
    uid: int
    gid: int
    size: int
    mtime_ns: int
    atime_ns: int
    ctime_ns: int
    extents: list[tuple[int, int]] = field(default_factory=list)
    nlink: int = 1
    link: int = 0  #: for a hard link: the CNID of its indirect node file (shared by all its links)
    finder_flags: int = 0  #: Finder flags (FInfo.fdFlags / DInfo.frFlags: 0x0400 custom icon, 0x4000 invisible)

    @property
    def ino(self) -> int:
        return self.cnid - 1


class HfsVolume:
    """A parsed HFS+ volume.

    Args:
        read: reads bytes of the disk holding the volume.
        size_bytes: size of that disk.
        own_uid, own_gid: shown for objects owned by "unknown" (99), as macOS does.

    Raises:
        ImageCorruptError: no HFS+ volume header, or a damaged B-tree.
    """

    def __init__(
        self, read: ReadFn, size_bytes: int, *, own_uid: int | None = None, own_gid: int | None = None
    ) -> None:
        self._read = read
        self.size_bytes = size_bytes
        self.own_uid = os.getuid() if own_uid is None else own_uid
        self.own_gid = os.getgid() if own_gid is None else own_gid
        raw = read(VH_OFFSET, 512)
        if len(raw) < 512:
            raise ImageCorruptError("HFS+ volume header: the disk is too small")
        vh = VOLUME_HEADER.unpack(raw)
        self.signature = vh[0]
        if self.signature not in (SIG_HFSPLUS, SIG_HFSX):
            raise ImageCorruptError("volume header: no HFS+ signature (not an HFS+ volume)")
        self.header_raw = raw
        self.case_sensitive = self.signature == SIG_HFSX
        self.file_count, self.folder_count, self.block_bytes, self.total_blocks = vh[9], vh[10], vh[11], vh[12]
        if self.block_bytes < 512 or self.block_bytes & (self.block_bytes - 1):
            raise ImageCorruptError(f"volume header: block size {self.block_bytes} is invalid")
        self.volume_create = vh[5]
        self._alloc, self._ext, self._cat, self._attr = (ForkInfo.parse(vh[i]) for i in (21, 22, 23, 24))
        self.overflow: dict[tuple[int, int], list[tuple[int, list[tuple[int, int]]]]] = {}
        for node in self._leaves(self._ext, "extents"):
            for rec in node.records:
                _klen, fork_type, _pad, cnid, start = struct.unpack_from(">HBBII", rec)
                self.overflow.setdefault((cnid, fork_type), []).append((start, parse_extents(rec[12:76])))
        self._ext = self._with_overflow(self._ext, CNID_EXTENTS)
        self._cat = self._with_overflow(self._cat, CNID_CATALOG)
        self._attr = self._with_overflow(self._attr, CNID_ATTRIBUTES)
        self.entries: dict[int, Entry] = {}
        self.children: dict[int, list[tuple[bytes, int]]] = {}
        self.threads: dict[int, tuple[int, bytes]] = {}
        self.volume_name = ""
        self.private = 0  # CNID of the hidden "\0\0\0\0HFS+ Private Data" folder
        self.specials: dict[int, int] = {}  # BSD special field of files (link count / iNode number)
        self.links: dict[int, int] = {}  # hard link CNID -> indirect node number
        self.alias: dict[int, int] = {}  # hard link CNID -> its indirect node's CNID
        self._load_catalog()
        self._resolve_links()
        self.xattrs: dict[int, dict[bytes, bytes | ForkInfo]] = {}
        if self._attr.logical_bytes:
            self._load_attributes()

    # -- low level ------------------------------------------------------------------------

    def _with_overflow(self, fork: ForkInfo, cnid: int) -> ForkInfo:
        extents = list(fork.extents)
        for _start, more in sorted(self.overflow.get((cnid, 0), [])):
            extents += more
        return ForkInfo(fork.logical_bytes, fork.total_blocks, extents)

    def read_fork(self, extents: list[tuple[int, int]], logical_bytes: int, offset: int, size: int) -> bytes:
        """Bytes *offset*..*offset+size* of a fork (short at its end).

        Raises:
            ImageCorruptError: an extent points outside the volume.
        """
        size = max(0, min(size, logical_bytes - offset))
        out = bytearray()
        pos = 0
        bb = self.block_bytes
        for start, count in extents:
            if start + count > self.total_blocks:
                raise ImageCorruptError(f"extent ({start}+{count}) lies outside the volume")
            ext_bytes = count * bb
            if size and offset < pos + ext_bytes:
                skip = offset - pos
                take = min(size, ext_bytes - skip)
                out += self._read(start * bb + skip, take)
                offset += take
                size -= take
            pos += ext_bytes
            if not size:
                break
        if size:
            raise ImageCorruptError("a fork is shorter than its recorded size")
        return bytes(out)

    def _leaves(self, fork: ForkInfo, tree: str) -> Iterator:
        if not fork.logical_bytes:
            return
        head = parse_header(self.read_fork(fork.extents, fork.logical_bytes, 0, 512 * 64)[:4096], tree)
        nb = head.node_bytes
        seen: set[int] = set()
        n = head.first_leaf
        count = 0
        while n:
            if n in seen or n >= head.total_nodes:
                raise ImageCorruptError(f"{tree} B-tree: leaf chain broken at node {n}")
            seen.add(n)
            node = parse_node(self.read_fork(fork.extents, fork.logical_bytes, n * nb, nb), n, tree)
            if node.kind != NODE_LEAF:
                raise ImageCorruptError(f"{tree} B-tree: node {n} in the leaf chain is not a leaf")
            count += len(node.records)
            yield node
            n = node.flink
        if count != head.leaf_records:
            raise ImageCorruptError(f"{tree} B-tree: {count} leaf records, header says {head.leaf_records}")

    # -- catalog --------------------------------------------------------------------------

    def _load_catalog(self) -> None:
        for node in self._leaves(self._cat, "catalog"):
            for rec in node.records:
                klen, parent, nlen = struct.unpack_from(">HIH", rec)
                units = rec[8 : 8 + 2 * nlen]
                data = rec[2 + klen :]
                rtype = struct.unpack_from(">h", data)[0]
                if rtype == REC_FOLDER:
                    self._add(parent, units, FOLDER_RECORD.unpack_from(data), "dir")
                elif rtype == REC_FILE:
                    self._add(parent, units, FILE_RECORD.unpack_from(data), "file")
                elif rtype in (REC_FOLDER_THREAD, REC_FILE_THREAD):
                    tparent, tlen = struct.unpack_from(">IH", data, 4)
                    self.threads[parent] = (tparent, data[10 : 10 + 2 * tlen])
                else:
                    raise ImageCorruptError(f"catalog B-tree node {node.number}: unknown record type {rtype}")
        if CNID_ROOT_FOLDER not in self.entries:
            raise ImageCorruptError("catalog: no root folder")

    def _add(self, parent: int, units: bytes, rec: tuple, kind: str) -> None:
        cnid = rec[3]
        create, content, attr_mod, access = rec[4:8]
        owner, group, _admin, _ownerf, mode, special = BSD_INFO.unpack(rec[9])
        size = 0
        extents: list[tuple[int, int]] = []
        if kind == "file":
            fork = ForkInfo.parse(rec[14])
            size = fork.logical_bytes
            extents = list(fork.extents)
            for _start, more in sorted(self.overflow.get((cnid, 0), [])):
                extents += more
            if rec[10][:8] == b"slnkrhap" or stat.S_ISLNK(mode):
                kind = "symlink"
                mode = stat.S_IFLNK | (mode & 0o7777 or 0o755)
            self.specials[cnid] = special
            if rec[10][:8] == b"hlnkhfs+":
                self.links[cnid] = special
        if not stat.S_IFMT(mode):
            mode |= stat.S_IFDIR | 0o755 if kind == "dir" else stat.S_IFREG | 0o644
        name = unicodedata.normalize("NFC", decode_name(units))
        entry = Entry(
            cnid,
            parent,
            name,
            kind,
            mode,
            self.own_uid if owner == UNKNOWN_ID else owner,
            self.own_gid if group == UNKNOWN_ID else group,
            size,
            unix_ns(content),
            unix_ns(access),
            unix_ns(attr_mod),
            extents,
            2 if kind == "dir" else 1,
            finder_flags=struct.unpack_from(">H", rec[10], 8)[0],
        )
        self.entries[cnid] = entry
        if cnid == CNID_ROOT_FOLDER:
            self.volume_name = name
        elif parent == CNID_ROOT_FOLDER and kind == "dir" and units == PRIVATE_DIR_UNITS:
            self.private = cnid  # hidden, as macOS hides it
        else:
            self.children.setdefault(parent, []).append((os.fsencode(name), cnid))

    def _resolve_links(self) -> None:
        """Give every hard link its indirect node's data, attributes and link count."""
        if not self.links:
            return
        nodes = {os.fsdecode(n): c for n, c in self.children.get(self.private, [])}
        for cnid, number in self.links.items():
            link = self.entries[cnid]
            node_cnid = nodes.get(f"iNode{number}")
            if node_cnid is None:
                raise ImageCorruptError(f"catalog: hard link {link.name!r} points to a missing iNode{number}")
            node = self.entries[node_cnid]
            node.nlink = self.specials.get(node_cnid) or node.nlink
            self.entries[cnid] = dataclasses.replace(
                node, cnid=cnid, parent=link.parent, name=link.name, link=node_cnid
            )
            self.alias[cnid] = node_cnid

    def _load_attributes(self) -> None:
        for node in self._leaves(self._attr, "attributes"):
            for rec in node.records:
                klen, _pad, cnid, _start, nlen = struct.unpack_from(">HHIIH", rec)
                name = ("user." + rec[14 : 14 + 2 * nlen].decode("utf-16-be", errors="replace")).encode()
                data = rec[2 + klen :]
                rtype = struct.unpack_from(">I", data)[0]
                if rtype == ATTR_INLINE:
                    n = struct.unpack_from(">I", data, 12)[0]
                    self.xattrs.setdefault(cnid, {})[name] = data[16 : 16 + n]
                elif rtype == ATTR_FORK:
                    self.xattrs.setdefault(cnid, {})[name] = ForkInfo.parse(data[8:88])

    # -- walking --------------------------------------------------------------------------

    def walk(self) -> Iterator[tuple[str, Entry]]:
        """Every object but the root as ``(path, entry)``, parents before children, in
        catalog order (paths ``/``-separated, relative to the volume root)."""
        stack: list[tuple[str, int]] = [("", CNID_ROOT_FOLDER)]
        while stack:
            prefix, cnid = stack.pop()
            kids = self.children.get(cnid, [])
            dirs = []
            for name, child in kids:
                path = prefix + os.fsdecode(name)
                e = self.entries[child]
                yield path, e
                if e.kind == "dir":
                    dirs.append((path + "/", child))
            stack.extend(reversed(dirs))

    def check(self) -> list[str]:
        """Structural checks beyond what parsing enforces: the alternate volume header, thread
        records, counts, every extent inside the volume. Returns the problems found."""
        problems = []
        alt = self._read(self.size_bytes - 1024, 512)
        if alt != self.header_raw:
            problems.append("alternate volume header differs from the volume header")
        files = sum(1 for e in self.entries.values() if e.kind != "dir")
        folders = sum(1 for e in self.entries.values() if e.kind == "dir") - 1
        if (files, folders) != (self.file_count, self.folder_count):
            problems.append(
                f"volume header counts {self.file_count} files / {self.folder_count} folders, "
                f"catalog has {files} / {folders}"
            )
        for cnid, e in self.entries.items():
            if cnid not in self.threads or self.threads[cnid][0] != e.parent:
                problems.append(f"catalog: thread record of {e.name!r} (CNID {cnid}) missing or wrong")
            blocks = sum(n for _, n in e.extents)
            if e.size > blocks * self.block_bytes:
                problems.append(f"catalog: {e.name!r} has {e.size} bytes but {blocks} blocks")
            for start, n in e.extents:
                if start + n > self.total_blocks:
                    problems.append(f"catalog: {e.name!r} has an extent outside the volume")
        return problems

    # -- ImageView ------------------------------------------------------------------------

    def _entry(self, ino: int) -> Entry:
        try:
            return self.entries[ino + 1]
        except KeyError:
            raise KeyError(ino) from None

    def getattr(self, ino: int) -> Entry:
        return self._entry(ino)

    def lookup(self, parent: int, name: bytes) -> int:
        for n, cnid in self.children.get(parent + 1, []):
            if n == name:
                return self.alias.get(cnid, cnid) - 1
        raise KeyError(name)

    def readdir(self, ino: int) -> list[tuple[bytes, int]]:
        return [(n, self.alias.get(cnid, cnid) - 1) for n, cnid in self.children.get(ino + 1, [])]

    def readlink(self, ino: int) -> bytes:
        e = self._entry(ino)
        return self.read_fork(e.extents, e.size, 0, e.size)

    def read(self, ino: int, offset: int, size: int) -> bytes:
        e = self._entry(ino)
        return self.read_fork(e.extents, e.size, offset, size)

    def listxattr(self, ino: int) -> list[bytes]:
        return sorted(self.xattrs.get(ino + 1, {}))

    def getxattr(self, ino: int, name: bytes) -> bytes:
        value = self.xattrs.get(ino + 1, {})[name]
        if isinstance(value, ForkInfo):
            return self.read_fork(value.extents, value.logical_bytes, 0, value.logical_bytes)
        return value
