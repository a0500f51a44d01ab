"""The one rich console every command prints through, and helpers for ``--json`` output."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from typing import Any

from rich.console import Console

console = Console(highlight=False)
err_console = Console(stderr=True, highlight=False)


def emit_json(data: Any) -> None:
    """Print *data* as JSON on stdout (for ``--json``)."""
    sys.stdout.write(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")


def error_line(message: str) -> None:
    """Print a one-line error on stderr."""
    err_console.print(f"[bold red]darkstorage:[/] {message}", soft_wrap=True)


def transfer_progress(description: str, total: int) -> tuple[Any, Any]:
    """A transient rich progress bar in bytes (size, speed, time left) and its task id."""
    from rich.progress import BarColumn, DownloadColumn, Progress, TimeRemainingColumn, TransferSpeedColumn

    bar = Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=True,
    )
    return bar, bar.add_task(description, total=total)


def print_listing(rows: Sequence[tuple[str, Any, str | None]], *, long_: bool, as_json: bool) -> None:
    """Print the entries of an image (``iso ls``, ``dmg ls``).

    Args:
        rows: ``(path, entry, symlink target or None)``; an entry has ``kind``, ``size``,
            ``mode``, ``uid``, ``gid`` and ``mtime_ns`` (ns since the epoch).
        long_: mode, owner, size and UTC time before each path (like ``ls -l``).
        as_json: a JSON list instead (``target`` only where the reader knows it).
    """
    import stat
    import time

    if as_json:
        emit_json(
            [
                {
                    "path": path,
                    "kind": e.kind,
                    "size": e.size,
                    "mode": e.mode,
                    "uid": e.uid,
                    "gid": e.gid,
                    "mtime_ns": e.mtime_ns,
                    **({"target": target} if target is not None else {}),
                }
                for path, e, target in rows
            ]
        )
        return
    for path, e, target in rows:
        shown = path + ("/" if e.kind == "dir" else "")
        if target is not None and e.kind == "symlink":
            shown += " -> " + target.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
        if long_:
            when = time.strftime("%Y-%m-%d %H:%M", time.gmtime(e.mtime_ns / 1e9))
            console.print(f"{stat.filemode(e.mode)} {e.uid:>5} {e.gid:>5} {e.size:>12} {when} {shown}", markup=False)
        else:
            console.print(shown, markup=False)
