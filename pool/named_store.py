"""Small SQLite tables of named records in the pool home, and the per-name run lock.

The sync pair registry (:class:`sync.registry.Registry`) and the image job store
(:class:`agent.jobs.JobStore`) are both one table keyed by ``name`` in a database under
``<pool home>/sync/``, migrated by ``PRAGMA user_version``, with a folder beside it for each
record's lock (and journal); :class:`NamedStore` is what they share, :func:`run_lock` the lock.
"""

from __future__ import annotations

import fcntl
import os
import sqlite3
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Generic, TypeVar

from pool.config import pool_home
from pool.errors import BusyError, CatalogError, NotFoundError

T = TypeVar("T")


class NamedStore(Generic[T]):
    """``<pool home>/sync/<DB_FILE>``: table ``TABLE`` of records keyed by ``name``.

    Subclasses set ``DB_FILE``, ``SUBDIR`` (the folder beside the database, made on open),
    ``TABLE``, ``COLS`` (the columns :meth:`_row` reads, ``name`` first), ``ORDER`` (of
    :meth:`list`), ``WHAT`` (for messages: "sync pair"), ``LIST_HINT`` (the command listing
    them) and ``MIGRATIONS`` (SQL scripts; the database's ``user_version`` counts those applied).

    Raises (on open):
        CatalogError: the database is unreadable, or from a newer darkstorage.
    """

    DB_FILE = ""
    SUBDIR = ""
    TABLE = ""
    COLS = ""
    ORDER = "name"
    WHAT = ""
    LIST_HINT = ""
    MIGRATIONS: Sequence[str] = ()

    def __init__(self, home: Path | None = None) -> None:
        self.dir = (home or pool_home()) / "sync"
        (self.dir / self.SUBDIR).mkdir(parents=True, exist_ok=True)
        path = self.dir / self.DB_FILE
        try:
            self.db = sqlite3.connect(str(path), isolation_level=None, timeout=30)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=NORMAL")  # WAL: a crash loses at most the last commit
            version = self.db.execute("PRAGMA user_version").fetchone()[0]
            if version > len(self.MIGRATIONS):
                raise CatalogError(f"{self.WHAT} registry {path} is from a newer darkstorage")
            for i in range(version, len(self.MIGRATIONS)):
                self.db.executescript(f"BEGIN IMMEDIATE; {self.MIGRATIONS[i]}; PRAGMA user_version = {i + 1}; COMMIT;")
        except sqlite3.DatabaseError as e:
            raise CatalogError(f"{self.WHAT} registry {path} is unreadable: {e}") from None

    def close(self) -> None:
        self.db.close()

    def __enter__(self: Any) -> Any:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _row(self, r: tuple[Any, ...]) -> T:
        raise NotImplementedError

    def list(self) -> list[T]:
        return [self._row(r) for r in self.db.execute(f"SELECT {self.COLS} FROM {self.TABLE} ORDER BY {self.ORDER}")]

    def find(self, name: str) -> T | None:
        r = self.db.execute(f"SELECT {self.COLS} FROM {self.TABLE} WHERE name = ?", (name,)).fetchone()
        return self._row(r) if r else None

    def get(self, name: str) -> T:
        """Raises NotFoundError when there is no record *name*."""
        found = self.find(name)
        if found is None:
            raise NotFoundError(f"no {self.WHAT} {name} (see `{self.LIST_HINT}`)")
        return found

    def lock_path(self, name: str) -> Path:
        return self.dir / self.SUBDIR / f"{name}.lock"


@contextmanager
def run_lock(path: Path, what: str) -> Iterator[None]:
    """Hold the run lock *path* (``flock``) of *what* ("sync pair NAME") while the block runs.

    The kernel drops an ``flock`` when its holder dies, so a lock left by a killed run is never
    stale: the file may still name the dead holder, but the next run takes the lock at once.
    The file records ``pid host started_ns`` of the holder for the busy message.

    Raises:
        BusyError: another live process holds it.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").split()
            who = f" (pid {holder[0]} on {holder[1]})" if len(holder) >= 2 else ""
            raise BusyError(f"{what} is already running{who}") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()} {os.uname().nodename} {time.time_ns()}\n".encode(), 0)
        try:
            yield
        finally:
            os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
