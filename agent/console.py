"""The one rich console every command prints through, and helpers for ``--json`` output.

The consoles are made on first use: importing rich takes about 35 ms, a third of a start-up,
which a command that prints one plain line into a pipe (a scripted ``darkstorage sync``) need
not pay (see :func:`print_line`).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, cast

if TYPE_CHECKING:
    from rich.console import Console


class _OnFirstUse:
    """Stands for a :class:`rich.console.Console` made with *kwargs* when first used."""

    def __init__(self, **kwargs: Any) -> None:
        self._kwargs = kwargs
        self._made: Console | None = None

    def made(self) -> Console:
        if self._made is None:
            from rich.console import Console

            self._made = Console(**self._kwargs)
        return self._made

    def __getattr__(self, name: str) -> Any:
        return getattr(self.made(), name)


console = cast("Console", _OnFirstUse(highlight=False))
err_console = cast("Console", _OnFirstUse(stderr=True, highlight=False))


def rich_console(stand_in: Console) -> Console:
    """The console :data:`console` or :data:`err_console` stands for, made now: for rich
    objects (a progress bar) that use it as a context manager, which a stand-in cannot be."""
    return cast(_OnFirstUse, stand_in).made()


def print_line(text: str, style: str | None = None) -> None:
    """Print *text* as one line on stdout, markup and emoji codes taken literally: through rich
    on a terminal (*style* applies), as plain text into pipes and files (rich would print the
    same bytes there; this spares importing it)."""
    if cast(_OnFirstUse, console)._made is not None or sys.stdout.isatty():
        console.print(text, style=style, markup=False, emoji=False, soft_wrap=True)
    else:
        sys.stdout.write(text + "\n")


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
        console=rich_console(console),
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
