"""``darkstorage mount``, ``umount`` and ``status``."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import click

from pool.errors import ExitCode, MountError, NotFoundError, NotInitialisedError
from pool.pool import Pool
from pool.tiers import TIERS
from pool.units import format_size

from .console import console, emit_json
from .params import DURATION, SIZE

log = logging.getLogger(__name__)


@click.command()
@click.argument("mountpoint", type=click.Path(file_okay=False, path_type=Path))
@click.option("-f", "--foreground", is_flag=True, help="Stay in the foreground; Ctrl-C unmounts.")
@click.option("--cache-max-size", type=SIZE, default=None, help="Cache size limit, e.g. 10G.")
@click.option(
    "--write-back",
    "write_back",
    type=DURATION,
    default=None,
    help="How long after its last close a changed file uploads, e.g. 5s.",
)
@click.option("--read-only", is_flag=True, help="Refuse all changes (EROFS).")
@click.option("--allow-other", is_flag=True, help="Let other users in (permissions still apply).")
@click.option(
    "--attr-timeout",
    type=DURATION,
    default=10.0,
    show_default=True,
    help="How long the kernel may cache attributes and names (changes made through the mount"
    " or by `darkstorage bucket` are seen at once).",
)
@click.option("--transfers", type=click.IntRange(1, 64), default=2, show_default=True, help="Uploads running at once.")
@click.option("--debug", is_flag=True, help="Log every FUSE request (foreground only).")
def mount(
    mountpoint: Path,
    foreground: bool,
    cache_max_size: int | None,
    write_back: float | None,
    read_only: bool,
    allow_other: bool,
    attr_timeout: float,
    transfers: int,
    debug: bool,
) -> None:
    """Mount the pool at MOUNTPOINT: one folder per bucket.

    \b
    Example:
      darkstorage mount ~/DarkStorage
      darkstorage mount ~/DarkStorage --foreground --cache-max-size 10G --write-back 5s
    """
    pool = Pool.open()
    mp = mountpoint.expanduser().absolute()
    if not mp.exists():
        mp.mkdir(parents=True)
    if not foreground:
        flags = [f"--attr-timeout={attr_timeout}", f"--transfers={transfers}"]
        if cache_max_size is not None:
            flags.append(f"--cache-max-size={cache_max_size}")
        if write_back is not None:
            flags.append(f"--write-back={write_back}")
        flags += [f for f, on in (("--read-only", read_only), ("--allow-other", allow_other)) if on]
        _spawn(pool, mp, flags)
        return
    from vfs.mount import MountOptions, serve

    if debug:
        logging.getLogger().setLevel(logging.DEBUG)
    elif logging.getLogger().level > logging.INFO:
        logging.getLogger().setLevel(logging.INFO)
    opts = MountOptions(
        mountpoint=mp,
        cache_max_bytes=cache_max_size if cache_max_size is not None else pool.config.cache_max_bytes,
        write_back_s=write_back if write_back is not None else pool.config.write_back_s,
        read_only=read_only,
        allow_other=allow_other,
        attr_timeout_s=attr_timeout,
        entry_timeout_s=attr_timeout,
        transfers=transfers,
        debug=debug,
    )
    console.print(f"mounted at {mp} (Ctrl-C to unmount)", style="green")
    left = serve(pool, opts)
    if left:
        console.print(f"unmounted; {left} file(s) still waiting for upload", style="yellow")
        sys.exit(ExitCode.DIRTY_LEFT)
    console.print("unmounted; everything uploaded")


def _spawn(pool: Pool, mp: Path, flags: list[str]) -> None:
    """Start the mount in a detached process and wait until it is mounted."""
    cmd = [sys.executable, "-m", "agent", "mount", str(mp), "--foreground", *flags]
    pool.config.run_dir.mkdir(parents=True, exist_ok=True)
    logfile = pool.config.run_dir / "mount.log"
    with open(logfile, "ab") as out:
        proc = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=out, start_new_session=True, env=os.environ.copy()
        )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if os.path.ismount(mp):
            console.print(f"mounted at {mp} (pid {proc.pid}, log {logfile})")
            return
        code = proc.poll()
        if code is not None:
            tail = logfile.read_text(errors="replace").strip().splitlines()[-1:] or ["(no output)"]
            raise MountError(f"mount failed: {tail[0]}")
        time.sleep(0.05)
    proc.terminate()
    raise MountError(f"mount did not come up within 60s; see {logfile}")


@click.command()
@click.argument("mountpoint", type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "--timeout",
    "timeout_s",
    type=float,
    default=600.0,
    show_default=True,
    help="Seconds to wait for uploads before giving up.",
)
def umount(mountpoint: Path, timeout_s: float) -> None:
    """Upload dirty files, then unmount MOUNTPOINT.

    Exit code 0: everything was uploaded; 8: some files are still dirty (they stay safe in the
    cache and upload at the next mount).

    \b
    Example:
      darkstorage umount ~/DarkStorage
    """
    from vfs.mount import read_record

    mp = mountpoint.expanduser().absolute()
    try:
        pool: Pool | None = Pool.open()
    except NotInitialisedError:  # an image view can be mounted with no pool at all
        pool = None
    rec = read_record(pool) if pool is not None else None
    if pool is not None and rec is not None and Path(str(rec["mountpoint"])) == mp:
        pid = int(str(rec["pid"]))
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.05)
        else:
            raise MountError(f"mount process {pid} did not stop within {timeout_s:.0f}s")
        try:
            left = int(json.loads((pool.config.run_dir / "last-stop.json").read_text())["dirty_left"])
        except (FileNotFoundError, ValueError, KeyError):
            left = 0
        if left:
            console.print(f"unmounted {mp}; {left} file(s) still dirty", style="yellow")
            sys.exit(ExitCode.DIRTY_LEFT)
        console.print(f"unmounted {mp}")
        return
    if not os.path.ismount(mp):
        raise NotFoundError(f"{mp} is not mounted")
    res = subprocess.run(["fusermount3", "-u", str(mp)], capture_output=True, text=True)
    if res.returncode != 0:
        raise MountError(res.stderr.strip() or f"fusermount3 failed on {mp}")
    console.print(f"unmounted {mp}")


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def status(as_json: bool) -> None:
    """Show the mount, cache use, dirty files, uploads in flight and tiers.

    \b
    Example:
      darkstorage status
      darkstorage status --json | jq .dirty_files
    """
    from vfs.mount import read_record

    pool = Pool.open()
    cat = pool.catalog
    rec = read_record(pool)
    states = cat.count_by_state()
    stats = pool.tier_stats()
    pending_restores = cat.db.execute("SELECT count(*) FROM objects WHERE restore_ready_ns IS NOT NULL").fetchone()[0]
    data = {
        "home": str(pool.config.home),
        "mounts": [rec] if rec else [],
        "cache": {
            "used_bytes": cat.cache_total(),
            "max_bytes": (rec or {}).get("cache_max_bytes", pool.config.cache_max_bytes),
        },
        "dirty_files": states.get("dirty", 0),
        "uploads_in_flight": states.get("uploading", 0),
        "clean_files": states.get("clean", 0),
        "restores_requested": pending_restores,
        "trash_pending": cat.db.execute("SELECT count(*) FROM trash").fetchone()[0],
        "tiers": {
            t: {
                "url": pool.config.tiers[t].url if t in pool.config.tiers else None,
                "files": stats[t][0],
                "bytes": stats[t][1],
            }
            for t in TIERS
        },
    }
    if as_json:
        emit_json(data)
        return
    from rich.table import Table

    console.print(f"pool: {data['home']}")
    if rec:
        console.print(
            f"mounted at {rec['mountpoint']} (pid {rec['pid']}{', read-only' if rec.get('read_only') else ''})"
        )
    else:
        console.print("not mounted")
    cache = data["cache"]
    assert isinstance(cache, dict)
    console.print(f"cache: {format_size(int(cache['used_bytes']))} of {format_size(int(cache['max_bytes']))}")
    console.print(f"dirty files: {data['dirty_files']}  uploads in flight: {data['uploads_in_flight']}")
    table = Table("tier", "backend", "files", "size")
    for t in TIERS:
        table.add_row(
            t, pool.config.tiers[t].url if t in pool.config.tiers else "-", str(stats[t][0]), format_size(stats[t][1])
        )
    console.print(table)
