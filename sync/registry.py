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

import fcntl
import json
import os
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import xxhash

from pool.config import pool_home
from pool.errors import BusyError, CatalogError, NotFoundError

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


class Registry:
    """The pair registry of pool home *home* (default :func:`pool.config.pool_home`)."""

    def __init__(self, home: Path | None = None) -> None:
        self.dir = (home or pool_home()) / "sync"
        (self.dir / "pairs").mkdir(parents=True, exist_ok=True)
        try:
            self.db = sqlite3.connect(str(self.dir / "registry.db"), isolation_level=None, timeout=30)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=NORMAL")  # WAL: a crash loses at most the last commit
            version = self.db.execute("PRAGMA user_version").fetchone()[0]
            if version > len(MIGRATIONS):
                raise CatalogError(f"sync registry {self.dir} is from a newer darkstorage")
            for i in range(version, len(MIGRATIONS)):
                self.db.executescript(f"BEGIN IMMEDIATE; {MIGRATIONS[i]}; PRAGMA user_version = {i + 1}; COMMIT;")
        except sqlite3.DatabaseError as e:
            raise CatalogError(f"sync registry {self.dir} is unreadable: {e}") from None

    def close(self) -> None:
        self.db.close()

    def journal_path(self, name: str) -> Path:
        return self.dir / "pairs" / f"{name}.db"

    def lock_path(self, name: str) -> Path:
        return self.dir / "pairs" / f"{name}.lock"

    def _row(self, r: tuple[Any, ...]) -> Pair:
        return Pair(r[0], r[1], r[2], r[3], json.loads(r[4]), r[5], bool(r[6]), bool(r[7]), r[8], r[9], r[10], r[11])

    _COLS = "name, path1, path2, direction, options, schedule, realtime, paused, created_ns, last_run_ns, last_result, last_message"

    def list(self) -> list[Pair]:
        return [self._row(r) for r in self.db.execute(f"SELECT {self._COLS} FROM pairs ORDER BY created_ns")]

    def find(self, name: str) -> Pair | None:
        r = self.db.execute(f"SELECT {self._COLS} FROM pairs WHERE name = ?", (name,)).fetchone()
        return self._row(r) if r else None

    def get(self, name: str) -> Pair:
        """Raises NotFoundError when there is no pair *name*."""
        p = self.find(name)
        if p is None:
            raise NotFoundError(f"no sync pair {name} (see `darkstorage sync list`)")
        return p

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


@contextmanager
def pair_lock(path: Path, name: str) -> Iterator[None]:
    """Hold the lock of pair *name* (``flock`` on *path*) for one run.

    The kernel drops an ``flock`` when its holder dies, so a lock left by a killed run is never
    stale: the file may still name the dead holder, but the next run takes the lock at once.
    The file records ``pid host started_ns`` of the holder for the busy message.

    Raises:
        BusyError: another live process is syncing this pair.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").split()
            who = f" (pid {holder[0]} on {holder[1]})" if len(holder) >= 2 else ""
            raise BusyError(f"sync pair {name} is already running{who}") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()} {os.uname().nodename} {time.time_ns()}\n".encode(), 0)
        try:
            yield
        finally:
            os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
