"""Backends: an fsspec filesystem plus a root, serving one tier.

A backend stores objects under plain keys (``<bucket>/<path>``) below its root, so other tools
see ordinary files. Writes go to a temporary key first and are moved into place, so a reader
never sees half an object and a crash leaves at most a ``.darkstorage-tmp-*`` leftover.
POSIX attributes travel as object metadata where the backend has a place for them: for local
directories, the object file's own mode and mtime, plus a ``user.darkstorage.attrs`` xattr
(JSON with mode, uid, gid, mtime_ns) where the filesystem supports user xattrs.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import fsspec

from .errors import BackendError, ConfigError, IntegrityError, NotFoundError
from .hashing import CHUNK_BYTES, hash_fd, hash_stream, new_hasher

log = logging.getLogger(__name__)

try:
    import ctypes
    import ctypes.util

    _libc: ctypes.CDLL | None = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
except OSError:  # pragma: no cover - no libc to load
    _libc = None

TMP_MARK = ".darkstorage-tmp-"
ATTRS_XATTR = "user.darkstorage.attrs"


@dataclass(slots=True)
class StoredObject:
    """What a backend holds after a write: ``size`` in bytes, ``xxh3_128`` hex, ``etag`` if any."""

    size: int
    xxh3_128: str
    etag: str | None = None
    verified: bool = False  #: already read back and compared (local fast path)


class Backend:
    """One tier's storage.

    Args:
        tier: the tier this backend serves (for messages).
        url: fsspec URL of the root, e.g. ``file:///srv/warm`` or ``s3://bucket/prefix``.
        options: keyword arguments for the fsspec filesystem.
        restore_latency_s: for local archive/offsite roots, the simulated restore time.

    Raises:
        ConfigError: the URL's protocol has no fsspec implementation installed.
    """

    def __init__(
        self, tier: str, url: str, options: dict[str, Any] | None = None,
        *, restore_latency_s: float = 0.0,
    ) -> None:
        self.tier = tier
        self.url = url
        self.restore_latency_s = restore_latency_s
        parsed = urlparse(url)
        protocol = parsed.scheme or "file"
        try:
            self.fs = fsspec.filesystem(protocol, skip_instance_cache=True, **(options or {}))
        except (ImportError, ValueError) as e:
            raise ConfigError(f"tier {tier}: cannot use {url}: {e}") from None
        if protocol in ("file", "local"):
            self.local_root: Path | None = Path(parsed.path)
            self.root = parsed.path.rstrip("/")
        else:
            self.local_root = None
            self.root = self.fs._strip_protocol(url).rstrip("/")

    def __repr__(self) -> str:
        return f"Backend({self.tier}, {self.url})"

    def path(self, key: str) -> str:
        return f"{self.root}/{key}"

    def local_path(self, key: str) -> Path | None:
        """The object's file when the backend is a local directory, else None."""
        return self.local_root / key if self.local_root is not None else None

    def ensure_root(self) -> None:
        try:
            self.fs.makedirs(self.root, exist_ok=True)
        except OSError as e:
            raise BackendError(f"tier {self.tier}: cannot create {self.url}: {e}") from None

    # -- reads ------------------------------------------------------------------------------

    def read_range(self, key: str, offset: int, length: int) -> bytes:
        """Bytes ``[offset, offset + length)`` of an object (shorter at its end).

        Raises:
            NotFoundError: no such object.
            BackendError: the backend failed.
        """
        try:
            return bytes(self.fs.cat_file(self.path(key), start=offset, end=offset + length))
        except FileNotFoundError:
            raise NotFoundError(f"object {key} missing from tier {self.tier}") from None
        except OSError as e:
            raise BackendError(f"tier {self.tier}: reading {key}: {e}") from None

    def download_to_fd(self, key: str, fd: int) -> StoredObject:
        """Copy a whole object into *fd* from offset 0, hashing on the way."""
        h, off = new_hasher(), 0
        try:
            with self.fs.open(self.path(key), "rb", block_size=CHUNK_BYTES) as f:
                while chunk := f.read(CHUNK_BYTES):
                    h.update(chunk)
                    os.pwrite(fd, chunk, off)
                    off += len(chunk)
        except FileNotFoundError:
            raise NotFoundError(f"object {key} missing from tier {self.tier}") from None
        except OSError as e:
            raise BackendError(f"tier {self.tier}: reading {key}: {e}") from None
        return StoredObject(off, h.hexdigest())

    def hash_object(self, key: str) -> StoredObject:
        """Read an object back whole and hash it (the write-back verification)."""
        try:
            with self.fs.open(self.path(key), "rb", block_size=CHUNK_BYTES) as f:
                digest, n = hash_stream(f)
        except FileNotFoundError:
            raise NotFoundError(f"object {key} missing from tier {self.tier}") from None
        except OSError as e:
            raise BackendError(f"tier {self.tier}: reading {key}: {e}") from None
        return StoredObject(n, digest)

    def exists(self, key: str) -> bool:
        try:
            return bool(self.fs.exists(self.path(key)))
        except OSError as e:
            raise BackendError(f"tier {self.tier}: {e}") from None

    # -- writes -----------------------------------------------------------------------------

    def tmp_key(self, key: str) -> str:
        """A fresh temporary key next to *key* (same directory, short name)."""
        head, _, _ = key.rpartition("/")
        name = f"{TMP_MARK}{secrets.token_hex(8)}"
        return f"{head}/{name}" if head else name

    def upload_fd(self, fd: int, key: str, attrs: dict[str, int] | None = None,
                  *, durable: bool = True) -> StoredObject:
        """Write the whole of *fd* under a temporary key; returns what was written.

        With *durable* the object is fsync'ed before returning; without, call :meth:`sync`
        once for a batch.

        *key* should be a :meth:`tmp_key`; :meth:`move` puts it in place after :meth:`verify`.
        """
        if self.local_root is not None:
            return self._upload_local(fd, key, attrs, durable)
        h, off = new_hasher(), 0
        path = self.path(key)
        try:
            self.fs.makedirs(self.fs._parent(path), exist_ok=True)
            with self.fs.open(path, "wb") as f:
                while chunk := os.pread(fd, CHUNK_BYTES, off):
                    h.update(chunk)
                    f.write(chunk)
                    off += len(chunk)
                if durable and self.local_root is not None:
                    f.flush()
                    os.fsync(f.fileno())
        except OSError as e:
            raise BackendError(f"tier {self.tier}: writing {key}: {e}") from None
        if attrs is not None:
            self.set_attrs(key, attrs)
        return StoredObject(off, h.hexdigest())

    def _upload_local(self, src: int, key: str, attrs: dict[str, int] | None, durable: bool) -> StoredObject:
        """:meth:`upload_fd` for a local root with plain system calls: write and hash, read
        the new file back through its own descriptor and compare, then set its attributes
        on the descriptor (so a mode without read permission cannot block the check)."""
        path = self.local_path(key)
        assert path is not None
        try:
            try:
                dst = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
            except FileNotFoundError:
                os.makedirs(path.parent, exist_ok=True)
                dst = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                h, off = new_hasher(), 0
                while chunk := os.pread(src, CHUNK_BYTES, off):
                    h.update(chunk)
                    os.pwrite(dst, chunk, off)
                    off += len(chunk)
                wrote = StoredObject(off, h.hexdigest())
                digest, n = hash_fd(dst)
                if (n, digest) != (wrote.size, wrote.xxh3_128):
                    raise IntegrityError(f"tier {self.tier}: {key} reads back as {n} bytes/{digest},"
                                         f" wrote {wrote.size} bytes/{wrote.xxh3_128}")
                if attrs is not None:
                    self._set_fd_attrs(dst, attrs)
                if durable:
                    os.fsync(dst)
            finally:
                os.close(dst)
        except OSError as e:
            raise BackendError(f"tier {self.tier}: writing {key}: {e}") from None
        wrote.verified = True
        return wrote

    def sync(self) -> None:
        """Make every object written so far durable (``syncfs(2)`` on a local root)."""
        if self.local_root is None:
            return
        fd = os.open(self.local_root, os.O_RDONLY | os.O_DIRECTORY)
        try:
            if _libc is not None and _libc.syncfs(fd) == 0:
                return
            os.sync()
        finally:
            os.close(fd)

    def verify(self, key: str, expected: StoredObject) -> StoredObject:
        """Read *key* back and compare with *expected*.

        Raises:
            IntegrityError: size or hash differ.
        """
        if expected.verified:
            return expected
        got = self.hash_object(key)
        if got.size != expected.size or got.xxh3_128 != expected.xxh3_128:
            raise IntegrityError(
                f"tier {self.tier}: {key} reads back as {got.size} bytes/{got.xxh3_128},"
                f" wrote {expected.size} bytes/{expected.xxh3_128}"
            )
        return got

    def move(self, src_key: str, dst_key: str) -> None:
        """Rename an object (atomic on local roots; copy + delete elsewhere)."""
        src, dst = self.path(src_key), self.path(dst_key)
        try:
            self.fs.makedirs(self.fs._parent(dst), exist_ok=True)
            if self.local_root is not None:
                os.replace(src, dst)
            else:
                self.fs.mv(src, dst)
        except FileNotFoundError:
            raise NotFoundError(f"object {src_key} missing from tier {self.tier}") from None
        except OSError as e:
            raise BackendError(f"tier {self.tier}: moving {src_key}: {e}") from None

    def delete(self, key: str) -> None:
        """Delete an object; a missing object is not an error. Empty local parents are pruned."""
        try:
            self.fs.rm_file(self.path(key))
        except FileNotFoundError:
            pass
        except OSError as e:
            raise BackendError(f"tier {self.tier}: deleting {key}: {e}") from None
        if self.local_root is not None:
            parent = (self.local_root / key).parent
            while parent != self.local_root and self.local_root in parent.parents:
                try:
                    parent.rmdir()
                except OSError:
                    break
                parent = parent.parent

    def set_attrs(self, key: str, attrs: dict[str, int]) -> None:
        """Record POSIX attributes (mode, uid, gid, mtime_ns) with the object, best effort."""
        p = self.local_path(key)
        if p is None:
            return
        try:
            fd = os.open(p, os.O_RDONLY | os.O_NOFOLLOW | os.O_PATH)
        except OSError as e:
            log.debug("cannot set attributes on %s: %s", p, e)
            return
        try:
            self._set_fd_attrs(fd, attrs, path=p)
        finally:
            os.close(fd)

    @staticmethod
    def _set_fd_attrs(fd: int, attrs: dict[str, int], path: Path | None = None) -> None:
        # an O_PATH descriptor does not take fchmod/fsetxattr: use the path for those
        target: int | Path = path if path is not None else fd
        try:
            os.chmod(target, attrs["mode"] & 0o777)  # never setuid/setgid on a backend file
            os.utime(target, ns=(attrs["mtime_ns"], attrs["mtime_ns"]))
        except OSError as e:
            log.debug("cannot set attributes on %s: %s", target, e)
        try:
            os.setxattr(target, ATTRS_XATTR, json.dumps(attrs, sort_keys=True).encode())
        except OSError:
            pass  # filesystem without user xattrs: mode and mtime are still on the file
