"""``iso verify`` and ``iso extract``: check an image part by part, copy entries out safely."""

from __future__ import annotations

import fnmatch
import logging
import os
import struct
import zlib
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pool.errors import ImageCorruptError, NotFoundError, UnsafePathError

from .common import check_sidecar, checksum_name, safe_join, sidecar_path
from .iso_manifest import file_hasher, read_manifest
from .iso_read import IsoReader

log = logging.getLogger(__name__)


@dataclass
class VerifyReport:
    """What ``iso verify`` found.

    Attributes:
        problems: one line per bad part (structure, tree, partition table, image digest, file).
        files_checked: files whose SHA-256 was compared with the image's manifest.
        sidecar: True/False for a matching/mismatching sidecar, None when there is none.
        manifest: whether the image carries a per-file manifest.
    """

    image: Path
    problems: list[str] = field(default_factory=list)
    files_checked: int = 0
    sidecar: bool | None = None
    manifest: bool = False

    @property
    def ok(self) -> bool:
        return not self.problems


def _check_gpt(fd: int, report: VerifyReport) -> None:
    header = os.pread(fd, 92, 512)
    if header[:8] != b"EFI PART":
        return
    for label, hdr in (("primary", header), ("backup", None)):
        if hdr is None:
            (backup_lba,) = struct.unpack_from("<Q", header, 32)
            hdr = os.pread(fd, 92, backup_lba * 512)
            if hdr[:8] != b"EFI PART":
                report.problems.append("GPT: backup header missing at the end of the image")
                continue
        crc = struct.unpack_from("<I", hdr, 16)[0]
        if zlib.crc32(hdr[:16] + b"\0\0\0\0" + hdr[20:92]) != crc:
            report.problems.append(f"GPT: {label} header CRC32 mismatch")
        entries_lba, count, size, entries_crc = struct.unpack_from("<QIII", hdr, 72)
        if zlib.crc32(os.pread(fd, count * size, entries_lba * 512)) != entries_crc:
            report.problems.append(f"GPT: {label} partition entries CRC32 mismatch")


def verify_image(
    image: Path,
    *,
    checksum: str = "SHA256",
    require_sidecar: bool = False,
    progress: Callable[[int], None] | None = None,
) -> VerifyReport:
    """Check *image*: its sidecar digest, every directory tree, hybrid GPT, each file's digest
    against the manifest.

    Args:
        checksum: which sidecar to check: ``SHA256`` (``IMAGE.sha256``, written with every
            image), or ``SHA512``/``SHA1``/``MD5``/``BLAKE2B`` (``IMAGE.sha512``, ``.sha1``,
            ``.md5``, ``.b2``: made by ``sha512sum`` and friends, in their format).
        require_sidecar: a missing sidecar is an error rather than "no sidecar".

    Raises:
        UsageError: an unsupported *checksum*, or a sidecar not in its tool's format.
        NotFoundError: *image* does not exist, or *require_sidecar* and there is no sidecar.
    """
    name = checksum_name(checksum)
    report = VerifyReport(image=image)
    if require_sidecar and not sidecar_path(image, name).exists():
        raise NotFoundError(f"no {sidecar_path(image, name).name} beside {image.name} (--checksum {name})")
    report.sidecar = check_sidecar(image, algorithm=name, progress=progress)
    if report.sidecar is False:
        label = {"SHA256": "SHA-256", "SHA512": "SHA-512", "SHA1": "SHA-1", "BLAKE2B": "BLAKE2b"}.get(name, name)
        report.problems.append(f"image: {label} differs from {sidecar_path(image, name).name}")
    try:
        reader = IsoReader(image)
    except ImageCorruptError as e:
        report.problems.append(f"structure: {e}")
        return report
    with reader:
        for tree in ("joliet", "udf", "iso"):
            if (
                tree == reader.tree
                or (tree == "joliet" and not reader.iso.has_joliet())
                or (tree == "udf" and not reader.iso.has_udf())
            ):
                continue
            try:
                IsoReader(image, tree=tree).close()
            except ImageCorruptError as e:
                report.problems.append(f"{tree} tree: {e}")
        _check_gpt(reader._fd, report)
        try:
            manifest = read_manifest(reader._fd)
        except (ValueError, IndexError) as e:
            report.problems.append(f"manifest: {e}")
            manifest = None
        if manifest is None:
            return report
        report.manifest = True
        nodes = [(ino, node) for ino, node in reader.walk() if node.kind == "file"]
        by_rel = {node.rel: ino for ino, node in nodes}

        sample = next(iter(manifest.values()), "")

        def digest(ino: Any) -> str:
            h = file_hasher(sample)
            for chunk in reader.chunks(ino):
                h.update(chunk)
            return str(h.hexdigest())

        unnamed: list[tuple[str, str]] = []  # manifest entries whose name the tree does not show
        for rel, expected in manifest.items():
            ino = by_rel.pop(rel, None)
            if ino is None:
                unnamed.append((rel, expected))
                continue
            report.files_checked += 1
            if digest(ino) != expected:
                report.problems.append(f"file {rel}: its digest differs from the image's manifest (data damaged)")
        if unnamed:
            # plain ISO 9660 (mangled names) or Joliet-only images (shortened names): the files
            # left over are matched by their data, so a damaged one is still named
            left = Counter(digest(ino) for ino in by_rel.values())
            for rel, expected in unnamed:
                if left[expected] > 0:
                    left[expected] -= 1
                    report.files_checked += 1
                else:
                    report.problems.append(
                        f"file {rel}: no file in the {reader.tree} tree has its digest (data damaged or missing)"
                    )
    return report


@dataclass
class ExtractResult:
    files: int = 0
    dirs: int = 0
    symlinks: int = 0
    bytes: int = 0


def extract(image: Path, output: Path, *, pattern: str | None = None) -> ExtractResult:
    """Copy the entries of *image* matching *pattern* (fnmatch on path or name) into *output*.

    Every member path is checked with :func:`imaging.common.safe_join` before anything is written;
    symlinks are recreated as symlinks, never followed.

    Raises:
        UnsafePathError: an entry would land outside *output* (``..``, absolute, through a symlink).
        ImageCorruptError: the image cannot be read.
    """
    result = ExtractResult()
    with IsoReader(image) as reader:
        chosen = [
            (ino, node)
            for ino, node in reader.walk()
            if pattern is None
            or fnmatch.fnmatch(node.rel, pattern)
            or fnmatch.fnmatch(node.rel.rsplit("/", 1)[-1], pattern)
        ]
        for _, node in chosen:  # refuse the whole extraction before writing when a name is unsafe
            safe_join(output, node.rel)
        output.mkdir(parents=True, exist_ok=True)
        for ino, node in chosen:
            target = safe_join(output, node.rel)  # again: a symlink extracted earlier may redirect
            if node.kind == "dir":
                target.mkdir(parents=True, exist_ok=True)
                result.dirs += 1
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            if target.is_symlink() or target.exists():
                if target.is_dir() and not target.is_symlink():
                    raise UnsafePathError(f"refusing to replace folder {target} with {node.rel!r}")
                target.unlink()
            if node.kind == "symlink":
                os.symlink(node.target, target)
                result.symlinks += 1
                continue
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
            with os.fdopen(fd, "wb") as out:
                for chunk in reader.chunks(ino):
                    out.write(chunk)
                    result.bytes += len(chunk)
            os.chmod(target, node.mode & 0o7777)
            os.utime(target, ns=(node.mtime_ns, node.mtime_ns))
            result.files += 1
    return result
