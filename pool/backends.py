"""Backends: an fsspec filesystem plus a root, serving one tier.

A backend stores objects under plain keys (``<bucket>/<path>``) below its root, so other tools
see ordinary files. Writes go to a temporary key first and are moved into place, so a reader
never sees half an object and a crash leaves at most a ``.darkstorage-tmp-*`` leftover.
POSIX attributes travel as object metadata where the backend has a place for them: for local
directories, the object file's own mode and mtime, plus a ``user.darkstorage.attrs`` xattr
(JSON with mode, uid, gid, mtime_ns) where the filesystem supports user xattrs.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import fsspec

from .connectors.ops import RestoreStatus, StoreOps
from .durable import sync_filesystem
from .errors import AuthError, BackendError, ConfigError, DarkstorageError, IntegrityError, NotFoundError
from .hashing import CHUNK_BYTES, hash_fd, hash_stream, new_hasher

log = logging.getLogger(__name__)

TMP_MARK = ".darkstorage-tmp-"
INTEGRATION_SCHEME = "integration:"
REFRESH_CHECK_S = 1.0  #: how often an integration-backed tier looks for a credentials change
ATTRS_XATTR = "user.darkstorage.attrs"


def _remote_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """For integration-backed tiers: store exceptions become our errors (AuthError for rejected
    credentials, BackendError otherwise), and a rejected request is retried once after the
    credentials were re-read, when they changed (``integrations update``)."""

    @functools.wraps(fn)
    def wrapper(self: Backend, *args: Any, **kwargs: Any) -> Any:
        if self.integration is None:
            return fn(self, *args, **kwargs)
        from .credentials import redact
        from .integrations import is_auth_error, store_error

        for attempt in (0, 1):
            try:
                return fn(self, *args, **kwargs)
            except (NotFoundError, IntegrityError, UploadCancelled):
                raise
            except Exception as e:
                cause = e.__context__ if isinstance(e, BackendError) and e.__context__ is not None else e
                if isinstance(e, DarkstorageError) and not isinstance(e, BackendError):
                    raise
                if not is_auth_error(cause):
                    if isinstance(e, DarkstorageError):
                        raise
                    raise store_error(e, f"tier {self.tier}") from None
                if attempt == 0 and self.refresh(force=True):
                    continue
                raise AuthError(
                    f"tier {self.tier}: integration {self.integration} rejected the credentials"
                    f" ({redact(str(cause))}); rotate them with `darkstorage integrations update"
                    f" {self.integration} ...`"
                ) from None
        raise AssertionError("unreachable")

    return wrapper


class UploadCancelled(Exception):  # noqa: N818 (a request, not a failure)
    """An upload stopped because its *stop* callback said the data is no longer wanted (the
    file was unlinked while it was being uploaded)."""


@dataclass(slots=True)
class StoredObject:
    """What a backend holds after a write: ``size`` in bytes, ``xxh3_128`` hex, ``etag`` if any."""

    size: int
    xxh3_128: str
    etag: str | None = None
    verified: bool = False  #: already read back and compared (local fast path)


def _check_stop(stop: Callable[[], bool] | None, key: str) -> None:
    if stop is not None and stop():
        raise UploadCancelled(f"upload of {key} cancelled")


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
        self,
        tier: str,
        url: str,
        options: dict[str, Any] | None = None,
        *,
        restore_latency_s: float = 0.0,
        home: Path | None = None,
    ) -> None:
        self.tier = tier
        self.url = url
        self.restore_latency_s = restore_latency_s
        self.home = home
        self.integration: str | None = None
        self.ops: StoreOps | None = None
        self._opened: tuple[int, int] | None = None  #: (config stamp, revision) when opened
        self._checked_s = 0.0
        self._reopen_lock = threading.Lock()
        if url.startswith(INTEGRATION_SCHEME):
            name, _, sub = url[len(INTEGRATION_SCHEME) :].partition("/")
            self.integration, self._sub = name, sub.strip("/")
            self.storage_class = (options or {}).get("storage_class")
            self.local_root: Path | None = None
            self.restore_latency_s = 0.0  # a remote tier restores through its store, if at all
            self._open_integration()
            return
        parsed = urlparse(url)
        protocol = parsed.scheme or "file"
        try:
            self._fs = fsspec.filesystem(protocol, skip_instance_cache=True, **(options or {}))
        except (ImportError, ValueError) as e:
            raise ConfigError(f"tier {tier}: cannot use {url}: {e}") from None
        if protocol in ("file", "local"):
            self.local_root = Path(parsed.path)
            self.root = parsed.path.rstrip("/")
        else:
            self.local_root = None
            self.root = self._fs._strip_protocol(url).rstrip("/")

    # -- integration-backed tiers: credentials rotation ------------------------------------------

    def _open_integration(self) -> None:
        from .integrations import config_stamp, open_store

        assert self.integration is not None
        home = self.home
        stamp = config_stamp(home) if home is not None else 0
        fs, base, ops, revision = open_store(self.integration, storage_class=self.storage_class, home=home)
        self._fs, self.ops = fs, ops
        self.root = f"{base}/{self._sub}".strip("/") if self._sub else base
        if base.startswith("/") and not self.root.startswith("/"):
            self.root = "/" + self.root
        self._opened = (stamp, revision)
        self._checked_s = time.monotonic()

    def refresh(self, *, force: bool = False) -> bool:
        """Reopen an integration-backed tier when its configuration or credentials changed
        (``integrations update``), checked at most once a second unless *force*.

        Returns:
            True if the filesystem was reopened.
        """
        if self.integration is None or self._opened is None:
            return False
        now = time.monotonic()
        if not force and now - self._checked_s < REFRESH_CHECK_S:
            return False
        from .integrations import config_stamp, get_integration

        with self._reopen_lock:
            self._checked_s = now
            stamp = config_stamp(self.home) if self.home is not None else 0
            if stamp == self._opened[0]:
                return False
            try:
                revision = get_integration(self.integration, home=self.home).revision
            except DarkstorageError as e:
                log.warning("tier %s: cannot re-read integration %s: %s", self.tier, self.integration, e)
                return False
            if revision == self._opened[1]:
                self._opened = (stamp, revision)
                return False
            log.info(
                "tier %s: integration %s changed (revision %d): reconnecting", self.tier, self.integration, revision
            )
            self._open_integration()
            return True

    @property
    def fs(self) -> fsspec.AbstractFileSystem:
        """The tier's filesystem (an integration's is reopened after a credentials change)."""
        if self.integration is not None:
            self.refresh()
        return self._fs

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

    @_remote_errors
    def read_range(self, key: str, offset: int, length: int) -> bytes:
        """Bytes ``[offset, offset + length)`` of an object (shorter at its end).

        Raises:
            NotFoundError: no such object.
            BackendError: the backend failed.
        """
        try:
            fs = self.fs
            if type(fs).__name__ == "SSHFileSystem":  # sshfs's cat_file ignores start/end
                with fs.open(self.path(key), "rb", block_size=max(length, 1 << 16)) as f:
                    f.seek(offset)
                    return bytes(f.read(length))
            return bytes(fs.cat_file(self.path(key), start=offset, end=offset + length))
        except FileNotFoundError:
            raise NotFoundError(f"object {key} missing from tier {self.tier}") from None
        except OSError as e:
            raise BackendError(f"tier {self.tier}: reading {key}: {e}") from None

    @_remote_errors
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

    @_remote_errors
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

    @_remote_errors
    def exists(self, key: str) -> bool:
        if self.integration is None:
            try:
                return bool(self.fs.exists(self.path(key)))
            except OSError as e:
                raise BackendError(f"tier {self.tier}: {e}") from None
        try:  # fsspec's exists() swallows every error (a rejected key would read as "missing")
            self.fs.info(self.path(key))
            return True
        except FileNotFoundError:
            return False
        except OSError as e:
            raise BackendError(f"tier {self.tier}: {e}") from None

    # -- writes -----------------------------------------------------------------------------

    def tmp_key(self, key: str) -> str:
        """A fresh temporary key next to *key* (same directory, short name)."""
        head, _, _ = key.rpartition("/")
        name = f"{TMP_MARK}{secrets.token_hex(8)}"
        return f"{head}/{name}" if head else name

    @_remote_errors
    def upload_fd(
        self,
        fd: int,
        key: str,
        attrs: dict[str, int] | None = None,
        *,
        durable: bool = True,
        stop: Callable[[], bool] | None = None,
    ) -> StoredObject:
        """Write the whole of *fd* under a temporary key; returns what was written.

        With *durable* the object is fsync'ed before returning; without, call :meth:`sync`
        once for a batch. *stop*, when given, is asked before each 1 MiB chunk; when it says
        True the upload ends with :class:`UploadCancelled` (the caller deletes the key).

        *key* should be a :meth:`tmp_key`; :meth:`move` puts it in place after :meth:`verify`.
        """
        if self.local_root is not None:
            return self._upload_local(fd, key, attrs, durable, stop)
        h, off = new_hasher(), 0
        path = self.path(key)
        try:
            self.fs.makedirs(self.fs._parent(path), exist_ok=True)
            extra = self.ops.write_kwargs(attrs) if self.ops is not None else {}
            with self.fs.open(path, "wb", **extra) as f:
                while chunk := os.pread(fd, CHUNK_BYTES, off):
                    _check_stop(stop, key)
                    h.update(chunk)
                    f.write(chunk)
                    off += len(chunk)
        except OSError as e:
            raise BackendError(f"tier {self.tier}: writing {key}: {e}") from None
        if attrs is not None and not extra:
            self.set_attrs(key, attrs)
        return StoredObject(off, h.hexdigest())

    def _upload_local(
        self, src: int, key: str, attrs: dict[str, int] | None, durable: bool, stop: Callable[[], bool] | None
    ) -> StoredObject:
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
                    _check_stop(stop, key)
                    h.update(chunk)
                    os.pwrite(dst, chunk, off)
                    off += len(chunk)
                wrote = StoredObject(off, h.hexdigest())
                digest, n = hash_fd(dst)
                if (n, digest) != (wrote.size, wrote.xxh3_128):
                    raise IntegrityError(
                        f"tier {self.tier}: {key} reads back as {n} bytes/{digest},"
                        f" wrote {wrote.size} bytes/{wrote.xxh3_128}"
                    )
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
        sync_filesystem(self.local_root)

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

    @_remote_errors
    def move(self, src_key: str, dst_key: str) -> None:
        """Rename an object (atomic on local roots; copy + delete elsewhere)."""
        src, dst = self.path(src_key), self.path(dst_key)
        try:
            self.fs.makedirs(self.fs._parent(dst), exist_ok=True)
            if self.local_root is not None:
                os.replace(src, dst)
            elif self.ops is not None:
                self.ops.move(src, dst)
            else:
                self.fs.mv(src, dst)
        except FileNotFoundError:
            raise NotFoundError(f"object {src_key} missing from tier {self.tier}") from None
        except OSError as e:
            raise BackendError(f"tier {self.tier}: moving {src_key}: {e}") from None

    @_remote_errors
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
            if self.ops is not None:
                try:
                    if not self.ops.set_attrs(self.path(key), attrs):
                        log.debug("tier %s keeps no attributes for %s", self.tier, key)
                except Exception as e:  # best effort: the catalog has them
                    log.debug("cannot record attributes of %s on tier %s: %s", key, self.tier, e)
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

    # -- store features (integration-backed tiers) ---------------------------------------------

    def get_attrs(self, key: str) -> dict[str, int] | None:
        """POSIX attributes recorded with the object (None where the backend keeps none)."""
        p = self.local_path(key)
        if p is not None:
            try:
                raw = json.loads(os.getxattr(p, ATTRS_XATTR))
                return {k: int(raw[k]) for k in ("mode", "uid", "gid", "mtime_ns")}
            except (OSError, ValueError, KeyError):
                return None
        return self._store_get_attrs(key) if self.ops is not None else None

    @_remote_errors
    def _store_get_attrs(self, key: str) -> dict[str, int] | None:
        assert self.ops is not None
        return self.ops.get_attrs(self.path(key))

    @property
    def store_restores(self) -> bool:
        """True when objects on this tier sit in an archive class of the store (S3 GLACIER /
        DEEP_ARCHIVE, Azure Archive) and need the store's restore before reading."""
        return self.ops is not None and self.ops.restores

    @_remote_errors
    def storage_class_of(self, key: str) -> str | None:
        """The object's storage class / access tier in the store (None where there are none)."""
        return self.ops.storage_class_of(self.path(key)) if self.ops is not None else None

    @_remote_errors
    def request_restore(self, key: str, *, expedited: bool = False) -> None:
        """Ask the store to restore an archived object (S3 RestoreObject, Azure rehydrate)."""
        assert self.ops is not None
        self.ops.request_restore(self.path(key), expedited=expedited)

    @_remote_errors
    def restore_status(self, key: str) -> RestoreStatus:
        """The store's view of an object's restore (S3 HEAD x-amz-restore, Azure archive status)."""
        assert self.ops is not None
        return self.ops.restore_status(self.path(key))
