"""Running registered pairs: resolve their roots, run, record the outcome in the registry.

Used by ``darkstorage sync`` (foreground runs) and by the agent's sync services.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path

from pool.config import pool_home
from pool.errors import DarkstorageError, SyncAbortedError, TransferError, UsageError
from pool.locations import Location, is_local_spec, local_root, resolve_location
from pool.transferlog import TransferLog

from .engine import RunOutcome, run_pair
from .options import SyncOptions
from .plan import Plan
from .registry import Pair, Registry, pair_id
from .sides import LocalRoot

log = logging.getLogger(__name__)


def resolve_root(spec: str, *, destination: bool = False, home: Path | None = None) -> LocalRoot | Location:
    """A sync root: a :class:`sync.sides.LocalRoot` for a local folder, else the Location of
    :func:`pool.locations.resolve_location` (a bucket is the mounted view while the pool is mounted).

    Raises:
        UsageError, NotFoundError: from :func:`pool.locations.resolve_location`.
    """
    text = spec.strip()
    if is_local_spec(text):
        return LocalRoot(local_root(text), text)
    return resolve_location(spec, destination=destination, home=home)


def canonical_spec(
    spec: str, *, destination: bool = False, home: Path | None = None
) -> tuple[str, LocalRoot | Location]:
    """The form a root is registered under (local folders absolute) and the root now.

    Raises:
        UsageError, NotFoundError: from :func:`pool.locations.resolve_location`.
    """
    loc = resolve_root(spec, destination=destination, home=home)
    if loc.kind == "local":
        return loc.root, loc
    return spec.strip(), loc


def locations_of(pair: Pair, home: Path | None = None) -> tuple[LocalRoot | Location, LocalRoot | Location]:
    """Both roots of *pair* resolved now (a bucket is the mounted view while the pool is mounted)."""
    return (
        resolve_root(pair.path1, home=home),
        resolve_root(pair.path2, destination=True, home=home),
    )


def new_pair(
    path1: str,
    path2: str,
    options: SyncOptions,
    *,
    name: str | None = None,
    schedule: str | None = None,
    realtime: bool = False,
    home: Path | None = None,
) -> Pair:
    """A pair for the two roots (not saved). The name defaults to a stable id of the roots.

    Raises:
        UsageError: both roots are the same, one is inside the other, or a bad cron expression.
    """
    p1, loc1 = canonical_spec(path1, home=home)
    p2, loc2 = canonical_spec(path2, destination=True, home=home)
    if loc1.kind == loc2.kind == "local":
        a, b = os.path.realpath(loc1.root), os.path.realpath(loc2.root)
        if a == b or b.startswith(a.rstrip("/") + "/") or a.startswith(b.rstrip("/") + "/"):
            raise UsageError(f"{path1} and {path2} overlap: a sync pair needs two separate folders")
    if schedule is not None:
        validate_cron(schedule)
    return Pair(
        name=name or pair_id(p1, p2, options.direction),
        path1=p1,
        path2=p2,
        direction=options.direction,
        options={k: v for k, v in options.to_json().items() if k not in ("direction", "force")},
        schedule=schedule,
        realtime=realtime,
    )


def validate_cron(expr: str) -> None:
    """Raises UsageError unless *expr* is a cron expression croniter understands."""
    from croniter import croniter

    if not croniter.is_valid(expr):
        raise UsageError(f'not a cron expression: {expr!r} (example: "0 2 * * *" = daily at 02:00)')


def options_of(pair: Pair, **overrides: object) -> SyncOptions:
    raw = dict(pair.options)
    raw["direction"] = pair.direction
    raw.update({k: v for k, v in overrides.items() if v is not None})
    return SyncOptions.from_json(raw)


def summary_line(outcome: RunOutcome) -> str:
    r = outcome.result
    if r is None:
        s = outcome.plan.summary()
        return (
            f"plan: {s['copies']} to copy, {s['moves']} to move, {s['deletes']} to delete,"
            f" {s['conflicts']} conflict(s), {s['skipped']} skipped"
        )
    parts = [f"{r.copied} copied", f"{r.moved} moved", f"{r.deleted} deleted"]
    if r.conflicts:
        parts.append(f"{r.conflicts} conflict(s)")
    if r.changed_during_run:
        parts.append(f"{len(r.changed_during_run)} changed during the run (next run)")
    if r.failures:
        parts.append(f"{len(r.failures)} failed")
    return ", ".join(parts)


def run_registered(
    registry: Registry,
    pair: Pair,
    *,
    home: Path | None = None,
    dry_run: bool = False,
    force: bool = False,
    progress: Callable[[int, int], None] | None = None,
    on_plan: Callable[[Plan], None] | None = None,
) -> RunOutcome:
    """Run *pair* once and record the outcome (not for dry runs).

    Raises:
        SyncAbortedError: a safety check stopped it (recorded as ``aborted``).
        TransferError: some files failed (recorded as ``partial``; the rest is done).
        DarkstorageError: anything else that stopped the run (recorded as ``failed``).
    """
    home = home or pool_home()
    options = options_of(pair, force=force or None)
    tlog: TransferLog | None = None
    try:
        loc1, loc2 = locations_of(pair, home)
        if not dry_run:
            tlog = TransferLog(home)
        outcome = run_pair(
            loc1,
            loc2,
            options,
            name=pair.name,
            journal_path=registry.journal_path(pair.name),
            lock_path=registry.lock_path(pair.name),
            dry_run=dry_run,
            progress=progress,
            on_plan=on_plan,
            transfer_log=tlog,
        )
    except SyncAbortedError as e:
        if not dry_run:
            registry.record_run(pair.name, "aborted", str(e))
        raise
    except DarkstorageError as e:
        if not dry_run:
            registry.record_run(pair.name, "failed", str(e))
        raise
    finally:
        if tlog is not None:
            tlog.close()
    if dry_run:
        return outcome
    assert outcome.result is not None
    line = summary_line(outcome)
    if outcome.result.failures:
        registry.record_run(pair.name, "partial", line)
        rel, err = outcome.result.failures[0]
        raise TransferError(f"sync {pair.name}: {line}; first failure: {err}")
    registry.record_run(pair.name, "ok", line)
    return outcome
