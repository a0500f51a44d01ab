"""An fsspec filesystem over a pool that is not mounted: the catalog for names and attributes,
the tiers' backends for bytes.

Paths are ``bucket/dir/file`` (the protocol ``darkstorage://`` is optional). Reads stream the
object from its tier's backend (a local tier file is opened directly); a dirty file (bytes not
uploaded yet) is read from the local cache. Objects on a restore tier (``archive``,
``offsite``) are restored first: opening one starts the restore and raises
:class:`~pool.errors.RestorePendingError` until it is ready.

Writes spool to a temporary file in the pool's cache directory; on ``close()`` the file is
linked into the catalog (replacing a file of the same name) with the given mode and mtime
and uploaded to its placement tier by the pool's own write-back steps
(:meth:`~pool.objects.ObjectStore.upload_now`: temporary key, verify, move into place).

Each thread uses its own :class:`~pool.pool.Pool` (catalog connection), so the filesystem
may be used from transfer worker threads.
"""

from __future__ import annotations

import io
import logging
import os
import stat
import tempfile
import threading
from pathlib import Path
from typing import Any

from fsspec import AbstractFileSystem

from .catalog import ROOT, Attrs, now_ns
from .config import pool_home
from .errors import RestorePendingError, UsageError
from .tiers import TIER_ACCESS, Access

log = logging.getLogger(__name__)

DEFAULT_FILE_MODE = 0o644
DEFAULT_DIR_MODE = 0o755


class PoolFileSystem(AbstractFileSystem):
    """fsspec filesystem over the pool at *home* (default :func:`~pool.config.pool_home`).

    ``info``/``ls`` entries carry ``name``, ``size`` (bytes), ``type`` (``file``,
    ``directory`` or ``other``), ``mode`` (``st_mode``), ``mtime_ns``, ``mtime`` (seconds),
    ``uid``, ``gid``, ``ino`` and, for files, ``tier`` and ``xxh3_128`` (hex, when uploaded).

    ``open(path, "wb", posix_mode=0o640, mtime_ns=...)`` sets the new file's permission bits
    and modification time (default 0644 and the time of ``close()``).
    """

    protocol = "darkstorage"
    root_marker = ""
    cachable = False

    def __init__(self, home: Path | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.home = home or pool_home()
        self._local = threading.local()
        self._all: list[Any] = []
        self._all_lock = threading.Lock()

    # -- plumbing ---------------------------------------------------------------------------------

    def pool(self) -> Any:
        """This thread's :class:`~pool.pool.Pool` (opened on first use)."""
        p = getattr(self._local, "pool", None)
        if p is None:
            from .pool import Pool

            p = Pool.open(self.home)
            self._local.pool = p
            with self._all_lock:
                self._all.append(p)
        return p

    def close(self) -> None:
        """Close every thread's catalog connection."""
        with self._all_lock:
            for p in self._all:
                p.close()
            self._all.clear()
        self._local = threading.local()

    @classmethod
    def _strip_protocol(cls, path: Any) -> str:
        text = str(path)
        if text.startswith("darkstorage://"):
            text = text[len("darkstorage://") :]
        return text.strip("/")

    @staticmethod
    def _parts(path: str) -> list[str]:
        return [p for p in path.split("/") if p]

    def _lookup(self, path: str) -> tuple[int, Attrs]:
        """``(inode, attrs)`` at *path*; FileNotFoundError when there is nothing."""
        cat = self.pool().catalog
        ino: int | None = cat.resolve([p.encode() for p in self._parts(self._strip_protocol(path))])
        a = cat.get(ino) if ino is not None else None
        if ino is None or a is None:
            raise FileNotFoundError(path)
        return ino, a

    def _entry(self, path: str, ino: int, a: Attrs) -> dict[str, Any]:
        typ = "directory" if a.is_dir else "file" if a.is_reg else "other"
        d: dict[str, Any] = {
            "name": path,
            "size": a.size if a.is_reg else 0,
            "type": typ,
            "mode": a.mode,
            "mtime_ns": a.mtime_ns,
            "mtime": a.mtime_ns / 1e9,
            "uid": a.uid,
            "gid": a.gid,
            "ino": ino,
        }
        if a.is_reg:
            obj = self.pool().catalog.object(ino)
            if obj is not None:
                d["tier"] = obj.tier
                d["xxh3_128"] = obj.xxh3_128 if obj.state == "clean" else None
        return d

    # -- reading ----------------------------------------------------------------------------------

    def info(self, path: str, **kwargs: Any) -> dict[str, Any]:
        path = self._strip_protocol(path)
        ino, a = self._lookup(path)
        return self._entry(path, ino, a)

    def ls(self, path: str, detail: bool = True, **kwargs: Any) -> list[Any]:
        path = self._strip_protocol(path)
        ino, a = self._lookup(path)
        if not a.is_dir:
            out = [self._entry(path, ino, a)]
        else:
            out = []
            for _, name, child in self.pool().catalog.list_dir(ino, 0, 1 << 62):
                child_path = "/".join([*self._parts(path), name.decode("utf-8", "surrogateescape")])
                out.append(self._entry(child_path, child.id, child))
        return out if detail else [e["name"] for e in out]

    def _open(
        self,
        path: str,
        mode: str = "rb",
        block_size: Any = None,
        autocommit: bool = True,
        cache_options: Any = None,
        **kwargs: Any,
    ) -> Any:
        path = self._strip_protocol(path)
        if "r" in mode:
            return self._open_read(path)
        if "w" in mode:
            return _PoolWriter(self, path, kwargs.get("posix_mode"), kwargs.get("mtime_ns"))
        raise UsageError(f"pool files open for reading or writing whole files, not {mode!r}")

    def _open_read(self, path: str) -> Any:
        p = self.pool()
        ino, a = self._lookup(path)
        if a.is_dir:
            raise IsADirectoryError(path)
        obj = p.catalog.object(ino)
        if obj is None:
            raise UsageError(f"{path} is not a regular file")
        cached = p.catalog.cache_entry(ino)
        if obj.state != "clean" or (cached is not None and cached[0]):
            try:
                return open(p.cache_path(ino), "rb")
            except FileNotFoundError:
                if obj.key is None:
                    return io.BytesIO(b"")  # created, never written
                raise
        if obj.key is None:
            return io.BytesIO(b"")
        if TIER_ACCESS[obj.tier] is Access.RESTORE:
            st = p.restore_state(ino)
            if st.state not in ("ready", "cached"):
                st = p.request_restore(ino)
                raise RestorePendingError(f"{path} is on the {obj.tier} tier: restore started, {st} - retry later")
        backend = p.backend(obj.tier)
        local = backend.local_path(obj.key)
        if local is not None:
            return open(local, "rb")
        return backend.fs.open(backend.path(obj.key), "rb")

    # -- writing ----------------------------------------------------------------------------------

    def _dir_ino(self, parts: list[str], create: bool) -> int:
        """Inode of directory *parts* (from the root), creating missing ones when *create*."""
        p = self.pool()
        cat = p.catalog
        if not parts:
            return ROOT
        if cat.bucket_inode(parts[0]) is None:
            if not create:
                raise FileNotFoundError("/".join(parts))
            p.create_bucket(parts[0])
        cur = cat.bucket_inode(parts[0])
        assert cur is not None
        for name in parts[1:]:
            b = name.encode()
            a = cat.lookup_attrs(cur, b)
            if a is None:
                if not create:
                    raise FileNotFoundError("/".join(parts))
                cur = self._new_dir(cur, b)
            elif not a.is_dir:
                raise NotADirectoryError("/".join(parts))
            else:
                cur = a.id
        return cur

    def _new_dir(self, parent: int, name: bytes) -> int:
        cat = self.pool().catalog
        t = now_ns()
        with cat.tx():
            if (existing := cat.lookup(parent, name)) is not None:
                return existing
            a = cat.new_inode(stat.S_IFDIR | DEFAULT_DIR_MODE, os.getuid(), os.getgid(), t, nlink=2)
            cat.add_entry(parent, name, a.id)
            pa = cat.get(parent)
            assert pa is not None
            cat.update(parent, nlink=pa.nlink + 1, mtime_ns=t, ctime_ns=t)
        return a.id

    def mkdir(self, path: str, create_parents: bool = True, **kwargs: Any) -> None:
        parts = self._parts(self._strip_protocol(path))
        if not parts:
            return
        if not create_parents:
            self._dir_ino(parts[:-1], False)
        self._dir_ino(parts, True)

    def makedirs(self, path: str, exist_ok: bool = False) -> None:
        parts = self._parts(self._strip_protocol(path))
        if not exist_ok and parts and self.exists(path):
            raise FileExistsError(path)
        self._dir_ino(parts, True)

    def place(self, path: str, spool: Path, posix_mode: int | None = None, mtime_ns: int | None = None) -> int:
        """Link the spooled file *spool* into the catalog at *path* (replacing a file there)
        and upload it to its placement tier. Returns the new inode.

        Raises:
            UsageError: *path* is a bucket or the root. IsADirectoryError: a directory is there.
            BackendError, IntegrityError: the upload failed (the file stays dirty in the cache
            and is uploaded by the next mount).
        """
        parts = self._parts(self._strip_protocol(path))
        if len(parts) < 2:
            raise UsageError(f"{path!r}: files live inside a bucket (bucket/name)")
        p = self.pool()
        cat = p.catalog
        parent = self._dir_ino(parts[:-1], True)
        name = parts[-1].encode()
        t = now_ns()
        size = os.stat(spool).st_size
        ino = 0
        try:
            with cat.tx():
                old = cat.lookup_attrs(parent, name)
                if old is not None and old.is_dir:
                    raise IsADirectoryError(path)
                if old is not None:
                    self._unlink(parent, name, old, t)
                mode = stat.S_IFREG | ((DEFAULT_FILE_MODE if posix_mode is None else posix_mode) & 0o7777)
                a = cat.new_inode(mode, os.getuid(), os.getgid(), t, size=size)
                ino = a.id
                if mtime_ns is not None:
                    cat.update(ino, mtime_ns=mtime_ns)
                cat.add_entry(parent, name, ino)
                cat.new_object(ino, p.placement_tier(parent, name), t)
                cat.update(parent, mtime_ns=t, ctime_ns=t)
                os.replace(spool, p.cache_path(ino))  # before COMMIT: a dirty file always has its bytes
                cat.cache_touch(ino, True, size, t)
        except BaseException:
            if ino:
                try:
                    os.replace(p.cache_path(ino), spool)
                except FileNotFoundError:
                    pass
            raise
        p.process_trash()
        p.upload_now(ino)
        obj = cat.object(ino)
        if obj is not None and obj.state == "clean" and TIER_ACCESS[obj.tier] is not Access.RESTORE:
            cat.cache_drop(ino)  # uploaded and verified: the cache copy is not needed
            try:
                os.unlink(p.cache_path(ino))
            except FileNotFoundError:
                pass
        return ino

    def _unlink(self, parent: int, name: bytes, a: Attrs, t: int) -> None:
        """Remove one name of file *a* (inside a transaction); purge it when it was the last."""
        p = self.pool()
        cat = p.catalog
        cat.remove_entry(parent, name)
        cat.update(a.id, nlink=a.nlink - 1, ctime_ns=t)
        cat.update(parent, mtime_ns=t, ctime_ns=t)
        if a.nlink > 1:
            cat.add_rekeys([a.id])
            return
        cat.delete_inode(a.id)  # the object goes to trash (schema trigger)
        try:
            os.unlink(p.cache_path(a.id))
        except FileNotFoundError:
            pass

    # -- removing and moving ----------------------------------------------------------------------

    def _rm(self, path: str) -> None:
        parts = self._parts(self._strip_protocol(path))
        if not parts:
            raise UsageError("refusing to remove the pool root")
        p = self.pool()
        ino, a = self._lookup(path)
        if len(parts) == 1:
            p.remove_bucket(parts[0])
            return
        cat = p.catalog
        parent = self._dir_ino(parts[:-1], False)
        name = parts[-1].encode()
        t = now_ns()
        with cat.tx():
            if a.is_dir:
                if not cat.is_empty(ino):
                    raise OSError(39, "Directory not empty", path)
                cat.remove_entry(parent, name)
                cat.delete_inode(ino)
                pa = cat.get(parent)
                assert pa is not None
                cat.update(parent, nlink=pa.nlink - 1, mtime_ns=t, ctime_ns=t)
            else:
                self._unlink(parent, name, a, t)
        p.process_trash()

    def rm_file(self, path: str) -> None:
        self._rm(path)

    def rmdir(self, path: str) -> None:
        self._rm(path)

    def rm(self, path: Any, recursive: bool = False, maxdepth: int | None = None) -> None:
        paths = self.expand_path(path, recursive=recursive, maxdepth=maxdepth)
        for one in sorted(paths, key=lambda x: x.count("/"), reverse=True):
            self._rm(one)

    def mv(self, path1: str, path2: str, recursive: bool = False, maxdepth: int | None = None, **kwargs: Any) -> None:
        """Rename *path1* to *path2* inside the pool (a file at *path2* is replaced); the
        objects of every file moved follow their new names (re-keys)."""
        src_parts = self._parts(self._strip_protocol(path1))
        dst_parts = self._parts(self._strip_protocol(path2))
        if len(src_parts) < 2 or len(dst_parts) < 2:
            raise UsageError("buckets are renamed by creating a new one; mv works inside buckets")
        p = self.pool()
        cat = p.catalog
        ino, a = self._lookup(path1)
        src_parent = self._dir_ino(src_parts[:-1], False)
        dst_parent = self._dir_ino(dst_parts[:-1], True)
        if a.is_dir and cat.is_ancestor(ino, dst_parent):
            raise UsageError(f"cannot move {path1} into itself")
        t = now_ns()
        with cat.tx():
            old = cat.lookup_attrs(dst_parent, dst_parts[-1].encode())
            if old is not None and old.id != ino:
                if old.is_dir:
                    raise IsADirectoryError(path2)
                self._unlink(dst_parent, dst_parts[-1].encode(), old, t)
            cat.remove_entry(src_parent, src_parts[-1].encode())
            cat.add_entry(dst_parent, dst_parts[-1].encode(), ino)
            cat.update(ino, ctime_ns=t)
            for d in {src_parent, dst_parent}:
                cat.update(d, mtime_ns=t, ctime_ns=t)
            if a.is_dir and src_parent != dst_parent:
                sp, dp = cat.get(src_parent), cat.get(dst_parent)
                assert sp is not None and dp is not None
                cat.update(src_parent, nlink=sp.nlink - 1)
                cat.update(dst_parent, nlink=dp.nlink + 1)
            cat.add_rekeys(cat.descendant_files(ino))
        p.process_trash()
        p.process_rekeys()


class _PoolWriter(io.RawIOBase):
    """A file being written into the pool: spooled to the cache directory, placed on close."""

    def __init__(self, fs: PoolFileSystem, path: str, posix_mode: int | None, mtime_ns: int | None) -> None:
        super().__init__()
        self.fs, self.path = fs, path
        self.posix_mode, self.mtime_ns = posix_mode, mtime_ns
        cache_dir = fs.pool().config.cache_dir
        cache_dir.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=cache_dir, prefix=".spool-")
        self._spool = Path(name)
        self._f = os.fdopen(fd, "wb")
        self._failed = False

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        return self._f.write(data)

    def tell(self) -> int:
        return self._f.tell()

    def discard(self) -> None:
        """Drop what was written; nothing is placed."""
        self._failed = True
        self.close()

    def __exit__(self, *exc: Any) -> None:
        if exc[0] is not None:
            self._failed = True
        self.close()

    def close(self) -> None:
        if self.closed:
            return
        try:
            self._f.close()
            if not self._failed:
                self.fs.place(self.path, self._spool, self.posix_mode, self.mtime_ns)
        finally:
            try:
                self._spool.unlink()
            except FileNotFoundError:
                pass
            super().close()
