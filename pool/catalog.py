"""The catalog: the namespace, attributes and object locations of a pool, in SQLite.

The column reference lives in :mod:`pool.schema`. This module offers the primitive,
transactional operations; POSIX semantics (permissions, errnos, which timestamps change)
are the filesystem's job (``vfs``) and bucket/tier policies are :mod:`pool.pool`'s.

All methods run on the caller's thread; one :class:`Catalog` must not be used by two threads
at once. Writes commit immediately unless they run inside :meth:`Catalog.tx`.
"""

from __future__ import annotations

import bisect
import logging
import sqlite3
import stat
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import CatalogError
from .schema import migrate

log = logging.getLogger(__name__)

ROOT = 1
NAME_MAX = 255
#: bounds of the listing cache (see :meth:`Catalog.list_dir_rows`): names over all listed
#: directories, and attribute rows; past either bound that part is emptied and refilled. At
#: these bounds it holds about 55 MB (with the entries :mod:`vfs.nodes` makes from the rows).
LISTED_NAMES_MAX = 100_000
CACHED_ROWS_MAX = 50_000

_ATTR_COLS = "id, mode, uid, gid, size, nlink, atime_ns, mtime_ns, ctime_ns, btime_ns, rdev"
_ATTR_INDEX = {c.strip(): i for i, c in enumerate(_ATTR_COLS.split(","))}  # column -> place in a row
_ATTR_COLS_I = ", ".join("i." + c.strip() for c in _ATTR_COLS.split(","))  # the same, of inodes as "i"
_PARENT_OF = "SELECT parent FROM dentries WHERE inode = {} ORDER BY id LIMIT 1"  # see Catalog.parent_of
_SQL_PARENT_OF = _PARENT_OF.format("?")
_SQL_NS_SEQ = "SELECT seq FROM namespace_version"
_SQL_NS_BUMP = "UPDATE namespace_version SET seq = seq + 1"
_SQL_LIST_DIR = (
    f"SELECT d.id, d.name, {_ATTR_COLS_I} FROM dentries d JOIN inodes i ON i.id = d.inode"
    " WHERE d.parent = ? AND d.id > ? ORDER BY d.id LIMIT ?"
)
_SQL_LISTING_START = (
    f"SELECT {_ATTR_COLS_I}, ({_PARENT_OF.format('i.id')}), ({_SQL_NS_SEQ}) FROM inodes i WHERE i.id = ?"
)
_OBJ_COLS = (
    "inode, tier, key, size, xxh3_128, etag, state, dirty_since_ns, "
    "restore_requested_ns, restore_ready_ns, upload_tmp_key"
)


@dataclass(slots=True)
class Attrs:
    """One ``inodes`` row (see :mod:`pool.schema`); times in ns, size in bytes."""

    id: int
    mode: int
    uid: int
    gid: int
    size: int
    nlink: int
    atime_ns: int
    mtime_ns: int
    ctime_ns: int
    btime_ns: int
    rdev: int

    @property
    def is_dir(self) -> bool:
        return stat.S_ISDIR(self.mode)

    @property
    def is_reg(self) -> bool:
        return stat.S_ISREG(self.mode)


@dataclass(slots=True)
class ObjectRow:
    """One ``objects`` row: where a regular file's bytes live (see :mod:`pool.schema`)."""

    inode: int
    tier: str
    key: str | None
    size: int | None
    xxh3_128: str | None
    etag: str | None
    state: str
    dirty_since_ns: int | None
    restore_requested_ns: int | None
    restore_ready_ns: int | None
    upload_tmp_key: str | None


def _cookie(entry: tuple[int, bytes, int]) -> int:
    return entry[0]


def now_ns() -> int:
    """Wall-clock time in nanoseconds since the epoch (what ext4 stamps files with)."""
    return time.time_ns()


class Catalog:
    """A pool's catalog database.

    Args:
        path: the ``catalog.db`` file; created (with the root directory) if missing.
        root_uid, root_gid: owner of a newly created root directory.

    Raises:
        CatalogError: the file is not a catalog, is damaged or is newer than this program.
    """

    def __init__(self, path: Path, *, root_uid: int = 0, root_gid: int = 0) -> None:
        try:
            self._open(path, root_uid, root_gid)
        except sqlite3.DatabaseError as e:
            raise CatalogError(f"catalog {path}: {e}") from None

    def _open(self, path: Path, root_uid: int, root_gid: int) -> None:
        self.path = path
        self.db = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.execute("PRAGMA busy_timeout=30000")
        self.db.execute("PRAGMA cache_size=-65536")  # 64 MiB of pages
        self.db.execute("PRAGMA mmap_size=268435456")
        self.db.execute("PRAGMA temp_store=MEMORY")
        self._depth = 0
        self._grouping = False
        self._group_open = False
        self._on_group_open: Callable[[], None] | None = None
        # The listing cache (see keep_listings): attribute rows by inode, and the whole
        # listing [(cookie, name, inode)] of some directories, as this connection wrote or
        # read them; emptied when a transaction rolls back or another connection changes
        # the namespace.
        self._rows: dict[int, tuple[int, ...]] = {}
        self._listings: dict[int, list[tuple[int, bytes, int]]] = {}
        self._listed = 0
        self._inodes: int | None = None  # see count_inodes
        migrate(self.db)
        self._keeps_listings = False  # see keep_listings
        self._ns_seen = 0  # namespace_version.seq as last known (by a connection keeping listings)
        self._ns_bumped = False  # this connection raised it in the open transaction
        if self.get(ROOT) is None:
            t = now_ns()
            with self.tx():
                self.db.execute(
                    "INSERT INTO inodes (id, mode, uid, gid, size, nlink, atime_ns, mtime_ns,"
                    " ctime_ns, btime_ns) VALUES (?, ?, ?, ?, 0, 2, ?, ?, ?, ?)",
                    (ROOT, stat.S_IFDIR | 0o755, root_uid, root_gid, t, t, t, t),
                )

    def close(self) -> None:
        self.commit_group()
        self.db.close()

    def defer_checkpoints(self, pages: int = 50_000) -> None:
        """Let the WAL grow to *pages* before a commit checkpoints it (default 1000 pages).

        The mount's request-serving connection uses this so that no request pays for a
        checkpoint's copy and fsync; the write-back service calls :meth:`checkpoint` from a
        worker thread instead.
        """
        self.db.execute(f"PRAGMA wal_autocheckpoint={int(pages)}")

    def checkpoint(self) -> None:
        """Copy committed WAL pages into the database without blocking readers or writers."""
        self.db.execute("PRAGMA wal_checkpoint(PASSIVE)")

    @contextmanager
    def tx(self) -> Iterator[sqlite3.Connection]:
        """A write transaction (``BEGIN IMMEDIATE``), committed at the end of the outermost
        call; nested calls join the outer one. With group commit on, a group that is open
        is committed with it (see :meth:`op`), so ``tx`` is always a durability point."""
        if self._depth:
            self._depth += 1
            try:
                yield self.db
            finally:
                self._depth -= 1
            return
        if self._group_open:
            # join the open group under a savepoint: a failure undoes only this part
            self.db.execute("SAVEPOINT tx")
            self._depth = 1
            try:
                yield self.db
            except BaseException:
                self._depth = 0
                self._undo("tx")
                raise
            self._depth = 0
            self.db.execute("RELEASE tx")
            self.commit_group()
            return
        self.db.execute("BEGIN IMMEDIATE")
        self._depth = 1
        try:
            yield self.db
        except BaseException:
            self._depth = 0
            self.forget_cached()
            self.db.execute("ROLLBACK")
            raise
        self._depth = 0
        self._commit()

    def _commit(self) -> None:
        try:
            self.db.execute("COMMIT")
        except BaseException:
            self.forget_cached()  # SQLite may have rolled back what the cache holds
            raise
        self._ns_bumped = False

    # -- group commit -----------------------------------------------------------------------

    def enable_group_commit(self, on_open: Callable[[], None] | None = None) -> None:
        """Let :meth:`op` transactions share one commit (the mount's request connection).

        Each ``COMMIT`` appends every page the transaction touched to the WAL (about 14
        ``pwrite`` calls for one create), which is most of a metadata request's cost. In
        group mode an :meth:`op` runs under a savepoint inside one open transaction that
        :meth:`commit_group` ends; the caller commits it within milliseconds (*on_open* is
        called when a group opens so it can schedule that) and before anything that must
        find the changes durable: acknowledging written bytes, fsync, deleting a cache
        file, taking the object lock. A crash of the process loses at most the metadata
        changes of the open group, never acknowledged bytes (the write path commits first).
        """
        self._grouping = True
        self._on_group_open = on_open

    @property
    def group_open(self) -> bool:
        """True while changes made by :meth:`op` wait for :meth:`commit_group`."""
        return self._group_open

    @contextmanager
    def op(self) -> Iterator[sqlite3.Connection]:
        """One filesystem change: atomic like :meth:`tx`, but with group commit on, committed
        later together with other changes (see :meth:`enable_group_commit`)."""
        if not self._grouping or self._depth:
            with self.tx() as db:
                yield db
            return
        if not self._group_open:
            self.db.execute("BEGIN IMMEDIATE")
            self._group_open = True
            if self._on_group_open is not None:
                self._on_group_open()
        self.db.execute("SAVEPOINT op")
        self._depth = 1
        try:
            yield self.db
        except BaseException:
            self._depth = 0
            self._undo("op")
            raise
        self._depth = 0
        self.db.execute("RELEASE op")

    def _undo(self, savepoint: str) -> None:
        """Roll back to *savepoint* inside the group; if SQLite already rolled the whole
        transaction back (disk full, I/O error), the group is gone and that is logged."""
        self.forget_cached()
        if self.db.in_transaction:
            self.db.execute(f"ROLLBACK TO {savepoint}")
            self.db.execute(f"RELEASE {savepoint}")
        if not self.db.in_transaction and self._group_open:
            self._group_open = False
            log.error("catalog: SQLite rolled back a whole group of changes after an error")

    def commit_group(self) -> None:
        """Commit the open group, if any (a no-op inside a transaction or without a group)."""
        if self._group_open and not self._depth:
            self._commit()
            self._group_open = False

    # -- inodes -----------------------------------------------------------------------------

    def get(self, ino: int) -> Attrs | None:
        row = self.db.execute(f"SELECT {_ATTR_COLS} FROM inodes WHERE id = ?", (ino,)).fetchone()
        return Attrs(*row) if row else None

    def new_inode(
        self,
        mode: int,
        uid: int,
        gid: int,
        t_ns: int,
        *,
        nlink: int = 1,
        size: int = 0,
        rdev: int = 0,
        target: bytes | None = None,
    ) -> Attrs:
        cur = self.db.execute(
            "INSERT INTO inodes (mode, uid, gid, size, nlink, atime_ns, mtime_ns, ctime_ns,"
            " btime_ns, rdev, target) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (mode, uid, gid, size, nlink, t_ns, t_ns, t_ns, t_ns, rdev, target),
        )
        ino = cur.lastrowid
        assert ino is not None
        self._namespace_changed()
        if self._inodes is not None:
            self._inodes += 1
        self._keep_row((ino, mode, uid, gid, size, nlink, t_ns, t_ns, t_ns, t_ns, rdev))
        if stat.S_ISDIR(mode) and self._keeps_listings:
            self._listings[ino] = []  # a new directory's whole listing: nothing
        return Attrs(ino, mode, uid, gid, size, nlink, t_ns, t_ns, t_ns, t_ns, rdev)

    def update(self, ino: int, **cols: int) -> None:
        """Set inode columns, e.g. ``update(ino, mode=0o100644, ctime_ns=t)``."""
        if cols:
            sets = ", ".join(f"{c} = ?" for c in cols)
            self.db.execute(f"UPDATE inodes SET {sets} WHERE id = ?", (*cols.values(), ino))
            self._namespace_changed()
            self._patch_row(ino, cols)

    def save(self, a: Attrs) -> None:
        """Write every attribute of *a* back to its row."""
        row = (a.id, a.mode, a.uid, a.gid, a.size, a.nlink, a.atime_ns, a.mtime_ns, a.ctime_ns, a.btime_ns, a.rdev)
        self.db.execute(
            "UPDATE inodes SET mode=?, uid=?, gid=?, size=?, nlink=?, atime_ns=?, mtime_ns=?,"
            " ctime_ns=?, btime_ns=?, rdev=? WHERE id=?",
            (*row[1:], a.id),
        )
        self._namespace_changed()
        self._keep_row(row)

    def save_atimes(self, atimes: dict[int, int]) -> None:
        """Set the atime (ns) of each inode of *atimes* (``{inode: atime_ns}``)."""
        self.db.executemany("UPDATE inodes SET atime_ns = ? WHERE id = ?", [(t, ino) for ino, t in atimes.items()])
        self._namespace_changed()
        for ino, t in atimes.items():
            self._patch_row(ino, {"atime_ns": t})

    def readlink(self, ino: int) -> bytes | None:
        row = self.db.execute("SELECT target FROM inodes WHERE id = ?", (ino,)).fetchone()
        return row[0] if row else None

    def delete_inode(self, ino: int) -> ObjectRow | None:
        """Remove an unlinked inode with its xattrs, cache row and object row.

        The stored object (if it was ever uploaded) moves to ``trash`` in the same
        transaction (schema triggers). Returns the removed object row, if any.
        """
        with self.tx():
            obj = self.object(ino)
            gone = self.db.execute("DELETE FROM inodes WHERE id = ?", (ino,)).rowcount
            self._namespace_changed()
            if self._inodes is not None:
                self._inodes -= gone
            self._rows.pop(ino, None)
            self._drop_listing(ino)
        return obj

    def delete_unlinked(self, inos: list[int]) -> tuple[list[int], list[int]]:
        """Remove every inode of *inos* that has no name left (``nlink = 0``); the others stay.
        Returns ``(removed, cached)``: the inodes removed, and those of them that had a cache
        file, so the caller can delete those files (and no live inode's)."""
        removed: list[int] = []
        cached: list[int] = []
        for i in range(0, len(inos), 500):
            part = inos[i : i + 500]
            q = ",".join("?" * len(part))
            rows = self.db.execute(
                "SELECT i.id, c.inode IS NOT NULL FROM inodes i LEFT JOIN cache c ON c.inode = i.id"
                f" WHERE i.nlink = 0 AND i.id IN ({q})",
                part,
            ).fetchall()
            removed += [r[0] for r in rows]
            cached += [r[0] for r in rows if r[1]]
            self.db.execute(f"DELETE FROM inodes WHERE nlink = 0 AND id IN ({q})", part)
        if removed:
            self._namespace_changed()
            if self._inodes is not None:
                self._inodes -= len(removed)
        for ino in removed:
            self._rows.pop(ino, None)
            self._drop_listing(ino)
        return removed, cached

    def orphans(self) -> list[int]:
        """Inodes with no name left (``nlink = 0``), to purge at start-up."""
        return [r[0] for r in self.db.execute("SELECT id FROM inodes WHERE nlink = 0")]

    # -- directory entries -----------------------------------------------------------------

    def lookup(self, parent: int, name: bytes) -> int | None:
        row = self.db.execute("SELECT inode FROM dentries WHERE parent = ? AND name = ?", (parent, name)).fetchone()
        return row[0] if row else None

    def lookup_attrs(self, parent: int, name: bytes) -> Attrs | None:
        row = self.db.execute(
            f"SELECT {_ATTR_COLS_I} FROM dentries d JOIN inodes i ON i.id = d.inode WHERE d.parent = ? AND d.name = ?",
            (parent, name),
        ).fetchone()
        return Attrs(*row) if row else None

    def add_entry(self, parent: int, name: bytes, ino: int) -> None:
        """Name *ino* *name* in directory *parent*.

        Raises:
            sqlite3.IntegrityError: *parent* already holds *name*.
        """
        cur = self.db.execute("INSERT INTO dentries (parent, name, inode) VALUES (?, ?, ?)", (parent, name, ino))
        self._namespace_changed()
        listing = self._listings.get(parent)
        if listing is not None:
            # a new entry's id is above every id in the table, so the listing stays in order
            assert cur.lastrowid is not None
            listing.append((cur.lastrowid, name, ino))
            self._count_listed(1)

    def remove_entry(self, parent: int, name: bytes) -> None:
        self.db.execute("DELETE FROM dentries WHERE parent = ? AND name = ?", (parent, name))
        self._namespace_changed()
        self._drop_listing(parent)

    def set_entry_inode(self, parent: int, name: bytes, ino: int) -> None:
        """Point the existing entry *name* of *parent* at *ino* (RENAME_EXCHANGE)."""
        self.db.execute("UPDATE dentries SET inode = ? WHERE parent = ? AND name = ?", (ino, parent, name))
        self._namespace_changed()
        self._drop_listing(parent)

    def drop_entries_of(self, ino: int) -> None:
        """Remove every entry in directory *ino* and every name of *ino* (bucket removal)."""
        self.db.execute("DELETE FROM dentries WHERE parent = ? OR inode = ?", (ino, ino))
        self._namespace_changed()
        self.forget_cached()  # the parents of the names removed are not known here

    def keep_listings(self) -> None:
        """Serve :meth:`list_dir_rows` from memory where possible (the mount's connection).

        This connection then keeps the whole listing of the directories it creates or lists,
        with the attribute rows it writes or reads, up to LISTED_NAMES_MAX names and
        CACHED_ROWS_MAX rows, and the inode count (:meth:`count_inodes`). All of it is dropped
        when a transaction rolls back and when another connection has changed the namespace:
        every other connection raises ``namespace_version`` (:mod:`pool.schema`) in each
        transaction that changes inodes or entries, and this one compares it before each
        listing. So only one connection per catalog may keep listings (the mount holds the
        pool's mount lock), and a program writing the catalog other than through this class
        must raise the version too.
        """
        self._keeps_listings = True
        self.forget_cached()
        self._ns_seen = self.db.execute(_SQL_NS_SEQ).fetchone()[0]

    def list_dir_rows(
        self, parent: int, after: int, limit: int, *, checked: bool = False
    ) -> tuple[list[tuple[int, bytes, tuple[int, ...]]], bool]:
        """:meth:`list_dir` with each entry's attributes as a row tuple (the fields of
        :class:`Attrs`, in order), from memory where it can (see :meth:`keep_listings`).

        Returns ``(entries, from_memory)``. A row tuple stays the same object until the
        inode changes, so callers may key work derived from it on its identity; rows read
        from the catalog (``from_memory`` False) are new objects. *checked*:
        :meth:`listing_start` has just checked for other connections' changes.
        """
        rows = self._rows
        if self._keeps_listings:
            if not checked:
                self._check_namespace()
            listing = self._listings.get(parent)
            if listing is not None:
                start = bisect.bisect_right(listing, after, key=_cookie) if after else 0
                out: list[tuple[int, bytes, tuple[int, ...]]] = []
                for cookie, name, ino in listing[start : start + limit]:
                    row = rows.get(ino)
                    if row is None:
                        break  # the row is not held: read the listing from the catalog
                    out.append((cookie, name, row))
                else:
                    return out, True
        out = [(r[0], r[1], r[2:]) for r in self.db.execute(_SQL_LIST_DIR, (parent, after, limit))]
        if not self._keeps_listings:
            return out, False
        if len(rows) + len(out) > CACHED_ROWS_MAX:
            rows.clear()
        if len(out) <= CACHED_ROWS_MAX:
            for _, _, row in out:
                rows[row[0]] = row
        if not after and len(out) < limit:
            self._drop_listing(parent)
            self._listings[parent] = [(cookie, name, row[0]) for cookie, name, row in out]
            self._count_listed(len(out))
        return out, False

    def forget_cached(self) -> None:
        """Drop the listings and attribute rows held in memory (see :meth:`list_dir_rows`)."""
        self._rows.clear()
        self._listings.clear()
        self._listed = 0
        self._inodes = None
        self._ns_bumped = False  # after a rollback the next change raises the version again

    def _check_namespace(self) -> None:
        """Drop what is kept if another connection changed the namespace since the last look."""
        self._saw_version(self.db.execute(_SQL_NS_SEQ).fetchone()[0])

    def _saw_version(self, seq: int) -> None:
        """``namespace_version`` reads *seq*: drop what is kept if it moved."""
        if seq != self._ns_seen:
            self.forget_cached()
            self._ns_seen = seq

    def _count_listed(self, n: int) -> None:
        """*n* more names are kept; past LISTED_NAMES_MAX every listing is dropped."""
        self._listed += n
        if self._listed > LISTED_NAMES_MAX:
            self._listings.clear()
            self._listed = 0

    def _keep_row(self, row: tuple[int, ...]) -> None:
        if not self._keeps_listings:
            return
        if len(self._rows) >= CACHED_ROWS_MAX and row[0] not in self._rows:
            self._rows.clear()
        self._rows[row[0]] = row

    def _namespace_changed(self) -> None:
        """Raise ``namespace_version`` once per transaction that changes inodes or entries,
        after the change, unless this is the connection keeping listings (see
        :meth:`keep_listings`): nobody else keeps any."""
        if self._ns_bumped or self._keeps_listings:
            return
        self.db.execute(_SQL_NS_BUMP)
        self._ns_bumped = self.db.in_transaction

    def _patch_row(self, ino: int, cols: dict[str, int]) -> None:
        row = self._rows.get(ino)
        if row is not None:
            new = list(row)
            for c, v in cols.items():
                i = _ATTR_INDEX.get(c)
                if i is None:
                    del self._rows[ino]
                    return
                new[i] = v
            self._rows[ino] = tuple(new)

    def _drop_listing(self, ino: int) -> None:
        listing = self._listings.pop(ino, None)
        if listing is not None:
            self._listed -= len(listing)

    def list_dir(self, parent: int, after: int, limit: int) -> list[tuple[int, bytes, Attrs]]:
        """Entries of *parent* with cookie > *after*, in cookie order: ``(cookie, name, attrs)``."""
        rows = self.db.execute(_SQL_LIST_DIR, (parent, after, limit)).fetchall()
        return [(r[0], r[1], Attrs(*r[2:])) for r in rows]

    def listing_start(self, ino: int) -> tuple[Attrs, int | None] | None:
        """Directory *ino*'s attributes and the directory holding it (see :meth:`parent_of`);
        None if there is no such inode. For a connection keeping listings the same query
        also checks ``namespace_version`` (one read transaction instead of two), so the
        :meth:`list_dir_rows` calls that follow in the same request may pass ``checked``."""
        row = self.db.execute(_SQL_LISTING_START, (ino,)).fetchone()
        if row is None:
            return None
        if self._keeps_listings:
            self._saw_version(row[-1])
        return Attrs(*row[:-2]), row[-2]

    def is_empty(self, ino: int) -> bool:
        return self.db.execute("SELECT 1 FROM dentries WHERE parent = ? LIMIT 1", (ino,)).fetchone() is None

    def parent_of(self, ino: int) -> int | None:
        """The directory holding *ino* (for directories there is exactly one)."""
        row = self.db.execute(_SQL_PARENT_OF, (ino,)).fetchone()
        return row[0] if row else None

    def is_ancestor(self, ancestor: int, ino: int) -> bool:
        """True if directory *ancestor* is *ino* or one of its parents."""
        cur: int | None = ino
        while cur is not None:
            if cur == ancestor:
                return True
            if cur == ROOT:
                return False
            cur = self.parent_of(cur)
        return False

    def path_of(self, ino: int) -> list[bytes] | None:
        """The components of one path naming *ino*, from the root; None if it has no name."""
        parts: list[bytes] = []
        cur = ino
        while cur != ROOT:
            row = self.db.execute(
                "SELECT parent, name FROM dentries WHERE inode = ? ORDER BY id LIMIT 1", (cur,)
            ).fetchone()
            if row is None:
                return None
            parts.append(row[1])
            cur = row[0]
        parts.reverse()
        return parts

    def resolve(self, parts: list[bytes]) -> int | None:
        """The inode at a path given as components from the root (symlinks not followed)."""
        cur = ROOT
        for p in parts:
            nxt = self.lookup(cur, p)
            if nxt is None:
                return None
            cur = nxt
        return cur

    def descendant_files(self, ino: int) -> list[int]:
        """Regular-file inodes at or below *ino* (recursive)."""
        rows = self.db.execute(
            "WITH RECURSIVE sub(id) AS (SELECT ? UNION SELECT d.inode FROM dentries d"
            " JOIN sub ON d.parent = sub.id)"
            " SELECT o.inode FROM objects o JOIN sub ON o.inode = sub.id",
            (ino,),
        ).fetchall()
        return [r[0] for r in rows]

    def count_inodes(self) -> int:
        """Inodes in the catalog. Counting reads the whole table (about 0.3 ms per 10,000
        inodes), so a connection keeping listings (:meth:`keep_listings`) keeps the count
        too and follows it through its own changes."""
        if self._keeps_listings:
            self._check_namespace()
            if self._inodes is not None:
                return self._inodes
        self._inodes = int(self.db.execute("SELECT count(*) FROM inodes").fetchone()[0])
        return self._inodes

    # -- xattrs -----------------------------------------------------------------------------

    def getxattr(self, ino: int, name: bytes) -> bytes | None:
        row = self.db.execute("SELECT value FROM xattrs WHERE inode = ? AND name = ?", (ino, name)).fetchone()
        return row[0] if row else None

    def setxattr(self, ino: int, name: bytes, value: bytes) -> None:
        self.db.execute("INSERT OR REPLACE INTO xattrs (inode, name, value) VALUES (?, ?, ?)", (ino, name, value))

    def listxattr(self, ino: int) -> list[bytes]:
        return [r[0] for r in self.db.execute("SELECT name FROM xattrs WHERE inode = ?", (ino,))]

    def removexattr(self, ino: int, name: bytes) -> bool:
        cur = self.db.execute("DELETE FROM xattrs WHERE inode = ? AND name = ?", (ino, name))
        return cur.rowcount > 0

    # -- objects ----------------------------------------------------------------------------

    def object(self, ino: int) -> ObjectRow | None:
        row = self.db.execute(f"SELECT {_OBJ_COLS} FROM objects WHERE inode = ?", (ino,)).fetchone()
        return ObjectRow(*row) if row else None

    def new_object(self, ino: int, tier: str, t_ns: int) -> None:
        """A new, empty file: dirty until its first upload."""
        self.db.execute(
            "INSERT INTO objects (inode, tier, state, dirty_since_ns) VALUES (?, ?, 'dirty', ?)",
            (ino, tier, t_ns),
        )

    def update_object(self, ino: int, **cols: Any) -> None:
        if cols:
            sets = ", ".join(f"{c} = ?" for c in cols)
            self.db.execute(f"UPDATE objects SET {sets} WHERE inode = ?", (*cols.values(), ino))

    def mark_dirty(self, ino: int, t_ns: int) -> None:
        """Mark file *ino* dirty as of *t_ns*; its write-back delay starts again from then."""
        self.db.execute("UPDATE objects SET state = 'dirty', dirty_since_ns = ? WHERE inode = ?", (t_ns, ino))

    def restart_write_back_delay(self, ino: int, t_ns: int) -> None:
        """The last writer of dirty file *ino* closed it at *t_ns*: the write-back delay counts
        from then (as rclone's ``--vfs-write-back`` counts from a file's last use). A clean
        file is left alone."""
        self.db.execute("UPDATE objects SET dirty_since_ns = ? WHERE inode = ? AND state = 'dirty'", (t_ns, ino))

    def dirty_due(self, before_ns: int, limit: int = 64) -> list[int]:
        """Dirty files that became dirty before *before_ns* (write-back candidates)."""
        return [ino for ino, _ in self.dirty_due_sizes(before_ns, limit)]

    def dirty_due_sizes(self, before_ns: int, limit: int = 64) -> list[tuple[int, int]]:
        """:meth:`dirty_due` with each file's size in bytes: ``(inode, size)``."""
        return self.db.execute(
            "SELECT o.inode, i.size FROM objects o JOIN inodes i ON i.id = o.inode"
            " WHERE o.state = 'dirty' AND o.dirty_since_ns <= ? ORDER BY o.dirty_since_ns LIMIT ?",
            (before_ns, limit),
        ).fetchall()

    def count_by_state(self) -> dict[str, int]:
        return dict(self.db.execute("SELECT state, count(*) FROM objects GROUP BY state").fetchall())

    def key_referenced(self, tier: str, key: str) -> bool:
        return (
            self.db.execute("SELECT 1 FROM objects WHERE tier = ? AND key = ? LIMIT 1", (tier, key)).fetchone()
            is not None
        )

    def add_trash(self, tier: str, key: str, xxh3_128: str | None) -> None:
        self.db.execute("INSERT INTO trash (tier, key, xxh3_128) VALUES (?, ?, ?)", (tier, key, xxh3_128))

    def trash_items(self, limit: int = 256) -> list[tuple[int, str, str, str | None]]:
        return self.db.execute("SELECT id, tier, key, xxh3_128 FROM trash ORDER BY id LIMIT ?", (limit,)).fetchall()

    def drop_trash(self, item_id: int) -> None:
        self.db.execute("DELETE FROM trash WHERE id = ?", (item_id,))

    def add_rekeys(self, inodes: list[int]) -> None:
        self.db.executemany(
            "INSERT OR IGNORE INTO rekeys (inode) SELECT inode FROM objects WHERE inode = ? AND key IS NOT NULL",
            [(i,) for i in inodes],
        )

    def rekey_items(self, limit: int = 256) -> list[int]:
        return [r[0] for r in self.db.execute("SELECT inode FROM rekeys LIMIT ?", (limit,))]

    def drop_rekey(self, ino: int) -> None:
        self.db.execute("DELETE FROM rekeys WHERE inode = ?", (ino,))

    # -- cache bookkeeping ------------------------------------------------------------------

    def cache_touch(self, ino: int, complete: bool, nbytes: int, t_ns: int) -> None:
        self.db.execute(
            "INSERT INTO cache (inode, complete, bytes, last_used_ns) VALUES (?, ?, ?, ?)"
            " ON CONFLICT(inode) DO UPDATE SET complete = excluded.complete,"
            " bytes = excluded.bytes, last_used_ns = excluded.last_used_ns",
            (ino, int(complete), nbytes, t_ns),
        )

    def cache_entry(self, ino: int) -> tuple[bool, int] | None:
        row = self.db.execute("SELECT complete, bytes FROM cache WHERE inode = ?", (ino,)).fetchone()
        return (bool(row[0]), row[1]) if row else None

    def cache_drop(self, ino: int) -> None:
        self.db.execute("DELETE FROM cache WHERE inode = ?", (ino,))

    def cache_total(self) -> int:
        return int(self.db.execute("SELECT coalesce(sum(bytes), 0) FROM cache").fetchone()[0])

    def cache_lru(self, limit: int = 64) -> list[tuple[int, int]]:
        """Evictable cache entries (not dirty), least recently used first: ``(inode, bytes)``."""
        return self.db.execute(
            "SELECT c.inode, c.bytes FROM cache c LEFT JOIN objects o ON o.inode = c.inode"
            " WHERE o.state IS NULL OR o.state = 'clean' ORDER BY c.last_used_ns LIMIT ?",
            (limit,),
        ).fetchall()

    # -- buckets and placement --------------------------------------------------------------

    def buckets(self) -> list[tuple[str, int, int]]:
        """``(name, inode, created_ns)`` of every bucket, by name."""
        return self.db.execute("SELECT name, inode, created_ns FROM buckets ORDER BY name").fetchall()

    def bucket_inode(self, name: str) -> int | None:
        row = self.db.execute("SELECT inode FROM buckets WHERE name = ?", (name,)).fetchone()
        return row[0] if row else None

    def set_placement(self, bucket: str, prefix: str, tier: str) -> None:
        self.db.execute(
            "INSERT OR REPLACE INTO placement (bucket, prefix, tier) VALUES (?, ?, ?)",
            (bucket, prefix, tier),
        )

    def placements(self, bucket: str | None = None) -> list[tuple[str, str, str]]:
        if bucket is None:
            return self.db.execute("SELECT bucket, prefix, tier FROM placement ORDER BY 1, 2").fetchall()
        return self.db.execute(
            "SELECT bucket, prefix, tier FROM placement WHERE bucket = ? ORDER BY 2", (bucket,)
        ).fetchall()
