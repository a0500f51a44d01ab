"""POSIX attributes (mode, mtime) across fsspec filesystems, for transfers that keep them.

* local folders and the mounted pool: the file's own mode and mtime (``chmod``/``utime``);
* the unmounted pool (:class:`~pool.poolfs.PoolFileSystem`): the catalog, given at write time;
* SFTP (sshfs): ``SETSTAT`` of mode and times (SFTP v3 times are whole seconds);
* S3 (s3fs): user metadata written with the object, in rclone's keys so both tools agree:
  ``mtime`` (seconds since the epoch with a fraction, ``"1700000000.123456789"``) and ``mode``
  (``st_mode`` in octal, ``"100644"``); see https://rclone.org/s3/#metadata.

Other stores (GCS, Azure, WebDAV, FTP) keep the bytes only; their own modification time is the
upload time.
"""

from __future__ import annotations

import logging
import os
import stat
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import fsspec
from fsspec.implementations.local import LocalFileSystem

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FileAttrs:
    """``mode`` (``st_mode`` incl. type bits, or None if unknown) and ``mtime_ns`` (or None)."""

    mode: int | None = None
    mtime_ns: int | None = None


def fs_kind(fs: fsspec.AbstractFileSystem) -> str:
    """``local``, ``pool``, ``s3``, ``sftp`` or the filesystem's first protocol name."""
    if isinstance(fs, LocalFileSystem):
        return "local"
    protocols = fs.protocol if isinstance(fs.protocol, tuple | list) else (fs.protocol,)
    for p in protocols:
        if p in ("s3", "s3a"):
            return "s3"
        if p in ("sftp", "ssh"):
            return "sftp"
        if p == "darkstorage":
            return "pool"
    return str(protocols[0])


def renames_cheaply(fs: fsspec.AbstractFileSystem) -> bool:
    """True when the store renames in place (write to a temporary name, then rename); object
    stores copy on rename and their put is atomic already."""
    return fs_kind(fs) in ("local", "sftp", "ftp", "webdav", "dav", "file")


def _to_ns(value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        return int(value.timestamp() * 1e9)
    if isinstance(value, int | float):
        return int(value * 1e9)
    try:
        return int(datetime.fromisoformat(str(value).replace("Z", "+00:00")).timestamp() * 1e9)
    except ValueError:
        return None


def parse_mtime_meta(text: str) -> int | None:
    """rclone's ``mtime`` metadata (``"seconds.fraction"`` or RFC 3339) in ns, or None."""
    sec, _, frac = text.strip().partition(".")
    if sec.lstrip("-").isdigit() and (not frac or frac.isdigit()):
        return int(sec) * 1_000_000_000 + int((frac + "000000000")[:9])
    return _to_ns(text)


def source_attrs(fs: fsspec.AbstractFileSystem, path: str, info: dict[str, Any]) -> FileAttrs:
    """The mode and mtime of the file at *path* (*info* is its ``fs.info``)."""
    kind = fs_kind(fs)
    if kind == "local":
        st = os.stat(path)
        return FileAttrs(st.st_mode, st.st_mtime_ns)
    if kind == "pool":
        return FileAttrs(info.get("mode"), info.get("mtime_ns"))
    if kind == "sftp":
        perms = info.get("permissions")
        return FileAttrs(perms if perms and stat.S_IFMT(perms) else None, _to_ns(info.get("mtime")))
    if kind == "s3":
        try:
            meta = {k.lower(): v for k, v in fs.metadata(path).items()}  # type: ignore[attr-defined]
        except (OSError, AttributeError) as e:
            log.debug("no metadata for %s: %s", path, e)
            meta = {}
        mode = int(meta["mode"], 8) if str(meta.get("mode", "")).isdigit() else None
        mtime = parse_mtime_meta(meta["mtime"]) if meta.get("mtime") else _to_ns(info.get("LastModified"))
        return FileAttrs(mode, mtime)
    for key in ("mtime", "LastModified", "last_modified", "modified", "updated", "created"):
        if info.get(key) is not None:
            return FileAttrs(None, _to_ns(info[key]))
    return FileAttrs()


def s3_metadata(attrs: FileAttrs) -> dict[str, str]:
    """S3 user metadata for *attrs* (rclone keys)."""
    meta = {}
    if attrs.mtime_ns is not None:
        meta["mtime"] = f"{attrs.mtime_ns // 1_000_000_000}.{attrs.mtime_ns % 1_000_000_000:09d}"
    if attrs.mode is not None:
        meta["mode"] = f"{attrs.mode:o}"
    return meta


def write_kwargs(fs: fsspec.AbstractFileSystem, attrs: FileAttrs) -> dict[str, Any]:
    """Extra ``fs.open(path, "wb", **kw)`` arguments that store *attrs* with the new file."""
    kind = fs_kind(fs)
    if kind == "pool":
        return {"posix_mode": attrs.mode, "mtime_ns": attrs.mtime_ns}
    if kind == "s3":
        meta = s3_metadata(attrs)
        return {"Metadata": meta} if meta else {}
    return {}


def apply_attrs(fs: fsspec.AbstractFileSystem, path: str, attrs: FileAttrs) -> None:
    """Set *attrs* on the written file at *path* where the store keeps them after the write.

    Raises:
        OSError: the store refused (local and SFTP only).
    """
    kind = fs_kind(fs)
    if kind == "local":
        if attrs.mode is not None:
            os.chmod(path, stat.S_IMODE(attrs.mode))
        if attrs.mtime_ns is not None:
            os.utime(path, ns=(attrs.mtime_ns, attrs.mtime_ns))
    elif kind == "sftp":
        from fsspec.asyn import sync

        async def _set() -> None:
            async with fs._pool.get() as channel:  # type: ignore[attr-defined]
                if attrs.mode is not None:
                    await channel.chmod(path, stat.S_IMODE(attrs.mode))
                if attrs.mtime_ns is not None:
                    t = attrs.mtime_ns / 1e9
                    await channel.utime(path, (t, t))

        sync(fs.loop, _set)  # type: ignore[attr-defined]
