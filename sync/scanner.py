"""Scanning a root: every file, directory and symlink below it, with size, mtime and mode.

Local roots are walked with :func:`os.scandir` (one ``lstat`` per entry, links never followed);
other roots are listed with the fsspec filesystem's ``find(withdirs=True, detail=True)``.
Filters use gitignore syntax (pathspec's ``GitIgnoreSpec``, as ``git`` matches ``.gitignore``
lines: https://git-scm.com/docs/gitignore). Names starting with :data:`sync.model.TEMP_PREFIX`
(transfers in progress) are never listed.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import logging
import marshal
import os
import signal
import stat
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO
from zlib import crc32

from pool.errors import UsageError
from pool.tempnames import PARTIAL_MARK, TMP_MARK

from .model import DIR, FILE, GROUP_BUCKETS, LINK, TEMP_PREFIX, Entry, group_heads, group_print

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


@dataclass
class LocalScan:
    """A local root's scan, group by group: each folder's entries split by the bucket of their
    names (:func:`sync.model.group_of`), or one group per folder when the scan has no prints.

    Attributes:
        groups: group id -> its entries keyed by rel.
        prints: group id -> :func:`sync.model.group_print` of its entries.
        files: group id -> how many regular files it holds.
    """

    groups: dict[str, dict[str, Entry]] = field(default_factory=dict)
    prints: dict[str, bytes] = field(default_factory=dict)
    files: dict[str, int] = field(default_factory=dict)
    nfc: bool | None = None  # every name is in NFC (None: not known yet, see names_nfc)

    def names_nfc(self) -> bool:
        """Whether every name is in Unicode NFC (ASCII names are), so is its own key."""
        if self.nfc is None:
            self.nfc = all(
                all(map(str.isascii, f)) or all(unicodedata.is_normalized("NFC", rel) for rel in f)
                for f in self.groups.values()
            )
        return self.nfc

    def flat(self, skip: set[str] | frozenset[str] = frozenset()) -> dict[str, Entry]:
        """Every entry keyed by rel, leaving out the groups named in *skip*."""
        out: dict[str, Entry] = {}
        for g, entries in self.groups.items():
            if g not in skip:
                out.update(entries)
        return out


def scan_local(root: str, filters: Filters | None = None, temps: list[str] | None = None) -> dict[str, Entry]:
    """Every entry below local directory *root*, keyed by ``rel`` (see :func:`scan_local_folders`).

    Raises:
        FileNotFoundError: *root* does not exist.
    """
    return scan_local_folders(root, filters, temps, with_prints=False).flat()


def scan_local_folders(
    root: str, filters: Filters | None = None, temps: list[str] | None = None, *, with_prints: bool = True
) -> LocalScan:
    """Every entry below local directory *root*, group by group, with each group's print
    (unless *with_prints* is false: then one group per folder, named by the folder).

    One ``lstat`` per entry (:meth:`os.DirEntry.stat` of a folder opened by descriptor, so
    ``fstatat``: links not followed, no path walk per file); a name that is not UTF-8 is
    skipped with a warning (the journal's keys are SQLite text); symlinks are listed
    as links (target read with ``readlink``), never followed; sockets, FIFOs and device nodes are
    skipped. An excluded directory is not descended into. Temporary files of transfers (see
    :func:`is_temp_name`) are not listed but appended to *temps* when given.

    Raises:
        FileNotFoundError: *root* does not exist.
    """
    scan = LocalScan()
    stack = [""]
    while stack:
        d = stack.pop()
        found = _scan_folder(root, d, filters, temps, stack, with_prints)
        if found is None:
            if not d:
                raise FileNotFoundError(errno.ENOENT, "no such folder", root)
            continue  # removed while scanning: the next run sees it
        for g, (out, items, files) in found.items():
            scan.groups[g] = out
            scan.files[g] = files
            if with_prints:
                scan.prints[g] = group_print(items)
    return scan


_Group = tuple[dict[str, Entry], list[tuple[object, ...]], int]


def _scan_folder(
    root: str, d: str, filters: Filters | None, temps: list[str] | None, subdirs: list[str], grouped: bool
) -> dict[str, _Group] | None:
    """The entries of folder *d* of local root *root* (see :func:`scan_local_folders`), by group
    (*grouped*; else all in group *d*): ``group id -> (entries by rel, the print's tuples,
    regular files)``, or None if the folder is gone. Its subfolders that are not excluded are
    appended to *subdirs*."""
    rules = filters if filters is not None and filters.lines else None
    prefix = f"{d}/" if d else ""
    try:
        # entries are stat-ed relative to their folder (fstatat): no path walk per file
        fd = os.open(f"{root}/{d}" if d else root, _DIR_FLAGS)
    except (FileNotFoundError, NotADirectoryError):
        return None
    n = GROUP_BUCKETS if grouped else 1
    outs: list[dict[str, Entry]] = [{} for _ in range(n)]
    items: list[list[tuple[object, ...]]] = [[] for _ in range(n)]
    files = [0] * n
    b = 0
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
                    raw = name.encode()
                except UnicodeEncodeError:  # bytes that are not UTF-8 (surrogate escapes)
                    log.warning("skipping %s/%s: the name is not UTF-8 (not synced)", root, ascii(rel)[1:-1])
                    continue
                try:
                    st = de.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue
                if grouped:
                    b = crc32(raw) % GROUP_BUCKETS  # sync.model.name_bucket, inlined
                m = st.st_mode
                if stat.S_ISREG(m):
                    if rules is None or not rules.excluded(rel):
                        # Entry(rel, FILE, size, mtime, mode) without the keyword handling
                        t = (rel, FILE, st.st_size, st.st_mtime_ns, m & 0o7777, None, None, None)
                        outs[b][rel] = _new(Entry, t)
                        items[b].append(t)
                        files[b] += 1
                elif stat.S_ISDIR(m):
                    if rules is None or not rules.excluded(rel, is_dir=True):
                        outs[b][rel] = Entry(rel, DIR, 0, st.st_mtime_ns, m & 0o7777)
                        items[b].append((rel, DIR, 0, 0, m & 0o7777, None, None, None))
                        subdirs.append(rel)
                elif stat.S_ISLNK(m):
                    if rules is not None and rules.excluded(rel):
                        continue
                    try:
                        target = os.readlink(name, dir_fd=fd)
                    except OSError:
                        continue
                    e = outs[b][rel] = Entry(rel, LINK, len(target), st.st_mtime_ns, None, target=target)
                    items[b].append(tuple(e))
                else:
                    log.info("skipping %s/%s: not a file, directory or symlink", root, rel)
    finally:
        os.close(fd)
    if not grouped:
        return {d: (outs[0], items[0], files[0])}
    heads = group_heads(d)
    return {heads[i]: (outs[i], items[i], files[i]) for i in range(n) if outs[i]}


class ForkedScan:
    """:func:`scan_local_folders` of *root* run by a child process (``fork``), so that the
    caller scans the other side meanwhile on another CPU (two threads would take turns on
    CPython's interpreter lock instead). Little travels through the pipes (marshal, each
    message prefixed by its length): the child sends prints, file counts and temporary names
    (:meth:`prints`), then the entries of only the groups the caller asks for
    (:meth:`groups`: those not settled), and exits. Only for a process running a single
    thread (a child of a threaded process could inherit a lock some other thread held).

    Args:
        root, filters: as for :func:`scan_local_folders`.
    """

    def __init__(self, root: str, filters: Filters | None) -> None:
        self.root = root
        up_r, up_w = os.pipe()  # child -> caller
        down_r, down_w = os.pipe()  # caller -> child
        self.pid = os.fork()
        if self.pid == 0:  # pragma: no cover - the child (coverage does not follow it)
            try:
                from .workers import close_inherited_fds  # here: rescans with nothing to do skip its imports

                close_inherited_fds([up_w, down_r])
                with os.fdopen(up_w, "wb") as up, os.fdopen(down_r, "rb") as down:
                    self._child(root, filters, up, down)
            finally:
                os._exit(0)
        os.close(up_w)
        os.close(down_r)
        self._up: BinaryIO | None = os.fdopen(up_r, "rb")
        self._down: BinaryIO | None = os.fdopen(down_w, "wb")

    @staticmethod
    def _child(root: str, filters: Filters | None, up: BinaryIO, down: BinaryIO) -> None:
        temps: list[str] = []
        try:
            scan = scan_local_folders(root, filters, temps)
        except FileNotFoundError:
            _send(up, ("missing",))
            return
        except BaseException as e:  # noqa: BLE001 - reported to the caller, which scans itself
            _send(up, ("error", repr(e)))
            return
        _send(up, ("ok", scan.prints, scan.files, temps, scan.names_nfc()))
        wanted = _receive(down)
        if isinstance(wanted, list):
            _send(up, {g: [tuple(e) for e in scan.groups[g].values()] for g in wanted if g in scan.groups})

    def prints(self, temps: list[str]) -> LocalScan | None:
        """The scan's prints, file counts and whether names are NFC (no entries yet), or None if the child failed
        (the caller then scans itself). Temporary names go to *temps*.

        Raises:
            FileNotFoundError: *root* does not exist.
        """
        assert self._up is not None
        payload = _receive(self._up)
        if not isinstance(payload, tuple) or payload[0] != "ok":
            self.close()
            if isinstance(payload, tuple) and payload[0] == "missing":
                raise FileNotFoundError(errno.ENOENT, "no such folder", self.root)
            log.warning("scanning %s in a child process failed (%s): scanning here", self.root, payload)
            return None
        _, prints, files, found, nfc = payload
        temps.extend(found)
        return LocalScan(prints=prints, files=files, nfc=nfc)

    def groups(self, wanted: Iterable[str]) -> dict[str, dict[str, Entry]] | None:
        """The entries of the groups *wanted* (by group), or None if the child failed."""
        assert self._up is not None and self._down is not None
        try:
            _send(self._down, sorted(wanted))
            self._down.close()
            sent = _receive(self._up)
        except OSError as e:
            log.warning("scanning %s in a child process failed (%s): scanning here", self.root, e)
            sent = None
        self.close()
        if not isinstance(sent, dict):
            return None
        return {g: {t[0]: _new(Entry, t) for t in rows} for g, rows in sent.items()}

    def close(self) -> None:
        """Stop the child (if it still runs) and reap it."""
        for f in (self._down, self._up):
            if f is not None:
                with contextlib.suppress(OSError):
                    f.close()
        self._up = self._down = None
        if self.pid:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)
            with contextlib.suppress(ChildProcessError):
                os.waitpid(self.pid, 0)
            self.pid = 0


def _send(f: BinaryIO, obj: Any) -> None:
    data = marshal.dumps(obj)
    f.write(len(data).to_bytes(8, "little") + data)
    f.flush()


def _receive(f: BinaryIO) -> object:
    """The next message, or None at the end of the stream or on a damaged message."""
    head = f.read(8)
    if len(head) < 8:
        return None
    data = f.read(int.from_bytes(head, "little"))
    try:
        return marshal.loads(data)
    except (EOFError, ValueError, TypeError):
        return None


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
