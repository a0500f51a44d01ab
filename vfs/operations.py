"""pyfuse3 ``Operations`` over the pool catalog: the POSIX namespace.

Semantics follow ext4 (Linux ``fs/ext4`` and ``fs/namei.c``): the errno of every failure, the
timestamps each call changes, link counts (a directory has 2 + its subdirectories), setgid
directories. Permission checks are the kernel's (the mount uses ``default_permissions``);
:meth:`access` implements the same rules for callers that ask.

Inode numbers are catalog ids and are never reused. Only ``FUSEError`` leaves a handler
(:func:`vfs.errnos.guard`).
"""

from __future__ import annotations

import errno
import logging
import os
import sqlite3
import stat
from typing import cast

import pyfuse3

from pool.catalog import CACHED_ROWS_MAX, NAME_MAX, ROOT, Attrs, now_ns

from .errnos import guard
from .nodes import DOT_COOKIES, LINK_MAX, fail
from .xattrs import XattrOps

log = logging.getLogger(__name__)


RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2
RENAME_WHITEOUT = 4


class Operations(XattrOps):
    """The filesystem.

    Args:
        pool: the open pool.
        cache_max_bytes: cache size limit (LRU eviction above it).
        read_only: refuse every change with ``EROFS``.
        attr_timeout_s, entry_timeout_s: how long the kernel may cache attributes and names.
    """

    # -- lookup and attributes -----------------------------------------------------------------

    @guard
    async def lookup(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:  # type: ignore[override]
        if len(name) > NAME_MAX:
            raise fail(errno.ENAMETOOLONG)
        if name == b".":
            return self._ref(self.get(parent_inode))
        if name == b"..":
            up = self.cat.parent_of(parent_inode) if parent_inode != ROOT else ROOT
            return self._ref(self.get(up or ROOT))
        ino = self.cat.lookup(parent_inode, name)
        if ino is None:
            raise fail(errno.ENOENT)
        if parent_inode == ROOT:
            self.root_names.add(name)
        return self._ref(self.get(ino))

    async def forget(self, inode_list: list[tuple[int, int]]) -> None:  # type: ignore[override]
        for ino, n in inode_list:
            left = self.lookups.get(ino, 0) - n
            if left > 0:
                self.lookups[ino] = left
                continue
            self.lookups.pop(ino, None)
            try:
                self._maybe_purge(ino)
            except Exception:
                log.exception("purging inode %d", ino)

    @guard
    async def getattr(self, inode: int, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:  # type: ignore[override]
        return self.entry(self.get(inode))

    @guard
    async def setattr(
        self,
        inode: int,
        attr: pyfuse3.EntryAttributes,
        fields: pyfuse3.SetattrFields,
        fh: int | None,
        ctx: pyfuse3.RequestContext,
    ) -> pyfuse3.EntryAttributes:  # type: ignore[override]
        self._writable()
        a = self.get(inode)
        self.atimes.pop(inode, None)  # a is current; an explicit atime below must win
        t = now_ns()
        if fields.update_size:
            if a.is_dir:
                raise fail(errno.EISDIR)
            if not a.is_reg:
                raise fail(errno.EINVAL)
            await self._truncate(a, attr.st_size, t)
        if fields.update_mode:
            mode = attr.st_mode & 0o7777
            if ctx.uid != 0 and mode & stat.S_ISGID and not self._in_groups(a.gid, ctx):
                mode &= ~stat.S_ISGID
            a.mode = stat.S_IFMT(a.mode) | mode
        if fields.update_uid and attr.st_uid != a.uid:
            a.uid = attr.st_uid
        if fields.update_gid and attr.st_gid != a.gid:
            a.gid = attr.st_gid
        if fields.update_atime:
            a.atime_ns = attr.st_atime_ns
        if fields.update_mtime:
            a.mtime_ns = attr.st_mtime_ns
        # every setattr the kernel sends changes ctime, even one with no field set
        # (chown(f, -1, -1)): ext4 stamps ctime on every notify_change
        a.ctime_ns = t
        with self.cat.op():
            self._save(a)
            if a.is_reg and (fields.update_mode or fields.update_uid or fields.update_gid or fields.update_mtime):
                # a clean object carries stale attributes now: the write-back service records
                # the new ones with it (dirty files get them at upload)
                self.cat.add_rekeys([inode])
        return self.entry(a)

    async def _truncate(self, a: Attrs, size: int, t: int) -> None:
        """Set regular file *a*'s size; mtime and ctime change even if the size does not (ext4)."""
        of = self.data.files.get(a.id)
        temp = of is None
        if temp:
            of = await self.data.open(a.id, writable=True)
        assert of is not None
        try:
            await self.data.make_writable(of)
            self.data.truncate(of, size)
        finally:
            if temp:
                self.data.close(of, True)
        a.size = size
        a.mtime_ns = a.ctime_ns = t

    @guard
    async def readlink(self, inode: int, ctx: pyfuse3.RequestContext) -> bytes:  # type: ignore[override]
        target = self.cat.readlink(inode)
        if target is None:
            raise fail(errno.EINVAL)
        self._mark_read(self.get(inode))  # reading or following a symlink touches its atime
        return target

    @guard
    async def statfs(self, ctx: pyfuse3.RequestContext) -> pyfuse3.StatvfsData:  # type: ignore[override]
        hot = self.pool.backends["hot"].local_root
        sv = os.statvfs(hot if hot is not None and hot.exists() else self.pool.config.cache_dir)
        s = pyfuse3.StatvfsData()
        s.f_bsize = sv.f_bsize
        s.f_frsize = sv.f_frsize
        s.f_blocks = sv.f_blocks
        s.f_bfree = sv.f_bfree
        s.f_bavail = sv.f_bavail
        used = self.cat.count_inodes()
        s.f_files = max(sv.f_files, used + 1_000_000)
        s.f_ffree = s.f_files - used
        s.f_favail = s.f_ffree
        s.f_namemax = NAME_MAX
        return s

    # -- creating names -----------------------------------------------------------------------

    def _new_node(
        self,
        parent: int,
        name: bytes,
        mode: int,
        ctx: pyfuse3.RequestContext,
        *,
        rdev: int = 0,
        target: bytes | None = None,
    ) -> Attrs:
        self._writable()
        self._check_name(name)
        p = self._dir(parent)
        if p.nlink == 0:
            raise fail(errno.ENOENT)  # directory was removed while in use
        is_dir = stat.S_ISDIR(mode)
        if parent == ROOT and not is_dir:
            raise fail(errno.EPERM)  # only buckets (directories) live at the top
        if is_dir and p.nlink >= LINK_MAX:
            raise fail(errno.EMLINK)
        gid = ctx.gid
        if p.mode & stat.S_ISGID:
            gid = p.gid
            if is_dir:
                mode |= stat.S_ISGID
        t = now_ns()
        size = len(target) if target is not None else 0
        try:
            with self.cat.op():
                a = self.cat.new_inode(
                    mode, ctx.uid, gid, t, nlink=2 if is_dir else 1, size=size, rdev=rdev, target=target
                )
                if parent == ROOT:
                    self.pool.register_bucket_dir(name.decode("utf-8", "surrogateescape"), a.id, t)
                else:
                    self.cat.add_entry(parent, name, a.id)  # UNIQUE (parent, name): EEXIST
                    self._touch_dir(p, t, 1 if is_dir else 0)
                if stat.S_ISREG(mode):  # its cache file appears with the first byte written
                    self.cat.new_object(a.id, self.pool.placement_tier(parent, name), t)
        except sqlite3.IntegrityError:  # the transaction rolled back
            raise fail(errno.EEXIST) from None
        return a

    @guard
    async def mknod(
        self, parent_inode: int, name: bytes, mode: int, rdev: int, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:  # type: ignore[override]
        kind = stat.S_IFMT(mode)
        if kind not in (stat.S_IFREG, stat.S_IFIFO, stat.S_IFSOCK, stat.S_IFCHR, stat.S_IFBLK):
            raise fail(errno.EINVAL)
        a = self._new_node(parent_inode, name, mode, ctx, rdev=rdev if kind in (stat.S_IFCHR, stat.S_IFBLK) else 0)
        return self._ref(a)

    @guard
    async def mkdir(
        self, parent_inode: int, name: bytes, mode: int, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:  # type: ignore[override]
        return self._ref(self._new_node(parent_inode, name, stat.S_IFDIR | (mode & 0o7777), ctx))

    @guard
    async def symlink(
        self, parent_inode: int, name: bytes, target: bytes, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:  # type: ignore[override]
        return self._ref(self._new_node(parent_inode, name, stat.S_IFLNK | 0o777, ctx, target=target))

    @guard
    async def create(
        self, parent_inode: int, name: bytes, mode: int, flags: int, ctx: pyfuse3.RequestContext
    ) -> tuple[pyfuse3.FileInfo, pyfuse3.EntryAttributes]:  # type: ignore[override]
        a = self._new_node(parent_inode, name, stat.S_IFREG | (mode & 0o7777), ctx)
        fi = await self._open_handle(a, flags, fresh=True)
        return fi, self._ref(a)

    @guard
    async def link(
        self, inode: int, new_parent_inode: int, new_name: bytes, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:  # type: ignore[override]
        self._writable()
        self._check_name(new_name)
        a = self.get(inode)
        if a.is_dir:
            raise fail(errno.EPERM)
        p = self._dir(new_parent_inode)
        if new_parent_inode == ROOT:
            raise fail(errno.EPERM)
        if a.nlink == 0:
            raise fail(errno.ENOENT)
        if a.nlink >= LINK_MAX:
            raise fail(errno.EMLINK)
        if self.cat.lookup(new_parent_inode, new_name) is not None:
            raise fail(errno.EEXIST)
        t = now_ns()
        with self.cat.op():
            self.cat.add_entry(new_parent_inode, new_name, inode)
            a.nlink += 1
            a.ctime_ns = t
            self._save(a)
            self._touch_dir(p, t)
        return self._ref(a)

    # -- removing names -----------------------------------------------------------------------

    @guard
    async def unlink(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:  # type: ignore[override]
        self._writable()
        if len(name) > NAME_MAX:
            raise fail(errno.ENAMETOOLONG)
        p = self._dir(parent_inode)
        a = self.cat.lookup_attrs(parent_inode, name)
        if a is None:
            raise fail(errno.ENOENT)
        a = self.fresh(a)
        if a.is_dir:
            raise fail(errno.EISDIR)
        t = now_ns()
        with self.cat.op():
            self.cat.remove_entry(parent_inode, name)
            a.nlink -= 1
            a.ctime_ns = t
            self._save(a)
            self._touch_dir(p, t)
            if a.nlink > 0:
                self.cat.add_rekeys([a.id])
        self._purge_if_unlinked(a)

    @guard
    async def rmdir(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:  # type: ignore[override]
        self._writable()
        if len(name) > NAME_MAX:
            raise fail(errno.ENAMETOOLONG)
        if name == b".":
            raise fail(errno.EINVAL)
        if name == b"..":
            raise fail(errno.ENOTEMPTY)
        p = self._dir(parent_inode)
        ino = self.cat.lookup(parent_inode, name)
        if ino is None:
            raise fail(errno.ENOENT)
        a = self.get(ino)
        if not a.is_dir:
            raise fail(errno.ENOTDIR)
        if not self.cat.is_empty(ino):
            raise fail(errno.ENOTEMPTY)
        t = now_ns()
        with self.cat.op():
            self.cat.remove_entry(parent_inode, name)
            if parent_inode == ROOT:
                self._drop_bucket(name)
            a.nlink = 0
            a.ctime_ns = t
            self._save(a)
            self._touch_dir(p, t, -1)
        self._maybe_purge(ino)

    def _drop_bucket(self, name: bytes) -> None:
        b = name.decode("utf-8", "surrogateescape")
        self.cat.db.execute("DELETE FROM buckets WHERE name = ?", (b,))
        self.cat.db.execute("DELETE FROM placement WHERE bucket = ?", (b,))

    @guard
    async def rename(
        self,
        parent_inode_old: int,
        name_old: bytes,
        parent_inode_new: int,
        name_new: bytes,
        flags: int,
        ctx: pyfuse3.RequestContext,
    ) -> None:  # type: ignore[override]
        self._writable()
        if flags & ~(RENAME_NOREPLACE | RENAME_EXCHANGE | RENAME_WHITEOUT) or (
            flags & RENAME_EXCHANGE and flags != RENAME_EXCHANGE
        ):
            raise fail(errno.EINVAL)
        if len(name_old) > NAME_MAX or len(name_new) > NAME_MAX:
            raise fail(errno.ENAMETOOLONG)
        if name_new in (b".", b"..") or name_old in (b".", b".."):
            raise fail(errno.EBUSY if name_old in (b".", b"..") else errno.EEXIST)
        po, pn = self._dir(parent_inode_old), self._dir(parent_inode_new)
        src_ino = self.cat.lookup(parent_inode_old, name_old)
        if src_ino is None:
            raise fail(errno.ENOENT)
        src = self.get(src_ino)
        dst_ino = self.cat.lookup(parent_inode_new, name_new)
        dst = self.get(dst_ino) if dst_ino is not None else None
        if flags & RENAME_EXCHANGE:
            if dst is None:
                raise fail(errno.ENOENT)
            self._exchange(po, name_old, src, pn, name_new, dst)
            return
        if dst is not None and flags & RENAME_NOREPLACE:
            raise fail(errno.EEXIST)
        if dst is not None and dst.id == src.id:
            return  # both names refer to the same file: nothing to do (POSIX)
        if src.is_dir:
            if parent_inode_new != parent_inode_old and self.cat.is_ancestor(src.id, parent_inode_new):
                raise fail(errno.EINVAL)
            if dst is not None:
                if not dst.is_dir:
                    raise fail(errno.ENOTDIR)
                if not self.cat.is_empty(dst.id):
                    raise fail(errno.ENOTEMPTY)
        else:
            if dst is not None and dst.is_dir:
                raise fail(errno.EISDIR)
            if parent_inode_new == ROOT:
                raise fail(errno.EPERM)
        if flags & RENAME_WHITEOUT and parent_inode_old == ROOT:
            raise fail(errno.EPERM)  # only buckets (directories) live at the top
        t = now_ns()
        with self.cat.op():
            self.cat.remove_entry(parent_inode_old, name_old)
            if parent_inode_old == ROOT:
                self._drop_bucket(name_old)
            if dst is not None:
                self.cat.remove_entry(parent_inode_new, name_new)
                if parent_inode_new == ROOT:
                    self._drop_bucket(name_new)
                dst.nlink = 0 if dst.is_dir else dst.nlink - 1
                dst.ctime_ns = t
                self._save(dst)
                if dst.is_dir:
                    pn.nlink -= 1
            if parent_inode_new == ROOT:
                self._add_bucket_entry(name_new, src.id, t)
            else:
                self.cat.add_entry(parent_inode_new, name_new, src.id)
            if src.is_dir and parent_inode_old != parent_inode_new:
                po.nlink -= 1
                pn.nlink += 1
            src.ctime_ns = t
            self._save(src)
            self._touch_dir(po, t)
            if pn is not po:
                self._touch_dir(pn, t)
            self.cat.add_rekeys(self.cat.descendant_files(src.id))
            if flags & RENAME_WHITEOUT:  # overlayfs: a 0/0 character device takes the old name
                gid = po.gid if po.mode & stat.S_ISGID else ctx.gid
                w = self.cat.new_inode(stat.S_IFCHR, ctx.uid, gid, t, rdev=0)
                self.cat.add_entry(parent_inode_old, name_old, w.id)
        if dst is not None:
            self._maybe_purge(dst.id)

    def _add_bucket_entry(self, name: bytes, ino: int, t: int) -> None:
        self.cat.add_entry(ROOT, name, ino)
        self.cat.db.execute(
            "INSERT INTO buckets (name, inode, created_ns) VALUES (?, ?, ?)",
            (name.decode("utf-8", "surrogateescape"), ino, t),
        )

    def _exchange(self, po: Attrs, name_old: bytes, src: Attrs, pn: Attrs, name_new: bytes, dst: Attrs) -> None:
        if po.id != pn.id:
            if src.is_dir and self.cat.is_ancestor(src.id, pn.id):
                raise fail(errno.EINVAL)
            if dst.is_dir and self.cat.is_ancestor(dst.id, po.id):
                raise fail(errno.EINVAL)
        if (po.id == ROOT and not dst.is_dir) or (pn.id == ROOT and not src.is_dir):
            raise fail(errno.EPERM)
        t = now_ns()
        with self.cat.op():
            self.cat.set_entry_inode(po.id, name_old, dst.id)
            self.cat.set_entry_inode(pn.id, name_new, src.id)
            for p, name, ino in ((po, name_old, dst.id), (pn, name_new, src.id)):
                if p.id == ROOT:
                    self.cat.db.execute(
                        "UPDATE buckets SET inode = ? WHERE name = ?", (ino, name.decode("utf-8", "surrogateescape"))
                    )
            if po.id != pn.id and src.is_dir != dst.is_dir:
                delta = 1 if src.is_dir else -1
                po.nlink -= delta
                pn.nlink += delta
            for a in (src, dst):
                a.ctime_ns = t
                self._save(a)
            self._touch_dir(po, t)
            if pn is not po:
                self._touch_dir(pn, t)
            self.cat.add_rekeys(self.cat.descendant_files(src.id) + self.cat.descendant_files(dst.id))

    # -- files ---------------------------------------------------------------------------------

    async def _open_handle(self, a: Attrs, flags: int, *, fresh: bool = False) -> pyfuse3.FileInfo:
        writable = (flags & os.O_ACCMODE) != os.O_RDONLY
        if writable:
            self._writable()
        of = await self.data.open(a.id, writable=writable, fresh=fresh)
        fh = self.next_fh
        self.next_fh += 1
        self.handles[fh] = (of, writable)
        stamp = (a.mtime_ns, a.size)
        keep = self.served.get(a.id) == stamp and not self._atime_due(a, now_ns())
        self.served[a.id] = stamp
        return pyfuse3.FileInfo(fh=cast(pyfuse3.FileHandleT, fh), keep_cache=keep)

    @guard
    async def open(self, inode: int, flags: int, ctx: pyfuse3.RequestContext) -> pyfuse3.FileInfo:  # type: ignore[override]
        a = self.get(inode)
        if not a.is_reg:
            raise fail(errno.EISDIR if a.is_dir else errno.EINVAL)
        if flags & os.O_TRUNC:
            # libfuse asks for atomic O_TRUNC: the kernel leaves the truncation to open (and
            # Linux truncates even with O_RDONLY)
            self._writable()
            await self._truncate(a, 0, now_ns())
            if ctx.uid != 0:  # the kernel does not forward this kill with an atomic O_TRUNC
                a.mode &= ~self._privs_to_kill(a, ctx)
            self._save(a)
        return await self._open_handle(a, flags)

    def _privs_to_kill(self, a: Attrs, ctx: pyfuse3.RequestContext) -> int:
        """The setuid/setgid bits a change by an unprivileged caller clears (``should_remove_suid``)."""
        kill = a.mode & stat.S_ISUID
        if a.mode & stat.S_ISGID and (a.mode & stat.S_IXGRP or not self._in_groups(a.gid, ctx)):
            kill |= stat.S_ISGID
        return kill

    @guard
    async def read(self, fh: int, off: int, size: int) -> bytes:  # type: ignore[override]
        of, _ = self.handles[fh]
        a = self.get(of.ino)
        data = await self.data.read(of, off, size, a.size)
        self._mark_read(a)
        return data

    @guard
    async def write(self, fh: int, off: int, buf: bytes) -> int:  # type: ignore[override]
        of, writable = self.handles[fh]
        if not writable:
            raise fail(errno.EBADF)
        await self.data.make_writable(of)
        n = self.data.write(of, off, buf)
        # acknowledged bytes must find their file committed (group commit: the create may
        # still be waiting in the open group)
        self.cat.commit_group()
        a = self.pending.get(of.ino)
        if a is None:
            a = self.get(of.ino)
            self.pending[of.ino] = a
        if off + n > a.size:
            a.size = off + n
        a.mtime_ns = a.ctime_ns = now_ns()
        return n

    def _flush_pending(self, ino: int) -> None:
        a = self.pending.get(ino)
        if a is not None:
            self._save(a)
            if ino not in self.data.files:
                del self.pending[ino]

    @guard
    async def flush(self, fh: int) -> None:  # type: ignore[override]
        """Not needed: attributes changed by writes are kept in memory (getattr sees them),
        saved at release and fsync, and rebuilt from the cache file after a crash. ENOSYS
        tells the kernel to stop sending FLUSH, which saves a round trip on every close()."""
        raise fail(errno.ENOSYS)

    @guard
    async def fsync(self, fh: int, datasync: bool) -> None:  # type: ignore[override]
        of, _ = self.handles[fh]
        self.data.fsync(of)
        self._flush_pending(of.ino)
        self.cat.commit_group()

    @guard
    async def release(self, fh: int) -> None:  # type: ignore[override]
        of, writable = self.handles.pop(fh)
        last = self.data.close(of, writable)
        if last:
            self._flush_pending(of.ino)
            self.pending.pop(of.ino, None)
            self._maybe_purge(of.ino)

    # -- directories --------------------------------------------------------------------------

    @guard
    async def opendir(self, inode: int, ctx: pyfuse3.RequestContext) -> int:  # type: ignore[override]
        # The kernel opens directories only, and a removed one still opens (as on ext4; the
        # VFS then answers getdents with ENOENT itself), so nothing needs checking here.
        fh = self.next_fh
        self.next_fh += 1
        self.dir_handles[fh] = [inode, -1]
        return fh

    @guard
    async def readdir(self, fh: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:  # type: ignore[override]
        h = self.dir_handles.get(fh)
        if h is None:
            raise fail(errno.EBADF)
        ino, reply = h[0], pyfuse3.readdir_reply
        checked = False  # for other connections' changes (see Catalog.keep_listings)
        if start_id < DOT_COOKIES:
            # a listing starts: "." and ".." come first, as on ext4, and the directory is read
            # (relatime). Later calls continue the same listing and leave the atime alone.
            got = self.cat.listing_start(ino)
            if got is None:
                raise fail(errno.ENOENT)
            checked = True
            d, up = got
            self._mark_read(self.fresh(d))
            dots = ((b".", ino), (b"..", up if ino != ROOT and up is not None else ROOT))
            for cookie, (name, dot) in enumerate(dots, 1):
                if cookie > start_id:
                    if not reply(token, name, self.dot_entry(dot), cookie):
                        return
                    start_id = cookie
        elif start_id == h[1]:
            # the previous call of this listing reached the end: the kernel asks once more to
            # see an empty answer. Entries made since opendir may be left out (POSIX allows it).
            return
        after, last = max(start_id - DOT_COOKIES, 0), start_id
        lookups, kept, pending, atimes = self.lookups, self.row_entries, self.pending, self.atimes
        at_root = ino == ROOT
        while True:
            batch, keep = self.cat.list_dir_rows(ino, after, 256, checked=checked)
            checked = True
            if keep and len(kept) + len(batch) > CACHED_ROWS_MAX:
                kept.clear()
            for dentry_id, name, row in batch:
                # The entry made for a catalog row is kept while the catalog hands out that
                # same row object (it does until the inode changes), unless a change held in
                # memory applies to the inode. Rows just read from the catalog are new objects
                # and may never be listed again: their entries are not kept (a listing larger
                # than the catalog's memory bound would only churn). This loop is most of a
                # listing's cost.
                i = row[0]
                if i in pending or i in atimes:
                    e = self.entry(self.fresh(Attrs(*row)))
                else:
                    k = kept.get(i)
                    if k is not None and k[0] is row:
                        e = k[1]
                    else:
                        e = self.entry_of_fields(*row)
                        if keep:
                            kept[i] = (row, e)
                if not reply(token, name, e, dentry_id + DOT_COOKIES):
                    return
                lookups[i] = lookups.get(i, 0) + 1
                if at_root:
                    self.root_names.add(name)
                after = dentry_id
                last = dentry_id + DOT_COOKIES
            if len(batch) < 256:
                break
        h[1] = last

    async def releasedir(self, fh: int) -> None:  # type: ignore[override]
        self.dir_handles.pop(fh, None)

    @guard
    async def fsyncdir(self, fh: int, datasync: bool) -> None:  # type: ignore[override]
        self.cat.commit_group()  # the directory's entries are in the catalog
