"""The journal of a sync pair: what both sides looked like at the last successful sync, per path.

One SQLite database per pair (``<pool home>/sync/pairs/<pair>.db``, WAL mode). The executor
commits what it finished in small groups (see :mod:`sync.executor`); every commit leaves a
journal that is true for every path it names, and copies are noted in ``pending`` before they
start, so a run killed at any point is recognised and completed by the next one.

Schema (``PRAGMA user_version`` holds the number of migrations applied)::

    meta(key TEXT PRIMARY KEY, value TEXT NOT NULL)
        path1, path2     the two roots as the user wrote them (display form)
        fold_case        "1" when keys are case-folded (a side is case-insensitive)
        completed_ns     end of the first run that finished (absent: the first run has not
                         finished, so the next run is again a merge that never deletes)
    entries(
        key        TEXT NOT NULL,     -- NFC path (case-folded if fold_case): see sync.model.key_of;
                                      -- unique (index entries_by_key)
        kind       TEXT NOT NULL,     -- "file" | "dir" | "link"
        hash       TEXT,              -- XXH3-128 hex of the content both sides held (link: of the
                                      -- target); NULL when matched by size + mtime only
        target     TEXT,              -- symlink target (links only)
        rel1       TEXT NOT NULL,     -- the name as side 1 spells it
        size1      INTEGER NOT NULL,  -- bytes on side 1
        mtime1_ns  INTEGER NOT NULL,  -- mtime on side 1, ns since the epoch, at its precision
        mode1      INTEGER,           -- permission bits on side 1, NULL where it has none
        etag1      TEXT,              -- ETag / version id on side 1, NULL where it has none
        rel2, size2, mtime2_ns, mode2, etag2   -- the same for side 2
        synced_ns  INTEGER NOT NULL,  -- when this row was committed, ns since the epoch
        grp        TEXT NOT NULL,     -- the key's print group: sync.model.group_of (migration 5;
                                      -- migration 4 had the folder here, as dir)
        PRIMARY KEY (grp, key)        -- (migration 5) a group's rows lie together: loading the
    ) WITHOUT ROWID                   -- rows of some groups reads a range of pages each, not a
                                      -- page per row; no rowid b-tree (migration 3): a commit
                                      -- writes a page of the table and one of entries_by_key
    pending(                          -- copies started, not known finished (migration 2)
        key          TEXT PRIMARY KEY,
        dst          INTEGER NOT NULL,  -- the side being written (1 or 2)
        src_rel      TEXT NOT NULL,     -- the source as scanned: name, size, mtime, mode
        src_size     INTEGER NOT NULL,
        src_mtime_ns INTEGER NOT NULL,
        src_mode     INTEGER
    ) WITHOUT ROWID

    group_prints(                     -- (migration 5; folder_prints, per folder, in 4) one row
        grp  TEXT PRIMARY KEY,        -- per print group holding rows, as entries.grp
        fp1  BLOB,                    -- sync.model.group_print of the group's rows as side 1
        fp2  BLOB                     -- holds them, and as side 2; both NULL while unknown
    ) WITHOUT ROWID

Group prints let a rescan skip the parts of the tree where nothing moved. A print group is a
folder's entries whose names fall in one of :data:`sync.model.GROUP_BUCKETS` buckets (so one
changed file unsettles a quarter of its folder, not all of it). A group whose scans on both
sides print as its rows do holds exactly what the journal recorded, so its rows need not be
loaded nor its entries compared one by one (see ``sync.engine``). Every write to ``entries``
first sets its group's prints to NULL (committed before the row, so a print never describes
rows that changed after it); :meth:`Journal.refresh_prints` computes the missing ones from the
rows at the end of a run.

The ``pending`` rows of a run's copies are written (one transaction) before the copies start;
each finished copy commits its ``entries`` row on its own, and the pending rows go once the copy
phase ended and its last flush is over (see :mod:`sync.executor`). A run killed in between
leaves them: for each, the next run finds the destination holding a file of the source's size
and mtime (the copy finished) and treats the key as synced then, so a later edit on either side
is a one-sided change, not a conflict; a copy whose ``entries`` row was committed already keeps
that row (see ``sync.engine``).

The WAL is checkpointed every :data:`CHECKPOINT_PAGES` pages (SQLite's default is 1,000): a run
commits a row per file, and each checkpoint flushes the disk.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from itertools import groupby
from operator import itemgetter
from pathlib import Path
from typing import NamedTuple

from pool.errors import CatalogError

from .model import DIR, Entry, group_of, group_print, parent_of

#: numbered migrations; migration i brings user_version from i to i + 1
MIGRATIONS: list[str] = [
    """
    CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    CREATE TABLE entries (
        key TEXT PRIMARY KEY,
        kind TEXT NOT NULL,
        hash TEXT,
        target TEXT,
        rel1 TEXT NOT NULL, size1 INTEGER NOT NULL, mtime1_ns INTEGER NOT NULL, mode1 INTEGER, etag1 TEXT,
        rel2 TEXT NOT NULL, size2 INTEGER NOT NULL, mtime2_ns INTEGER NOT NULL, mode2 INTEGER, etag2 TEXT,
        synced_ns INTEGER NOT NULL
    );
    """,
    """
    CREATE TABLE pending (
        key TEXT PRIMARY KEY, dst INTEGER NOT NULL, src_rel TEXT NOT NULL,
        src_size INTEGER NOT NULL, src_mtime_ns INTEGER NOT NULL, src_mode INTEGER
    );
    """,
    """
    CREATE TABLE entries3 (
        key TEXT PRIMARY KEY,
        kind TEXT NOT NULL,
        hash TEXT,
        target TEXT,
        rel1 TEXT NOT NULL, size1 INTEGER NOT NULL, mtime1_ns INTEGER NOT NULL, mode1 INTEGER, etag1 TEXT,
        rel2 TEXT NOT NULL, size2 INTEGER NOT NULL, mtime2_ns INTEGER NOT NULL, mode2 INTEGER, etag2 TEXT,
        synced_ns INTEGER NOT NULL
    ) WITHOUT ROWID;
    INSERT INTO entries3 SELECT key, kind, hash, target, rel1, size1, mtime1_ns, mode1, etag1,
        rel2, size2, mtime2_ns, mode2, etag2, synced_ns FROM entries;
    DROP TABLE entries;
    ALTER TABLE entries3 RENAME TO entries;
    CREATE TABLE pending3 (
        key TEXT PRIMARY KEY, dst INTEGER NOT NULL, src_rel TEXT NOT NULL,
        src_size INTEGER NOT NULL, src_mtime_ns INTEGER NOT NULL, src_mode INTEGER
    ) WITHOUT ROWID;
    INSERT INTO pending3 SELECT key, dst, src_rel, src_size, src_mtime_ns, src_mode FROM pending;
    DROP TABLE pending;
    ALTER TABLE pending3 RENAME TO pending;
    """,
    """
    ALTER TABLE entries ADD COLUMN dir TEXT NOT NULL DEFAULT '';
    UPDATE entries SET dir = ds_parent(key);
    CREATE INDEX entries_by_dir ON entries (dir);
    CREATE TABLE folder_prints (dir TEXT PRIMARY KEY, fp1 BLOB, fp2 BLOB) WITHOUT ROWID;
    INSERT INTO folder_prints (dir) SELECT DISTINCT dir FROM entries;
    """,
    """
    CREATE TABLE entries5 (
        key TEXT NOT NULL,
        kind TEXT NOT NULL,
        hash TEXT,
        target TEXT,
        rel1 TEXT NOT NULL, size1 INTEGER NOT NULL, mtime1_ns INTEGER NOT NULL, mode1 INTEGER, etag1 TEXT,
        rel2 TEXT NOT NULL, size2 INTEGER NOT NULL, mtime2_ns INTEGER NOT NULL, mode2 INTEGER, etag2 TEXT,
        synced_ns INTEGER NOT NULL,
        grp TEXT NOT NULL,
        PRIMARY KEY (grp, key)
    ) WITHOUT ROWID;
    INSERT INTO entries5 SELECT key, kind, hash, target, rel1, size1, mtime1_ns, mode1, etag1,
        rel2, size2, mtime2_ns, mode2, etag2, synced_ns, ds_group(key) FROM entries;
    DROP TABLE entries;
    ALTER TABLE entries5 RENAME TO entries;
    CREATE UNIQUE INDEX entries_by_key ON entries (key);
    DROP TABLE folder_prints;
    CREATE TABLE group_prints (grp TEXT PRIMARY KEY, fp1 BLOB, fp2 BLOB) WITHOUT ROWID;
    INSERT INTO group_prints (grp) SELECT DISTINCT grp FROM entries;
    """,
]

CHECKPOINT_PAGES = 10_000


class Synced(NamedTuple):
    """One journal row: the path's state on both sides when it was last in sync (the columns of
    ``entries``, in that order; a journal of 100,000 paths loads 100,000 of these at every run).

    Attributes:
        key: the matching key (see :func:`sync.model.key_of`).
        kind: ``"file"``, ``"dir"`` or ``"link"``.
        hash: XXH3-128 hex of the content, or None if never hashed.
        target: symlink target (links only).
        rel1, size1, mtime1_ns, mode1, etag1: side 1 (see the schema); ``rel2`` ... the same
            for side 2. :attr:`side1` and :attr:`side2` give them as entries.
    """

    key: str
    kind: str
    hash: str | None
    target: str | None
    rel1: str
    size1: int
    mtime1_ns: int
    mode1: int | None
    etag1: str | None
    rel2: str
    size2: int
    mtime2_ns: int
    mode2: int | None
    etag2: str | None

    @classmethod
    def of(cls, key: str, kind: str, digest: str | None, e1: Entry, e2: Entry) -> Synced:
        """The row for *key* in sync with side states *e1* and *e2* (content *digest*)."""
        return cls(key, kind, digest, e1.target, e1.rel, e1.size, e1.mtime_ns, e1.mode, e1.etag,
                   e2.rel, e2.size, e2.mtime_ns, e2.mode, e2.etag)  # fmt: skip

    @property
    def side1(self) -> Entry:
        return Entry(self.rel1, self.kind, self.size1, self.mtime1_ns, self.mode1, self.hash, self.etag1, self.target)

    @property
    def side2(self) -> Entry:
        return Entry(self.rel2, self.kind, self.size2, self.mtime2_ns, self.mode2, self.hash, self.etag2, self.target)

    def side(self, n: int) -> Entry:
        return self.side1 if n == 1 else self.side2


class Journal:
    """The journal database of one pair (``":memory:"`` for a dry run of a new pair).

    Raises:
        CatalogError: the file is not a journal or is newer than this program.
    """

    def __init__(self, path: Path | str) -> None:
        self.path = path
        self._unprinted: set[str] | None = None  # folders whose prints are NULL (loaded when needed)
        if isinstance(path, Path):
            path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
            self.db.create_function("ds_parent", 1, parent_of, deterministic=True)  # migration 4
            self.db.create_function("ds_group", 1, group_of, deterministic=True)  # migration 5
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=NORMAL")
            self.db.execute(f"PRAGMA wal_autocheckpoint={CHECKPOINT_PAGES}")
            self._migrate()
        except sqlite3.DatabaseError as e:
            raise CatalogError(f"sync journal {path} is unreadable: {e}") from None

    def _migrate(self) -> None:
        version = self.db.execute("PRAGMA user_version").fetchone()[0]
        if version > len(MIGRATIONS):
            raise CatalogError(f"sync journal {self.path} is from a newer darkstorage (schema {version})")
        for i in range(version, len(MIGRATIONS)):
            try:
                self.db.executescript(f"BEGIN IMMEDIATE; {MIGRATIONS[i]}; PRAGMA user_version = {i + 1}; COMMIT;")
            except BaseException:
                if self.db.in_transaction:
                    self.db.execute("ROLLBACK")
                raise

    def close(self) -> None:
        self.db.close()

    # -- meta ---------------------------------------------------------------------------------

    def get_meta(self, key: str) -> str | None:
        row = self.db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    def set_meta(self, key: str, value: str) -> None:
        self.db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value))

    @property
    def completed(self) -> bool:
        """A run of this pair has finished before (so this run is not the first-run merge)."""
        return self.get_meta("completed_ns") is not None

    def mark_completed(self) -> None:
        """Note that a run finished (once: a rescan that changed nothing writes nothing)."""
        if not self.completed:
            self.set_meta("completed_ns", str(time.time_ns()))

    # -- entries ------------------------------------------------------------------------------

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """One transaction around the statements run inside (rolled back if one raises)."""
        self.db.execute("BEGIN")
        try:
            yield
        except BaseException:
            self.db.execute("ROLLBACK")
            self._unprinted = None  # prints set to NULL inside were rolled back too
            raise
        self.db.execute("COMMIT")

    def load(self) -> dict[str, Synced]:
        """Every row, keyed by key."""
        new = tuple.__new__  # Synced._make without its length check: the query names every field
        rows = self.db.execute(f"SELECT {', '.join(Synced._fields)} FROM entries")
        return {r[0]: new(Synced, r) for r in rows}

    def load_groups(self, groups: Iterable[str]) -> dict[str, Synced]:
        """The rows of the print groups *groups* (see :func:`sync.model.group_of`), keyed by key."""
        new = tuple.__new__
        q = f"SELECT {', '.join(Synced._fields)} FROM entries WHERE grp IN (SELECT value FROM json_each(?))"
        return {r[0]: new(Synced, r) for r in self.db.execute(q, (json.dumps(list(groups)),))}

    def prints(self) -> dict[str, tuple[bytes | None, bytes | None]]:
        """Every print group holding rows -> its prints ``(fp1, fp2)`` (None while unknown)."""
        return {g: (f1, f2) for g, f1, f2 in self.db.execute("SELECT grp, fp1, fp2 FROM group_prints")}

    def unprint(self, keys: Iterable[str]) -> None:
        """Before rows of *keys* change: set their groups' prints to NULL (see the module
        docstring). Every write of rows does it too; a caller about to write many rows saves
        commits by doing it for all of them inside one :meth:`transaction` first."""
        if self._unprinted is None:
            self._unprinted = {r[0] for r in self.db.execute("SELECT grp FROM group_prints WHERE fp1 IS NULL")}
        groups = {group_of(k) for k in keys} - self._unprinted
        if groups:
            self.db.executemany(
                "INSERT OR REPLACE INTO group_prints (grp, fp1, fp2) VALUES (?, NULL, NULL)", ((g,) for g in groups)
            )
            self._unprinted |= groups

    def refresh_prints(self) -> int:
        """Compute the prints that are NULL from the groups' rows (one transaction); forget
        groups that hold no rows any more. A group with a row that no scan of two local
        folders could match (permission bits that differ between the sides, an ETag) keeps
        NULL prints. Returns how many prints were stored."""
        groups = [r[0] for r in self.db.execute("SELECT grp FROM group_prints WHERE fp1 IS NULL")]
        if not groups:
            return 0
        wanted = json.dumps(groups)
        spoilt = {
            r[0]
            for r in self.db.execute(
                "SELECT DISTINCT grp FROM entries WHERE grp IN (SELECT value FROM json_each(?))"
                " AND (etag1 IS NOT NULL OR etag2 IS NOT NULL OR mode1 != mode2)",
                (wanted,),
            )
        }
        # each row: the group, then side 1's and side 2's print tuples as the scanner makes them
        one = (
            f"rel{{n}}, kind, iif(kind = '{DIR}', 0, size{{n}}), iif(kind = '{DIR}', 0, mtime{{n}}_ns), mode{{n}},"
            f" NULL, NULL, iif(kind = '{DIR}', NULL, target)"
        )
        q = (
            f"SELECT grp, {one.format(n=1)}, {one.format(n=2)}"
            " FROM entries WHERE grp IN (SELECT value FROM json_each(?)) ORDER BY grp"
        )
        found, seen = [], set()
        for g, group in groupby(self.db.execute(q, (wanted,)), itemgetter(0)):
            seen.add(g)
            if g not in spoilt:
                rows = list(group)
                found.append((group_print([r[1:9] for r in rows]), group_print([r[9:17] for r in rows]), g))
        empty = [(g,) for g in groups if g not in seen]
        with self.transaction():
            self.db.executemany("UPDATE group_prints SET fp1 = ?, fp2 = ? WHERE grp = ?", found)
            self.db.executemany("DELETE FROM group_prints WHERE grp = ?", empty)
        if self._unprinted is not None:
            self._unprinted.difference_update(g for _, _, g in found)
            self._unprinted.difference_update(g for (g,) in empty)
        return len(found)

    def count(self) -> int:
        return int(self.db.execute("SELECT count(*) FROM entries").fetchone()[0])

    _PUT = (
        "INSERT OR REPLACE INTO entries (key, kind, hash, target, rel1, size1, mtime1_ns, mode1, etag1,"
        " rel2, size2, mtime2_ns, mode2, etag2, synced_ns, grp) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)"
    )

    @staticmethod
    def _row(key: str, e1: Entry, e2: Entry, digest: str | None, now_ns: int) -> tuple[object, ...]:
        return (key, e1.kind, digest, e1.target, e1.rel, e1.size, e1.mtime_ns, e1.mode, e1.etag,
                e2.rel, e2.size, e2.mtime_ns, e2.mode, e2.etag, now_ns, group_of(key))  # fmt: skip

    def put(self, key: str, e1: Entry, e2: Entry, digest: str | None) -> None:
        """Record *key* as in sync with side states *e1*, *e2* (commits at once outside a
        :meth:`transaction`)."""
        self.unprint((key,))
        self.db.execute(self._PUT, self._row(key, e1, e2, digest, time.time_ns()))

    def put_many(self, rows: Iterable[tuple[str, Entry, Entry, str | None]]) -> None:
        """:meth:`put` for each ``(key, e1, e2, digest)``."""
        now = time.time_ns()
        rows = list(rows)
        self.unprint(k for k, _, _, _ in rows)
        self.db.executemany(self._PUT, (self._row(k, e1, e2, h, now) for k, e1, e2, h in rows))

    def begin_copies(self, copies: Iterable[tuple[str, int, Entry]]) -> None:
        """Note that copies ``(key, dst side, source entry)`` start, in one transaction, with
        this boot's identifier (meta ``pending_boot``)."""
        from pool.durable import boot_id

        with self.transaction():
            self.set_meta("pending_boot", boot_id())
            self.db.executemany(
                "INSERT OR REPLACE INTO pending (key, dst, src_rel, src_size, src_mtime_ns, src_mode)"
                " VALUES (?,?,?,?,?,?)",
                ((key, dst, e.rel, e.size, e.mtime_ns, e.mode) for key, dst, e in copies),
            )

    def commit_copy(self, key: str, e1: Entry, e2: Entry, digest: str | None) -> None:
        """Record the finished copy of *key* (commits at once; its pending row stays until
        :meth:`clear_all_pending`)."""
        self.put(key, e1, e2, digest)

    def pending(self) -> list[tuple[str, int, Entry]]:
        """Copies noted by a run that did not end its copy phase (it was killed): ``(key, dst
        side, source as scanned)``; those it committed have their ``entries`` row too."""
        rows = self.db.execute("SELECT key, dst, src_rel, src_size, src_mtime_ns, src_mode FROM pending")
        return [(k, dst, Entry(rel, "file", size, mtime, mode)) for k, dst, rel, size, mtime, mode in rows]

    def clear_all_pending(self) -> None:
        """Forget every pending copy (their phase is over: each finished, failed or was skipped)."""
        self.db.execute("DELETE FROM pending")

    def remove(self, key: str) -> None:
        self.unprint((key,))
        self.db.execute("DELETE FROM entries WHERE key = ?", (key,))

    def remove_many(self, keys: Iterable[str]) -> None:
        keys = list(keys)
        self.unprint(keys)
        self.db.executemany("DELETE FROM entries WHERE key = ?", ((k,) for k in keys))

    def rows(self) -> Iterator[tuple[str, str, str | None]]:
        """``(key, kind, hash)`` of every row, sorted by key (for status and tests)."""
        yield from self.db.execute("SELECT key, kind, hash FROM entries ORDER BY key")
