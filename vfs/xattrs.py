"""Extended attributes (the ``user``, ``trusted`` and ``security`` namespaces, stored in the
catalog, plus the read-only virtual ``user.darkstorage.*`` ones) and ``access(2)``."""

from __future__ import annotations

import errno
import logging
import os

import pyfuse3

from pool.catalog import now_ns
from pool.tiers import TIER_ACCESS, Access

from .errnos import guard
from .nodes import VIRTUAL_PREFIX, XATTR_NAMESPACES, XATTR_SIZE_MAX, NodeOps, fail

log = logging.getLogger(__name__)


class XattrOps(NodeOps):
    """xattr and access handlers (see :class:`~vfs.nodes.NodeOps`)."""

    # -- xattrs ---------------------------------------------------------------------------------

    def _virtual_xattr(self, ino: int, name: bytes) -> bytes | None:
        obj = self.cat.object(ino)
        if obj is None:
            return None
        if name == b"user.darkstorage.tier":
            return obj.tier.encode()
        if name == b"user.darkstorage.state":
            return obj.state.encode()
        if name == b"user.darkstorage.restore":
            if TIER_ACCESS[obj.tier] is not Access.RESTORE:
                return b"not-needed"
            return str(self.pool.restore_state(ino)).encode()
        return None

    @staticmethod
    def _check_xattr_name(name: bytes) -> None:
        """A name outside ext4's namespaces is ``EOPNOTSUPP``, a bare namespace ``EINVAL``."""
        for ns in XATTR_NAMESPACES:
            if name.startswith(ns):
                if len(name) == len(ns):
                    raise fail(errno.EINVAL)
                return
        raise fail(errno.EOPNOTSUPP)

    @guard
    async def getxattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> bytes:  # type: ignore[override]
        self.get(inode)
        self._check_xattr_name(name)
        if name.startswith(VIRTUAL_PREFIX):
            v = self._virtual_xattr(inode, name)
        else:
            v = self.cat.getxattr(inode, name)
        if v is None:
            raise fail(pyfuse3.ENOATTR)
        return v

    @guard
    async def setxattr(self, inode: int, name: bytes, value: bytes, ctx: pyfuse3.RequestContext) -> None:  # type: ignore[override]
        self._writable()
        a = self.get(inode)
        self._check_xattr_name(name)
        if name.startswith(VIRTUAL_PREFIX):
            raise fail(errno.EPERM)
        if not name or len(name) > 255:
            raise fail(errno.ERANGE)
        if len(value) > XATTR_SIZE_MAX:
            raise fail(errno.E2BIG)
        if self.cat.getxattr(inode, name) == value:
            return  # ext4 leaves an unchanged value (and ctime) alone
        with self.cat.op():
            self.cat.setxattr(inode, name, value)
            a.ctime_ns = now_ns()
            self._save(a)

    @guard
    async def listxattr(self, inode: int, ctx: pyfuse3.RequestContext) -> list[bytes]:  # type: ignore[override]
        self.get(inode)
        names = self.cat.listxattr(inode)
        if ctx.uid != 0:  # ext4 lists trusted.* only to CAP_SYS_ADMIN
            names = [n for n in names if not n.startswith(b"trusted.")]
        return names

    @guard
    async def removexattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:  # type: ignore[override]
        self._writable()
        a = self.get(inode)
        self._check_xattr_name(name)
        if name.startswith(VIRTUAL_PREFIX):
            raise fail(errno.EPERM)
        with self.cat.op():
            if not self.cat.removexattr(inode, name):
                raise fail(pyfuse3.ENOATTR)
            a.ctime_ns = now_ns()
            self._save(a)

    # -- access -------------------------------------------------------------------------------

    @guard
    async def access(self, inode: int, mode: int, ctx: pyfuse3.RequestContext) -> bool:  # type: ignore[override]
        a = self.get(inode)
        if mode == os.F_OK:
            return True
        if mode & os.W_OK and self.read_only:
            raise fail(errno.EROFS)
        if ctx.uid == 0:
            # root may do anything, except execute a file with no x bit anywhere
            if mode & os.X_OK and not a.is_dir and not a.mode & 0o111:
                raise fail(errno.EACCES)
            return True
        if ctx.uid == a.uid:
            granted = (a.mode >> 6) & 7
        elif self._in_groups(a.gid, ctx):
            granted = (a.mode >> 3) & 7
        else:
            granted = a.mode & 7
        if mode & ~granted & 7:
            raise fail(errno.EACCES)
        return True
