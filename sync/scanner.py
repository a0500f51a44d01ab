"""Scanning a root: every file, directory and symlink below it, with size, mtime and mode.

Local roots are walked with :func:`os.scandir` (one ``lstat`` per entry, links never followed);
other roots are listed with the fsspec filesystem's ``find(withdirs=True, detail=True)``.
Filters use gitignore syntax (pathspec's ``GitIgnoreSpec``, as ``git`` matches ``.gitignore``
lines: https://git-scm.com/docs/gitignore). Names starting with :data:`sync.model.TEMP_PREFIX`
(transfers in progress) are never listed.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import stat
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pool.errors import UsageError
from pool.tempnames import PARTIAL_MARK, TMP_MARK

from .model import DIR, FILE, LINK, TEMP_PREFIX, Entry

if TYPE_CHECKING:
    import fsspec

log = logging.getLogger(__name__)

_new = tuple.__new__
_DIR_FLAGS = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_CLOEXEC", 0)


def is_temp_name(name: str) -> bool:
    """Names of transfers in progress (ours and :mod:`pool.transfers`'s, all starting with a
    dot): never synced."""
    return name.startswith(".") and (name.startswith(TEMP_PREFIX) or PARTIAL_MARK in name or TMP_MARK in name)


class Filters:
    """Include/exclude rules in gitignore syntax: a path matching a rule is excluded, ``!rule``
    re-includes it (later rules win).

    Args:
        lines: gitignore-syntax lines (``--exclude`` values and ``--filter-from`` file lines).
    """

    def __init__(self, lines: Iterable[str] = ()) -> None:
        self.lines = [ln for ln in (s.rstrip("\n") for s in lines) if ln.strip() and not ln.lstrip().startswith("#")]
        self._spec = None
        if self.lines:
            import pathspec

            self._spec = pathspec.GitIgnoreSpec.from_lines(self.lines)

    @classmethod
    def from_options(cls, excludes: Iterable[str] = (), filter_files: Iterable[str] = ()) -> Filters:
        """Rules from ``--exclude PATTERN`` values followed by the lines of ``--filter-from`` files.

        Raises:
            UsageError: a filter file cannot be read.
        """
        lines = list(excludes)
        for f in filter_files:
            try:
                lines += Path(f).expanduser().read_text().splitlines()
            except OSError as e:
                raise UsageError(f"cannot read filter file {f}: {e.strerror}") from None
        return cls(lines)

    def excluded(self, rel: str, *, is_dir: bool = False) -> bool:
        if self._spec is None:
            return False
        return self._spec.match_file(rel + "/" if is_dir else rel)


def scan_local(root: str, filters: Filters | None = None, temps: list[str] | None = None) -> dict[str, Entry]:
    """Every entry below local directory *root*, keyed by ``rel``.

    One ``lstat`` per entry (:meth:`os.DirEntry.stat` of a folder opened by descriptor, so
    ``fstatat``: links not followed, no path walk per file); symlinks are listed
    as links (target read with ``readlink``), never followed; sockets, FIFOs and device nodes are
    skipped. An excluded directory is not descended into. Temporary files of transfers (see
    :func:`is_temp_name`) are not listed but appended to *temps* when given.

    Raises:
        FileNotFoundError: *root* does not exist.
    """
    out: dict[str, Entry] = {}
    stack = [""]
    rules = filters if filters is not None and filters.lines else None
    while stack:
        d = stack.pop()
        prefix = f"{d}/" if d else ""
        try:
            # entries are stat-ed relative to their folder (fstatat): no path walk per file
            fd = os.open(f"{root}/{d}" if d else root, _DIR_FLAGS)
        except (FileNotFoundError, NotADirectoryError):
            if not d:
                raise
            continue  # removed while scanning: the next run sees it
        try:
            with os.scandir(fd) as it:
                for de in it:
                    name = de.name
                    rel = prefix + name
                    if name[0] == "." and is_temp_name(name):
                        if temps is not None:
                            temps.append(rel)
                        continue
                    try:
                        st = de.stat(follow_symlinks=False)
                    except FileNotFoundError:
                        continue
                    m = st.st_mode
                    if stat.S_ISREG(m):
                        if rules is None or not rules.excluded(rel):
                            # Entry(rel, FILE, size, mtime, mode) without the keyword handling
                            out[rel] = _new(
                                Entry, (rel, FILE, st.st_size, st.st_mtime_ns, m & 0o7777, None, None, None)
                            )
                    elif stat.S_ISDIR(m):
                        if rules is None or not rules.excluded(rel, is_dir=True):
                            out[rel] = Entry(rel, DIR, 0, st.st_mtime_ns, m & 0o7777)
                            stack.append(rel)
                    elif stat.S_ISLNK(m):
                        if rules is not None and rules.excluded(rel):
                            continue
                        try:
                            target = os.readlink(name, dir_fd=fd)
                        except OSError:
                            continue
                        out[rel] = Entry(rel, LINK, len(target), st.st_mtime_ns, None, target=target)
                    else:
                        log.info("skipping %s/%s: not a file, directory or symlink", root, rel)
        finally:
            os.close(fd)
    return out


def mtime_ns_of(info: dict[str, Any]) -> int:
    """Modification time in ns of an fsspec ``info`` dict (``mtime_ns``, ``mtime``, ``LastModified``...)."""
    if isinstance(info.get("mtime_ns"), int):
        return int(info["mtime_ns"])
    for k in ("mtime", "LastModified", "last_modified", "updated", "modified", "created"):
        v = info.get(k)
        if v is None:
            continue
        if isinstance(v, dt.datetime):
            if v.tzinfo is None:
                v = v.replace(tzinfo=dt.UTC)
            return int(v.timestamp()) * 1_000_000_000 + v.microsecond * 1000
        if isinstance(v, (int, float)):
            return int(round(float(v) * 1e9)) if v < 1e12 else int(v)
        if isinstance(v, str):
            try:
                return mtime_ns_of({"mtime": dt.datetime.fromisoformat(v.replace("Z", "+00:00"))})
            except ValueError:
                continue
    return 0


def etag_of(info: dict[str, Any]) -> str | None:
    """The remote version id or ETag of an fsspec ``info`` dict, if the store gives one."""
    for k in ("VersionId", "version_id", "ETag", "etag", "md5Hash"):
        v = info.get(k)
        if v:
            return str(v).strip('"')
    return None


def entry_from_info(rel: str, info: dict[str, Any], *, with_modes: bool) -> Entry | None:
    """An :class:`Entry` from an fsspec ``info`` dict, or None for other kinds (sockets, ...)."""
    t = info.get("type")
    perms = info.get("permissions", info.get("mode"))
    mode = stat.S_IMODE(int(perms)) if with_modes and isinstance(perms, int) else None
    if t == "directory":
        return Entry(rel, DIR, 0, mtime_ns_of(info), mode)
    if t == "link" or info.get("islink"):
        target = str(info.get("destination") or "")
        return Entry(rel, LINK, len(target), mtime_ns_of(info), None, target=target) if target else None
    if t == "file":
        return Entry(rel, FILE, int(info.get("size") or 0), mtime_ns_of(info), mode, etag=etag_of(info))
    return None


def scan_fs(
    fs: fsspec.AbstractFileSystem,
    root: str,
    filters: Filters | None = None,
    *,
    with_dirs: bool = True,
    with_modes: bool = False,
    temps: list[str] | None = None,
) -> dict[str, Entry]:
    """Every entry below *root* of fsspec filesystem *fs*, keyed by ``rel``.

    Object stores have no real directories: pass ``with_dirs=False`` there (prefixes are implied).

    Raises:
        FileNotFoundError: *root* does not exist (stores where a prefix always exists return {}).
    """
    found = fs.find(root, withdirs=True, detail=True)
    base = root.rstrip("/") + "/"
    out: dict[str, Entry] = {}
    for name, info in found.items():
        name = name.rstrip("/")
        if not name.startswith(base):
            continue
        rel = name[len(base) :]
        parts = rel.split("/")
        if not rel:
            continue
        if any(is_temp_name(p) for p in parts):
            if temps is not None and info.get("type") == "file":
                temps.append(rel)
            continue
        e = entry_from_info(rel, info, with_modes=with_modes)
        if e is None or (e.kind == DIR and not with_dirs):
            continue
        if filters is not None and filters.lines:
            # an excluded directory excludes everything below it (gitignore semantics)
            if filters.excluded(rel, is_dir=e.kind == DIR) or any(
                filters.excluded("/".join(parts[:i]), is_dir=True) for i in range(1, len(parts))
            ):
                continue
        out[rel] = e
    return out
