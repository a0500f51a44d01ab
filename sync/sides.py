"""One side of a sync pair: a root (a :class:`LocalRoot` folder, or a Location: fsspec
filesystem + root) with what it can store.

Local roots (a :class:`LocalRoot`, or a Location whose filesystem is fsspec's
``LocalFileSystem``: a pool bucket seen through the live mount) are read and changed with
:mod:`os` directly; other roots through their fsspec filesystem. Capabilities decide what the
planner may propagate: real directories (empty ones are synced), symlinks, permission bits, the
mtime precision, and whether names are case-insensitive.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import logging
import os
import stat
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, BinaryIO, Protocol

from pool.hashing import hash_stream

from .model import DIR, FILE, LINK, Entry, parent_of, temp_name
from .scanner import Filters, LocalScan, entry_from_info, scan_fs, scan_local, scan_local_folders

if TYPE_CHECKING:
    import fsspec

    from pool.locations import Location

log = logging.getLogger(__name__)

#: protocols whose stores have real directories (object stores only imply them by prefixes)
_DIR_PROTOCOLS = {"file", "local", "sftp", "ssh", "ftp", "webdav", "dav", "memory", "smb", "darkstorage"}


class LocationLike(Protocol):
    """The shape of :class:`pool.locations.Location` the engine needs."""

    @property
    def fs(self) -> fsspec.AbstractFileSystem: ...
    @property
    def root(self) -> str: ...
    @property
    def display(self) -> str: ...


@dataclass(frozen=True)
class LocalRoot:
    """A local folder as a sync root. The engine works on it with :mod:`os` calls, so no fsspec
    filesystem is made unless a transfer to or from a remote store needs one (:attr:`fs`).

    Attributes:
        root: absolute, normalised path (see :func:`pool.locations.local_root`).
        display: the folder as the user wrote it.
    """

    root: str
    display: str
    kind: str = "local"

    @functools.cached_property
    def location(self) -> Location:
        """The same folder as a :class:`pool.locations.Location` (for :mod:`pool.transfers`)."""
        from pool.locations import local_location

        return local_location(self.root, self.display)

    @property
    def fs(self) -> fsspec.AbstractFileSystem:
        return self.location.fs


def _protocols(fs: fsspec.AbstractFileSystem) -> set[str]:
    p = fs.protocol
    return {p} if isinstance(p, str) else set(p)


def _is_local_fs(fs: fsspec.AbstractFileSystem) -> bool:
    from fsspec.implementations.local import LocalFileSystem  # loaded already: *fs* is a filesystem

    return isinstance(fs, LocalFileSystem)


class Side:
    """Side *number* (1 or 2) of a pair, over *location*.

    Attributes:
        is_local: the root is a local directory (``os`` calls, fast scandir scans).
        has_dirs: the store has real directories (empty directories are synced).
        has_links: symlinks can be created here.
        has_modes: permission bits can be read and set here.
        mtime_precision_ns: the store's mtime resolution (1 ns local, 1 s elsewhere).
        fold_case: names differing only in case are the same file here (probed on local roots).
    """

    def __init__(self, location: LocationLike, number: int) -> None:
        self.location = location
        self.number = number
        self.root = location.root.rstrip("/") if location.root != "/" else "/"
        self.display = location.display
        self.is_local = isinstance(location, LocalRoot) or _is_local_fs(location.fs)
        self.fs: Any = None if self.is_local else location.fs  # local sides use os calls only
        self.has_dirs = self.is_local or bool(_protocols(self.fs) & _DIR_PROTOCOLS)
        self.has_links = self.is_local
        self.has_modes = self.is_local
        self.mtime_precision_ns = 1 if self.is_local else 1_000_000_000
        self.fold_case = self._probe_fold_case()
        self.temps: list[str] = []  # temporary files of transfers found by the last scan

    @property
    def transfer_location(self) -> Location:
        """This side as a :class:`pool.locations.Location`, for :func:`pool.transfers.copy_file`."""
        loc = self.location
        return loc.location if isinstance(loc, LocalRoot) else loc  # type: ignore[return-value]

    # -- reading ------------------------------------------------------------------------------

    def path(self, rel: str) -> str:
        if not rel:
            return self.root
        return f"{self.root}/{rel}" if self.root != "/" else f"/{rel}"

    def exists(self) -> bool:
        """The root is there (a missing root is an unmounted drive or a deleted folder)."""
        if self.is_local:
            return os.path.isdir(self.root)
        try:
            return bool(self.fs.isdir(self.root)) or bool(self.fs.exists(self.root))
        except (FileNotFoundError, PermissionError):
            return False

    def scan(self, filters: Filters | None = None) -> dict[str, Entry]:
        """Everything below the root, keyed by rel (see :mod:`sync.scanner`). A missing root is {}."""
        self.temps = []
        try:
            if self.is_local:
                return scan_local(self.root, filters, self.temps)
            self.fs.invalidate_cache()  # listings cached by an earlier run of this filesystem
            return scan_fs(
                self.fs, self.root, filters, with_dirs=self.has_dirs, with_modes=self.has_modes, temps=self.temps
            )
        except FileNotFoundError:
            return {}

    def scan_folders(self, filters: Filters | None = None) -> LocalScan:
        """A local root's scan by print group, with the groups' prints (see
        :func:`sync.scanner.scan_local_folders`). A missing root is an empty scan."""
        assert self.is_local
        self.temps = []
        try:
            return scan_local_folders(self.root, filters, self.temps)
        except FileNotFoundError:
            return LocalScan()

    def stat(self, rel: str) -> Entry | None:
        """The entry at *rel* now (links not followed), or None if there is none."""
        p = self.path(rel)
        if self.is_local:
            try:
                st = os.lstat(p)
            except (FileNotFoundError, NotADirectoryError):
                return None
            m = st.st_mode
            if stat.S_ISREG(m):
                return Entry(rel, FILE, st.st_size, st.st_mtime_ns, stat.S_IMODE(m))
            if stat.S_ISDIR(m):
                return Entry(rel, DIR, 0, st.st_mtime_ns, stat.S_IMODE(m))
            if stat.S_ISLNK(m):
                t = os.readlink(p)
                return Entry(rel, LINK, len(t), st.st_mtime_ns, None, target=t)
            return None
        try:
            info = self.fs.info(p)
        except FileNotFoundError:
            return None
        return entry_from_info(rel, info, with_modes=self.has_modes)

    def kept_mtime_ns(self, rel: str) -> int | None:
        """The source mtime (ns) a copy stored with the file at *rel* where the listing shows
        another time: S3 keeps it as user metadata ``mtime`` (rclone's key; one HEAD request),
        while its listing gives the upload time. None elsewhere, or when nothing was stored."""
        if self.is_local:
            return None
        from pool.fsattrs import fs_kind, source_attrs

        if fs_kind(self.fs) != "s3":
            return None
        return source_attrs(self.fs, self.path(rel), {}).mtime_ns  # no LastModified given: None unless stored

    def open_read(self, rel: str) -> BinaryIO:
        if self.is_local:
            return open(self.path(rel), "rb")
        return self.fs.open(self.path(rel), "rb")  # type: ignore[no-any-return]

    def hash(self, rel: str) -> str:
        """XXH3-128 hex digest of the file (of the target string for a link) at *rel*."""
        with self.open_read(rel) as f:
            return hash_stream(f)[0]

    # -- changing -----------------------------------------------------------------------------

    def makedirs(self, rel: str, mode: int | None = None) -> None:
        if not rel or not self.has_dirs:
            return
        p = self.path(rel)
        if self.is_local:
            os.makedirs(p, exist_ok=True)
            if mode is not None and self.has_modes:
                os.chmod(p, mode)
        else:
            self.fs.makedirs(p, exist_ok=True)

    def remove_temps(self) -> int:
        """Delete the temporary files the last scan found (left by killed transfers; the pair
        lock is held, so no transfer of this pair is writing them). Returns how many."""
        for rel in self.temps:
            self.delete(rel)
        n, self.temps = len(self.temps), []
        return n

    def makedirs_root(self) -> None:
        """Create the root folder (a first sync into a folder that does not exist yet)."""
        if self.is_local:
            os.makedirs(self.root, exist_ok=True)
        elif self.has_dirs:
            self.fs.makedirs(self.root, exist_ok=True)

    def delete(self, rel: str) -> None:
        """Remove the file or link at *rel* (gone already is fine)."""
        try:
            if self.is_local:
                os.unlink(self.path(rel))
            else:
                self.fs.rm_file(self.path(rel))
        except FileNotFoundError:
            pass

    def rmdir(self, rel: str) -> bool:
        """Remove the directory at *rel* if it is empty. Returns whether it is gone."""
        p = self.path(rel)
        try:
            if self.is_local:
                os.rmdir(p)
            else:
                if self.fs.ls(p, detail=False):
                    return False
                self.fs.rmdir(p)
        except FileNotFoundError:
            return True
        except OSError as e:
            if e.errno in (errno.ENOTEMPTY, errno.EEXIST):
                return False
            raise
        return True

    def move(self, src_rel: str, dst_rel: str) -> None:
        """Rename *src_rel* to *dst_rel* (never over an existing entry; case-only renames go
        through a temporary name so case-insensitive stores see them).

        Raises:
            FileExistsError: *dst_rel* exists and is another file.
        """
        self.makedirs(parent_of(dst_rel))
        sp, dp = self.path(src_rel), self.path(dst_rel)
        case_only = src_rel.casefold() == dst_rel.casefold()
        if self.is_local:
            if os.path.lexists(dp) and not (case_only and os.path.samefile(sp, dp)):
                raise FileExistsError(errno.EEXIST, "destination exists", dp)
            if case_only:
                tmp = self.path(f"{parent_of(dst_rel)}/{temp_name()}".lstrip("/"))
                os.rename(sp, tmp)
                os.rename(tmp, dp)
            else:
                os.rename(sp, dp)
            return
        if not case_only and self.fs.exists(dp):
            raise FileExistsError(errno.EEXIST, "destination exists", dp)
        self.fs.mv(sp, dp)

    def symlink(self, rel: str, target: str) -> None:
        """Create (or replace) symlink *rel* → *target*, atomically via a temporary name."""
        self.makedirs(parent_of(rel))
        p = self.path(rel)
        tmp = os.path.join(os.path.dirname(p), temp_name())
        os.symlink(target, tmp)
        os.replace(tmp, p)

    def chmod(self, rel: str, mode: int) -> None:
        if self.has_modes:
            os.chmod(self.path(rel), mode)

    def _probe_fold_case(self) -> bool:
        """Whether this local root treats ``A`` and ``a`` as the same name (vfat, exFAT, SMB,
        ext4 casefold folders, APFS/HFS+ by default). Remote roots are taken as case-sensitive."""
        if not self.is_local or not os.path.isdir(self.root):
            return False
        probe = os.path.join(self.root, temp_name("case-"))
        try:
            fd = os.open(probe, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
        except OSError:
            return False
        os.close(fd)
        try:
            return os.path.exists(os.path.join(self.root, os.path.basename(probe).upper()))
        finally:
            with contextlib.suppress(OSError):
                os.unlink(probe)

    def describe(self) -> dict[str, Any]:
        return {
            "root": self.display,
            "local": self.is_local,
            "dirs": self.has_dirs,
            "links": self.has_links,
            "modes": self.has_modes,
            "case_insensitive": self.fold_case,
        }
