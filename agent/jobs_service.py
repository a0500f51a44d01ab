"""The agent's image jobs: one trio task per job sleeping until its next tick, the build in a
worker thread (``trio.to_thread.run_sync``), and a supervisor that follows ``darkstorage jobs``
and ``--schedule`` changes without a restart. A tick missed while the agent was down runs at
start (see :mod:`agent.jobs`)."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import trio

from pool.errors import BusyError, DarkstorageError

from .daemon import TaskSupervisor
from .jobs import Job, JobStore

log = logging.getLogger(__name__)

MAX_SLEEP_S = 60.0  #: longest wait before a job task looks at the wall clock again


def run_one(home: Path, name: str) -> None:
    """Run job *name* once, logging (not raising) its failure: the outcome is in the job table."""
    from .jobs_run import run_job

    try:
        run_job(home, name)
    except BusyError as e:
        log.info("%s", e)
    except DarkstorageError as e:
        log.warning("image job %s: %s", name, e)
    except Exception as e:  # a bug or an OSError: logged and recorded, the agent keeps running
        log.warning("image job %s failed: %s: %s", name, type(e).__name__, e, exc_info=log.isEnabledFor(logging.DEBUG))


class JobService:
    """Runs image job *name* at each tick of its schedule until cancelled."""

    def __init__(self, home: Path, name: str) -> None:
        self.home = home
        self.name = name

    def _load(self) -> Job | None:
        with JobStore(self.home) as store:
            return store.find(self.name)

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while True:
            job = await trio.to_thread.run_sync(self._load)
            if job is None:
                return
            wait_s = job.next_run().timestamp() - time.time()
            if wait_s > 0:
                # a minute at most: trio's clock stops while the machine sleeps, the wall clock does not;
                # re-reading also sees a run-now in between, which moves the next tick
                await trio.sleep(min(wait_s, MAX_SLEEP_S))
                continue
            log.info("image job %s: running (schedule %r)", job.name, job.schedule)
            # abandoned on cancel: `agent stop` need not wait for a long build; the process exit
            # ends it and the staging folder keeps the previous image safe
            try:
                await trio.to_thread.run_sync(run_one, self.home, job.name, abandon_on_cancel=True)
            except trio.Cancelled:
                with JobStore(self.home) as store:
                    store.record_run(
                        job.name, "interrupted", "the agent stopped (or the job changed) mid-run", counts=False
                    )
                raise
            await trio.sleep(1.0)  # never spin if the outcome could not be recorded


class JobSupervisor(TaskSupervisor):
    """Starts a :class:`JobService` per registered job and keeps the set in line with the table."""

    def wanted(self) -> dict[str, Job]:
        with JobStore(self.home) as store:
            return {j.name: j for j in store.list()}

    def signature(self, item: Job) -> tuple[Any, ...]:
        return _signature(item)

    def started(self, name: str, item: Job) -> None:
        log.info("agent: image job %s [%s] next run %s", name, item.schedule, item.next_run().isoformat())

    async def serve(self, item: Job) -> None:
        await JobService(self.home, item.name).run()


def _signature(j: Job) -> tuple[Any, ...]:
    return (j.command, tuple(j.argv), j.schedule)


def due_jobs(home: Path) -> list[str]:
    """Names of the jobs of *home* with a tick since their last run."""
    with JobStore(home) as store:
        return [j.name for j in store.list() if j.due()]
