"""Read-only FUSE views of disk images (ISO, DMG), so no kernel ISO/HFS+ driver is needed.

The image reader lives in ``imaging`` and this module must not import it: the reader is passed
in as any object with the methods of :class:`ImageView` (duck typing). The view's root directory
is inode 1 (``pyfuse3.ROOT_INODE``). Reads run in worker threads (``anyio.to_thread``), so the
view's ``read`` must be thread-safe.
"""

from __future__ import annotations

import errno
import logging
import os
import signal
import stat
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol, cast

import anyio
import pyfuse3

from pool.errors import BusyError, MountError, PermissionDeniedError

from . import fuseloop

log = logging.getLogger(__name__)

_TIMEOUT_S = 3600.0  # the image never changes while mounted: let the kernel cache freely


class ImageView(Protocol):
    """What an image reader offers the FUSE view. Inode numbers are the reader's; root is 1."""

    def getattr(self, ino: int) -> Any:
        """An object with ``mode, nlink, uid, gid, size, atime_ns, mtime_ns, ctime_ns``.
        Raises KeyError for an unknown inode."""

    def lookup(self, parent: int, name: bytes) -> int:
        """The inode of *name* in directory *parent*; KeyError if absent."""

    def readdir(self, ino: int) -> Sequence[tuple[bytes, int]]:
        """``(name, inode)`` of every entry of directory *ino*, stable order, without . and .."""

    def readlink(self, ino: int) -> bytes:
        """The target of symlink *ino*."""

    def read(self, ino: int, offset: int, size: int) -> bytes:
        """Up to *size* bytes of file *ino* from *offset* (short only at end of file)."""

    def listxattr(self, ino: int) -> Sequence[bytes]:
        """Names of the extended attributes of *ino*."""

    def getxattr(self, ino: int, name: bytes) -> bytes:
        """The value of attribute *name*; KeyError if absent."""


def _fail(code: int) -> pyfuse3.FUSEError:
    return pyfuse3.FUSEError(code)


class ImageOperations(pyfuse3.Operations):
    """pyfuse3 handlers over an :class:`ImageView`. Every change is refused with ``EROFS``
    (the mount is also ``ro``, so the kernel refuses most before they arrive)."""

    enable_writeback_cache = False

    def __init__(self, view: ImageView) -> None:
        super().__init__()
        self.view = view
        self._parents: dict[int, int] = {pyfuse3.ROOT_INODE: pyfuse3.ROOT_INODE}

    def _entry(self, ino: int) -> pyfuse3.EntryAttributes:
        try:
            a = self.view.getattr(ino)
        except KeyError:
            raise _fail(errno.ENOENT) from None
        except Exception:
            log.exception("reading the attributes of inode %d", ino)
            raise _fail(errno.EIO) from None
        e = pyfuse3.EntryAttributes()
        e.st_ino = cast(pyfuse3.InodeT, ino)
        e.generation = 0
        e.entry_timeout = _TIMEOUT_S
        e.attr_timeout = _TIMEOUT_S
        e.st_mode = cast(pyfuse3.ModeT, a.mode)
        e.st_nlink = a.nlink
        e.st_uid = a.uid
        e.st_gid = a.gid
        e.st_rdev = 0
        e.st_size = a.size
        e.st_blksize = 4096
        e.st_blocks = ((a.size + 4095) // 4096) * 8
        e.st_atime_ns = a.atime_ns
        e.st_mtime_ns = a.mtime_ns
        e.st_ctime_ns = a.ctime_ns
        return e

    async def lookup(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:  # type: ignore[override]
        if name == b".":
            return self._entry(parent_inode)
        if name == b"..":
            return self._entry(self._parents.get(parent_inode, pyfuse3.ROOT_INODE))
        try:
            ino = self.view.lookup(parent_inode, name)
        except KeyError:
            raise _fail(errno.ENOENT) from None
        self._parents.setdefault(ino, parent_inode)
        return self._entry(ino)

    async def getattr(self, inode: int, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:  # type: ignore[override]
        return self._entry(inode)

    async def readlink(self, inode: int, ctx: pyfuse3.RequestContext) -> bytes:  # type: ignore[override]
        if not stat.S_ISLNK(self._entry(inode).st_mode):
            raise _fail(errno.EINVAL)
        return self.view.readlink(inode)

    async def opendir(self, inode: int, ctx: pyfuse3.RequestContext) -> int:  # type: ignore[override]
        if not stat.S_ISDIR(self._entry(inode).st_mode):
            raise _fail(errno.ENOTDIR)
        return inode

    async def readdir(self, fh: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:  # type: ignore[override]
        # offsets: 1 = ".", 2 = "..", 3 + i = the i-th entry (stable: the view's order is fixed)
        entries: list[tuple[bytes, int]] = [(b".", fh), (b"..", self._parents.get(fh, pyfuse3.ROOT_INODE))]
        entries += list(self.view.readdir(fh))
        for i in range(start_id, len(entries)):
            name, ino = entries[i]
            if i >= 2:
                self._parents.setdefault(ino, fh)
            if not pyfuse3.readdir_reply(token, name, self._entry(ino), i + 1):
                return

    async def open(self, inode: int, flags: int, ctx: pyfuse3.RequestContext) -> pyfuse3.FileInfo:  # type: ignore[override]
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_TRUNC | os.O_APPEND):
            raise _fail(errno.EROFS)
        if stat.S_ISDIR(self._entry(inode).st_mode):
            raise _fail(errno.EISDIR)
        fi = pyfuse3.FileInfo(fh=cast(pyfuse3.FileHandleT, inode))
        fi.keep_cache = True
        return fi

    async def read(self, fh: int, off: int, size: int) -> bytes:  # type: ignore[override]
        try:
            return await anyio.to_thread.run_sync(self.view.read, fh, off, size)
        except pyfuse3.FUSEError:
            raise
        except Exception as e:
            log.error("reading inode %d at %d: %s", fh, off, e)
            raise _fail(errno.EIO) from None

    async def release(self, fh: int) -> None:  # type: ignore[override]
        return None

    async def releasedir(self, fh: int) -> None:  # type: ignore[override]
        return None

    async def access(self, inode: int, mode: int, ctx: pyfuse3.RequestContext) -> bool:  # type: ignore[override]
        return not (mode & os.W_OK)

    async def listxattr(self, inode: int, ctx: pyfuse3.RequestContext) -> Sequence[bytes]:  # type: ignore[override]
        return list(self.view.listxattr(inode))

    async def getxattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> bytes:  # type: ignore[override]
        try:
            return self.view.getxattr(inode, name)
        except KeyError:
            raise _fail(errno.ENODATA) from None

    async def statfs(self, ctx: pyfuse3.RequestContext) -> pyfuse3.StatvfsData:  # type: ignore[override]
        s = pyfuse3.StatvfsData()
        s.f_bsize = s.f_frsize = 2048
        s.f_namemax = 255
        return s


async def _serve() -> None:
    async with anyio.create_task_group() as nursery:

        async def on_signals() -> None:
            with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                async for _ in signals:
                    pyfuse3.terminate()
                    return

        nursery.start_soon(on_signals)
        await pyfuse3.main(min_tasks=2, max_tasks=16)
        nursery.cancel_scope.cancel()


def serve_image(view: ImageView, mountpoint: Path, *, fsname: str, allow_other: bool = False) -> None:
    """Mount *view* read-only at *mountpoint* and serve until unmounted or signalled
    (SIGINT/SIGTERM unmount cleanly; so does ``fusermount3 -u``).

    Args:
        view: the image reader.
        mountpoint: an existing, empty directory.
        fsname: the source shown in the mount table (the image's path).
        allow_other: let other users read the view.

    Raises:
        MountError: the mountpoint is unusable or FUSE refused.
        BusyError: something is already mounted there.
        PermissionDeniedError: /dev/fuse cannot be opened.
    """
    if not mountpoint.is_dir():
        raise MountError(f"mountpoint {mountpoint} is not a directory")
    if os.path.ismount(mountpoint):
        raise BusyError(f"{mountpoint} is already a mount point")
    if not os.access("/dev/fuse", os.R_OK | os.W_OK):
        raise PermissionDeniedError("cannot open /dev/fuse: is fuse3 installed and are you allowed to use it?")
    options = set(pyfuse3.default_options) - {"default_permissions"}
    options |= {f"fsname={fsname.replace(',', '_')}", "subtype=darkstorage-image", "ro", "default_permissions"}
    if allow_other:
        options.add("allow_other")
    try:
        pyfuse3.init(ImageOperations(view), str(mountpoint), options)
    except RuntimeError as e:
        raise MountError(f"cannot mount at {mountpoint}: {e}") from None
    try:
        fuseloop.run(_serve)
    finally:
        try:
            pyfuse3.close(unmount=True)
        except Exception as e:  # already unmounted from outside
            log.debug("close: %s", e)
