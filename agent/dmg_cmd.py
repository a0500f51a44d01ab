"""``darkstorage bucket2dmg`` and ``darkstorage dmg verify|ls|mount|extract|sync``."""

from __future__ import annotations

import contextlib
import fnmatch
import os
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from pool.errors import ImageCorruptError, NotFoundError, UnsafePathError, UsageError
from pool.units import format_size, parse_size

from .console import console, emit_json, print_listing, transfer_progress
from .dmg_options import MacLayout, mac_layout_options, new_mount_folder
from .jobs_cmd import schedule_options
from .passwords import PasswordSource, password_options

json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
_COPY_BYTES = 1 << 20


def _size(value: str) -> int | None:
    if value == "auto":
        return None
    try:
        return parse_size(value)
    except Exception as e:
        raise UsageError(f"--size: {e}") from None


_CHILD_PASSWORD_ENV = "DARKSTORAGE_DMG_PASSWORD"  # hands the password to a background `dmg mount`


@click.command("bucket2dmg")
@schedule_options("bucket2dmg")
@click.argument("source")
@click.option(
    "--output",
    "-o",
    type=click.Path(path_type=Path),
    required=True,
    help="The .dmg (.sparseimage, .sparsebundle) to write.",
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["UDZO", "UDBZ", "ULFO", "ULMO", "UDRO", "SPARSE", "SPARSEBUNDLE"]),
    default="UDZO",
    show_default=True,
    help="zlib, bzip2, LZFSE, LZMA, uncompressed read-only; growable .sparseimage or .sparsebundle.",
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
@click.option("--encrypt", type=click.Choice(["AES-128", "AES-256"]), default=None, help="Encrypt (needs a password).")
@password_options
@click.option("--band-size", default=None, help="Band size: SPARSE (default: one header's worth), SPARSEBUNDLE (8MB).")
@mac_layout_options
@click.option(
    "--incremental",
    is_flag=True,
    help="Chain images beside OUTPUT: a full one first, then only what changed (see `dmg restore`).",
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
    encrypt: str | None,
    password: PasswordSource,
    band_size: str | None,
    layout: MacLayout,
    incremental: bool,
    as_json: bool,
) -> None:
    """Write a macOS disk image of SOURCE (a bucket name, a bucket path or a folder).

    Writes OUTPUT and OUTPUT.sha256. Chunks compress in parallel on every core.

    \b
    Example:
      darkstorage bucket2dmg photos --output photos.dmg
      darkstorage bucket2dmg ./site --output site.dmg --format ULFO --volume-name Site
      darkstorage bucket2dmg photos -o p.dmg --include-permissions --source-date-epoch 1700000000
      darkstorage bucket2dmg secret -o s.dmg --encrypt AES-256 --password
      darkstorage bucket2dmg active -o active.sparsebundle --format SPARSEBUNDLE --size 10GB
      darkstorage bucket2dmg vault -o v.sparsebundle --format SPARSEBUNDLE --encrypt AES-256 --password
      darkstorage bucket2dmg app -o app.dmg --icon app.icns --background bg.png --license LICENSE.txt
      darkstorage bucket2dmg large-bucket --output backup.dmg --compress UDZO --size auto
      darkstorage bucket2dmg photos -o ~/Backups/photos.dmg --incremental
      darkstorage bucket2dmg photos -o ~/Backups/daily.dmg --schedule "0 2 * * *" --incremental
    """
    from imaging.dmg import build_dmg
    from imaging.hfsplus import HfsOptions

    from .sources import source_tree

    size_bytes = _size(size)
    if size_bytes is not None and filesystem != "hfs+":
        raise UsageError("--size applies to HFS+ volumes only")
    if password.given and not encrypt:
        raise UsageError("a password is only used with --encrypt AES-128|AES-256")
    if encrypt and not password.given:
        raise UsageError("--encrypt needs --password (asks), --password-env VAR or --password-file FILE")
    secret = password.get(confirm=True) if encrypt else None
    band_bytes = _size(band_size) if band_size is not None else None
    if incremental and fmt == "SPARSEBUNDLE":
        raise UsageError("--incremental chains image files: use a UDIF format or SPARSE, not SPARSEBUNDLE")
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

        def build(tree: Any, path: Path) -> Any:
            return build_dmg(
                root,
                path,
                fmt=fmt,
                filesystem=filesystem,
                opts=opts,
                progress=lambda n: bar.advance(task, n),
                on_plan=lambda total: bar.update(task, total=total),
                encrypt=encrypt,
                password=secret,
                band_bytes=band_bytes,
                finder=layout.finder,
                license_text=layout.license_text,
                tree=tree,
            )

        with bar:
            if incremental:
                from .dmg_chain import build_increment

                chained = build_increment(root, output, build, secret)
            else:
                res = build(None, output)
    if incremental:
        from .dmg_chain import report_increment

        report_increment(chained, as_json)
        return
    data = {
        "image": str(res.image),
        "format": fmt,
        "filesystem": filesystem,
        "case_sensitive": res.case_sensitive,
        "files": res.files,
        "folders": res.folders,
        "skipped": res.skipped,
        "volume_bytes": res.volume_bytes,
        "image_bytes": res.image_bytes,
        "sha256": res.sha256,
        "encryption": res.encryption,
        "chunks": res.udif.chunk_counts if res.udif else None,
        "bands": res.bands if res.udif is None else None,
        "license": res.license,
    }
    if as_json:
        emit_json(data)
        return
    kind = "HFSX (case-sensitive)" if res.case_sensitive else ("HFS+" if filesystem == "hfs+" else "ISO9660+UDF")
    enc = f", {res.encryption}" if res.encryption else ""
    console.print(
        f"wrote {output} ({format_size(res.image_bytes)}, {fmt}{enc}, {kind}): {res.files} file(s), "
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
      darkstorage dmg restore ~/Backups/daily.chain.json --output ./restored
    """


def _open(image: Path, password: PasswordSource) -> Any:
    from imaging.dmg import DmgImage

    return DmgImage(image, password=lambda: password.get())


@dmg.command("verify")
@click.argument("image", type=click.Path(path_type=Path))
@password_options
@json_option
def dmg_verify(image: Path, password: PasswordSource, as_json: bool) -> None:
    """Check every checksum in IMAGE (data fork, each chunk, each partition, master), the volume's
    structures (HFS+, or ISO9660/UDF), and the SHA-256 sidecar. Exit code 18 names what is damaged.
    Sparse images have no checksums of their own: their volume and sidecar are checked.

    \b
    Example:
      darkstorage dmg verify photos.dmg
      darkstorage dmg verify secret.dmg --password
    """
    from imaging.common import check_sidecar
    from imaging.dmg import open_disk
    from imaging.sparse import check_bundle_sidecar
    from imaging.udif_read import UdifImage

    disk = open_disk(image, lambda: password.get())
    has_checksums = isinstance(disk, UdifImage)
    has_license = isinstance(disk, UdifImage) and disk.license_text is not None
    try:
        problems: list[str] = []
        if isinstance(disk, UdifImage):
            bar, task = transfer_progress(f"verifying {image.name}", disk.size_bytes)
            with bar:
                problems = disk.verify(progress=lambda n: bar.advance(task, n))
        if not problems:
            problems += _volume_problems(disk)
    finally:
        disk.close()
    if image.is_dir():
        bundle = check_bundle_sidecar(image)
        sidecar = None if bundle is None else not bundle
        problems += [f"{image.name}.sha256: {p}" for p in bundle or []]
    else:
        sidecar = check_sidecar(image)
        if sidecar is False:
            problems.append(f"{image.name}.sha256: the SHA-256 does not match")
    if as_json:
        emit_json(
            {"image": str(image), "ok": not problems, "problems": problems, "sidecar": sidecar, "license": has_license}
        )
    else:
        for p in problems:
            console.print(f"[red]bad:[/] {p}")
    if problems:
        raise ImageCorruptError(
            f"{image.name} is damaged: {problems[0]}" + (f" (+{len(problems) - 1} more)" if len(problems) > 1 else "")
        )
    if not as_json:
        side = "sidecar matches" if sidecar else "no sidecar"
        what = "every checksum matches" if has_checksums else "the volume is sound (no checksums in this format)"
        lic = ", licence agreement present" if has_license else ""
        console.print(f"{image.name}: {what} ({side}{lic})", style="green")


def _volume_problems(img: Any) -> list[str]:
    """The volume's own damage once the container checks passed: HFS+ structures (catalog,
    extents, attributes) or the ISO/UDF descriptors and directories pycdlib checks."""
    from imaging.dmg_iso import DmgIsoVolume, looks_like_iso
    from imaging.hfsplus_read import HfsVolume
    from imaging.udif_read import UdifImage

    try:
        if looks_like_iso(img):
            DmgIsoVolume(img).close()
            return []
        if not isinstance(img, UdifImage) or any("Apple_HFS" in p.name for p in img.partitions):
            return HfsVolume(img.read, img.size_bytes).check()
    except ImageCorruptError as e:
        return [str(e)]
    return []


@dmg.command("info")
@click.argument("image", type=click.Path(path_type=Path))
@password_options
@json_option
def dmg_info(image: Path, password: PasswordSource, as_json: bool) -> None:
    """Show what IMAGE is and holds: container, codecs, encryption, volume, licence agreement,
    volume icon and Finder window (background picture).

    \b
    Example:
      darkstorage dmg info app.dmg
      darkstorage dmg info app.dmg --json
    """
    from imaging.dmg import image_kind
    from imaging.dmg_finder import finder_summary
    from imaging.hfsplus_read import HfsVolume
    from imaging.sparse import SparseBundle, SparseImage, bundle_is_encrypted
    from imaging.udif import CHUNK_NAMES
    from imaging.udif_read import UdifImage

    kind = image_kind(image)
    with _open(image, password) as d:
        disk, vol = d.disk, d.volume
        udif = isinstance(disk, UdifImage)
        container = "UDIF" if udif else "SPARSE" if isinstance(disk, SparseImage) else "SPARSEBUNDLE"
        encrypted = kind == "ENCRYPTED" or (isinstance(disk, SparseBundle) and bundle_is_encrypted(image))
        info: dict[str, Any] = {
            "image": str(image),
            "container": container,
            "encrypted": encrypted,
            "chunks": sorted({CHUNK_NAMES.get(t, hex(t)) for t in disk.chunk_types}) if udif else None,
            "filesystem": d.filesystem,
            "volume_bytes": disk.size_bytes,
            "license": disk.license_text if udif else None,
        }
        if isinstance(vol, HfsVolume):
            info.update(volume_name=vol.volume_name, case_sensitive=vol.case_sensitive, files=vol.file_count)
            info.update(finder_summary(vol))
    if as_json:
        emit_json(info)
        return
    for key, value in info.items():
        if key == "license":
            value = f"yes ({len(value.splitlines())} lines)" if value else "no"
        elif key == "background" and value:
            value = f"{value['path']} (alias: CNID {value['cnid']} in folder {value['folder_cnid']})"
        console.print(f"{key}: {value if value is not None else '-'}", markup=False)


@dmg.command("ls")
@click.argument("image", type=click.Path(path_type=Path))
@click.option("--long", "-l", "long_", is_flag=True, help="Mode, owner, size and date too.")
@password_options
@json_option
def dmg_ls(image: Path, long_: bool, password: PasswordSource, as_json: bool) -> None:
    """List the files in IMAGE.

    \b
    Example:
      darkstorage dmg ls photos.dmg --long
    """
    with _open(image, password) as d:
        rows = [(p, e, None) for p, e in d.entries()]
    print_listing(rows, long_=long_, as_json=as_json)


@dmg.command("mount")
@click.argument("image", type=click.Path(path_type=Path))
@click.argument("mountpoint", type=click.Path(path_type=Path, file_okay=False), required=False)
@click.option("-f", "--foreground", is_flag=True, help="Stay in the foreground; Ctrl-C unmounts.")
@click.option("--allow-other", is_flag=True, help="Let other users in.")
@password_options
def dmg_mount(
    image: Path, mountpoint: Path | None, foreground: bool, allow_other: bool, password: PasswordSource
) -> None:
    """Mount IMAGE read-only at MOUNTPOINT (FUSE). Without MOUNTPOINT: in a new folder named
    after the image in the current folder (./photos for photos.dmg, ./photos-2 if taken).

    \b
    Example:
      darkstorage dmg mount photos.dmg /mnt/photos
      darkstorage dmg mount photos.dmg
      darkstorage umount /mnt/photos
    """
    from .sources import run_image_mount

    image = image.absolute()
    made = None
    if mountpoint is None:
        if not image.exists():
            raise NotFoundError(f"no such image: {image}")
        mountpoint = made = new_mount_folder(image)
    mountpoint = mountpoint.absolute()
    argv = ["dmg", "mount", str(image), str(mountpoint)] + (["--allow-other"] if allow_other else [])

    def view(p: Path) -> Any:
        volume = _open(p, password).volume
        if password.value is not None and not foreground:  # the background server gets it privately
            os.environ[_CHILD_PASSWORD_ENV] = password.value
            argv.extend(["--password-env", _CHILD_PASSWORD_ENV])
        return volume

    try:
        run_image_mount(
            view,
            image,
            mountpoint,
            foreground=foreground,
            fsname=f"darkstorage-dmg:{image.name}",
            allow_other=allow_other,
            argv=argv,
        )
    except BaseException:
        if made is not None and not os.path.ismount(made):
            with contextlib.suppress(OSError):
                made.rmdir()  # the folder made for this mount
        raise


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
            data = volume.read(e.ino, off, _COPY_BYTES)
            if data.count(0) == len(data):  # all zeros: leave a hole (sparse files stay sparse)
                f.seek(len(data), os.SEEK_CUR)
            else:
                f.write(data)
        f.truncate(e.size)
    os.chmod(tmp, stat.S_IMODE(e.mode))
    os.utime(tmp, ns=(e.atime_ns, e.mtime_ns))
    os.replace(tmp, dest)


def extract_entries(
    d: Any, output: Path, keep: Callable[[str, Any], bool] | None = None, *, make_dirs: bool = True
) -> tuple[int, int]:
    """Copy the entries of open image *d* (a :class:`imaging.dmg.DmgImage`) that *keep* accepts
    into folder *output*, hard links as hard links; folders are created when *make_dirs*.

    Returns:
        (files and symlinks written, their bytes).

    Raises:
        UnsafePathError: an entry would land outside *output* (``..``, absolute, via a symlink).
    """
    from imaging.common import safe_join

    n_files = n_bytes = 0
    linked: dict[int, Path] = {}  # indirect node CNID -> first path extracted (hard links stay links)
    vol = d.volume
    for path, e in d.entries():
        if keep is not None and not keep(path, e):
            continue
        dest = safe_join(output, path)
        if e.kind == "dir":
            _dir_target(dest, path)
            if make_dirs:
                dest.mkdir(parents=True, exist_ok=True)
            continue
        dest.parent.mkdir(parents=True, exist_ok=True)
        first = linked.get(getattr(e, "link", 0))
        if first is not None:
            dest.unlink(missing_ok=True)
            os.link(first, dest)
        else:
            _copy_out(vol, e, dest)
            if getattr(e, "link", 0):
                linked[e.link] = dest
        n_files += 1
        n_bytes += e.size
    return n_files, n_bytes


@dmg.command("extract")
@click.argument("image", type=click.Path(path_type=Path))
@click.option("--pattern", "patterns", multiple=True, help="Only paths or names matching this glob (repeatable).")
@click.option("--output", "-o", type=click.Path(path_type=Path, file_okay=False), required=True, help="Target folder.")
@password_options
@json_option
def dmg_extract(image: Path, patterns: tuple[str, ...], output: Path, password: PasswordSource, as_json: bool) -> None:
    """Copy files out of IMAGE into OUTPUT (paths that would leave OUTPUT are refused: exit 19).

    \b
    Example:
      darkstorage dmg extract photos.dmg --pattern "*.pdf" --output ./out
    """
    output.mkdir(parents=True, exist_ok=True)

    def keep(path: str, e: Any) -> bool:
        return (
            not patterns
            or e.kind == "dir"
            or any(fnmatch.fnmatch(path, pat) or fnmatch.fnmatch(path.rsplit("/", 1)[-1], pat) for pat in patterns)
        )

    with _open(image, password) as d:
        n_files, n_bytes = extract_entries(d, output, keep, make_dirs=not patterns)
    if as_json:
        emit_json({"files": n_files, "bytes": n_bytes, "output": str(output)})
    else:
        console.print(f"extracted {n_files} file(s), {format_size(n_bytes)} into {output}")


@dmg.command("sync")
@click.argument("image", type=click.Path(path_type=Path))
@click.option("--to", "bucket", required=True, help="The bucket (or bucket/path) to restore into.")
@click.option("--dry-run", is_flag=True, help="Only show what would be copied.")
@password_options
@json_option
def dmg_sync(image: Path, bucket: str, dry_run: bool, password: PasswordSource, as_json: bool) -> None:
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
    with _open(image, password) as d:
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


@dmg.command("restore")
@click.argument("chain_or_image", type=click.Path(path_type=Path))
@click.option("--output", "-o", type=click.Path(path_type=Path, file_okay=False), required=True, help="Target folder.")
@password_options
@json_option
def dmg_restore(chain_or_image: Path, output: Path, password: PasswordSource, as_json: bool) -> None:
    """Rebuild a folder from an incremental chain (``bucket2dmg --incremental``): verify every image,
    then replay the full image and each incremental one in order, applying deletions.

    CHAIN_OR_IMAGE is a NAME.chain.json (the latest state), one image of a chain (the state when
    that image was made), or a standalone image. Paths that would leave OUTPUT are refused: exit 19.

    \b
    Example:
      darkstorage dmg restore ~/Backups/daily.chain.json --output ./restored
      darkstorage dmg restore ~/Backups/daily-20261201-020000-incr.dmg --output ./as-of-dec-1
    """
    from .dmg_chain import restore_chain

    restore_chain(chain_or_image, output, password, as_json)
