"""``darkstorage bucket2dmg`` and ``darkstorage dmg verify|ls|mount|extract|sync``."""

from __future__ import annotations

import fnmatch
import os
import stat
from pathlib import Path
from typing import Any

import click

from pool.errors import ImageCorruptError, NotFoundError, UnsafePathError, UsageError
from pool.units import format_size, parse_size

from .console import console, emit_json, print_listing, transfer_progress

json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
_COPY_BYTES = 1 << 20


def _size(value: str) -> int | None:
    if value == "auto":
        return None
    try:
        return parse_size(value)
    except Exception as e:
        raise UsageError(f"--size: {e}") from None


@click.command("bucket2dmg")
@click.argument("source")
@click.option(
    "--output", "-o", type=click.Path(path_type=Path, dir_okay=False), required=True, help="The .dmg to write."
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["UDZO", "UDBZ", "ULFO", "ULMO", "UDRO"]),
    default="UDZO",
    show_default=True,
    help="zlib, bzip2, LZFSE, LZMA or uncompressed read-only.",
)
@click.option("--volume-name", default=None, help="Volume name shown in Finder (default: the source's name).")
@click.option("--include-metadata", is_flag=True, help="Keep user.* extended attributes.")
@click.option("--include-permissions", is_flag=True, help="Keep owners, groups and mode bits.")
@click.option(
    "--filesystem",
    type=click.Choice(["hfs+", "iso-udf"]),
    default="hfs+",
    show_default=True,
    help="Volume inside: HFS+ or an ISO9660+UDF hybrid (like hdiutil makehybrid).",
)
@click.option(
    "--size", "size", default="auto", show_default=True, help="HFS+ volume size, e.g. 10GB (auto: just fits)."
)
@click.option(
    "--source-date-epoch",
    type=int,
    envvar="SOURCE_DATE_EPOCH",
    default=None,
    help="Build time in seconds since the epoch: same tree + options give the same bytes.",
)
@json_option
def bucket2dmg(
    source: str,
    output: Path,
    fmt: str,
    volume_name: str | None,
    include_metadata: bool,
    include_permissions: bool,
    filesystem: str,
    size: str,
    source_date_epoch: int | None,
    as_json: bool,
) -> None:
    """Write a macOS disk image of SOURCE (a bucket name, a bucket path or a folder).

    Writes OUTPUT and OUTPUT.sha256. Chunks compress in parallel on every core.

    \b
    Example:
      darkstorage bucket2dmg photos --output photos.dmg
      darkstorage bucket2dmg ./site --output site.dmg --format ULFO --volume-name Site
      darkstorage bucket2dmg photos -o p.dmg --include-permissions --source-date-epoch 1700000000
    """
    from imaging.dmg import build_dmg
    from imaging.hfsplus import HfsOptions

    from .sources import source_tree

    size_bytes = _size(size)
    if size_bytes is not None and filesystem != "hfs+":
        raise UsageError("--size applies to HFS+ volumes only")
    with source_tree(source) as root:
        name = volume_name or (Path(source).name if source not in (".", "..") else root.resolve().name) or "Untitled"
        opts = HfsOptions(
            volume_name=name,
            include_permissions=include_permissions,
            include_metadata=include_metadata,
            source_date_epoch=source_date_epoch,
            size_bytes=size_bytes,
        )
        bar, task = transfer_progress(f"writing {output.name}", 0)
        with bar:
            res = build_dmg(
                root,
                output,
                fmt=fmt,
                filesystem=filesystem,
                opts=opts,
                progress=lambda n: bar.advance(task, n),
                on_plan=lambda total: bar.update(task, total=total),
            )
    data = {
        "image": str(res.image),
        "format": fmt,
        "filesystem": filesystem,
        "case_sensitive": res.case_sensitive,
        "files": res.files,
        "folders": res.folders,
        "skipped": res.skipped,
        "volume_bytes": res.volume_bytes,
        "image_bytes": res.udif.file_bytes,
        "sha256": res.udif.sha256,
        "chunks": res.udif.chunk_counts,
    }
    if as_json:
        emit_json(data)
        return
    kind = "HFSX (case-sensitive)" if res.case_sensitive else ("HFS+" if filesystem == "hfs+" else "ISO9660+UDF")
    console.print(
        f"wrote {output} ({format_size(res.udif.file_bytes)}, {fmt}, {kind}): {res.files} file(s), "
        f"{res.folders} folder(s), volume {format_size(res.volume_bytes)}"
    )
    if res.skipped:
        console.print(f"skipped {len(res.skipped)} item(s) an image cannot hold (see the log)", style="yellow")


@click.group()
def dmg() -> None:
    """Verify, list, mount, extract and restore DMG images.

    \b
    Example:
      darkstorage dmg verify photos.dmg
      darkstorage dmg ls photos.dmg --long
      darkstorage dmg extract photos.dmg --pattern "*.jpg" --output ./out
    """


def _open(image: Path) -> Any:
    from imaging.dmg import DmgImage

    return DmgImage(image)


@dmg.command("verify")
@click.argument("image", type=click.Path(path_type=Path, dir_okay=False))
@json_option
def dmg_verify(image: Path, as_json: bool) -> None:
    """Check every checksum in IMAGE (data fork, each chunk, each partition, master), the volume's
    structures (HFS+, or ISO9660/UDF), and the SHA-256 sidecar. Exit code 18 names what is damaged.

    \b
    Example:
      darkstorage dmg verify photos.dmg
    """
    from imaging.common import check_sidecar
    from imaging.udif_read import UdifImage

    with UdifImage(image) as img:
        bar, task = transfer_progress(f"verifying {image.name}", img.size_bytes)
        with bar:
            problems = img.verify(progress=lambda n: bar.advance(task, n))
        if not problems:
            problems += _volume_problems(img)
    sidecar = check_sidecar(image)
    if sidecar is False:
        problems.append(f"{image.name}.sha256: the SHA-256 does not match")
    if as_json:
        emit_json({"image": str(image), "ok": not problems, "problems": problems, "sidecar": sidecar})
    else:
        for p in problems:
            console.print(f"[red]bad:[/] {p}")
    if problems:
        raise ImageCorruptError(
            f"{image.name} is damaged: {problems[0]}" + (f" (+{len(problems) - 1} more)" if len(problems) > 1 else "")
        )
    if not as_json:
        side = "sidecar matches" if sidecar else "no sidecar"
        console.print(f"{image.name}: every checksum matches ({side})", style="green")


def _volume_problems(img: Any) -> list[str]:
    """The volume's own damage once the container checks passed: HFS+ structures (catalog,
    extents, attributes) or the ISO/UDF descriptors and directories pycdlib checks."""
    from imaging.dmg_iso import DmgIsoVolume, looks_like_iso
    from imaging.hfsplus_read import HfsVolume

    try:
        if looks_like_iso(img):
            DmgIsoVolume(img).close()
            return []
        if any("Apple_HFS" in p.name for p in img.partitions):
            return HfsVolume(img.read, img.size_bytes).check()
    except ImageCorruptError as e:
        return [str(e)]
    return []


@dmg.command("ls")
@click.argument("image", type=click.Path(path_type=Path, dir_okay=False))
@click.option("--long", "-l", "long_", is_flag=True, help="Mode, owner, size and date too.")
@json_option
def dmg_ls(image: Path, long_: bool, as_json: bool) -> None:
    """List the files in IMAGE.

    \b
    Example:
      darkstorage dmg ls photos.dmg --long
    """
    with _open(image) as d:
        rows = [(p, e, None) for p, e in d.entries()]
    print_listing(rows, long_=long_, as_json=as_json)


@dmg.command("mount")
@click.argument("image", type=click.Path(path_type=Path, dir_okay=False))
@click.argument("mountpoint", type=click.Path(path_type=Path, file_okay=False))
@click.option("-f", "--foreground", is_flag=True, help="Stay in the foreground; Ctrl-C unmounts.")
@click.option("--allow-other", is_flag=True, help="Let other users in.")
def dmg_mount(image: Path, mountpoint: Path, foreground: bool, allow_other: bool) -> None:
    """Mount IMAGE read-only at MOUNTPOINT (FUSE).

    \b
    Example:
      darkstorage dmg mount photos.dmg /mnt/photos
      darkstorage umount /mnt/photos
    """
    from .sources import run_image_mount

    image = image.absolute()
    mountpoint = mountpoint.absolute()
    argv = ["dmg", "mount", str(image), str(mountpoint)] + (["--allow-other"] if allow_other else [])
    run_image_mount(
        lambda p: _open(p).volume,
        image,
        mountpoint,
        foreground=foreground,
        fsname=f"darkstorage-dmg:{image.name}",
        allow_other=allow_other,
        argv=argv,
    )


def _dir_target(dest: Path, path: str) -> Path:
    """*dest* for a folder member: refuse a symlink already standing there (it could lead out)."""
    if dest.is_symlink():
        raise UnsafePathError(f"refusing to extract folder {path!r} over a symlink in the target")
    return dest


def _copy_out(volume: Any, e: Any, dest: Path) -> None:
    """Write entry *e* of *volume* to *dest* (file or symlink), with its mode and times."""
    if e.kind == "symlink":
        if dest.is_symlink() or dest.exists():
            dest.unlink()
        os.symlink(volume.readlink(e.ino), dest)
        return
    tmp = dest.with_name(f".{dest.name}.dmg-part")
    with open(tmp, "wb") as f:
        for off in range(0, e.size, _COPY_BYTES):
            f.write(volume.read(e.ino, off, _COPY_BYTES))
    os.chmod(tmp, stat.S_IMODE(e.mode))
    os.utime(tmp, ns=(e.atime_ns, e.mtime_ns))
    os.replace(tmp, dest)


@dmg.command("extract")
@click.argument("image", type=click.Path(path_type=Path, dir_okay=False))
@click.option("--pattern", "patterns", multiple=True, help="Only paths or names matching this glob (repeatable).")
@click.option("--output", "-o", type=click.Path(path_type=Path, file_okay=False), required=True, help="Target folder.")
@json_option
def dmg_extract(image: Path, patterns: tuple[str, ...], output: Path, as_json: bool) -> None:
    """Copy files out of IMAGE into OUTPUT (paths that would leave OUTPUT are refused: exit 19).

    \b
    Example:
      darkstorage dmg extract photos.dmg --pattern "*.pdf" --output ./out
    """
    from imaging.common import safe_join

    output.mkdir(parents=True, exist_ok=True)
    n_files = n_bytes = 0
    with _open(image) as d:
        vol = d.volume
        for path, e in d.entries():
            if (
                patterns
                and e.kind != "dir"
                and not any(
                    fnmatch.fnmatch(path, pat) or fnmatch.fnmatch(path.rsplit("/", 1)[-1], pat) for pat in patterns
                )
            ):
                continue
            dest = safe_join(output, path)
            if e.kind == "dir":
                _dir_target(dest, path)
                if not patterns:
                    dest.mkdir(parents=True, exist_ok=True)
                continue
            dest.parent.mkdir(parents=True, exist_ok=True)
            _copy_out(vol, e, dest)
            n_files += 1
            n_bytes += e.size
    if as_json:
        emit_json({"files": n_files, "bytes": n_bytes, "output": str(output)})
    else:
        console.print(f"extracted {n_files} file(s), {format_size(n_bytes)} into {output}")


@dmg.command("sync")
@click.argument("image", type=click.Path(path_type=Path, dir_okay=False))
@click.option("--to", "bucket", required=True, help="The bucket (or bucket/path) to restore into.")
@click.option("--dry-run", is_flag=True, help="Only show what would be copied.")
@json_option
def dmg_sync(image: Path, bucket: str, dry_run: bool, as_json: bool) -> None:
    """Restore IMAGE's files into a bucket through the running mount: new and changed files
    (size or modification time differ) are copied; nothing in the bucket is deleted.

    \b
    Example:
      darkstorage dmg sync photos.dmg --to photos --dry-run
      darkstorage dmg sync photos.dmg --to photos
    """
    from imaging.common import safe_join
    from pool.pool import Pool
    from vfs.mount import read_record

    pool = Pool.open()
    try:
        rec = read_record(pool)
        names = {b.name for b in pool.bucket_infos()}
    finally:
        pool.close()
    name, _, sub = bucket.strip("/").partition("/")
    if name not in names:
        raise NotFoundError(f"no such bucket: {name}")
    if rec is None:
        raise NotFoundError("the pool is not mounted: run `darkstorage mount DIR` first, then sync again")
    target = Path(str(rec["mountpoint"])) / name / sub if sub else Path(str(rec["mountpoint"])) / name
    copied: list[str] = []
    unchanged = 0
    with _open(image) as d:
        vol = d.volume
        for path, e in d.entries():
            dest = safe_join(target, path)
            if e.kind == "dir":
                _dir_target(dest, path)
                if not dry_run:
                    dest.mkdir(parents=True, exist_ok=True)
                continue
            try:
                st = os.lstat(dest)
                same = (
                    e.kind == "symlink"
                    and stat.S_ISLNK(st.st_mode)
                    and os.readlink(dest) == os.fsdecode(vol.readlink(e.ino))
                ) or (
                    e.kind == "file"
                    and stat.S_ISREG(st.st_mode)
                    and st.st_size == e.size
                    and st.st_mtime_ns // 1_000_000_000 == e.mtime_ns // 1_000_000_000
                )
            except FileNotFoundError:
                same = False
            if same:
                unchanged += 1
                continue
            copied.append(path)
            if not dry_run:
                dest.parent.mkdir(parents=True, exist_ok=True)
                _copy_out(vol, e, dest)
    if as_json:
        emit_json({"target": str(target), "dry_run": dry_run, "copied": copied, "unchanged": unchanged})
        return
    verb = "would copy" if dry_run else "copied"
    for p in copied if dry_run else []:
        console.print(f"  {p}", markup=False)
    console.print(f"{verb} {len(copied)} file(s) into {target}; {unchanged} already up to date")
