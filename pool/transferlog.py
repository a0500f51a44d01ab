"""The transfer log: one SQLite database (``<pool home>/transfers.db``, WAL mode) recording every
file transfer, the state needed to resume interrupted large transfers, and circuit-breaker
states.

Its version is ``PRAGMA user_version``; :data:`MIGRATIONS` holds numbered, append-only
migrations applied in order (as :mod:`pool.schema` does for the catalog). Never edit a released
migration: add a new one.

Tables (migration 1)
--------------------
``transfers`` -- one row per file transfer (``copy_file`` call).
    ``id``              row id (increasing).
    ``source``          what was read: the source location's display text plus the file's
                        relative path (secrets masked).
    ``destination``     what was written, same form.
    ``bytes``           bytes of the file (0 until known).
    ``resumed_bytes``   bytes not transferred again because an earlier attempt had already
                        moved them (multipart parts kept, partial download kept).
    ``parts_sent``      multipart parts uploaded by this transfer (0 for single-stream copies).
    ``duration_ns``     from start to finish, nanoseconds (NULL while running).
    ``throughput_bytes_per_s``  ``bytes / duration`` (NULL while running or when failed).
    ``attempts``        attempts made (1 = no retry).
    ``status``          ``running``, ``ok`` or ``failed``.
    ``error``           the last error's one-line message (NULL when ok).
    ``xxh3_128``        hex XXH3-128 of the bytes read from the source (NULL unless ok).
    ``started_ns``, ``finished_ns``  wall-clock ns since the epoch (finished NULL while running).

``multipart_uploads`` -- S3 multipart uploads in progress, kept so an interrupted upload
    continues where it stopped. ``destination`` (primary key: the full destination path),
    ``source_id`` (the source file's identity: ``path|size|mtime_ns``; a changed source
    starts over), ``upload_id`` (the store's UploadId), ``part_size_bytes``, ``created_ns``.

``multipart_parts`` -- completed parts of those uploads: ``upload_id``, ``part_number``
    (1-based), ``etag`` (as the store returned it), ``size_bytes``, ``md5`` (hex of the part,
    for the store's multipart ETag check). Primary key ``(upload_id, part_number)``.

``breakers`` -- circuit breaker per integration: ``integration`` (primary key), ``state``
    (``closed``, ``open`` or ``half-open``), ``failures`` (consecutive failed attempts),
    ``opened_ns`` (when it last opened, NULL if never), ``updated_ns``.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .config import pool_home
from .errors import CatalogError

log = logging.getLogger(__name__)

DB_NAME = "transfers.db"

MIGRATIONS: list[str] = [
    """
    CREATE TABLE transfers (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        source TEXT NOT NULL,
        destination TEXT NOT NULL,
        bytes INTEGER NOT NULL DEFAULT 0,
        resumed_bytes INTEGER NOT NULL DEFAULT 0,
        parts_sent INTEGER NOT NULL DEFAULT 0,
        duration_ns INTEGER,
        throughput_bytes_per_s REAL,
        attempts INTEGER NOT NULL DEFAULT 0,
        status TEXT NOT NULL CHECK (status IN ('running', 'ok', 'failed')),
        error TEXT,
        xxh3_128 TEXT,
        started_ns INTEGER NOT NULL,
        finished_ns INTEGER
    );
    CREATE INDEX transfers_status ON transfers (status, id);
    CREATE TABLE multipart_uploads (
        destination TEXT PRIMARY KEY,
        source_id TEXT NOT NULL,
        upload_id TEXT NOT NULL,
        part_size_bytes INTEGER NOT NULL,
        created_ns INTEGER NOT NULL
    );
    CREATE TABLE multipart_parts (
        upload_id TEXT NOT NULL,
        part_number INTEGER NOT NULL,
        etag TEXT NOT NULL,
        size_bytes INTEGER NOT NULL,
        md5 TEXT NOT NULL,
        PRIMARY KEY (upload_id, part_number)
    );
    CREATE TABLE breakers (
        integration TEXT PRIMARY KEY,
        state TEXT NOT NULL CHECK (state IN ('closed', 'open', 'half-open')),
        failures INTEGER NOT NULL DEFAULT 0,
        opened_ns INTEGER,
        updated_ns INTEGER NOT NULL
    );
    """,
]


@dataclass
class TransferRecord:
    """One row of ``transfers`` (see the module docstring for units and meanings)."""

    id: int
    source: str
    destination: str
    bytes: int = 0
    resumed_bytes: int = 0
    parts_sent: int = 0
    duration_ns: int | None = None
    throughput_bytes_per_s: float | None = None
    attempts: int = 0
    status: str = "running"
    error: str | None = None
    xxh3_128: str | None = None
    started_ns: int = 0
    finished_ns: int | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


_COLS = (
    "id, source, destination, bytes, resumed_bytes, parts_sent, duration_ns, throughput_bytes_per_s,"
    " attempts, status, error, xxh3_128, started_ns, finished_ns"
)


@dataclass
class Part:
    """A completed multipart part: ``number`` (1-based), ``etag``, ``size_bytes``, ``md5`` hex."""

    number: int
    etag: str
    size_bytes: int
    md5: str


def migrate(conn: sqlite3.Connection) -> int:
    """Apply the migrations *conn* lacks, each in its own transaction. Returns the version.

    Raises:
        CatalogError: the database is newer than this program.
    """
    (version,) = conn.execute("PRAGMA user_version").fetchone()
    if version > len(MIGRATIONS):
        raise CatalogError(f"transfer log schema {version} is newer than this darkstorage ({len(MIGRATIONS)})")
    for number in range(version + 1, len(MIGRATIONS) + 1):
        conn.execute("BEGIN IMMEDIATE")
        try:
            for stmt in (s.strip() for s in MIGRATIONS[number - 1].split(";")):
                if stmt:
                    conn.execute(stmt)
            conn.execute(f"PRAGMA user_version = {number}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
    return len(MIGRATIONS)


class TransferLog:
    """The transfer log of the pool at *home* (default :func:`~pool.config.pool_home`).

    Thread-safe: one connection guarded by a lock (statements are short).

    Raises:
        CatalogError: the file is not a transfer log or is newer than this program.
    """

    def __init__(self, home: Path | None = None) -> None:
        self.path = (home or pool_home()) / DB_NAME
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        try:
            self.db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=30)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=NORMAL")
            migrate(self.db)
        except sqlite3.DatabaseError as e:
            raise CatalogError(f"transfer log {self.path}: {e}") from None

    def close(self) -> None:
        with self._lock:
            self.db.close()

    def _exec(self, sql: str, args: tuple[Any, ...] = ()) -> sqlite3.Cursor:
        with self._lock:
            return self.db.execute(sql, args)

    # -- transfers ----------------------------------------------------------------------------------

    def start(self, source: str, destination: str) -> TransferRecord:
        """A new ``running`` row."""
        t = time.time_ns()
        cur = self._exec(
            "INSERT INTO transfers (source, destination, status, started_ns) VALUES (?, ?, 'running', ?)",
            (source, destination, t),
        )
        assert cur.lastrowid is not None
        return TransferRecord(cur.lastrowid, source, destination, started_ns=t)

    def finish(self, rec: TransferRecord) -> TransferRecord:
        """Stamp *rec* finished now (duration, throughput when ok) and save it."""
        rec.finished_ns = time.time_ns()
        rec.duration_ns = rec.finished_ns - rec.started_ns
        if rec.status == "ok" and rec.duration_ns > 0:
            rec.throughput_bytes_per_s = rec.bytes / (rec.duration_ns / 1e9)
        self._exec(
            "UPDATE transfers SET bytes=?, resumed_bytes=?, parts_sent=?, duration_ns=?, throughput_bytes_per_s=?,"
            " attempts=?, status=?, error=?, xxh3_128=?, finished_ns=? WHERE id=?",
            (
                rec.bytes,
                rec.resumed_bytes,
                rec.parts_sent,
                rec.duration_ns,
                rec.throughput_bytes_per_s,
                rec.attempts,
                rec.status,
                rec.error,
                rec.xxh3_128,
                rec.finished_ns,
                rec.id,
            ),
        )
        return rec

    def add_finished(self, records: list[TransferRecord]) -> None:
        """Insert transfers that have finished already (their ``id`` is not used), in one
        transaction: for callers that copy many small files and record them in groups."""
        rows = [
            (r.source, r.destination, r.bytes, r.resumed_bytes, r.parts_sent, r.duration_ns, r.throughput_bytes_per_s,
             r.attempts, r.status, r.error, r.xxh3_128, r.started_ns, r.finished_ns)
            for r in records
        ]  # fmt: skip
        with self._lock:
            self.db.execute("BEGIN")
            try:
                self.db.executemany(
                    "INSERT INTO transfers (source, destination, bytes, resumed_bytes, parts_sent, duration_ns,"
                    " throughput_bytes_per_s, attempts, status, error, xxh3_128, started_ns, finished_ns)"
                    " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
                    rows,
                )
                self.db.execute("COMMIT")
            except BaseException:
                self.db.execute("ROLLBACK")
                raise

    def recent(self, limit: int = 20, *, failed_only: bool = False) -> list[TransferRecord]:
        """The last *limit* rows, newest first (only ``failed`` ones with *failed_only*)."""
        where = "WHERE status = 'failed'" if failed_only else ""
        rows = self._exec(f"SELECT {_COLS} FROM transfers {where} ORDER BY id DESC LIMIT ?", (limit,)).fetchall()
        return [TransferRecord(*r) for r in rows]

    def get(self, transfer_id: int) -> TransferRecord | None:
        row = self._exec(f"SELECT {_COLS} FROM transfers WHERE id = ?", (transfer_id,)).fetchone()
        return TransferRecord(*row) if row else None

    # -- multipart resume state ---------------------------------------------------------------------

    def multipart(self, destination: str) -> tuple[str, str, int] | None:
        """``(source_id, upload_id, part_size_bytes)`` of a kept upload to *destination*."""
        row = self._exec(
            "SELECT source_id, upload_id, part_size_bytes FROM multipart_uploads WHERE destination = ?", (destination,)
        ).fetchone()
        return (row[0], row[1], row[2]) if row else None

    def multipart_begin(self, destination: str, source_id: str, upload_id: str, part_size_bytes: int) -> None:
        self._exec(
            "INSERT OR REPLACE INTO multipart_uploads (destination, source_id, upload_id, part_size_bytes,"
            " created_ns) VALUES (?, ?, ?, ?, ?)",
            (destination, source_id, upload_id, part_size_bytes, time.time_ns()),
        )

    def multipart_parts(self, upload_id: str) -> dict[int, Part]:
        rows = self._exec(
            "SELECT part_number, etag, size_bytes, md5 FROM multipart_parts WHERE upload_id = ?", (upload_id,)
        ).fetchall()
        return {r[0]: Part(*r) for r in rows}

    def multipart_part_done(self, upload_id: str, part: Part) -> None:
        self._exec(
            "INSERT OR REPLACE INTO multipart_parts (upload_id, part_number, etag, size_bytes, md5)"
            " VALUES (?, ?, ?, ?, ?)",
            (upload_id, part.number, part.etag, part.size_bytes, part.md5),
        )

    def multipart_end(self, destination: str) -> None:
        """Forget the upload to *destination* and its parts (completed or aborted)."""
        with self._lock, self.db:
            row = self.db.execute(
                "SELECT upload_id FROM multipart_uploads WHERE destination = ?", (destination,)
            ).fetchone()
            if row:
                self.db.execute("DELETE FROM multipart_parts WHERE upload_id = ?", (row[0],))
            self.db.execute("DELETE FROM multipart_uploads WHERE destination = ?", (destination,))

    # -- circuit breakers ---------------------------------------------------------------------------

    def save_breaker(self, integration: str, state: str, failures: int, opened_ns: int | None) -> None:
        self._exec(
            "INSERT OR REPLACE INTO breakers (integration, state, failures, opened_ns, updated_ns)"
            " VALUES (?, ?, ?, ?, ?)",
            (integration, state, failures, opened_ns, time.time_ns()),
        )

    def breakers(self) -> list[dict[str, Any]]:
        """Every recorded breaker: ``integration, state, failures, opened_ns, updated_ns``."""
        rows = self._exec(
            "SELECT integration, state, failures, opened_ns, updated_ns FROM breakers ORDER BY integration"
        ).fetchall()
        keys = ("integration", "state", "failures", "opened_ns", "updated_ns")
        return [dict(zip(keys, r, strict=True)) for r in rows]
