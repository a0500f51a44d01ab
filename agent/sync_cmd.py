"""``darkstorage sync`` and ``darkstorage replicate``: sync pairs (two-way or one-way) between
local folders, pool buckets and integrations."""

from __future__ import annotations

import sys
import time
from typing import Any

import click

from pool.config import pool_home
from pool.errors import ExistsError, UsageError
from pool.units import format_size

from .console import console, emit_json, print_line, rich_console
from .params import DURATION, SIZE


class _SyncGroup(click.Group):
    """``sync SRC ...`` runs a sync; ``sync list|status|pause|resume|remove`` manage pairs."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ("-h", "--help"):
            args = ["run", *args]
        return super().parse_args(ctx, args)


@click.group(cls=_SyncGroup)
def sync() -> None:
    """Keep two roots in sync (local folders, pool buckets, integration:NAME/path).

    \b
    Example:
      darkstorage sync ~/Documents --to integration:my-aws-backup/docs/
      darkstorage sync my-bucket/shared/ --with integration:my-sftp/Work/ --bidirectional \\
          --conflict-resolution newest
      darkstorage sync ~/Documents --to integration:my-aws-backup/docs/ --schedule "0 2 * * *"
      darkstorage sync list
    """


def _registry() -> Any:
    from sync.registry import Registry

    return Registry(pool_home())


@sync.command("run")
@click.argument("src")
@click.option("--to", "to", metavar="DST", help="One-way: make DST follow SRC.")
@click.option("--with", "with_", metavar="ROOT", help="Two-way: keep SRC and ROOT in sync.")
@click.option("--bidirectional", is_flag=True, help="Two-way (the default with --with; turns --to two-way).")
@click.option(
    "--conflict-resolution",
    type=click.Choice(["newest", "oldest", "larger", "smaller", "path1", "path2", "keep-both"]),
    default=None,
    help="Who wins when both sides changed a file differently (default newest).",
)
@click.option(
    "--no-conflict-copies", is_flag=True, help="Overwrite the losing version instead of keeping a conflict copy."
)
@click.option("--dry-run", is_flag=True, help="Print the plan (copies, moves, deletes, conflicts); change nothing.")
@click.option("--checksum", is_flag=True, help="Compare XXH3-128 of every file, not only size and mtime.")
@click.option("--max-delete", default=None, metavar="N|P%", help="Abort when a side would lose more (default 50%).")
@click.option("--force", is_flag=True, help="Run even when a safety check would abort.")
@click.option(
    "--exclude", "excludes", multiple=True, metavar="PATTERN", help="gitignore-style pattern to skip (repeatable)."
)
@click.option("--filter-from", "filter_from", multiple=True, type=click.Path(), help="File of gitignore-style rules.")
@click.option(
    "--modify-window", type=DURATION, default=None, help="mtimes closer than this are equal (e.g. 2s for FAT)."
)
@click.option("--transfers", type=int, default=None, help="Parallel transfers (default 4).")
@click.option("--bwlimit", type=SIZE, default=None, help="Bandwidth limit per second, e.g. 10M.")
@click.option(
    "--schedule",
    default=None,
    metavar="CRON",
    help='Register for the agent to run on a cron schedule, e.g. "0 2 * * *".',
)
@click.option("--realtime", is_flag=True, help="Register for the agent to run whenever a side changes.")
@click.option("--name", default=None, help="Name of the pair (default: a stable id of the two roots).")
@click.option("--json", "as_json", is_flag=True)
def sync_run(
    src: str,
    to: str | None,
    with_: str | None,
    bidirectional: bool,
    conflict_resolution: str | None,
    no_conflict_copies: bool,
    dry_run: bool,
    checksum: bool,
    max_delete: str | None,
    force: bool,
    excludes: tuple[str, ...],
    filter_from: tuple[str, ...],
    modify_window: float | None,
    transfers: int | None,
    bwlimit: int | None,
    schedule: str | None,
    realtime: bool,
    name: str | None,
    as_json: bool,
) -> None:
    """Sync SRC with --to DST (one-way) or --with ROOT (two-way).

    Without --schedule or --realtime it runs now with a progress bar and records the pair, so
    the next run of the same command is incremental. The first run of a pair merges both sides
    and never deletes.

    \b
    Example:
      darkstorage sync ~/Documents --to integration:my-aws-backup/docs/
      darkstorage sync my-bucket/shared/ --with integration:my-sftp/Work/ --conflict-resolution newest
      darkstorage sync ./photos --with /mnt/usb/photos --dry-run
    """
    from sync.options import SyncOptions
    from sync.service import new_pair

    if (to is None) == (with_ is None):
        raise UsageError("give exactly one of --to DST (one-way) or --with ROOT (two-way)")
    if schedule is not None and realtime:
        raise UsageError("--schedule and --realtime exclude each other")
    direction = "two-way" if (with_ is not None or bidirectional) else "one-way"
    registry = _registry()
    overrides: dict[str, Any] = {
        "conflict_resolution": conflict_resolution,
        "checksum": checksum or None,
        "max_delete": max_delete,
        "excludes": list(excludes) or None,
        "filter_from": list(filter_from) or None,
        "modify_window_ns": int(modify_window * 1e9) if modify_window is not None else None,
        "transfers": transfers,
        "bwlimit_bytes_per_s": bwlimit,
        "conflict_copies": False if no_conflict_copies else None,
    }
    base = SyncOptions(direction=direction, **{k: v for k, v in overrides.items() if v is not None})
    pair = new_pair(src, str(to or with_), base, name=name, schedule=schedule, realtime=realtime)
    known = registry.find(pair.name)
    if known is not None:
        if (known.path1, known.path2, known.direction) != (pair.path1, pair.path2, pair.direction):
            raise ExistsError(f"a sync pair named {pair.name} joins other roots: choose another --name")
        pair.created_ns, pair.paused = known.created_ns, known.paused
        # options given now replace the saved ones; those not given keep their saved values
        merged = dict(known.options)
        merged.update({k: v for k, v in pair.options.items() if overrides.get(k) is not None})
        pair.options = merged
        if schedule is None and not realtime:
            pair.schedule, pair.realtime = known.schedule, known.realtime
    if schedule is not None or realtime:
        registry.save(pair)
        when = f"on schedule {schedule!r}" if schedule else "on every change"
        if as_json:
            emit_json({"pair": pair.as_dict(), "registered": True})
        else:
            console.print(
                f"sync pair {pair.name} registered: runs {when} while `darkstorage agent start` runs", soft_wrap=True
            )
        return
    if not dry_run:
        registry.save(pair)
    _run_now(registry, pair, dry_run=dry_run, force=force, as_json=as_json)


def _run_now(registry: Any, pair: Any, *, dry_run: bool, force: bool, as_json: bool) -> None:
    from sync.service import run_registered, summary_line

    if as_json or dry_run or not sys.stdout.isatty() or not console.is_terminal:  # a bar shows on terminals only
        outcome = run_registered(registry, pair, dry_run=dry_run, force=force)
    else:
        from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn

        # refreshed by the run's callbacks, not by a thread of its own: a run that holds only
        # its main thread scans the second local folder in a forked child meanwhile
        with Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            TextColumn("{task.fields[files]} files"),
            DownloadColumn(),
            TimeRemainingColumn(),
            console=rich_console(console),
            transient=True,
            auto_refresh=False,
        ) as bar:
            task = bar.add_task(f"sync {pair.name}", total=None, files=0)
            bar.refresh()
            done, shown = [0], [0.0]

            def show(now: bool = False) -> None:
                t = time.monotonic()
                if now or t - shown[0] >= 0.1:
                    shown[0] = t
                    bar.refresh()

            def on_plan(plan: Any) -> None:
                bar.update(task, total=max(plan.copy_bytes, 1))
                show(now=True)

            def progress(files: int, nbytes: int) -> None:
                done[0] += files
                bar.update(task, advance=nbytes, files=done[0])
                show()

            outcome = run_registered(registry, pair, force=force, progress=progress, on_plan=on_plan)
    plan = outcome.plan
    if as_json:
        emit_json(
            {
                "pair": pair.name,
                "dry_run": dry_run,
                "first_run": outcome.first_run,
                "plan": plan.as_json(),
                "result": outcome.result.as_json() if outcome.result else None,
            }
        )
        return
    names = (pair.path1, pair.path2)
    if dry_run:
        for line in plan.lines(names):
            console.print(line, markup=False, emoji=False, soft_wrap=True)
        console.print(f"{summary_line(outcome)} (dry run: nothing changed)", emoji=False)
        return
    for c in plan.conflicts:
        kept = f"; other version kept as {c.copy_rel}" if c.copy_rel else ""
        print_line(f"conflict {c.rel}: {names[c.winner - 1]} won ({c.policy}){kept}")
    for s in plan.skips:
        print_line(f"skipped {s.rel}: {s.reason}", style="yellow")
    r = outcome.result
    size = f" ({format_size(r.copied_bytes)})" if r and r.copied_bytes else ""
    first = " [first run: merged, nothing deleted]" if outcome.first_run else ""
    print_line(f"sync {pair.name}: {summary_line(outcome)}{size}{first}")


@sync.command("list")
@click.option("--json", "as_json", is_flag=True)
def sync_list(as_json: bool) -> None:
    """List sync pairs with their schedule and last result.

    \b
    Example:
      darkstorage sync list --json
    """
    pairs = _registry().list()
    if as_json:
        emit_json([p.as_dict() for p in pairs])
        return
    if not pairs:
        console.print("no sync pairs yet: `darkstorage sync SRC --to DST` makes one")
        return
    from rich.table import Table

    table = Table("pair", "path1", "dir", "path2", "runs", "state", "last result")
    for p in pairs:
        when = p.schedule or ("realtime" if p.realtime else "manual")
        arrow = "<->" if p.direction == "two-way" else "->"
        table.add_row(p.name, p.path1, arrow, p.path2, when, "paused" if p.paused else "active", p.last_result or "-")
    console.print(table)


@sync.command("status")
@click.argument("pair")
@click.option("--json", "as_json", is_flag=True)
def sync_status(pair: str, as_json: bool) -> None:
    """Show PAIR: roots, options, schedule, journal size and the last run.

    \b
    Example:
      darkstorage sync status p1a2b3c4d
    """
    from sync.journal import Journal

    registry = _registry()
    p = registry.get(pair)
    path = registry.journal_path(p.name)
    files, completed = 0, False
    if path.exists():
        j = Journal(path)
        files, completed = j.count(), j.completed
        j.close()
    data = {**p.as_dict(), "journal_entries": files, "first_run_done": completed}
    if as_json:
        emit_json(data)
        return
    for k in ("name", "path1", "path2", "direction", "schedule", "realtime", "paused", "journal_entries",
              "first_run_done", "last_result", "last_message"):  # fmt: skip
        console.print(f"{k:>16}: {data[k]}", markup=False, emoji=False, soft_wrap=True)
    console.print(f"{'options':>16}: {p.options}", markup=False, emoji=False, soft_wrap=True)


def _set_paused(pair: str, paused: bool) -> None:
    p = _registry().set_paused(pair, paused)
    console.print(f"sync pair {p.name} {'paused' if paused else 'resumed'}")


@sync.command("pause")
@click.argument("pair")
def sync_pause(pair: str) -> None:
    """Stop the agent from running PAIR until `sync resume`.

    \b
    Example:
      darkstorage sync pause p1a2b3c4d
    """
    _set_paused(pair, True)


@sync.command("resume")
@click.argument("pair")
def sync_resume(pair: str) -> None:
    """Let the agent run PAIR again.

    \b
    Example:
      darkstorage sync resume p1a2b3c4d
    """
    _set_paused(pair, False)


@sync.command("remove")
@click.argument("pair")
def sync_remove(pair: str) -> None:
    """Forget PAIR and its journal (files on both sides stay as they are).

    \b
    Example:
      darkstorage sync remove p1a2b3c4d
    """
    p = _registry().remove(pair)
    console.print(f"sync pair {p.name} removed ({p.path1} / {p.path2} untouched)")


@click.group()
def replicate() -> None:
    """Replicate a pool bucket to an integration (one-way, realtime or scheduled).

    \b
    Example:
      darkstorage replicate enable my-bucket --to my-aws-backup --mode realtime
      darkstorage replicate disable my-bucket --to my-aws-backup
    """


def _replica_name(bucket: str, integration: str) -> str:
    return f"replicate-{bucket}-to-{integration}"


@replicate.command("enable")
@click.argument("bucket")
@click.option("--to", "to", required=True, metavar="INTEGRATION", help="Integration to copy into (under BUCKET/).")
@click.option("--mode", type=click.Choice(["realtime", "scheduled"]), default="realtime")
@click.option("--schedule", default="0 2 * * *", show_default=True, metavar="CRON", help="With --mode scheduled.")
@click.option("--json", "as_json", is_flag=True)
def replicate_enable(bucket: str, to: str, mode: str, schedule: str, as_json: bool) -> None:
    """Copy every change of BUCKET to integration:TO/BUCKET/ (the agent runs it).

    \b
    Example:
      darkstorage replicate enable my-bucket --to my-aws-backup --mode realtime
      darkstorage replicate enable photos --to b2 --mode scheduled --schedule "0 3 * * *"
    """
    from sync.options import SyncOptions
    from sync.service import new_pair

    if "/" in bucket.strip("/"):
        raise UsageError("replicate takes a bucket name; use `darkstorage sync` for a folder inside it")
    registry = _registry()
    name = _replica_name(bucket.strip("/"), to)
    pair = new_pair(
        bucket.strip("/"),
        f"integration:{to}/{bucket.strip('/')}",
        SyncOptions(direction="one-way"),
        name=name,
        schedule=schedule if mode == "scheduled" else None,
        realtime=mode == "realtime",
    )
    known = registry.find(name)
    if known is not None:
        pair.created_ns, pair.options = known.created_ns, known.options
    registry.save(pair)
    if as_json:
        emit_json({"pair": pair.as_dict()})
    else:
        when = f"on schedule {schedule!r}" if mode == "scheduled" else "on every change"
        console.print(f"replicating {bucket} to {to} {when} (sync pair {name}; `darkstorage agent start` runs it)")


@replicate.command("disable")
@click.argument("bucket")
@click.option("--to", "to", required=True, metavar="INTEGRATION")
def replicate_disable(bucket: str, to: str) -> None:
    """Stop replicating BUCKET to TO (what was copied stays there).

    \b
    Example:
      darkstorage replicate disable my-bucket --to my-aws-backup
    """
    p = _registry().remove(_replica_name(bucket.strip("/"), to))
    console.print(f"replication {p.name} removed")
