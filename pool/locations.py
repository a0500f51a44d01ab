"""Where a transfer reads from or writes to: a pool bucket path, a local folder or an
integration path, each as an fsspec filesystem plus a root inside it.

Accepted forms (what ``darkstorage push SRC --to DST`` takes):

* ``my-bucket/dir/`` -- a path inside a pool bucket. When the pool is mounted (a live record in
  ``<home>/run/mount.json``) the mounted view is used through the local filesystem, so the
  kernel's caches stay coherent with what the transfer writes; otherwise a
  :class:`~pool.poolfs.PoolFileSystem` reads and writes the catalog and tiers directly.
* ``./x``, ``../x``, ``/abs``, ``~/x``, ``.`` -- a local folder or file.
* ``integration:NAME/path`` -- a path inside the configured integration NAME; as a destination
  ``NAME/path`` also works when NAME is a configured integration and not a bucket.
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from .config import pool_home
from .errors import NotFoundError, UnsupportedError, UsageError

if TYPE_CHECKING:  # fsspec is imported where a filesystem is made (local sync roots need none)
    import fsspec

log = logging.getLogger(__name__)

INTEGRATION_PREFIX = "integration:"
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,254}$")
_RECONNECT_LOCK = threading.Lock()
_SECRET_RE = re.compile(r"(?i)((?:secret|password|token|key)=)[^&\s]+|(//[^:/@\s]+:)[^@/\s]+@")


@dataclass(frozen=True)
class Location:
    """One side of a transfer.

    Attributes:
        kind: ``"local"``, ``"bucket"`` or ``"integration"``.
        fs: the fsspec filesystem holding the files.
        root: path inside *fs* without a trailing slash; a file below it is ``f"{root}/{rel}"``.
        display: what the user wrote, secrets masked (for messages and the transfer log).
        integration: the integration name when ``kind == "integration"``.
        reopen: builds a fresh filesystem for this side (a new connection); None where a
            connection cannot drop (local folders, the pool).
    """

    kind: str
    fs: fsspec.AbstractFileSystem
    root: str
    display: str
    integration: str | None = None
    reopen: Callable[[], fsspec.AbstractFileSystem] | None = field(default=None, compare=False, repr=False)

    def reconnect(self, failed: fsspec.AbstractFileSystem) -> bool:
        """Replace the filesystem *failed* (whose connection dropped: SFTP and FTP sessions do
        not come back by themselves) with a fresh one. However many transfers saw the same
        failure, only the first reconnects. Returns whether this side has a fresh filesystem.
        Errors from reconnecting propagate (the caller's retry sees them)."""
        if self.reopen is None:
            return False
        with _RECONNECT_LOCK:
            if self.fs is failed:
                object.__setattr__(self, "fs", self.reopen())
                log.info("%s: reconnected", self.display)
        return True

    def path(self, rel: str) -> str:
        """The full path of *rel* (a ``/``-separated relative path; ``""`` is the root itself)."""
        rel = rel.strip("/")
        if not rel:
            return self.root
        return f"{self.root}/{rel}" if self.root else rel

    @property
    def limiter_key(self) -> str | None:
        """The name transfers of this side share a bandwidth limit and circuit breaker under."""
        return self.integration


def mask_secrets(text: str) -> str:
    """*text* with URL passwords and ``secret=``/``token=``-style values replaced by ``***``."""
    return _SECRET_RE.sub(lambda m: (m.group(1) or m.group(2)) + "***" + ("@" if m.group(2) else ""), text)


def mounted_root(home: Path) -> Path | None:
    """The mountpoint of a live mount of the pool at *home*, or None when it is not mounted.

    Reads ``<home>/run/mount.json`` (written by ``vfs.mount``) and checks its process is alive.
    """
    try:
        rec = json.loads((home / "run" / "mount.json").read_text())
        pid = int(rec.get("pid", 0))
        mp = Path(str(rec["mountpoint"]))
    except (FileNotFoundError, json.JSONDecodeError, KeyError, TypeError, ValueError):
        return None
    if pid <= 0 or rec.get("state", "mounted") != "mounted":
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass  # alive, another user's process
    return mp if os.path.ismount(mp) else None


def is_local_spec(text: str) -> bool:
    """Whether location *text* names a local folder or file (``.``, ``..``, ``~``, ``./x``,
    ``../x``, ``/abs``, ``~/x``)."""
    return text in (".", "..", "~") or text.startswith(("./", "../", "/", "~/", "~"))


def local_root(path: str | Path) -> str:
    """The root of local *path* as a :class:`Location` holds it: ``~`` expanded, absolute, normalised."""
    return os.path.normpath(str(Path(os.path.expanduser(str(path))).absolute())).rstrip("/") or "/"


def local_location(path: str | Path, display: str | None = None) -> Location:
    """A :class:`Location` for a local folder or file (``~`` expanded, made absolute)."""
    from fsspec.implementations.local import LocalFileSystem

    return Location("local", LocalFileSystem(skip_instance_cache=True), local_root(path), display or str(path))


def _split_rel(text: str, what: str) -> list[str]:
    parts = [p for p in text.split("/") if p]
    if any(p in (".", "..") for p in parts):
        raise UsageError(f"{what}: '.' and '..' are not allowed inside a {what.split()[0]} path")
    return parts


def _bucket_names(home: Path) -> set[str] | None:
    """Bucket names of the pool at *home*, or None when there is no pool there."""
    if not (home / "config.toml").exists():
        return None
    from .catalog import Catalog

    cat = Catalog(home / "catalog.db", root_uid=os.getuid(), root_gid=os.getgid())
    try:
        return {name for name, _, _ in cat.buckets()}
    finally:
        cat.close()


def _integration_names(home: Path) -> list[str]:
    try:
        from .integrations import integration_names
    except ImportError:
        return []
    return list(integration_names(home=home))


def integration_location(name: str, rel: str, *, home: Path | None = None, display: str | None = None) -> Location:
    """A :class:`Location` inside the configured integration *name*.

    Raises:
        NotFoundError: no such integration. AuthError, ConfigError: from opening it.
        UnsupportedError: this build has no integrations module.
    """
    try:
        from .integrations import open_integration
    except ImportError:
        raise UnsupportedError("integrations are not available in this build") from None
    fs, base = open_integration(name, home=home)
    parts = _split_rel(rel, f"integration path {display or name}")
    base = base.rstrip("/")
    root = "/".join([base, *parts]) if base else "/".join(parts)
    return Location(
        "integration",
        fs,
        root,
        mask_secrets(display or f"{INTEGRATION_PREFIX}{name}/{rel}"),
        name,
        reopen=lambda: open_integration(name, home=home)[0],
    )


def bucket_location(bucket: str, parts: list[str], *, home: Path, display: str) -> Location:
    """A :class:`Location` inside pool bucket *bucket*: the mounted view when the pool is
    mounted, else a :class:`~pool.poolfs.PoolFileSystem`."""
    mp = mounted_root(home)
    if mp is not None:
        from fsspec.implementations.local import LocalFileSystem

        root = str(mp / bucket / "/".join(parts)).rstrip("/")
        return Location("bucket", LocalFileSystem(skip_instance_cache=True), root, display)
    from .poolfs import PoolFileSystem

    return Location("bucket", PoolFileSystem(home=home), "/".join([bucket, *parts]), display)


def resolve_location(spec: str, *, destination: bool = False, home: Path | None = None) -> Location:
    """Parse a transfer source or destination.

    Args:
        spec: ``my-bucket/dir/``, ``./x``, ``/abs``, ``~/x`` or ``integration:NAME/path`` (and,
            when *destination*, ``NAME/path`` for a configured integration that is not a bucket).
        destination: *spec* follows ``--to``.
        home: the pool home (default :func:`~pool.config.pool_home`).

    Returns:
        The :class:`Location`.

    Raises:
        UsageError: *spec* is malformed (empty, bad name, ``..`` inside a bucket path).
        NotFoundError: the bucket or integration does not exist.
    """
    home = home or pool_home()
    text = spec.strip()
    if not text:
        raise UsageError("empty location: give a bucket path, a local folder or integration:NAME/path")
    if text.startswith(INTEGRATION_PREFIX):
        rest = text[len(INTEGRATION_PREFIX) :]
        name, _, rel = rest.partition("/")
        if not name or not _NAME_RE.match(name):
            raise UsageError(f"bad integration path {mask_secrets(spec)!r}: expected integration:NAME/path")
        return integration_location(name, rel, home=home, display=spec)
    if is_local_spec(text):
        return local_location(text)
    if "://" in text:
        raise UsageError(
            f"URLs are not locations: {mask_secrets(spec)!r}; configure an integration and use integration:NAME/path"
        )
    head, *rest_parts = [p for p in text.split("/") if p]
    if not _NAME_RE.match(head):
        raise UsageError(
            f"bad location {spec!r}: a bucket or integration name uses letters, digits, '.', '_', '-'"
            " (local folders start with ./, / or ~)"
        )
    buckets = _bucket_names(home)
    if buckets is not None and head in buckets:
        return bucket_location(head, _split_rel("/".join(rest_parts), f"bucket path {spec}"), home=home, display=spec)
    if destination and head in _integration_names(home):
        return integration_location(head, "/".join(rest_parts), home=home, display=spec)
    if buckets is None:
        raise NotFoundError(f"no bucket {head}: there is no pool yet (run `darkstorage init`)")
    hint = " or integration" if destination else " (an integration source is written integration:NAME/path)"
    raise NotFoundError(f"no bucket{hint} named {head}" if destination else f"no bucket named {head}{hint}")
