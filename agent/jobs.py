"""Image jobs: ``bucket2iso`` / ``bucket2dmg`` command lines the agent runs on a cron schedule.

``<pool home>/sync/jobs.db`` (SQLite, beside the sync pair registry ``registry.db``) holds one
row per job; each job's lock is ``<pool home>/sync/jobs/<name>.lock``.

Schema (``PRAGMA user_version`` = migrations applied)::

    jobs(
        name         TEXT PRIMARY KEY,  -- --name, or the output file's stem
        command      TEXT NOT NULL,     -- "bucket2iso" | "bucket2dmg"
        argv         TEXT NOT NULL,     -- JSON list: the arguments after the command name, paths
                                        --   absolute, without --schedule/--name/--json; never a
                                        --   secret (passwords come from --password-env/-file)
        output       TEXT NOT NULL,     -- the absolute --output
        schedule     TEXT NOT NULL,     -- cron expression (croniter), in local time
        created_ns   INTEGER NOT NULL,
        last_run_ns  INTEGER,           -- end of the last run (any outcome)
        last_result  TEXT,              -- "ok" | "failed" | "interrupted" (agent stopped mid-run: still due)
        last_message TEXT,              -- one line: the files written, or the error
        last_files   TEXT               -- JSON list of the files the last good run installed
    )

A job is *due* when a tick of its schedule fell after its last run (or, never run, after it was
registered): a tick missed while the agent was not running is run as soon as it starts (as
anacron does), once however many ticks were missed.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from pool.errors import UsageError
from pool.named_store import NamedStore, run_lock

MIGRATIONS = [
    """
    CREATE TABLE jobs (
        name TEXT PRIMARY KEY, command TEXT NOT NULL, argv TEXT NOT NULL, output TEXT NOT NULL,
        schedule TEXT NOT NULL, created_ns INTEGER NOT NULL,
        last_run_ns INTEGER, last_result TEXT, last_message TEXT, last_files TEXT
    );
    """,
]

COMMANDS = ("bucket2iso", "bucket2dmg")
_NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,99}$")


def check_cron(expr: str) -> str:
    """*expr* if croniter accepts it (five fields, or six with seconds).

    Raises:
        UsageError: not a cron expression.
    """
    from croniter import croniter

    if not croniter.is_valid(expr):
        raise UsageError(f'--schedule: {expr!r} is not a cron expression (e.g. "0 2 * * *": daily at 02:00)')
    return expr


def check_name(name: str) -> str:
    """*name* if it can name a job (letters, digits, ``._-``; not starting with a dot).

    Raises:
        UsageError: it cannot.
    """
    if not _NAME_RE.match(name):
        raise UsageError(f"job name {name!r}: use letters, digits, '.', '_' and '-' (--name NAME)")
    return name


def next_tick(schedule: str, after_ns: int) -> datetime:
    """The first tick of cron *schedule* strictly after *after_ns* (ns since the epoch), as an
    aware datetime in local time."""
    from croniter import croniter

    base = datetime.fromtimestamp(after_ns / 1e9).astimezone()
    nxt: datetime = croniter(schedule, base).get_next(datetime)
    return nxt


@dataclass
class Job:
    """One registered image job (see the module docstring for the fields)."""

    name: str
    command: str
    argv: list[str]
    output: str
    schedule: str
    created_ns: int = 0
    last_run_ns: int | None = None
    last_result: str | None = None
    last_message: str | None = None
    last_files: list[str] = field(default_factory=list)

    def next_run(self) -> datetime:
        """When the agent runs it next (in the past when a tick was missed: at once)."""
        return next_tick(self.schedule, max(self.created_ns, self.last_run_ns or 0))

    def due(self, now_s: float | None = None) -> bool:
        return self.next_run().timestamp() <= (time.time() if now_s is None else now_s)

    @property
    def incremental(self) -> bool:
        return "--incremental" in self.argv

    def command_line(self) -> list[str]:
        """``[command, *argv]``: what ``darkstorage`` runs for this job."""
        return [self.command, *self.argv]

    def as_dict(self) -> dict[str, Any]:
        d = {k: getattr(self, k) for k in self.__dataclass_fields__}
        d["next_run"] = self.next_run().isoformat(timespec="seconds")
        return d


class JobStore(NamedStore[Job]):
    """The image jobs of pool home *home* (default :func:`pool.config.pool_home`)."""

    DB_FILE = "jobs.db"
    SUBDIR = "jobs"
    TABLE = "jobs"
    COLS = "name, command, argv, output, schedule, created_ns, last_run_ns, last_result, last_message, last_files"
    WHAT = "image job"
    LIST_HINT = "darkstorage jobs list"
    MIGRATIONS = MIGRATIONS

    def _row(self, r: tuple[Any, ...]) -> Job:
        return Job(r[0], r[1], json.loads(r[2]), r[3], r[4], r[5], r[6], r[7], r[8], json.loads(r[9] or "[]"))

    def save(self, job: Job) -> bool:
        """Insert job *job*, or update the job of that name when it writes the same output (its
        run history is kept). Returns True when it was new.

        Raises:
            ExistsError: a job of that name writes another output.
        """
        from pool.errors import ExistsError

        known = self.find(job.name)
        if known is not None and known.output != job.output:
            raise ExistsError(f"image job {job.name} already writes {known.output}: pick another --name")
        if not job.created_ns:
            job.created_ns = known.created_ns if known is not None else time.time_ns()
        self.db.execute(
            "INSERT INTO jobs (name, command, argv, output, schedule, created_ns) VALUES (?,?,?,?,?,?)"
            " ON CONFLICT(name) DO UPDATE SET command=excluded.command, argv=excluded.argv,"
            " schedule=excluded.schedule",
            (job.name, job.command, json.dumps(job.argv), job.output, job.schedule, job.created_ns),
        )
        return known is None

    def record_run(
        self, name: str, result: str, message: str, files: Sequence[str] | None = None, *, counts: bool = True
    ) -> None:
        """Note the end of a run of *name* (``ok``, ``failed`` or ``interrupted``), now.

        Args:
            counts: False for a run cut short by the agent stopping: its time is not recorded,
                so the tick stays due and the next agent start runs it again.
        """
        self.db.execute(
            "UPDATE jobs SET last_run_ns = CASE WHEN ? THEN ? ELSE last_run_ns END, last_result = ?,"
            " last_message = ?, last_files = coalesce(?, last_files) WHERE name = ?",
            (counts, time.time_ns(), result, message[:2000], json.dumps(list(files)) if files is not None else None,
             name),
        )  # fmt: skip

    def remove(self, name: str) -> Job:
        """Forget job *name* (the images it wrote stay)."""
        job = self.get(name)
        self.db.execute("DELETE FROM jobs WHERE name = ?", (name,))
        self.lock_path(name).unlink(missing_ok=True)
        return job


def job_lock(path: Path, name: str) -> AbstractContextManager[None]:
    """Hold the lock of job *name* for one run (see :func:`pool.named_store.run_lock`).

    Raises:
        BusyError: the job is running in another process (the agent, or ``jobs run-now``).
    """
    return run_lock(path, f"image job {name}")
