"""Write a laid-out ISO: metadata from pycdlib, file data with zero-copy kernel calls.

pycdlib writes the volume descriptors, path tables, directory records, UDF descriptors and the
El Torito catalog; each file's data goes straight from its source to its extent with
``copy_file_range(2)`` (falling back to ``sendfile(2)``, then to ``pread``/``pwrite`` with one
reused buffer), so the data never passes through Python objects and memory stays flat.

After the volume come, outside every filesystem view: the per-file SHA-256 manifest
(:mod:`imaging.iso_manifest`) and, for ``hybrid``, the backup GPT (:mod:`imaging.iso_hybrid`).
One sequential read of the finished image gives the image digest (the sidecar) and each file's
digest, so neither needs a second pass over the sources.
"""

from __future__ import annotations

import errno
import logging
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .common import write_sidecar
from .iso_build import IsoLayout, pinned_clock
from .iso_hybrid import HybridPlan, plan_hybrid, write_hybrid
from .iso_manifest import digest_image, manifest_size, set_volume_blocks, write_locator, write_manifest

log = logging.getLogger(__name__)

BLOCK = 2048
_STEP_BYTES = 64 << 20  # one kernel call copies at most this much (keeps the progress bar moving)
_FALLBACK_ERRNOS = {errno.EXDEV, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL, errno.EBADF, errno.ETXTBSY}


@dataclass
class WriteResult:
    """What :func:`write_image` produced.

    Attributes:
        path: the image file.
        size_bytes: its size.
        sha256: its SHA-256 (also in the ``.sha256`` sidecar).
        files: number of regular files whose data is in the image.
        changed: files whose size changed while they were copied (their data may be inconsistent).
    """

    path: Path
    size_bytes: int
    sha256: str
    files: int
    changed: list[str] = field(default_factory=list)


def copy_range(
    src_fd: int,
    dst_fd: int,
    dst_offset: int,
    length: int,
    *,
    src_offset: int = 0,
    progress: Callable[[int], None] | None = None,
) -> int:
    """Copy *length* bytes from *src_offset* of *src_fd* to *dst_offset* of *dst_fd* in the kernel.

    Tries ``copy_file_range`` (server-side/reflink where the filesystem can), then ``sendfile``,
    then a ``pread``/``pwrite`` loop. Returns the bytes copied (less than *length* only when the
    source is shorter than announced).
    """
    done = 0
    method = "copy_file_range"
    buf: bytearray | None = None
    while done < length:
        want = min(_STEP_BYTES, length - done)
        try:
            if method == "copy_file_range":
                n = os.copy_file_range(src_fd, dst_fd, want, src_offset + done, dst_offset + done)
            elif method == "sendfile":
                os.lseek(dst_fd, dst_offset + done, os.SEEK_SET)
                n = os.sendfile(dst_fd, src_fd, src_offset + done, want)
            else:
                if buf is None:
                    buf = bytearray(1 << 20)
                n = os.preadv(src_fd, [memoryview(buf)[: min(want, len(buf))]], src_offset + done)
                if n:
                    os.pwrite(dst_fd, memoryview(buf)[:n], dst_offset + done)
        except OSError as e:
            if e.errno not in _FALLBACK_ERRNOS or method == "pread":
                raise
            method = "sendfile" if method == "copy_file_range" else "pread"
            log.debug("falling back to %s: %s", method, e.strerror)
            continue
        if n == 0:
            break
        done += n
        if progress is not None:
            progress(n)
    return done


class _DataWriter:
    """The ``inode_writer`` hook of :class:`imaging.iso_build.IsoImage`."""

    def __init__(self, out_fd: int, names: dict[int, str]) -> None:
        self.out_fd = out_fd
        self.names = names
        self.changed: list[str] = []

    def __call__(self, outfp: Any, ino: Any) -> Iterator[int]:
        offset = ino.extent_location() * BLOCK
        length = ino.get_data_length()
        if ino.manage_fp:
            fd = os.open(ino.data_fp, os.O_RDONLY | os.O_CLOEXEC)
            try:
                copied = copy_range(fd, self.out_fd, offset, length)
            finally:
                os.close(fd)
            if copied != length or os.stat(ino.data_fp).st_size != length:
                name = self.names.get(id(ino), ino.data_fp)
                log.warning("%s changed size while it was copied", name)
                self.changed.append(name)
        else:  # generated in memory (copyright/abstract text, boot catalog placeholder)
            fp = ino.data_fp
            fp.seek(ino.fp_offset)
            os.pwrite(self.out_fd, fp.read(length), offset)
            copied = length
        if ino.boot_info_table is not None:  # El Torito boot info table at byte 8 (mkisofs -boot-info-table)
            os.pwrite(self.out_fd, ino.boot_info_table.record(), offset + 8)
        yield copied


def copy_udf_anchor(fd: int, anchor_offset: int, block: int) -> None:
    """Copy the UDF Anchor Volume Descriptor Pointer at *anchor_offset* to *block*.

    ECMA-167 3/8.4.2.1 wants anchors at two of sector 256, N-256 and N (the last sector of the
    medium); data after the volume moves N, so the last anchor is repeated there, with its tag
    location and tag checksum (ECMA-167 3/7.2) updated.
    """
    avdp = bytearray(os.pread(fd, 512, anchor_offset))
    if len(avdp) < 16 or int.from_bytes(avdp[0:2], "little") != 2:
        raise OSError(f"no UDF anchor at byte {anchor_offset} of the image")
    avdp[12:16] = block.to_bytes(4, "little")
    avdp[4] = (sum(avdp[0:4]) + sum(avdp[5:16])) & 0xFF
    os.pwrite(fd, bytes(avdp), block * BLOCK)


def write_image(
    layout: IsoLayout,
    output: Path,
    *,
    hybrid: bool = False,
    hybrid_bios: bool = False,
    hybrid_mbr: bytes | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> WriteResult:
    """Write *layout* to *output* (replaced atomically), with manifest, hybrid tables and sidecar.

    Args:
        layout: from :func:`imaging.iso_build.build_layout`.
        output: the ``.iso`` path; written to ``<output>.part`` first.
        hybrid: also write an MBR and, when the image has a UEFI El Torito entry, a GPT (USB boot).
        hybrid_bios: put the isohybrid MBR boot code in (needs a BIOS boot image of isolinux 4+).
        hybrid_mbr: that boot code (:func:`imaging.iso_hybrid.load_isohybrid_mbr`); None: the
            installed syslinux ``isohdpfx.bin``.
        progress: called with (bytes done, bytes total) while data is copied and hashed.

    Raises:
        UsageError: hybrid requested on an image without El Torito entries.
        OSError: the output cannot be written.
    """
    iso = layout.iso
    plan: HybridPlan | None = None
    if hybrid:
        plan = plan_hybrid(iso, bios=hybrid_bios, seed=layout.build_time_s, mbr_code=hybrid_mbr)
    part = output.with_name(output.name + ".part")
    volume_bytes = iso.pvd.space_size * BLOCK
    total_work = 2 * volume_bytes
    done = 0

    def tick(n: int) -> None:
        nonlocal done
        done += n
        if progress is not None:
            progress(min(done, total_work), total_work)

    names = {id(ino): rel for rel, ino in layout.inodes.items()}
    writer = _DataWriter(-1, names)
    iso.inodes.sort(key=lambda i: i.extent_location() if i.get_data_length() else 0)
    with open(part, "w+b", buffering=0) as out:
        writer.out_fd = out.fileno()
        iso.inode_writer = writer
        try:
            with pinned_clock(layout.build_time_s, layout.seed):  # pycdlib stamps the modification date now
                iso.write_fp(out, progress_cb=lambda d, t, _o: None)
        finally:
            iso.inode_writer = None
        tick(volume_bytes)
        end = volume_bytes + manifest_size(layout)
        udf = iso.has_udf()
        if plan is not None:  # UDF's last anchor 256 blocks before the end, the backup GPT at the end
            end = write_hybrid(out.fileno(), plan, volume_bytes, end + (257 * BLOCK if udf else 0))
            anchor_block = end // BLOCK - 257
        else:
            end += BLOCK if udf else 0
            os.ftruncate(out.fileno(), end)
            anchor_block = end // BLOCK - 1
        if udf:
            copy_udf_anchor(out.fileno(), volume_bytes - BLOCK, anchor_block)
        set_volume_blocks(out.fileno(), end // BLOCK)
        write_locator(out.fileno(), volume_bytes // BLOCK)
        image_hash, file_digests = digest_image(out.fileno(), layout, volume_bytes, progress=tick)
        tail = write_manifest(out.fileno(), layout, file_digests, volume_bytes)
        image_hash.update(tail)
        rest = os.pread(out.fileno(), end - volume_bytes - len(tail), volume_bytes + len(tail))
        image_hash.update(rest)
        os.fsync(out.fileno())
    os.replace(part, output)
    digest = write_sidecar(output, image_hash.hexdigest())
    return WriteResult(path=output, size_bytes=end, sha256=digest, files=len(layout.sources), changed=writer.changed)
