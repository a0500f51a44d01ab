"""Shared state and helpers of the filesystem: inode attributes (with changes not saved yet),
kernel lookup counts, the purge of unlinked inodes, and the relatime rule.

Semantics follow ext4 (Linux ``fs/ext4`` and ``fs/namei.c``). Inode numbers are catalog ids and
are never reused. Only ``FUSEError`` leaves a handler (:func:`vfs.errnos.guard`).
"""

from __future__ import annotations

import errno
import logging
import stat
from typing import TYPE_CHECKING, cast

import pyfuse3

from pool.catalog import NAME_MAX, ROOT, Attrs, now_ns

from .data import DataPath, OpenFile

if TYPE_CHECKING:
    from pool.pool import Pool

log = logging.getLogger(__name__)

RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2
RENAME_WHITEOUT = 4
LINK_MAX = 65000  # ext4's EXT4_LINK_MAX
XATTR_SIZE_MAX = 65536
DAY_NS = 86400 * 10**9
VIRTUAL_PREFIX = b"user.darkstorage."
DOT_COOKIES = 2  # readdir cookies 1 and 2 are "." and ".."; an entry's cookie is its dentry id + 2
XATTR_NAMESPACES = (b"user.", b"trusted.", b"security.")  # ext4's, besides ACLs (the kernel's)


def fail(code: int) -> pyfuse3.FUSEError:
    return pyfuse3.FUSEError(code)


class NodeOps(pyfuse3.Operations):
    """State and helpers shared by every handler (:class:`vfs.operations.Operations`).

    Args:
        pool: the open pool.
        cache_max_bytes: cache size limit (LRU eviction above it).
        read_only: refuse every change with ``EROFS``.
        attr_timeout_s, entry_timeout_s: how long the kernel may cache attributes and names.
    """

    supports_dot_lookup = True
    enable_writeback_cache = False
    enable_acl = False

    def __init__(
        self,
        pool: Pool,
        *,
        cache_max_bytes: int,
        read_only: bool = False,
        attr_timeout_s: float = 10.0,
        entry_timeout_s: float = 10.0,
    ) -> None:
        super().__init__()
        self.pool = pool
        self.cat = pool.catalog
        self.cat.keep_listings()  # readdir answers from memory where it can
        self.data = DataPath(pool, cache_max_bytes)
        self.read_only = read_only
        self.attr_timeout_s = attr_timeout_s
        self.entry_timeout_s = entry_timeout_s
        self.lookups: dict[int, int] = {}
        self.pending: dict[int, Attrs] = {}  # attributes changed by writes, not saved yet
        self.handles: dict[int, tuple[OpenFile, bool]] = {}
        self.next_fh = 1
        self.dir_handles: dict[int, list[int]] = {}  # fh -> [directory inode, cookie its listing ended at]
        self.served: dict[int, tuple[int, int]] = {}  # ino -> (mtime_ns, size) the kernel caches
        self.purge_queue: set[int] = set()
        self.initialised = False
        self.atimes: dict[int, int] = {}  # relatime updates not saved yet (see save_atimes)
        #: ino -> (catalog row, the entry made from it), see readdir
        self.row_entries: dict[int, tuple[tuple[int, ...], pyfuse3.EntryAttributes]] = {}
        self.root_names: set[bytes] = set()  # bucket names the kernel may hold entries for
        self.requests = 0  #: metadata requests served so far (write-back backs off while busy)
        #: files whose last name went (nlink 0) and which are not purged yet: their data is never
        #: needed again once closed, so write-back skips them and stops their uploads in flight
        self.unlinked: set[int] = set()

    def init(self) -> None:
        """Called once the kernel's INIT request is being answered."""
        self.initialised = True
        self.cat.count_inodes()  # counted now, statfs (df, find) then answers from memory

    # -- helpers ------------------------------------------------------------------------------

    def get(self, ino: int) -> Attrs:
        a = self.pending.get(ino)
        if a is not None:
            return a
        a = self.cat.get(ino)
        if a is None:
            raise fail(errno.ENOENT)
        t = self.atimes.get(ino)
        if t is not None:
            a.atime_ns = t
        return a

    def fresh(self, a: Attrs) -> Attrs:
        """*a* as read from the catalog, with the changes held in memory applied."""
        p = self.pending.get(a.id)
        if p is not None:
            return p
        t = self.atimes.get(a.id)
        if t is not None:
            a.atime_ns = t
        return a

    def save_atimes(self) -> int:
        """Write the access times held in memory (relatime updates from reads and listings)
        in one transaction; ext4's lazytime defers them the same way. Returns how many."""
        if not self.atimes:
            return 0
        items, self.atimes = self.atimes, {}
        with self.cat.op():
            self.cat.save_atimes(items)
        return len(items)

    def entry(self, a: Attrs) -> pyfuse3.EntryAttributes:
        return self.entry_of_fields(
            a.id, a.mode, a.uid, a.gid, a.size, a.nlink, a.atime_ns, a.mtime_ns, a.ctime_ns, a.btime_ns, a.rdev
        )

    def entry_of_fields(
        self,
        ino: int,
        mode: int,
        uid: int,
        gid: int,
        size: int,
        nlink: int,
        atime_ns: int,
        mtime_ns: int,
        ctime_ns: int,
        btime_ns: int,
        rdev: int,
    ) -> pyfuse3.EntryAttributes:
        """The entry the kernel gets for an inode with these attributes (the fields of
        :class:`Attrs`, in order: a catalog row). Directories report 4096 bytes, as ext4."""
        e = pyfuse3.EntryAttributes()
        e.st_ino = cast(pyfuse3.InodeT, ino)
        e.entry_timeout = self.entry_timeout_s
        e.attr_timeout = self.attr_timeout_s
        e.st_mode = cast(pyfuse3.ModeT, mode)
        e.st_nlink = nlink
        e.st_uid = uid
        e.st_gid = gid
        e.st_rdev = rdev
        if stat.S_ISDIR(mode):
            size = 4096
        e.st_size = size
        e.st_blksize = 4096
        e.st_blocks = ((size + 4095) // 4096) * 8
        e.st_atime_ns = atime_ns
        e.st_mtime_ns = mtime_ns
        e.st_ctime_ns = ctime_ns
        e.st_birthtime_ns = btime_ns
        return e

    @staticmethod
    def dot_entry(ino: int) -> pyfuse3.EntryAttributes:
        """The READDIRPLUS entry for "." or "..": the kernel takes only the inode number and
        the type from these two (``fuse_direntplus_link`` skips them), and no lookup count."""
        e = pyfuse3.EntryAttributes()
        e.st_ino = cast(pyfuse3.InodeT, ino)
        e.st_mode = cast(pyfuse3.ModeT, stat.S_IFDIR)
        return e

    def refresh_root(self) -> int:
        """Buckets were created or removed outside the mount (``darkstorage bucket ...``):
        drop the kernel's cached entries for names that are gone and the root's attributes.
        Returns how many entries were invalidated. Not for use inside a request handler."""
        current = {name.encode() for name, _, _ in self.cat.buckets()}
        gone = self.root_names - current
        for name in gone:
            pyfuse3.invalidate_entry_async(cast(pyfuse3.InodeT, ROOT), name, ignore_enoent=True)
        self.root_names &= current
        pyfuse3.invalidate_inode(cast(pyfuse3.InodeT, ROOT), attr_only=True)
        return len(gone)

    def _ref(self, a: Attrs) -> pyfuse3.EntryAttributes:
        self.lookups[a.id] = self.lookups.get(a.id, 0) + 1
        return self.entry(a)

    def _writable(self) -> None:
        if self.read_only:
            raise fail(errno.EROFS)

    @staticmethod
    def _check_name(name: bytes) -> None:
        if len(name) > NAME_MAX:
            raise fail(errno.ENAMETOOLONG)
        if name in (b".", b".."):
            raise fail(errno.EEXIST)

    def _dir(self, ino: int) -> Attrs:
        a = self.get(ino)
        if not a.is_dir:
            raise fail(errno.ENOTDIR)
        return a

    def _save(self, a: Attrs) -> None:
        self.cat.save(a)
        if a.nlink == 0 and not a.is_dir:
            self.unlinked.add(a.id)

    def _touch_dir(self, d: Attrs, t: int, nlink_delta: int = 0) -> None:
        d.mtime_ns = d.ctime_ns = t
        d.nlink += nlink_delta
        self._save(d)

    def _maybe_purge(self, ino: int) -> None:
        """Queue an inode for removal once it has no name, no kernel reference and no open
        handle. Nothing can reach it any more, so :meth:`purge` removes the queued ones in one
        transaction later (the write-back service calls it; recovery purges leftovers)."""
        if self.lookups.get(ino, 0) > 0 or ino in self.data.files:
            return
        if ino not in self.unlinked:  # a file whose last name went cannot get one back: no read
            a = self.pending.get(ino) or self.cat.get(ino)
            if a is None or a.nlink > 0:
                return
        self.pending.pop(ino, None)
        self.purge_queue.add(ino)

    def _purge_if_unlinked(self, a: Attrs) -> None:
        """:meth:`_maybe_purge` for a caller that holds the inode's current attributes."""
        if a.nlink == 0 and self.lookups.get(a.id, 0) == 0 and a.id not in self.data.files:
            self.pending.pop(a.id, None)
            self.purge_queue.add(a.id)

    def purge(self) -> int:
        """Remove queued unlinked inodes (their objects go to trash). Returns how many."""
        if not self.purge_queue:
            return 0
        inos = [i for i in self.purge_queue if self.lookups.get(i, 0) == 0 and i not in self.data.files]
        self.purge_queue.clear()
        with self.cat.tx():
            removed, cached_list = self.cat.delete_unlinked(inos)
        cached = set(cached_list)
        self.unlinked.difference_update(inos)  # removed, or (after a rolled-back unlink) alive
        for ino in removed:
            self.atimes.pop(ino, None)
            self.row_entries.pop(ino, None)
            self.served.pop(ino, None)
            self.data.forget_cache(ino, has_file=ino in cached)
        return len(removed)

    @staticmethod
    def _in_groups(gid: int, ctx: pyfuse3.RequestContext) -> bool:
        if gid == ctx.gid:
            return True
        try:
            return gid in pyfuse3.get_sup_groups(ctx.pid)
        except (OSError, ValueError):
            return False

    @staticmethod
    def _atime_due(a: Attrs, t: int) -> bool:
        """relatime: update atime if it is older than mtime or ctime, or than a day."""
        return a.atime_ns <= a.mtime_ns or a.atime_ns <= a.ctime_ns or t - a.atime_ns >= DAY_NS

    def _mark_read(self, a: Attrs) -> None:
        if self.read_only:
            return
        t = now_ns()
        if self._atime_due(a, t):
            a.atime_ns = t
            if a.id not in self.pending:  # else saved with the other pending changes
                self.atimes[a.id] = t
