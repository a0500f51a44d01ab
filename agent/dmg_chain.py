"""``bucket2dmg --incremental`` and ``dmg restore``: the CLI side of :mod:`imaging.dmg_incremental`."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pool.errors import ImageCorruptError
from pool.units import format_size

from .console import console, emit_json, transfer_progress


def image_problems(path: Path, password: str | None) -> list[str]:
    """What ``dmg verify`` would find in the image at *path*: its sidecar, every UDIF checksum,
    the volume's structures. [] when sound."""
    from imaging.common import check_sidecar
    from imaging.dmg import open_disk
    from imaging.udif_read import UdifImage

    from .dmg_cmd import _volume_problems

    problems: list[str] = []
    if check_sidecar(path) is False:
        problems.append(f"{path.name}.sha256 does not match the image")
    disk = open_disk(path, password)
    try:
        if isinstance(disk, UdifImage):
            problems += disk.verify()
        if not problems:
            problems += _volume_problems(disk)
    finally:
        disk.close()
    return problems


def build_increment(root: Path, output: Path, build: Callable[[Any, Path], Any], password: str | None) -> Any:
    """Add the next image of *output*'s chain (full or incremental) built by *build*, verified
    with :func:`image_problems`; the :class:`imaging.dmg_incremental.ChainResult`."""
    from imaging.dmg_incremental import build_chain_image

    return build_chain_image(root, output, build=build, verify=lambda p: image_problems(p, password))


def report_increment(r: Any, as_json: bool) -> None:
    data = {
        "image": str(r.image),
        "kind": r.entry.kind,
        "chain": str(r.chain),
        "sha256": r.entry.sha256,
        "changed": r.changed,
        "deleted": r.deleted,
        "bytes": r.entry.bytes,
        "image_bytes": r.image.stat().st_size,
    }
    if as_json:
        emit_json(data)
        return
    what = "full image" if r.entry.kind == "full" else "incremental image"
    console.print(
        f"wrote {r.image} ({what}, {format_size(data['image_bytes'])}): {len(r.changed)} new or changed "
        f"file(s) ({format_size(r.entry.bytes)}), {len(r.deleted)} deletion(s); chain {r.chain.name}",
        soft_wrap=True,
    )


def _delete(output: Path, rel: str) -> bool:
    """Remove *rel* under *output* (a file, symlink or whole folder) if present."""
    from imaging.common import safe_join

    target = safe_join(output, rel)
    if target.is_symlink() or target.is_file():
        target.unlink()
    elif target.is_dir():
        shutil.rmtree(target)
    else:
        return False
    return True


def restore_chain(path: Path, output: Path, password: Any, as_json: bool) -> None:
    """``dmg restore``: verify each image of the chain (SHA-256 against the chain file, sidecar,
    UDIF checksums, volume), then replay them into *output*.

    Args:
        password: a ``dmg_cmd.PasswordSource`` (asked for once, for every encrypted image).

    Raises:
        NotFoundError: no such chain or image; ImageCorruptError: an image is missing or damaged
        (nothing is written then); UnsafePathError: an entry or deletion would leave *output*.
    """
    from imaging.dmg import DmgImage, image_kind
    from imaging.dmg_incremental import MANIFEST_NAME, check_chain_image, read_manifest, resolve_chain

    from .dmg_cmd import extract_entries

    chain, count = resolve_chain(path)
    images = chain.images[:count]
    secret: Callable[[], str] = lambda: password.get()  # noqa: E731 - asked for only if one is encrypted
    bar, task = transfer_progress(f"verifying {len(images)} image(s)", len(images))
    with bar:
        for img in images:
            problems = check_chain_image(chain, img)
            if not problems:
                p = chain.image_path(img)
                problems = image_problems(p, secret() if image_kind(p) == "ENCRYPTED" else None)
            if problems:
                raise ImageCorruptError(f"not restoring: {problems[0]}")
            bar.advance(task, 1)
    output.mkdir(parents=True, exist_ok=True)
    files = deleted = n_bytes = 0
    for n, img in enumerate(images):
        with DmgImage(chain.image_path(img), password=secret) as d:
            manifest = {"kind": "full", "deleted": []}
            entry = next((e for p, e in d.entries() if p == MANIFEST_NAME), None)
            if entry is not None:
                manifest = read_manifest(d.volume.read(entry.ino, 0, entry.size), img.file)
            if n > 0 and manifest["kind"] != "incr":
                raise ImageCorruptError(f"{img.file}: a full image in the middle of {chain.path.name}")
            for rel in manifest["deleted"]:
                deleted += _delete(output, str(rel))
            f, b = extract_entries(d, output, lambda p, e: p != MANIFEST_NAME)
            files += f
            n_bytes += b
    data = {"output": str(output), "images": [i.file for i in images], "files": files, "bytes": n_bytes,
            "deleted": deleted}  # fmt: skip
    if as_json:
        emit_json(data)
        return
    console.print(
        f"restored {len(images)} image(s) into {output}: {files} file(s) written ({format_size(n_bytes)}), "
        f"{deleted} deletion(s) applied",
        soft_wrap=True,
    )
