"""``darkstorage agent``: the background agent that runs registered sync pairs and image jobs.

One trio nursery of services (``async def run(self, *, task_status=...)``, started with
``nursery.start``): a :class:`PairService` per active pair that has a cron schedule (croniter) or
runs in realtime, and a :class:`Supervisor` that re-reads the registry so pairs added, paused or
removed with ``darkstorage sync`` take effect without a restart. Realtime pairs watch local roots
with watchdog (inotify; this includes a pool bucket while the pool is mounted: changes made
through the FUSE mount reach inotify) and debounce bursts of events; other roots are polled.
Each run happens in a worker thread (``trio.to_thread.run_sync``), one at a time per pair.
Image jobs (``bucket2iso``/``bucket2dmg --schedule``) run beside them (:mod:`agent.jobs_service`).
``agent start --once`` runs what is due now (scheduled pairs and image jobs) and exits, for cron or
a systemd timer instead of a resident agent.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import click
import trio

from pool.config import pool_home
from pool.errors import BusyError, DarkstorageError, JobFailedError, NotFoundError
from sync.registry import Pair, Registry
from sync.scanner import is_temp_name

from .console import console, emit_json

log = logging.getLogger(__name__)

DEBOUNCE_S = 1.0  #: quiet time after the last change before a realtime run
POLL_S = float(os.environ.get("DARKSTORAGE_SYNC_POLL_S", "60"))  #: realtime polling of remote roots
RELOAD_S = 5.0  #: how often the supervisor re-reads the registry


def pid_path(home: Path) -> Path:
    return home / "sync" / "agent.pid"


class ChangeWatch:
    """watchdog observers on the local roots of a pair; :attr:`last_change` is the monotonic
    time of the last relevant event (0 = none since the last run)."""

    def __init__(self, paths: list[str]) -> None:
        from watchdog.events import FileSystemEvent, FileSystemEventHandler
        from watchdog.observers import Observer

        self.last_change = 0.0
        self._lock = threading.Lock()
        watch = self

        class Handler(FileSystemEventHandler):
            def on_any_event(self, event: FileSystemEvent) -> None:
                if event.event_type in ("opened", "closed_no_write"):
                    return
                if event.is_directory and event.event_type == "modified":
                    return  # a folder's mtime moves with every entry change, which has its own event
                name = os.path.basename(str(event.src_path))
                if is_temp_name(name) or name.startswith(".dsync-"):
                    return
                log.debug("change: %s %s", event.event_type, event.src_path)
                with watch._lock:
                    watch.last_change = time.monotonic()

        self._handler = Handler()
        self.observer = Observer()
        self.paths: list[str] = []
        for p in paths:
            self.add(p)
        self.observer.start()

    def add(self, path: str) -> None:
        """Watch *path* too (a root created by the first run)."""
        self.observer.schedule(self._handler, path, recursive=True)
        self.paths.append(path)

    def take(self, debounce_s: float) -> bool:
        """True (and reset) when a change happened and nothing changed for *debounce_s*."""
        with self._lock:
            if self.last_change and time.monotonic() - self.last_change >= debounce_s:
                self.last_change = 0.0
                return True
        return False

    def stop(self) -> None:
        self.observer.stop()
        self.observer.join(timeout=5)


class PairService:
    """Runs pair *name* on its schedule or on changes, until cancelled."""

    def __init__(self, home: Path, pair: Pair) -> None:
        self.home = home
        self.pair = pair

    def _run_once(self) -> None:
        from sync.service import run_registered

        registry = Registry(self.home)
        try:
            pair = registry.get(self.pair.name)
            if pair.paused:
                return
            out = run_registered(registry, pair, home=self.home)
            log.info("sync %s: %s", pair.name, out.result.as_json() if out.result else "-")
        except BusyError as e:
            log.info("%s", e)
        except DarkstorageError as e:
            log.warning("sync %s: %s", self.pair.name, e)
        finally:
            registry.close()

    async def _run(self) -> None:
        await trio.to_thread.run_sync(self._run_once)

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        if self.pair.schedule:
            task_status.started()
            await self._scheduled()
        else:
            await self._realtime(task_status)

    async def _scheduled(self) -> None:
        from croniter import croniter

        it = croniter(self.pair.schedule, datetime.now().astimezone())
        while True:
            nxt = it.get_next(datetime)
            await trio.sleep(max(0.0, nxt.timestamp() - time.time()))
            await self._run()

    async def _realtime(self, task_status: Any) -> None:
        from sync.service import locations_of

        loc1, loc2 = await trio.to_thread.run_sync(locations_of, self.pair, self.home)
        local = [loc.root for loc in (loc1, loc2) if loc.kind in ("local", "bucket") and _is_local(loc)]
        remote = len(local) < 2
        task_status.started()
        # watch first (no change is missed), then catch up on what changed while the agent was
        # not running; a root the first run creates is watched from then on
        watch = ChangeWatch([p for p in local if os.path.isdir(p)]) if local else None
        log.info("sync %s: watching %s", self.pair.name, watch.paths if watch else "nothing (polling)")
        try:
            await self._run()
            if watch is not None:
                for p in local:
                    if p not in watch.paths and os.path.isdir(p):
                        watch.add(p)
            last_poll = time.monotonic()
            while True:
                await trio.sleep(0.2)
                due = watch is not None and watch.take(DEBOUNCE_S)
                if remote and time.monotonic() - last_poll >= POLL_S:
                    due = True
                if due:
                    await self._run()
                    last_poll = time.monotonic()
        finally:
            if watch is not None:
                watch.stop()


def _is_local(loc: Any) -> bool:
    from fsspec.implementations.local import LocalFileSystem

    return isinstance(loc.fs, LocalFileSystem)


class TaskSupervisor:
    """Keeps one service task per wanted item (a sync pair, an image job) running: every
    :data:`RELOAD_S` it re-reads what is wanted, cancels the tasks of items removed or changed
    (compared by :meth:`signature`) and starts tasks for new ones. Subclasses say what is
    wanted, what identifies a change, and what a task runs."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self.running: dict[str, tuple[trio.CancelScope, tuple[Any, ...]]] = {}

    def wanted(self) -> dict[str, Any]:
        """Items by name (runs in a worker thread)."""
        raise NotImplementedError

    def signature(self, item: Any) -> tuple[Any, ...]:
        """What makes a running task stale when it changes."""
        raise NotImplementedError

    async def serve(self, item: Any) -> None:
        """The task of one item, until cancelled."""
        raise NotImplementedError

    def started(self, name: str, item: Any) -> None:
        """Called after the task of *name* started (for the log)."""

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            task_status.started()
            while True:
                wanted = await trio.to_thread.run_sync(self.wanted)
                for name in list(self.running):
                    scope, sig = self.running[name]
                    item = wanted.get(name)
                    if item is None or self.signature(item) != sig:
                        scope.cancel()
                        del self.running[name]
                for name, item in wanted.items():
                    if name not in self.running:
                        self.running[name] = (await nursery.start(self._task, item), self.signature(item))
                        self.started(name, item)
                await trio.sleep(RELOAD_S)

    async def _task(self, item: Any, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        with trio.CancelScope() as scope:
            task_status.started(scope)
            await self.serve(item)


class Supervisor(TaskSupervisor):
    """Starts a :class:`PairService` per active scheduled or realtime pair and keeps the set in
    line with the registry."""

    def wanted(self) -> dict[str, Pair]:
        registry = Registry(self.home)
        try:
            return {p.name: p for p in registry.list() if not p.paused and (p.schedule or p.realtime)}
        finally:
            registry.close()

    def signature(self, item: Pair) -> tuple[Any, ...]:
        return _signature(item)

    def started(self, name: str, item: Pair) -> None:
        log.info("agent: running sync pair %s", name)

    async def serve(self, item: Pair) -> None:
        try:
            await PairService(self.home, item).run()
        except DarkstorageError as e:
            log.warning("sync pair %s stopped: %s", item.name, e)


def _signature(p: Pair) -> tuple[Any, ...]:
    return (p.path1, p.path2, p.direction, p.schedule, p.realtime, json.dumps(p.options, sort_keys=True))


async def serve(home: Path) -> None:
    """The agent's main task: the supervisors of sync pairs and image jobs, until SIGTERM or SIGINT."""
    from .jobs_service import JobSupervisor

    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with trio.open_nursery() as nursery:
            await nursery.start(Supervisor(home).run)
            await nursery.start(JobSupervisor(home).run)
            async for _ in signals:
                nursery.cancel_scope.cancel()
                break


def agent_pid(home: Path) -> int | None:
    """The pid of the running agent of *home*, or None."""
    try:
        pid = int(pid_path(home).read_text().split()[0])
        os.kill(pid, 0)
    except (FileNotFoundError, ValueError, IndexError, ProcessLookupError):
        return None
    except PermissionError:
        return pid
    return pid


@click.group()
def agent() -> None:
    """The background agent: runs scheduled and realtime sync pairs, and scheduled image jobs.

    \b
    Example:
      darkstorage agent start
      darkstorage agent status
      darkstorage agent stop
      darkstorage agent start --once
    """


def _pair_due(p: Pair) -> bool:
    from .jobs import next_tick

    base = max(p.created_ns, p.last_run_ns or 0)
    return bool(p.schedule) and not p.paused and next_tick(str(p.schedule), base).timestamp() <= time.time()


def run_due(home: Path) -> dict[str, list[str]]:
    """``agent start --once``: run every scheduled sync pair and image job with a tick since its
    last run (or since it was registered), one after the other, in this process.

    Returns:
        ``{"pairs": [...], "jobs": [...], "failed": [...]}`` by name (failures were logged).
    """
    from .jobs import JobStore
    from .jobs_service import due_jobs, run_one

    registry = Registry(home)
    try:
        pairs = [p for p in registry.list() if _pair_due(p)]
    finally:
        registry.close()
    for p in pairs:
        PairService(home, p)._run_once()
    jobs = due_jobs(home)
    for name in jobs:
        run_one(home, name)
    with JobStore(home) as store:
        failed = [j.name for j in store.list() if j.name in jobs and j.last_result != "ok"]
    return {"pairs": [p.name for p in pairs], "jobs": jobs, "failed": failed}


@agent.command("start")
@click.option("--foreground", is_flag=True, help="Run in this process (for systemd) instead of detaching.")
@click.option("--once", is_flag=True, help="Run the pairs and image jobs that are due now, then exit (cron, timers).")
@click.option("--json", "as_json", is_flag=True, help="With --once: print what ran as JSON.")
def agent_start(foreground: bool, once: bool, as_json: bool) -> None:
    """Start the agent (detached unless --foreground).

    With --once, nothing stays running: the scheduled sync pairs and image jobs with a tick since
    their last run run now, in the foreground, and the command exits (21 if an image job failed).

    \b
    Example:
      darkstorage agent start
      darkstorage agent start --foreground    # what the systemd user unit runs
      darkstorage agent start --once          # from cron or a systemd timer
    """
    home = pool_home()
    if once:
        if not logging.getLogger().handlers or logging.getLogger().level > logging.INFO:
            logging.getLogger().setLevel(logging.INFO)
        with contextlib.redirect_stdout(sys.stderr) if as_json else contextlib.nullcontext():
            ran = run_due(home)  # the builds' own reports go to stderr: stdout is one JSON document
        if as_json:
            emit_json(ran)
        else:
            console.print(
                f"ran {len(ran['pairs'])} sync pair(s) and {len(ran['jobs'])} image job(s)"
                + (f"; failed: {', '.join(ran['failed'])}" if ran["failed"] else "")
            )
        if ran["failed"]:
            raise JobFailedError(f"image job(s) failed: {', '.join(ran['failed'])} (see `darkstorage jobs list`)")
        return
    running = agent_pid(home)
    if running is not None and running != os.getpid():
        raise BusyError(f"the agent is already running (pid {running})")
    pid_path(home).parent.mkdir(parents=True, exist_ok=True)
    if not foreground:
        logf = open(home / "sync" / "agent.log", "ab")  # noqa: SIM115 - handed to the child
        proc = subprocess.Popen(
            [sys.executable, "-m", "agent", *(["-vv"] if log.isEnabledFor(logging.DEBUG) else []), "agent", "start", "--foreground"],
            stdin=subprocess.DEVNULL, stdout=logf, stderr=logf, start_new_session=True,
        )  # fmt: skip
        deadline = time.monotonic() + 15
        while agent_pid(home) != proc.pid:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise DarkstorageError(f"the agent did not start (see {home / 'sync' / 'agent.log'})")
            time.sleep(0.05)
        console.print(f"agent started (pid {proc.pid}); log: {home / 'sync' / 'agent.log'}", soft_wrap=True)
        return
    if not logging.getLogger().handlers or logging.getLogger().level > logging.INFO:
        logging.getLogger().setLevel(logging.INFO)
    pid_path(home).write_text(f"{os.getpid()}\n")
    try:
        trio.run(serve, home)
    finally:
        with contextlib.suppress(FileNotFoundError):
            if agent_pid(home) == os.getpid():
                pid_path(home).unlink()
    if threading.active_count() > 1:
        # an image build abandoned at stop may still run in a worker thread (its compressor pool
        # would hold the exit, and the job's lock with it): end now, its staging folder keeps the
        # previous image safe. Sync runs are never abandoned: trio.run waited for them.
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


@agent.command("stop")
def agent_stop() -> None:
    """Stop the agent (a run in progress finishes its current file; the journal is consistent).

    \b
    Example:
      darkstorage agent stop
    """
    home = pool_home()
    pid = agent_pid(home)
    if pid is None:
        raise NotFoundError("the agent is not running")
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 60
    while agent_pid(home) == pid and time.monotonic() < deadline:
        time.sleep(0.05)
    console.print(f"agent stopped (pid {pid})")


@agent.command("status")
@click.option("--json", "as_json", is_flag=True)
def agent_status(as_json: bool) -> None:
    """Whether the agent runs, and the pairs it runs with their last result.

    \b
    Example:
      darkstorage agent status --json
    """
    from .jobs import JobStore

    home = pool_home()
    pid = agent_pid(home)
    registry = Registry(home)
    pairs = [p for p in registry.list() if p.schedule or p.realtime]
    registry.close()
    with JobStore(home) as store:
        jobs = store.list()
    if as_json:
        emit_json(
            {
                "running": pid is not None,
                "pid": pid,
                "pairs": [p.as_dict() for p in pairs],
                "jobs": [j.as_dict() for j in jobs],
            }
        )
        return
    console.print(f"agent: {f'running (pid {pid})' if pid else 'not running'}")
    for p in pairs:
        when = p.schedule or "realtime"
        state = "paused" if p.paused else (p.last_result or "not run yet")
        console.print(f"  {p.name}: {p.path1} -> {p.path2} [{when}] {state}", markup=False, soft_wrap=True)
    for j in jobs:
        state = j.last_result or "not run yet"
        console.print(f"  image job {j.name}: {j.output} [{j.schedule}] {state}", markup=False, soft_wrap=True)
