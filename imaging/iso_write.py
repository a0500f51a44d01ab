"""Write a laid-out ISO: metadata from the layout, file data with zero-copy kernel calls.

The layout writes the volume descriptors, path tables, directory records, UDF descriptors and
the El Torito catalog (:attr:`imaging.iso_build.IsoLayout.write_metadata`); each file's data goes straight from its source to its extent with ``copy_file_range(2)`` (falling back
to ``sendfile(2)``, then to ``pread``/``pwrite`` with one reused buffer), so the data never passes
through Python objects and memory stays flat.

The metadata is written first; then the main thread copies the file data in extent order
(the kernel copy releases the GIL) while a digest thread follows it a few MiB behind and makes
one sequential pass over the image from the page cache, which gives the image's SHA-256 (the
sidecar) and each file's XXH3-128 (the manifest), with no second pass over the sources.

After the volume come, outside every filesystem view: the per-file digest manifest
(:mod:`imaging.iso_manifest`) and, for ``hybrid``, the backup GPT (:mod:`imaging.iso_hybrid`).
"""

from __future__ import annotations

import errno
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .common import write_sidecar
from .iso_build import DataExtent, IsoLayout
from .iso_hybrid import HybridPlan, plan_hybrid, write_hybrid
from .iso_manifest import digest_image, manifest_size, set_volume_blocks, write_locator, write_manifest

log = logging.getLogger(__name__)

BLOCK = 2048
_STEP_BYTES = 64 << 20  # one kernel call copies at most this much (keeps the progress bar moving)
_PIPE_STEP = 8 << 20  # the image hash follows the data copy this closely
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
    step: int = _STEP_BYTES,
    progress: Callable[[int], None] | None = None,
) -> int:
    """Copy *length* bytes from *src_offset* of *src_fd* to *dst_offset* of *dst_fd* in the kernel.

    Tries ``copy_file_range`` (server-side/reflink where the filesystem can), then ``sendfile``,
    then a ``pread``/``pwrite`` loop. Returns the bytes copied (less than *length* only when the
    source is shorter than announced). *progress* is called with the bytes of each kernel call
    (at most *step*).
    """
    done = 0
    method = "copy_file_range"
    buf: bytearray | None = None
    while done < length:
        want = min(step, length - done)
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


class _DataCopier:
    """Copies every file's data into its extent, in extent order, and says how far it got.

    :meth:`run` copies in the calling thread (the kernel does the copy, the GIL is released for
    each call); a hashing thread follows with :meth:`wait_for`, which blocks until every byte
    before an offset is final. (The copy runs on the main thread, after the metadata is written,
    not beside it: a thread making one system call per small file next to a busy Python thread
    waits a GIL switch interval after nearly every call.)
    """

    def __init__(self, part: Path, extents: list[DataExtent], volume_bytes: int) -> None:
        self.part = part
        self.extents = extents
        self.volume_bytes = volume_bytes
        self.changed: list[str] = []
        self.copied = 0
        # bytes before this offset are final (nothing is written below the first extent)
        self.watermark = extents[0].block * BLOCK if extents else volume_bytes
        self.error: BaseException | None = None
        self._wanted = 0  # the offset the hasher waits for
        self._cond = threading.Condition()

    def _advance(self, watermark: int, n: int) -> None:
        self.watermark = watermark
        self.copied += n
        if watermark >= self._wanted:  # wake the hasher only when it can go on (not once per file)
            with self._cond:
                self._cond.notify_all()

    def run(self, tick: Callable[[], None]) -> None:
        """Copy everything; *tick* is called after each file. Errors also reach :meth:`wait_for`."""
        fd = os.open(self.part, os.O_WRONLY | os.O_CLOEXEC)  # its own offset for the sendfile fallback
        try:
            for i, ext in enumerate(self.extents):
                self._copy(fd, ext)
                nxt = self.extents[i + 1].block * BLOCK if i + 1 < len(self.extents) else self.volume_bytes
                self._advance(max(nxt, self.watermark), 0)
                tick()
        except BaseException as e:
            with self._cond:
                self.error = e
                self._cond.notify_all()
            raise
        finally:
            os.close(fd)
        self._advance(max(self.watermark, self.volume_bytes), 0)

    def _copy(self, out_fd: int, ext: DataExtent) -> None:
        offset = ext.block * BLOCK
        length = ext.length
        if ext.source is not None:
            fd = os.open(ext.source, os.O_RDONLY | os.O_CLOEXEC)
            try:
                done = 0

                def step_done(n: int) -> None:
                    nonlocal done
                    done += n
                    self._advance(offset + done, n)

                copied = copy_range(fd, out_fd, offset, length, step=_PIPE_STEP, progress=step_done)
                size = os.fstat(fd).st_size
            finally:
                os.close(fd)
            if copied != length or size != length:
                name = ext.rel or str(ext.source)
                log.warning("%s changed size while it was copied", name)
                self.changed.append(name)
        else:  # generated in memory (copyright/abstract text)
            os.pwrite(out_fd, ext.data or b"", offset)
        if ext.patch:  # El Torito boot info table at byte 8 (mkisofs -boot-info-table)
            os.pwrite(out_fd, ext.patch, offset + 8)

    def wait_for(self, offset: int) -> None:
        """Block until every byte before *offset* is written; raise if the copy failed."""
        with self._cond:
            self._wanted = offset  # set before the watermark is read: _advance then cannot miss us
            while self.watermark < offset and self.error is None:
                self._cond.wait(1.0)
            if self.error is not None:
                raise OSError("the data copy failed") from self.error


class _HashPass(threading.Thread):
    """:func:`imaging.iso_manifest.digest_image` on a thread, following a :class:`_DataCopier`."""

    def __init__(self, fd: int, layout: IsoLayout, volume_bytes: int, copier: _DataCopier) -> None:
        super().__init__(name="iso-digest", daemon=True)
        self.args = (fd, layout, volume_bytes)
        self.copier = copier
        self.hashed = 0
        self.result: tuple[Any, dict[str, str]] | None = None
        self.error: BaseException | None = None

    def _tick(self, n: int) -> None:
        self.hashed += n

    def run(self) -> None:
        try:
            self.result = digest_image(*self.args, progress=self._tick, ready=self.copier.wait_for)
        except BaseException as e:  # re-raised by the main thread
            self.error = e


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
    plan: HybridPlan | None = None
    if hybrid:
        plan = plan_hybrid(layout.boot, bios=hybrid_bios, seed=layout.build_time_s, mbr_code=hybrid_mbr)
    part = output.with_name(output.name + ".part")
    volume_bytes = layout.volume_blocks * BLOCK
    total_work = 2 * volume_bytes
    udf = layout.udf
    copier = _DataCopier(part, layout.extents, volume_bytes)
    with open(part, "w+b", buffering=0) as out:
        fd = out.fileno()
        layout.write_metadata(fd)
        hasher = _HashPass(fd, layout, volume_bytes, copier)

        def finish_outside_data() -> int:
            """Hybrid tables, UDF anchor, volume size, manifest locator; returns the image size."""
            end = volume_bytes + manifest_size(layout)
            if plan is not None:  # UDF's last anchor 256 blocks before the end, the backup GPT at the end
                end = write_hybrid(fd, plan, volume_bytes, end + (257 * BLOCK if udf else 0))
                anchor_block = end // BLOCK - 257
            else:
                end += BLOCK if udf else 0
                os.ftruncate(fd, end)
                anchor_block = end // BLOCK - 1
            if udf:
                copy_udf_anchor(fd, volume_bytes - BLOCK, anchor_block)
            set_volume_blocks(fd, end // BLOCK)
            write_locator(fd, volume_bytes // BLOCK)
            return end

        last_report = 0.0

        def report() -> None:
            nonlocal last_report
            if progress is not None and time.monotonic() - last_report >= 0.1:
                last_report = time.monotonic()
                progress(min(copier.copied + hasher.hashed, total_work), total_work)

        # what lies outside the file data is patched before the digest pass starts at byte 0;
        # hybrid images are patched after the copy (the MBR code checks the written boot image)
        if plan is None:
            end = finish_outside_data()
            hasher.start()
        try:
            copier.run(report)
            if plan is not None:
                end = finish_outside_data()
                hasher.start()
        finally:
            while hasher.is_alive():  # also after a failed copy: wait_for raises in the hasher
                hasher.join(0.25)
                report()
        if hasher.error is not None:
            raise hasher.error
        assert hasher.result is not None
        image_hash, file_digests = hasher.result
        if progress is not None:
            progress(total_work, total_work)
        tail = write_manifest(fd, layout, file_digests, volume_bytes)
        image_hash.update(tail)
        rest = os.pread(fd, end - volume_bytes - len(tail), volume_bytes + len(tail))
        image_hash.update(rest)
        os.fsync(fd)
    os.replace(part, output)
    digest = write_sidecar(output, image_hash.hexdigest())
    return WriteResult(path=output, size_bytes=end, sha256=digest, files=len(layout.sources), changed=copier.changed)
