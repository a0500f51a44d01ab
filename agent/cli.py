"""``darkstorage``: the command line.

Every command prints one line and exits with a documented code on a user error
(:class:`pool.errors.ExitCode`); ``--json`` gives machine-readable output where a script
would want it.
"""

from __future__ import annotations

import logging
import os
import sys

import click

from pool.errors import DarkstorageError, ExitCode
from pool.pool import Pool
from pool.units import format_size

from . import __version__
from .console import console, emit_json, error_line


def open_pool() -> Pool:
    return Pool.open()


json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
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


# -- the other command groups -----------------------------------------------------------------

from .daemon import agent  # noqa: E402
from .dmg_cmd import bucket2dmg, dmg  # noqa: E402
from .integrations_cmd import integrations  # noqa: E402
from .iso_cmd import bucket2iso, iso  # noqa: E402
from .mount_cmd import mount, status, umount  # noqa: E402
from .sync_cmd import replicate, sync  # noqa: E402
from .tiers_cmd import tiers  # noqa: E402
from .transfer_cmd import pull, push, transfers_cmd  # noqa: E402

for _command in (mount, umount, status, tiers, integrations, push, pull, transfers_cmd, sync, replicate, agent,
                 bucket2iso, iso, bucket2dmg, dmg):
    main.add_command(_command)


def run() -> None:
    """Console entry point: run the CLI, turning our errors into one line and an exit code."""
    try:
        main.main(standalone_mode=False)
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)
    except click.ClickException as e:
        e.show()
        sys.exit(ExitCode.USAGE if isinstance(e, click.UsageError) else e.exit_code)
    except click.exceptions.Abort:
        error_line("aborted")
        sys.exit(ExitCode.INTERRUPTED)
    except DarkstorageError as e:
        error_line(str(e))
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        error_line("interrupted")
        sys.exit(ExitCode.INTERRUPTED)
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(ExitCode.OK)
    except PermissionError as e:
        error_line(f"permission denied: {e.filename or e}")
        sys.exit(ExitCode.PERMISSION)
    except OSError as e:
        error_line(f"{e.strerror or e}: {e.filename}" if e.filename else str(e))
        sys.exit(ExitCode.ERROR)
    except Exception as e:  # a bug: one line, the traceback only in the debug log
        logging.getLogger("darkstorage").debug("internal error", exc_info=True)
        error_line(f"internal error: {e!r} (a bug: rerun with -vv for details and report it)")
        sys.exit(ExitCode.ERROR)
    sys.exit(ExitCode.OK)


if __name__ == "__main__":
    run()

__all__ = ["main", "run"]
