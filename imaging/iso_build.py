"""Lay out an ISO image from a source tree: ISO 9660 level 3, Rock Ridge, Joliet, El Torito, UDF.

The ISO 9660 side (directory records, path tables, RRIP 1.12, Joliet, El Torito) is laid out and
serialised by :mod:`imaging.iso_layout` / :mod:`imaging.iso9660_write` straight from the walked
tree, the UDF side by :mod:`imaging.udf_write` (placed by :mod:`imaging.iso_udf`); pycdlib is only
used to read images. The result is an :class:`IsoLayout`: the volume's size, every file extent (block,
length, source), the El Torito entries and a function that writes all bytes that are not file
data; :mod:`imaging.iso_write` does the rest.

Timestamps: records carry each file's mtime (UTC); volume dates are the build time, or
``source_date_epoch`` (reproducible-builds.org) — same tree + options + epoch, same bytes.
"""

from __future__ import annotations

import gc
import logging
import os
import time as _time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from pool.errors import UsageError

from . import iso9660_write as w
from .common import SourceTree, TreeEntry
from .iso_layout import BOOT_CATALOG, BootEntry, Builder, DataExtent, IsoPlan, layout, root_record, serialise_dirs

log = logging.getLogger(__name__)

FORMATS = ("iso9660", "rock-ridge", "joliet", "udf")
BLOCK = w.BLOCK
__all__ = ["BOOT_CATALOG", "FORMATS", "BootEntry", "DataExtent", "IsoLayout", "IsoOptions", "build_layout"]


@dataclass(frozen=True)
class IsoOptions:
    """What to put into the image besides the tree.

    Attributes:
        rock_ridge, joliet, udf: which directory trees to write next to ISO 9660 (always there).
        volume_name: volume identifier (ECMA-119 8.4.6, 32 d-characters; Joliet/UDF keep it whole).
        publisher, application: PVD identifiers (128 a-characters each).
        copyright, abstract: a file name in the tree's root, or a text that becomes such a file.
        boot_image: tree-relative path of a BIOS no-emulation boot image (El Torito, with a
            boot info table, as isolinux needs).
        efi_image: tree-relative path of a FAT image holding ``EFI/BOOT/BOOTX64.EFI`` (El Torito
            platform 0xEF entry).
        source_date_epoch: seconds since the epoch used as the build time (None: now).
    """

    rock_ridge: bool = True
    joliet: bool = True
    udf: bool = True
    volume_name: str = "DARKSTORAGE"
    publisher: str = ""
    application: str = "DARKSTORAGE"
    copyright: str = ""
    abstract: str = ""
    boot_image: str | None = None
    efi_image: str | None = None
    source_date_epoch: int | None = None

    @classmethod
    def for_format(cls, fmt: str | None, **kw: Any) -> IsoOptions:
        """Options for a ``--format`` value: None means every tree (Rock Ridge + Joliet + UDF)."""
        if fmt is None:
            return cls(**kw)
        if fmt not in FORMATS:
            raise UsageError(f"unknown ISO format {fmt!r} (use one of {', '.join(FORMATS)})")
        return cls(rock_ridge=fmt == "rock-ridge", joliet=fmt == "joliet", udf=fmt == "udf", **kw)


@dataclass
class IsoLayout:
    """A laid-out image: where everything goes, and how to write what is not file data.

    Attributes:
        volume_blocks: 2048-byte blocks of the ISO volume (the manifest etc. come after).
        extents: every extent holding file data, in block order (hard links once); the writer
            copies each from its ``source`` (or ``data``) and then writes its ``patch`` at byte 8.
        files: tree-relative path of each regular file in :attr:`sources` → its extent.
        sources: tree-relative paths of the regular files whose data is in the image, tree order.
        skipped: tree-relative paths left out (with the reason logged).
        generated: names of files made from option text (copyright/abstract).
        boot: the El Torito entries (for hybrid MBR/GPT tables).
        udf: whether the volume carries UDF (its last anchor goes to the end of the image).
        build_time_s: the volume creation time written.
        write_metadata: ``write_metadata(fd)`` writes every byte of the volume that is not file
            data (descriptors, path tables, directories, catalog, UDF structures).
    """

    volume_blocks: int
    write_metadata: Callable[[int], None]
    extents: list[DataExtent] = field(default_factory=list)
    files: dict[str, DataExtent] = field(default_factory=dict)
    sources: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    generated: list[str] = field(default_factory=list)
    boot: list[BootEntry] = field(default_factory=list)
    udf: bool = False
    build_time_s: float = 0.0
    seed: int | None = None


@contextmanager
def paused_gc() -> Iterator[None]:
    """Pause the cyclic garbage collector (restored on exit, if it was on).

    A layout holds several objects per entry, all alive until the image is written; with the
    collector on, its full collections walk that growing graph again and again for nothing
    (the layout makes almost no cyclic garbage).
    """
    was_on = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_on:
            gc.enable()


def udf_perms(mode: int) -> int:
    """POSIX permission bits → UDF File Entry permissions (ECMA-167 4/14.9.5: x=1, w=2, r=4 per class)."""
    out = 0
    for shift_posix, shift_udf in ((0, 0), (3, 5), (6, 10)):
        bits = (mode >> shift_posix) & 7
        out |= (((bits & 1) and 1) | ((bits & 2) and 2) | ((bits & 4) and 4)) << shift_udf
    return out


def volume_id(name: str) -> str:
    """*name* as an ISO 9660 volume identifier: upper-case d-characters, at most 32."""
    clean = "".join(c if c.isascii() and (c.isalnum() or c == "_") else "_" for c in name.upper())
    return clean[:32] or "DARKSTORAGE"


def build_layout(
    tree: SourceTree, opts: IsoOptions, *, on_entry: Callable[[TreeEntry], None] | None = None
) -> IsoLayout:
    """Lay out the image of *tree*: every entry placed, every extent assigned.

    Args:
        tree: the walked source (see :func:`imaging.common.walk_tree`).
        opts: formats, identifiers and boot entries.
        on_entry: called after each entry (for a progress display).

    Raises:
        NotFoundError: a boot/EFI image named in *opts* is not a file of the tree.
        UsageError: the tree cannot be laid out (the message says which entry).
    """
    build_time = float(opts.source_date_epoch) if opts.source_date_epoch is not None else _time.time()
    with paused_gc():
        b = Builder(tree, rock_ridge=opts.rock_ridge, joliet=opts.joliet, udf=opts.udf, build_time_s=build_time)
        b.add_all(on_entry)
        plan = b.plan
        plan.copyright_id = b.root_file(opts.copyright, "COPYRIGHT.TXT")
        plan.abstract_id = b.root_file(opts.abstract, "ABSTRACT.TXT")
        b.boot(opts.boot_image, opts.efi_image)
        udf_part = None
        if opts.udf:
            from .iso_udf import UdfPart

            udf_part = UdfPart(plan, tree, b, opts)
        first = _descriptor_blocks(plan, opts, udf_part)
        if udf_part is not None:
            first = udf_part.reserve(first)
        try:
            layout(plan, first, before_data=udf_part.meta_blocks if udf_part is not None else 0)
        except ValueError as e:
            raise UsageError(f"cannot lay out the image: {e}") from None
        end = plan.volume_blocks
        if udf_part is not None:
            end = udf_part.finish(plan)
    return IsoLayout(
        volume_blocks=end,
        write_metadata=lambda fd: _write_metadata(fd, plan, opts, udf_part, end),
        extents=[e for e in plan.extents if e.length],
        files=plan.files,
        sources=plan.sources,
        skipped=plan.skipped,
        generated=plan.generated,
        boot=plan.boot,
        udf=opts.udf,
        build_time_s=build_time,
        seed=opts.source_date_epoch,
    )


def _descriptor_blocks(plan: IsoPlan, opts: IsoOptions, udf_part: Any) -> int:
    """Number the volume descriptors from block 16; returns the first block after them."""
    names = ["pvd"]
    if plan.boot:
        names.append("boot")
    if opts.joliet:
        names.append("joliet")
    names.append("end")
    plan.descriptors = [(n, 16 + i) for i, n in enumerate(names)]
    return 16 + len(names)


def _write_metadata(fd: int, plan: IsoPlan, opts: IsoOptions, udf_part: Any, volume_blocks: int) -> None:
    """Write descriptors, path tables, directories, CE areas and the boot catalog at *fd*."""
    base = min(plan.pt_blocks[0], plan.dirs[0].block)
    out = bytearray((plan.reserved_start - base) * BLOCK)
    serialise_dirs(plan, out, base)
    os.pwrite(fd, out, base * BLOCK)
    del out
    vd_common: dict[str, Any] = {
        "system_id": "LINUX",
        "volume_blocks": volume_blocks,
        "volume_set_id": volume_id(opts.volume_name),
        "publisher": opts.publisher[:128],
        "preparer": "DARKSTORAGE",
        "application": opts.application[:128],
        "copyright_file": plan.copyright_id,
        "abstract_file": plan.abstract_id,
        "created": plan.build_time_s,
    }
    head = bytearray(BLOCK * 16)  # system area (the hybrid MBR/GPT go here later)
    for name, _blk in plan.descriptors:
        if name == "pvd":
            vd = w.volume_descriptor(
                joliet=False,
                volume_id=volume_id(opts.volume_name),
                path_table_bytes=len(plan.pt_bytes[0]),
                l_table=plan.pt_blocks[0],
                m_table=plan.pt_blocks[1],
                root_record=root_record(plan, joliet=False),
                **vd_common,
            )
        elif name == "joliet":
            vd = w.volume_descriptor(
                joliet=True,
                volume_id=opts.volume_name[:16],
                path_table_bytes=len(plan.pt_bytes[2]),
                l_table=plan.pt_blocks[2],
                m_table=plan.pt_blocks[3],
                root_record=root_record(plan, joliet=True),
                **vd_common,
            )
        elif name == "boot":
            vd = w.boot_record(plan.catalog_block)
        else:
            vd = w.terminator()
        head += vd
    os.pwrite(fd, head, 0)
    if plan.boot:
        entries = [(e.platform, e.extent.block, e.sectors) for e in plan.boot]
        os.pwrite(fd, w.boot_catalog(entries), plan.catalog_block * BLOCK)
    if udf_part is not None:
        udf_part.write(fd)
    os.ftruncate(fd, max(os.fstat(fd).st_size, volume_blocks * BLOCK))
