"""``darkstorage tiers``: tier configuration, placement, moves, statistics and restores."""

from __future__ import annotations

import sys
from typing import Any

import click

from pool.catalog import now_ns
from pool.errors import ExitCode, NotFoundError
from pool.pool import Pool
from pool.tiers import TIER_ACCESS, TIERS
from pool.units import format_size, parse_duration

from .console import console, emit_json

tier_choice = click.Choice(TIERS)


@click.group()
def tiers() -> None:
    """Tiers (hot, warm, cold, archive, offsite): where files live and how to move them.

    \b
    Example:
      darkstorage tiers list
      darkstorage tiers set photos/raw/ --default cold
      darkstorage tiers assign photos/2019 --tier archive --recursive
    """


@tiers.command("list")
@click.argument("bucket", required=False)
@click.option("--json", "as_json", is_flag=True)
def tiers_list(bucket: str | None, as_json: bool) -> None:
    """Show each tier's backend and access mode, and default-tier rules (of BUCKET).

    \b
    Example:
      darkstorage tiers list
      darkstorage tiers list photos
    """
    pool = Pool.open()
    if bucket is not None and pool.catalog.bucket_inode(bucket) is None:
        raise NotFoundError(f"no bucket {bucket}")
    rules = pool.catalog.placements(bucket)
    data: dict[str, list[dict[str, Any]]] = {
        "tiers": [
            {
                "tier": t,
                "url": pool.config.tiers[t].url if t in pool.config.tiers else None,
                "access": TIER_ACCESS[t].value,
            }
            for t in TIERS
        ],
        "rules": [{"bucket": b, "prefix": p, "tier": t} for b, p, t in rules],
    }
    if as_json:
        emit_json(data)
        return
    from rich.table import Table

    table = Table("tier", "backend", "access")
    for row in data["tiers"]:
        table.add_row(str(row["tier"]), str(row["url"] or "-"), str(row["access"]))
    console.print(table)
    if rules:
        rt = Table("bucket", "path", "default tier")
        for b, p, t in rules:
            rt.add_row(b, p or "(whole bucket)", t)
        console.print(rt)
    else:
        console.print("no default-tier rules: new files go to hot")


@tiers.command("set")
@click.argument("target", metavar="BUCKET[/PATH]")
@click.option("--default", "default", type=tier_choice, required=True, help="Tier for new files there.")
def tiers_set(target: str, default: str) -> None:
    """Set the tier new files under BUCKET[/PATH] are written to (the longest rule wins).

    \b
    Example:
      darkstorage tiers set photos --default warm
      darkstorage tiers set photos/raw/ --default cold
    """
    bucket, prefix = Pool.open().set_default_tier(target, default)
    console.print(f"new files in {bucket}/{prefix} go to {default}")


@tiers.command("set-backend")
@click.argument("tier", type=tier_choice)
@click.argument("target")
@click.option(
    "--storage-class",
    "storage_class",
    default=None,
    help="Store class / access tier of the objects (S3: STANDARD_IA, GLACIER, DEEP_ARCHIVE, ...;"
    " Azure: Hot, Cool, Cold, Archive).",
)
def tiers_set_backend(tier: str, target: str, storage_class: str | None) -> None:
    """Put TIER on TARGET: an integration folder (integration:NAME/path/) or a local path.

    The tier must hold no files (move them first with `tiers assign`) and the pool must not be
    mounted. Objects on an archive class (GLACIER, DEEP_ARCHIVE, Archive) are restored through
    the store before reading.

    \b
    Example:
      darkstorage tiers set-backend cold integration:my-aws-backup/cold/ --storage-class STANDARD_IA
      darkstorage tiers set-backend archive integration:my-aws-backup/archive/ --storage-class GLACIER
      darkstorage tiers set-backend warm /mnt/hdd/darkstorage-warm
    """
    from pool.errors import BusyError
    from pool.integrations import set_tier_backend
    from vfs.mount import read_record

    pool = Pool.open()
    if read_record(pool) is not None:
        raise BusyError("the pool is mounted: unmount it before changing a tier's backend")
    files = pool.catalog.db.execute("SELECT count(*) FROM objects WHERE tier = ?", (tier,)).fetchone()[0]
    if files:
        raise BusyError(
            f"tier {tier} holds {files} file(s): move them to another tier first"
            f" (`darkstorage tiers assign BUCKET --tier T --recursive`)"
        )
    pool.close()
    url = set_tier_backend(tier, target, storage_class=storage_class)
    console.print(f"tier {tier} now on {url}" + (f" ({storage_class})" if storage_class else ""))


@tiers.command("assign")
@click.argument("path")
@click.option("--tier", "tier", type=tier_choice, required=True)
@click.option("--recursive", "-r", is_flag=True, help="Every file below a directory.")
@click.option("--json", "as_json", is_flag=True)
def tiers_assign(path: str, tier: str, recursive: bool, as_json: bool) -> None:
    """Move a file (or, with --recursive, a folder's files) to TIER: copy, verify, commit,
    then delete the old copy.

    \b
    Example:
      darkstorage tiers assign photos/critical.pdf --tier hot
      darkstorage tiers assign photos/old/ --tier archive --recursive
    """
    pool = Pool.open()
    results = pool.assign(path, tier, recursive=recursive)
    failed = [r for r in results if r[1] not in ("moved", "already")]
    if as_json:
        emit_json([{"key": k, "outcome": o} for k, o in results])
    else:
        moved = sum(1 for r in results if r[1] == "moved")
        console.print(f"{moved} file(s) moved to {tier}, {len(results) - moved - len(failed)} already there")
        for k, o in failed:
            console.print(f"  {k}: {o}", style="yellow")
    if failed:
        sys.exit(ExitCode.BUSY)


@tiers.command("files")
@click.option("--tier", "tier", type=tier_choice, required=True)
@click.option("--older-than", "older_than", default=None, help="Only files not modified for this long, e.g. 1y, 30d.")
@click.option("--json", "as_json", is_flag=True)
def tiers_files(tier: str, older_than: str | None, as_json: bool) -> None:
    """List files on TIER.

    \b
    Example:
      darkstorage tiers files --tier archive --older-than 1y
    """
    pool = Pool.open()
    cutoff = now_ns() - int(parse_duration(older_than) * 1e9) if older_than else None
    rows = pool.catalog.db.execute(
        "SELECT o.inode, i.size, i.mtime_ns, o.state FROM objects o JOIN inodes i ON i.id = o.inode"
        " WHERE o.tier = ? AND i.nlink > 0" + (" AND i.mtime_ns < ?" if cutoff else "") + " ORDER BY o.inode",
        (tier, cutoff) if cutoff else (tier,),
    ).fetchall()
    files = [{"path": pool.key_of(ino), "bytes": size, "mtime_ns": mt, "state": st} for ino, size, mt, st in rows]
    if as_json:
        emit_json(files)
        return
    for f in files:
        console.print(f"{format_size(int(f['bytes'] or 0)):>10}  {f['path']}")
    console.print(f"{len(files)} file(s) on {tier}")


@tiers.command("stats")
@click.argument("bucket", required=False)
@click.option("--json", "as_json", is_flag=True)
def tiers_stats(bucket: str | None, as_json: bool) -> None:
    """Files and bytes per tier, for BUCKET or the whole pool.

    \b
    Example:
      darkstorage tiers stats photos
    """
    stats = Pool.open().tier_stats(bucket)
    if as_json:
        emit_json({t: {"files": f, "bytes": b} for t, (f, b) in stats.items()})
        return
    from rich.table import Table

    table = Table("tier", "files", "size")
    for t, (f, b) in stats.items():
        table.add_row(t, str(f), format_size(b))
    console.print(table)


@tiers.command("restore")
@click.argument("path")
@click.option("--expedited", is_flag=True, help="Faster, costlier restore where the store has one.")
@click.option("--status", "status_only", is_flag=True, help="Only show the restore state.")
@click.option("--json", "as_json", is_flag=True)
def tiers_restore(path: str, expedited: bool, status_only: bool, as_json: bool) -> None:
    """Start (or check) the restore of an archive/offsite file so it can be read.

    Exit code 0 when the file is readable now, 9 while the restore is pending.

    \b
    Example:
      darkstorage tiers restore photos/2019/raw.tar --expedited
      darkstorage tiers restore photos/2019/raw.tar --status
    """
    pool = Pool.open()
    ino, a = pool.resolve(path)
    if not a.is_reg:
        raise NotFoundError(f"{path} is not a file")
    st = pool.restore_state(ino) if status_only else pool.request_restore(ino, expedited=expedited)
    if as_json:
        emit_json({"path": path, "state": st.state, "ready_in_s": round(st.ready_in_s, 3)})
    else:
        console.print(f"{path}: {st}")
    if st.state in ("pending", "none"):
        sys.exit(ExitCode.RESTORE_PENDING)
