"""The journal of a sync pair: what both sides looked like at the last successful sync, per path.

One SQLite database per pair (``<pool home>/sync/pairs/<pair>.db``, WAL mode). Every file the
executor finishes is committed on its own, so a run killed at any point leaves a journal that is
true for every path it names.

Schema (``PRAGMA user_version`` holds the number of migrations applied)::

    meta(key TEXT PRIMARY KEY, value TEXT NOT NULL)
        path1, path2     the two roots as the user wrote them (display form)
        fold_case        "1" when keys are case-folded (a side is case-insensitive)
        completed_ns     end of the last run that finished (absent: the first run has not
                         finished, so the next run is again a merge that never deletes)
    entries(
        key        TEXT PRIMARY KEY,  -- NFC path (case-folded if fold_case): see sync.model.key_of
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
        synced_ns  INTEGER NOT NULL   -- when this row was committed, ns since the epoch
    )
    pending(                          -- copies started but not committed (migration 2)
        key          TEXT PRIMARY KEY,
        dst          INTEGER NOT NULL,  -- the side being written (1 or 2)
        src_rel      TEXT NOT NULL,     -- the source as scanned: name, size, mtime, mode
        src_size     INTEGER NOT NULL,
        src_mtime_ns INTEGER NOT NULL,
        src_mode     INTEGER
    )

A ``pending`` row is written before a copy starts and removed with the commit of its ``entries``
row. A run killed between the two leaves it: the next run finds the destination holding a file
of the source's size and mtime (the copy finished) and treats the key as synced then, so a later
edit on either side is a one-sided change, not a conflict (see :meth:`Journal.recovered`).
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from pool.errors import CatalogError

from .model import Entry

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
]


@dataclass(frozen=True, slots=True)
class Synced:
    """One journal row: the path's state on both sides when it was last in sync.

    Attributes:
        key: the matching key (see :func:`sync.model.key_of`).
        kind: ``"file"``, ``"dir"`` or ``"link"``.
        hash: XXH3-128 hex of the content, or None if never hashed.
        side1, side2: the entry on each side (rel, size, mtime_ns, mode, etag).
    """

    key: str
    kind: str
    hash: str | None
    side1: Entry
    side2: Entry

    def side(self, n: int) -> Entry:
        return self.side1 if n == 1 else self.side2


class Journal:
    """The journal database of one pair (``":memory:"`` for a dry run of a new pair).

    Raises:
        CatalogError: the file is not a journal or is newer than this program.
    """

    def __init__(self, path: Path | str) -> None:
        self.path = path
        if isinstance(path, Path):
            path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=NORMAL")
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
        self.set_meta("completed_ns", str(time.time_ns()))

    # -- entries ------------------------------------------------------------------------------

    def load(self) -> dict[str, Synced]:
        """Every row, keyed by key."""
        out: dict[str, Synced] = {}
        for r in self.db.execute(
            "SELECT key, kind, hash, target, rel1, size1, mtime1_ns, mode1, etag1,"
            " rel2, size2, mtime2_ns, mode2, etag2 FROM entries"
        ):
            key, kind, h, target = r[0], r[1], r[2], r[3]
            e1 = Entry(r[4], kind, r[5], r[6], r[7], h, r[8], target)
            e2 = Entry(r[9], kind, r[10], r[11], r[12], h, r[13], target)
            out[key] = Synced(key, kind, h, e1, e2)
        return out

    def count(self) -> int:
        return int(self.db.execute("SELECT count(*) FROM entries").fetchone()[0])

    def put(self, key: str, e1: Entry, e2: Entry, digest: str | None) -> None:
        """Record *key* as in sync with side states *e1*, *e2* (commits at once)."""
        self.db.execute(
            "INSERT OR REPLACE INTO entries (key, kind, hash, target, rel1, size1, mtime1_ns, mode1, etag1,"
            " rel2, size2, mtime2_ns, mode2, etag2, synced_ns) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            (key, e1.kind, digest, e1.target, e1.rel, e1.size, e1.mtime_ns, e1.mode, e1.etag,
             e2.rel, e2.size, e2.mtime_ns, e2.mode, e2.etag, time.time_ns()),
        )  # fmt: skip

    def begin_copy(self, key: str, dst: int, src: Entry) -> None:
        """Note that a copy of *src* onto side *dst* starts (commits at once)."""
        self.db.execute(
            "INSERT OR REPLACE INTO pending (key, dst, src_rel, src_size, src_mtime_ns, src_mode) VALUES (?,?,?,?,?,?)",
            (key, dst, src.rel, src.size, src.mtime_ns, src.mode),
        )

    def commit_copy(self, key: str, e1: Entry, e2: Entry, digest: str | None) -> None:
        """Record the finished copy of *key* and drop its pending row, in one transaction."""
        self.db.execute("BEGIN")
        try:
            self.put(key, e1, e2, digest)
            self.db.execute("DELETE FROM pending WHERE key = ?", (key,))
            self.db.execute("COMMIT")
        except BaseException:
            self.db.execute("ROLLBACK")
            raise

    def pending(self) -> list[tuple[str, int, Entry]]:
        """Copies a killed run started and never committed: ``(key, dst side, source as scanned)``."""
        rows = self.db.execute("SELECT key, dst, src_rel, src_size, src_mtime_ns, src_mode FROM pending")
        return [(k, dst, Entry(rel, "file", size, mtime, mode)) for k, dst, rel, size, mtime, mode in rows]

    def clear_pending(self, key: str) -> None:
        self.db.execute("DELETE FROM pending WHERE key = ?", (key,))

    def remove(self, key: str) -> None:
        self.db.execute("DELETE FROM entries WHERE key = ?", (key,))

    def rows(self) -> Iterator[tuple[str, str, str | None]]:
        """``(key, kind, hash)`` of every row, sorted by key (for status and tests)."""
        yield from self.db.execute("SELECT key, kind, hash FROM entries ORDER BY key")
