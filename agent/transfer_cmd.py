"""``darkstorage push``, ``pull`` and ``transfers``: copying between local folders, pool buckets and
integrations, and the transfer log."""

from __future__ import annotations

import time
from typing import Any

import click

from pool.config import pool_home
from pool.errors import TransferError, UsageError
from pool.units import format_size

from .console import console, emit_json, rich_console
from .params import SIZE


def _copy(
    src_spec: str,
    dst_spec: str,
    transfers: int,
    bwlimit: int | None,
    retries: int,
    checksum: bool,
    dry_run: bool,
    as_json: bool,
) -> None:
    from pool.locations import resolve_location
    from pool.notify import NotifyConfig
    from pool.transferlog import TransferLog
    from pool.transfers import TransferOptions, copy_tree_result, plan_tree

    if transfers < 1:
        raise UsageError("--transfers must be at least 1")
    home = pool_home()
    src = resolve_location(src_spec, home=home)
    dst = resolve_location(dst_spec, destination=True, home=home)
    plan = plan_tree(src, dst)
    total = sum(size for _, _, size in plan)
    if dry_run:
        if as_json:
            emit_json(
                {
                    "dry_run": True,
                    "files": [{"source": s, "destination": d, "bytes": n} for s, d, n in plan],
                    "bytes": total,
                }
            )
        else:
            for s, d, n in plan:
                console.print(f"would copy {s or src.display} -> {dst.display.rstrip('/')}/{d} ({format_size(n)})")
            console.print(f"{len(plan)} file(s), {format_size(total)} (dry run: nothing copied)")
        return
    options = TransferOptions(
        transfers=transfers,
        bwlimit_bytes_per_s=bwlimit,
        retries=retries,
        checksum=checksum,
        notify=NotifyConfig.load(home),
    )
    tlog = TransferLog(home)
    t0 = time.monotonic()
    try:
        if as_json or not plan:
            result = copy_tree_result(src, dst, options=options, log=tlog, plan=plan)
        else:
            from rich.progress import (
                BarColumn,
                DownloadColumn,
                Progress,
                TextColumn,
                TimeRemainingColumn,
                TransferSpeedColumn,
            )

            with Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                DownloadColumn(),
                TransferSpeedColumn(),
                TimeRemainingColumn(),
                console=rich_console(console),
                transient=True,
            ) as bar:
                task = bar.add_task(f"{len(plan)} file(s)", total=total)
                result = copy_tree_result(
                    src, dst, options=options, log=tlog, plan=plan, progress=lambda n: bar.advance(task, n)
                )
    finally:
        tlog.close()
    elapsed = time.monotonic() - t0
    if as_json:
        emit_json(
            {
                "copied": [r.to_json() for r in sorted(result.records, key=lambda r: r.id)],
                "failed": [{"path": p, "error": e} for p, e in result.failures],
                "bytes": result.bytes,
                "duration_s": round(elapsed, 3),
            }
        )
    else:
        rate = f" ({format_size(int(result.bytes / elapsed))}/s)" if elapsed > 0 and result.bytes else ""
        console.print(f"copied {len(result.records)} file(s), {format_size(result.bytes)} in {elapsed:.1f}s{rate}")
        for p, e in result.failures:
            console.print(f"[red]failed[/] {p}: {e}", soft_wrap=True)
    if result.failures:
        raise TransferError(
            f"{len(result.failures)} file(s) failed after retries (see `darkstorage transfers --failed`)"
        )


def _copy_options(f: Any) -> Any:
    for opt in reversed(
        [
            click.option(
                "--to",
                "dst",
                required=True,
                metavar="DST",
                help="Destination folder (bucket path, local folder or integration path).",
            ),
            click.option("--transfers", default=4, show_default=True, help="Files copied in parallel."),
            click.option(
                "--bwlimit",
                type=SIZE,
                default=None,
                metavar="SIZE",
                help="Bandwidth limit per integration, bytes per second (e.g. 20M).",
            ),
            click.option("--retries", default=5, show_default=True, help="Retries of transient errors per file."),
            click.option(
                "--checksum/--no-checksum",
                default=True,
                show_default=True,
                help="Read each copy back and compare its XXH3-128 with the source's.",
            ),
            click.option("--dry-run", is_flag=True, help="List what would be copied; copy nothing."),
            click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text."),
        ]
    ):
        f = opt(f)
    return f


@click.command()
@click.argument("src")
@_copy_options
def push(
    src: str, dst: str, transfers: int, bwlimit: int | None, retries: int, checksum: bool, dry_run: bool, as_json: bool
) -> None:
    """Copy SRC (a file or, recursively, a folder) into the folder DST, keeping mtimes and modes.

    SRC and DST are pool bucket paths (my-bucket/dir/), local folders (./x, /abs, ~/x) or
    integration paths (integration:NAME/path; after --to, NAME/path also works). Exits 16 when
    some files failed after their retries.

    \b
    Example:
      darkstorage push my-bucket/critical/ --to my-aws-backup/critical-backup/ --transfers 8 --bwlimit 20M
      darkstorage push ./photos --to integration:nas/photos/ --dry-run
    """
    _copy(src, dst, transfers, bwlimit, retries, checksum, dry_run, as_json)


@click.command()
@click.argument("src")
@_copy_options
def pull(
    src: str, dst: str, transfers: int, bwlimit: int | None, retries: int, checksum: bool, dry_run: bool, as_json: bool
) -> None:
    """Copy SRC from an integration (a file or, recursively, a folder) into the folder DST.

    Same locations and options as push; the usual source is integration:NAME/path.

    \b
    Example:
      darkstorage pull integration:my-aws-backup/important.pdf --to my-bucket/restored/
      darkstorage pull integration:nas/photos/ --to ~/Pictures/nas --transfers 8
    """
    _copy(src, dst, transfers, bwlimit, retries, checksum, dry_run, as_json)


@click.command("transfers")
@click.option("--last", "last", default=20, show_default=True, help="How many transfers to show, newest first.")
@click.option("--failed", is_flag=True, help="Only failed transfers.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def transfers_cmd(last: int, failed: bool, as_json: bool) -> None:
    """Show the transfer log (and any integration whose circuit breaker is not closed).

    \b
    Example:
      darkstorage transfers --last 50
      darkstorage transfers --failed --json
    """
    from pool.transferlog import TransferLog

    tlog = TransferLog(pool_home())
    try:
        rows = tlog.recent(max(last, 0), failed_only=failed)
        breakers = tlog.breakers()
    finally:
        tlog.close()
    if as_json:
        emit_json({"transfers": [r.to_json() for r in rows], "breakers": breakers})
        return
    from rich.table import Table

    table = Table("id", "status", "source", "destination", "size", "time", "speed", "tries", "error")
    for r in rows:
        secs = (r.duration_ns or 0) / 1e9
        speed = f"{format_size(int(r.throughput_bytes_per_s))}/s" if r.throughput_bytes_per_s else ""
        status = {"ok": "[green]ok[/]", "failed": "[red]failed[/]"}.get(r.status, r.status)
        table.add_row(
            str(r.id),
            status,
            r.source,
            r.destination,
            format_size(r.bytes),
            f"{secs:.1f}s",
            speed,
            str(r.attempts),
            r.error or "",
        )
    console.print(table)
    for b in breakers:
        if b["state"] != "closed":
            console.print(f"integration {b['integration']}: circuit {b['state']} after {b['failures']} failed attempts")
