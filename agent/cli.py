"""``darkstorage``: the command line.

Every command prints one line and exits with a documented code on a user error
(:class:`pool.errors.ExitCode`); ``--json`` gives machine-readable output where a script
would want it.
"""

from __future__ import annotations

import atexit
import logging
import os
import sys
import threading
from typing import TYPE_CHECKING, NoReturn

import click

from pool.errors import DarkstorageError, ExitCode
from pool.units import format_size

from . import __version__
from .console import console, emit_json, error_line

if TYPE_CHECKING:
    from pool.pool import Pool


def open_pool() -> Pool:
    from pool.pool import Pool

    return Pool.open()


#: the other command groups, imported when one of them runs (``darkstorage sync`` needs no FUSE,
#: trio or fsspec): command name -> "module:attribute"
LAZY_COMMANDS = {
    "mount": "agent.mount_cmd:mount",
    "umount": "agent.mount_cmd:umount",
    "status": "agent.mount_cmd:status",
    "tiers": "agent.tiers_cmd:tiers",
    "integrations": "agent.integrations_cmd:integrations",
    "push": "agent.transfer_cmd:push",
    "pull": "agent.transfer_cmd:pull",
    "transfers": "agent.transfer_cmd:transfers_cmd",
    "sync": "agent.sync_cmd:sync",
    "replicate": "agent.sync_cmd:replicate",
    "agent": "agent.daemon:agent",
    "bucket2iso": "agent.iso_cmd:bucket2iso",
    "iso": "agent.iso_cmd:iso",
    "bucket2dmg": "agent.dmg_cmd:bucket2dmg",
    "dmg": "agent.dmg_cmd:dmg",
    "jobs": "agent.jobs_cmd:jobs",
}


class LazyGroup(click.Group):
    """A group whose :data:`LAZY_COMMANDS` are imported when used (``--help`` imports them all)."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *LAZY_COMMANDS})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        target = LAZY_COMMANDS.get(cmd_name)
        if target is None or cmd_name in self.commands:
            return super().get_command(ctx, cmd_name)
        import importlib

        module, _, attr = target.partition(":")
        command = getattr(importlib.import_module(module), attr)
        self.add_command(command, cmd_name)
        return command  # type: ignore[no-any-return]


json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="darkstorage")
@click.option("-v", "--verbose", count=True, help="More logging (-vv for debug).")
def main(verbose: int) -> None:
    """darkstorage: a tiered storage pool mounted as a drive.

    \b
    Example:
      darkstorage init && darkstorage bucket create photos
      darkstorage mount ~/DarkStorage
    """
    level = logging.WARNING - 10 * verbose
    logging.basicConfig(level=max(level, logging.DEBUG), format="%(levelname)s %(name)s: %(message)s")


@main.command()
@json_option
def init(as_json: bool) -> None:
    """Create the embedded default pool (one local directory per tier) if there is none.

    \b
    Example:
      darkstorage init
      DARKSTORAGE_HOME=/srv/pool darkstorage init
    """
    from pool.pool import Pool

    pool, created = Pool.init()
    home = str(pool.config.home)
    if as_json:
        emit_json({"home": home, "created": created, "tiers": {t: c.url for t, c in pool.config.tiers.items()}})
    elif created:
        console.print(f"created pool at {home}")
    else:
        console.print(f"pool already set up at {home}")


# -- buckets ---------------------------------------------------------------------------------


@main.group()
def bucket() -> None:
    """Create, list and remove buckets (the folders at the top of the mount).

    \b
    Example:
      darkstorage bucket create photos
      darkstorage bucket list
      darkstorage bucket remove photos --force
    """


@bucket.command("create")
@click.argument("name")
def bucket_create(name: str) -> None:
    """Create bucket NAME.

    \b
    Example:
      darkstorage bucket create photos
    """
    from vfs.mount import notify_mount

    pool = open_pool()
    pool.create_bucket(name)
    notify_mount(pool)
    console.print(f"created bucket {name}")


@bucket.command("list")
@json_option
def bucket_list(as_json: bool) -> None:
    """List buckets with their file counts and sizes.

    \b
    Example:
      darkstorage bucket list --json
    """
    infos = open_pool().bucket_infos()
    if as_json:
        emit_json([{"name": b.name, "files": b.files, "bytes": b.bytes, "created_ns": b.created_ns} for b in infos])
        return
    from rich.table import Table

    table = Table("bucket", "files", "size")
    for b in infos:
        table.add_row(b.name, str(b.files), format_size(b.bytes))
    console.print(table)


@bucket.command("remove")
@click.argument("name")
@click.option("--force", is_flag=True, help="Also remove every file in the bucket.")
def bucket_remove(name: str, force: bool) -> None:
    """Remove bucket NAME (refuses a non-empty bucket without --force).

    \b
    Example:
      darkstorage bucket remove old-photos --force
    """
    from vfs.mount import notify_mount

    pool = open_pool()
    n = pool.remove_bucket(name, force=force)
    notify_mount(pool)
    console.print(f"removed bucket {name}" + (f" and {n} file(s)" if n else ""))


def run() -> None:
    """Console entry point: run the CLI, turning our errors into one line and an exit code."""
    _leave(_dispatch())


def _dispatch() -> int:
    """Run the command line; returns the exit code (see :class:`pool.errors.ExitCode`)."""
    try:
        main.main(standalone_mode=False)
    except click.exceptions.Exit as e:
        return e.exit_code
    except click.ClickException as e:
        e.show()
        return ExitCode.USAGE if isinstance(e, click.UsageError) else e.exit_code
    except click.exceptions.Abort:
        error_line("aborted")
        return ExitCode.INTERRUPTED
    except DarkstorageError as e:
        error_line(str(e))
        return e.exit_code
    except KeyboardInterrupt:
        error_line("interrupted")
        return ExitCode.INTERRUPTED
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return ExitCode.OK
    except PermissionError as e:
        error_line(f"permission denied: {e.filename or e}")
        return ExitCode.PERMISSION
    except OSError as e:
        error_line(f"{e.strerror or e}: {e.filename}" if e.filename else str(e))
        return ExitCode.ERROR
    except Exception as e:  # a bug: one line, the traceback only in the debug log
        logging.getLogger("darkstorage").debug("internal error", exc_info=True)
        error_line(f"internal error: {e!r} (a bug: rerun with -vv for details and report it)")
        return ExitCode.ERROR
    return ExitCode.OK


def _leave(code: int) -> NoReturn:
    """End the process with *code*. The exit handlers run (log handlers flush, temporary
    folders go) and the standard streams are flushed, but the interpreter's teardown, which
    frees every module and object one by one (a tenth of a short command's time), is skipped:
    everything a command writes is closed or committed before it returns. With other threads
    still running, the normal exit, which waits for them."""
    if threading.active_count() > 1:
        sys.exit(code)
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe: nothing more can be said
            pass
    os._exit(code)


if __name__ == "__main__":
    run()

__all__ = ["main", "run"]
