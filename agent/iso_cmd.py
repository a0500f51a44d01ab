"""``darkstorage bucket2iso`` and ``darkstorage iso verify|mount|extract|ls``."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

import click

from pool.errors import ImageCorruptError, UsageError
from pool.units import format_size

from .console import console, emit_json, print_listing, transfer_progress
from .jobs_cmd import schedule_options
from .params import SIZE, SIZE_OR_UNLIMITED
from .passwords import PasswordSource, password_options

json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")


@click.command("bucket2iso")
@schedule_options("bucket2iso")
@click.argument("source")
@click.option(
    "--output", "-o", type=click.Path(path_type=Path, dir_okay=False), required=True, help="The .iso to write."
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["iso9660", "rock-ridge", "joliet", "udf"]),
    default=None,
    help="Only this tree next to ISO 9660 (default: Rock Ridge + Joliet + UDF together).",
)
@click.option("--volume-name", default="DARKSTORAGE", show_default=True, help="Volume label.")
@click.option("--publisher", default="", help="Publisher identifier (PVD).")
@click.option("--application", default="DARKSTORAGE", show_default=True, help="Application identifier (PVD).")
@click.option("--copyright", "copyright_", default="", help="A root file name, or text stored as COPYRIGHT.TXT.")
@click.option("--abstract", default="", help="A root file name, or text stored as ABSTRACT.TXT.")
@click.option("--bootable", is_flag=True, help="Add an El Torito BIOS entry (no emulation, boot info table).")
@click.option("--boot-image", default=None, help="BIOS boot image inside SOURCE, e.g. boot/isolinux.bin.")
@click.option("--uefi", is_flag=True, help="Add an El Torito UEFI entry (platform 0xEF).")
@click.option("--efi-image", default=None, help="FAT image inside SOURCE holding EFI/BOOT/BOOTX64.EFI.")
@click.option("--hybrid", is_flag=True, help="Also write an MBR (and a GPT with --uefi) so a USB stick boots.")
@click.option("--bios", is_flag=True, help="With --hybrid: put the isohybrid MBR boot code in (needs --bootable).")
@click.option(
    "--isohybrid-mbr",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="With --hybrid --bios: the MBR boot code (default: isolinux's /usr/lib/ISOLINUX/isohdpfx.bin).",
)
@click.option("--split", "split_bytes", type=SIZE, default=None, help="Split into numbered chunks of this size (4GB).")
@click.option("--compress", type=click.Choice(["gzip"]), default=None, help="Compress the image (standard gzip).")
@click.option(
    "--encrypt",
    is_flag=True,
    help="Encrypt the image in the age format; the passphrase comes from --password, --password-env or --password-file.",
)
@password_options(what="age passphrase")
@click.option(
    "--source-date-epoch",
    type=int,
    envvar="SOURCE_DATE_EPOCH",
    default=None,
    help="Build time in seconds since the epoch: same tree + options give the same bytes.",
)
@click.option(
    "--permissions",
    type=click.Choice(["preserve", "normalize"]),
    default="preserve",
    show_default=True,
    help="Rock Ridge/UDF modes and owners: the source's, or normalize as mkisofs -r "
    "(files 0444, or 0555 with any x bit; folders 0555; uid/gid 0).",
)
@click.option(
    "--max-file-size",
    type=SIZE_OR_UNLIMITED,
    default=None,
    help="Refuse SOURCE (before writing) if a file is larger than this (default: unlimited; files over "
    "4 GiB - 1 become ISO 9660 level 3 multi-extent files, read by Linux, xorriso and 7-Zip).",
)
@click.option("--multi-session", is_flag=True, help="An image sessions can be appended to (no UDF tree).")
@click.option("--append", is_flag=True, help="With --multi-session: add SOURCE as a new session to --output.")
@json_option
def bucket2iso(
    source: str,
    output: Path,
    fmt: str | None,
    volume_name: str,
    publisher: str,
    application: str,
    copyright_: str,
    abstract: str,
    bootable: bool,
    boot_image: str | None,
    uefi: bool,
    efi_image: str | None,
    hybrid: bool,
    bios: bool,
    isohybrid_mbr: Path | None,
    split_bytes: int | None,
    compress: str | None,
    encrypt: bool,
    password: PasswordSource,
    source_date_epoch: int | None,
    permissions: str,
    max_file_size: int | None,
    multi_session: bool,
    append: bool,
    as_json: bool,
) -> None:
    """Write an ISO image of SOURCE (a bucket name, a bucket path or a folder).

    \b
    Example:
      darkstorage bucket2iso photos --output photos.iso
      darkstorage bucket2iso os-bucket -o boot.iso --bootable --boot-image boot/isolinux.bin \\
          --uefi --efi-image boot/efiboot.img --hybrid --bios
      darkstorage bucket2iso ~/docs -o docs.iso --compress gzip --encrypt --password --split 4GB
      darkstorage bucket2iso ~/docs -o docs.iso --encrypt --password-env ISO_PW --schedule "0 3 * * *"
      darkstorage bucket2iso photos -o photos.iso --multi-session --append
    """
    from imaging.common import apply_permissions, check_max_file_size, walk_tree
    from imaging.iso_build import IsoOptions, build_layout
    from imaging.iso_hybrid import load_isohybrid_mbr
    from imaging.iso_post import post_process
    from imaging.iso_session import append_session
    from imaging.iso_write import write_image

    from .sources import source_tree

    if bootable != bool(boot_image):
        raise UsageError("--bootable and --boot-image go together")
    if uefi != bool(efi_image):
        raise UsageError("--uefi and --efi-image go together")
    if bios and not hybrid:
        raise UsageError("--bios only applies to --hybrid (El Torito BIOS booting is --bootable)")
    if isohybrid_mbr is not None and not bios:
        raise UsageError("--isohybrid-mbr only applies to --hybrid --bios")
    if bios and not bootable:
        raise UsageError("--hybrid --bios needs a BIOS boot image (--bootable --boot-image)")
    mbr_code = load_isohybrid_mbr(isohybrid_mbr) if bios else None
    if encrypt and not password.given:
        raise UsageError(
            "--encrypt needs the age passphrase: --password (asks), --password-env VAR or --password-file FILE"
        )
    if password.given and not encrypt:
        raise UsageError("--password, --password-env and --password-file go with --encrypt")
    if append and not multi_session:
        raise UsageError("--append needs --multi-session")
    if multi_session and (fmt == "udf" or compress or encrypt or split_bytes or hybrid):
        raise UsageError(
            "--multi-session images are plain .iso files with Rock Ridge/Joliet (no UDF, gzip, age, split, hybrid)"
        )
    if split_bytes is not None and split_bytes < 2048:
        raise UsageError("--split needs at least 2048 bytes per chunk")
    passphrase = password.get(confirm=True) if encrypt else None
    started = time.monotonic()
    with source_tree(source) as root:
        if append:
            if max_file_size is not None:
                check_max_file_size(walk_tree(root), max_file_size)
            digest = append_session(
                output,
                root,
                volume_name=volume_name,
                joliet=fmt in (None, "joliet"),
                source_date_epoch=source_date_epoch,
                normalize=permissions == "normalize",
            )
            _report(
                {"image": str(output), "sha256": digest, "appended": True, "size_bytes": output.stat().st_size}, as_json
            )
            return
        tree = apply_permissions(walk_tree(root), permissions)
        check_max_file_size(tree, max_file_size)
        opts = IsoOptions.for_format(
            fmt,
            volume_name=volume_name,
            publisher=publisher,
            application=application,
            copyright=copyright_,
            abstract=abstract,
            boot_image=boot_image,
            efi_image=efi_image,
            source_date_epoch=source_date_epoch,
        )
        if multi_session:  # xorriso extends Rock Ridge and Joliet, not UDF
            opts = dataclasses.replace(opts, udf=False)
        layout = build_layout(tree, opts)
        output.parent.mkdir(parents=True, exist_ok=True)
        staged = output if not (compress or encrypt or split_bytes) else output.with_name(output.name + ".raw")
        progress, task = transfer_progress(f"writing {output.name}", 1)
        with progress:
            result = write_image(
                layout,
                staged,
                hybrid=hybrid,
                hybrid_bios=bios,
                hybrid_mbr=mbr_code,
                progress=lambda d, t: progress.update(task, completed=d, total=t),
            )
        paths = post_process(
            staged,
            output,
            gzip_level=6 if compress else None,
            passphrase=passphrase,
            split_bytes=split_bytes,
            mtime_s=layout.build_time_s,
        )
    _report(
        {
            "image": str(paths[0]) if len(paths) == 1 else [str(p) for p in paths],
            "sha256": result.sha256,
            "size_bytes": result.size_bytes,
            "files": result.files,
            "skipped": tree.skipped + layout.skipped,
            "changed_while_copied": result.changed,
            "generated": layout.generated,
            "elapsed_s": round(time.monotonic() - started, 3),
        },
        as_json,
    )


def _report(data: dict[str, Any], as_json: bool) -> None:
    if as_json:
        emit_json(data)
        return
    images = data["image"] if isinstance(data["image"], list) else [data["image"]]
    verb = "appended a session to" if data.get("appended") else "wrote"
    console.print(f"{verb} {', '.join(images)} ({format_size(data['size_bytes'])} ISO, sha256 {data['sha256'][:16]}…)")
    for rel in data.get("skipped", []):
        console.print(f"  skipped {rel}")
    for rel in data.get("changed_while_copied", []):
        console.print(f"  [yellow]changed while copied:[/] {rel}")


@click.group()
def iso() -> None:
    """Check, list, extract and mount ISO images.

    \b
    Example:
      darkstorage iso verify backup.iso
      darkstorage iso ls backup.iso --long
      darkstorage iso extract backup.iso --pattern "*.pdf" --output ./extracted/
      darkstorage iso mount backup.iso /mnt/backup
    """


image_arg = click.argument("image", type=click.Path(path_type=Path, dir_okay=False))


@iso.command("verify")
@image_arg
@click.option(
    "--checksum",
    type=click.Choice(["SHA256", "SHA512", "SHA1", "MD5", "BLAKE2B"], case_sensitive=False),
    default=None,
    help="The sidecar to check: IMAGE.sha256 (default, written with every image; checked when "
    "present), or one made by sha512sum/sha1sum/md5sum/b2sum as IMAGE.sha512/.sha1/.md5/.b2 "
    "(required when named).",
)
@json_option
def iso_verify(image: Path, checksum: str | None, as_json: bool) -> None:
    """Check IMAGE: structure of every tree, sidecar digest, hybrid GPT, each file's digest.

    Exits 18 and names the bad part when something is damaged; exits 3 when the sidecar
    --checksum names is missing.

    \b
    Example:
      darkstorage iso verify backup.iso
      darkstorage iso verify backup.iso --checksum SHA512   # against backup.iso.sha512
    """
    from imaging.iso_ops import verify_image

    if not image.is_file():
        from pool.errors import NotFoundError

        raise NotFoundError(f"no such image: {image}")
    report = verify_image(image, checksum=checksum or "SHA256", require_sidecar=checksum is not None)
    if as_json:
        emit_json(
            {
                "image": str(image),
                "ok": report.ok,
                "problems": report.problems,
                "files_checked": report.files_checked,
                "sidecar": report.sidecar,
                "manifest": report.manifest,
            }
        )
    else:
        for p in report.problems:
            console.print(f"[red]bad[/] {p}")
        if report.ok:
            sidecar = {True: "sidecar ok", False: "sidecar mismatch", None: "no sidecar"}[report.sidecar]
            files = f"{report.files_checked} file digests ok" if report.manifest else "no per-file manifest"
            console.print(f"{image.name}: ok ({sidecar}, {files})")
    if not report.ok:
        raise ImageCorruptError(
            f"{image.name}: {report.problems[0]}"
            + (f" (+{len(report.problems) - 1} more)" if len(report.problems) > 1 else "")
        )


@iso.command("ls")
@image_arg
@click.option("--long", "-l", "long_", is_flag=True, help="Mode, owner, size and time too.")
@json_option
def iso_ls(image: Path, long_: bool, as_json: bool) -> None:
    """List the entries of IMAGE.

    \b
    Example:
      darkstorage iso ls backup.iso --long
    """
    from imaging.iso_read import IsoReader

    with IsoReader(image) as reader:
        rows = [(n.rel, n, n.target.decode("utf-8", "surrogateescape")) for _, n in reader.walk()]
    print_listing(rows, long_=long_, as_json=as_json)


@iso.command("extract")
@image_arg
@click.option("--pattern", default=None, help='Only entries whose path or name matches (glob, e.g. "*.pdf").')
@click.option("--output", "-o", type=click.Path(path_type=Path, file_okay=False), required=True, help="Target folder.")
@json_option
def iso_extract(image: Path, pattern: str | None, output: Path, as_json: bool) -> None:
    """Copy entries of IMAGE into a folder (refuses entries that would land outside it: exit 19).

    \b
    Example:
      darkstorage iso extract backup.iso --pattern "*.pdf" --output ./extracted/
    """
    from imaging.iso_ops import extract

    r = extract(image, output, pattern=pattern)
    if as_json:
        emit_json({"files": r.files, "dirs": r.dirs, "symlinks": r.symlinks, "bytes": r.bytes, "output": str(output)})
    else:
        console.print(
            f"extracted {r.files} file(s), {r.dirs} folder(s), {r.symlinks} symlink(s) "
            f"({format_size(r.bytes)}) into {output}"
        )


@iso.command("mount")
@image_arg
@click.argument("mountpoint", type=click.Path(path_type=Path, file_okay=False))
@click.option("--foreground", is_flag=True, help="Serve in this process until unmounted.")
@click.option("--allow-other", is_flag=True, help="Let other users see the mount (needs user_allow_other).")
def iso_mount(image: Path, mountpoint: Path, foreground: bool, allow_other: bool) -> None:
    """Mount IMAGE read-only at MOUNTPOINT through FUSE (no kernel ISO driver needed).

    \b
    Example:
      darkstorage iso mount backup.iso /mnt/backup
      darkstorage umount /mnt/backup
    """
    from imaging.iso_read import IsoReader

    from .sources import run_image_mount

    argv = ["iso", "mount", str(image.absolute()), str(mountpoint.absolute())] + (
        ["--allow-other"] if allow_other else []
    )
    run_image_mount(
        lambda p: IsoReader(p),
        image,
        mountpoint,
        foreground=foreground,
        fsname=f"darkstorage-iso:{image.name}",
        allow_other=allow_other,
        argv=argv,
    )


__all__ = ["bucket2iso", "iso"]
