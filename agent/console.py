"""The one rich console every command prints through, and helpers for ``--json`` output."""

from __future__ import annotations

import json
import sys
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
