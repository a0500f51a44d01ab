"""The registry of sync pairs in the pool home, and the per-pair lock.

``<pool home>/sync/registry.db`` (SQLite) holds one row per pair; each pair's journal is
``<pool home>/sync/pairs/<name>.db`` and its lock ``<pool home>/sync/pairs/<name>.lock``.

Schema (``PRAGMA user_version`` = migrations applied)::

    pairs(
        name         TEXT PRIMARY KEY,  -- short stable id (xxh3 of the two roots) or --name
        path1        TEXT NOT NULL,     -- first root as given (local folders made absolute)
        path2        TEXT NOT NULL,     -- second root
        direction    TEXT NOT NULL,     -- "two-way" | "one-way" (path1 -> path2)
        options      TEXT NOT NULL,     -- JSON of sync.options.SyncOptions fields
        schedule     TEXT,              -- cron expression (croniter), NULL = not scheduled
        realtime     INTEGER NOT NULL,  -- 1: run on changes (watchers / polling)
        paused       INTEGER NOT NULL,  -- 1: the agent skips this pair
        created_ns   INTEGER NOT NULL,
        last_run_ns  INTEGER,           -- end of the last run (any outcome)
        last_result  TEXT,              -- "ok" | "aborted" | "failed" | "partial"
        last_message TEXT               -- one line: counts or the reason
    )
"""

from __future__ import annotations

import json
import os
import time
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import xxhash

from pool.named_store import NamedStore, run_lock

MIGRATIONS = [
    """
    CREATE TABLE pairs (
        name TEXT PRIMARY KEY, path1 TEXT NOT NULL, path2 TEXT NOT NULL, direction TEXT NOT NULL,
        options TEXT NOT NULL, schedule TEXT, realtime INTEGER NOT NULL DEFAULT 0,
        paused INTEGER NOT NULL DEFAULT 0, created_ns INTEGER NOT NULL,
        last_run_ns INTEGER, last_result TEXT, last_message TEXT
    );
    """,
]


def pair_id(path1: str, path2: str, direction: str) -> str:
    """A short stable pair name: the same roots give the same pair (so reruns are incremental)."""
    return "p" + xxhash.xxh3_64_hexdigest(f"{direction}\0{path1}\0{path2}".encode())[:8]


@dataclass
class Pair:
    """One registered sync pair (see the module docstring for the fields)."""

    name: str
    path1: str
    path2: str
    direction: str = "two-way"
    options: dict[str, Any] = field(default_factory=dict)
    schedule: str | None = None
    realtime: bool = False
    paused: bool = False
    created_ns: int = 0
    last_run_ns: int | None = None
    last_result: str | None = None
    last_message: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


class Registry(NamedStore[Pair]):
    """The pair registry of pool home *home* (default :func:`pool.config.pool_home`)."""

    DB_FILE = "registry.db"
    SUBDIR = "pairs"
    TABLE = "pairs"
    COLS = "name, path1, path2, direction, options, schedule, realtime, paused, created_ns, last_run_ns, last_result, last_message"
    ORDER = "created_ns"
    WHAT = "sync pair"
    LIST_HINT = "darkstorage sync list"
    MIGRATIONS = MIGRATIONS

    def journal_path(self, name: str) -> Path:
        return self.dir / "pairs" / f"{name}.db"

    def _row(self, r: tuple[Any, ...]) -> Pair:
        return Pair(r[0], r[1], r[2], r[3], json.loads(r[4]), r[5], bool(r[6]), bool(r[7]), r[8], r[9], r[10], r[11])

    def save(self, p: Pair) -> None:
        """Insert or update pair *p* (its run outcome columns are kept when None)."""
        if not p.created_ns:
            p.created_ns = time.time_ns()
        known = self.find(p.name)
        mine = ("path1", "path2", "direction", "options", "schedule", "realtime", "paused")
        if known is not None and all(getattr(known, k) == getattr(p, k) for k in mine):
            return  # the same pair run again: nothing to write
        self.db.execute(
            "INSERT INTO pairs (name, path1, path2, direction, options, schedule, realtime, paused, created_ns)"
            " VALUES (?,?,?,?,?,?,?,?,?) ON CONFLICT(name) DO UPDATE SET path1=excluded.path1,"
            " path2=excluded.path2, direction=excluded.direction, options=excluded.options,"
            " schedule=excluded.schedule, realtime=excluded.realtime, paused=excluded.paused",
            (p.name, p.path1, p.path2, p.direction, json.dumps(p.options, sort_keys=True), p.schedule,
             int(p.realtime), int(p.paused), p.created_ns),
        )  # fmt: skip

    def set_paused(self, name: str, paused: bool) -> Pair:
        p = self.get(name)
        self.db.execute("UPDATE pairs SET paused = ? WHERE name = ?", (int(paused), name))
        p.paused = paused
        return p

    def record_run(self, name: str, result: str, message: str) -> None:
        self.db.execute(
            "UPDATE pairs SET last_run_ns = ?, last_result = ?, last_message = ? WHERE name = ?",
            (time.time_ns(), result, message, name),
        )

    def remove(self, name: str) -> Pair:
        """Forget pair *name* and its journal (the files on both sides are not touched)."""
        p = self.get(name)
        self.db.execute("DELETE FROM pairs WHERE name = ?", (name,))
        for suffix in ("", "-wal", "-shm"):
            try:
                os.unlink(str(self.journal_path(name)) + suffix)
            except FileNotFoundError:
                pass
        return p


def pair_lock(path: Path, name: str) -> AbstractContextManager[None]:
    """Hold the lock of pair *name* for one run (see :func:`pool.named_store.run_lock`).

    Raises:
        BusyError: another live process is syncing this pair.
    """
    return run_lock(path, f"sync pair {name}")
