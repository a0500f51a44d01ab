"""Read the ISO9660 + UDF volume inside a DMG (``bucket2dmg --filesystem iso-udf``, or
``hdiutil makehybrid`` images) without unpacking it.

:class:`imaging.iso_read.IsoReader` reads an ISO *file*: pycdlib parses it through a file
object and file data comes from ``pread`` on the image. Here pycdlib gets :class:`UdifDisk`, a
seekable read-only file over the disk inside the UDIF container (chunks decompressed on demand
by :class:`imaging.udif_read.UdifImage`), and :class:`DmgIsoVolume` sends file reads there.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any, Protocol

import pycdlib
from pycdlib.pycdlibexception import PyCdlibException

from pool.errors import ImageCorruptError

from .iso_read import IsoReader

ISO_MAGIC_OFFSET = 16 * 2048 + 1  #: "CD001" of the first volume descriptor (ECMA-119 8.1)
_READ_BYTES = 1 << 20


class Disk(Protocol):
    """The disk inside an image: a UDIF image, a sparse image or a sparse bundle."""

    path: Path

    @property
    def size_bytes(self) -> int: ...

    def read(self, offset: int, size: int) -> bytes: ...


def looks_like_iso(udif: Disk) -> bool:
    """True when the disk inside holds an ISO 9660 volume descriptor at sector 16."""
    return udif.size_bytes > ISO_MAGIC_OFFSET + 5 and udif.read(ISO_MAGIC_OFFSET, 5) == b"CD001"


class UdifDisk(io.RawIOBase):
    """The disk inside a UDIF image as a read-only, seekable binary file (for pycdlib)."""

    def __init__(self, udif: Disk) -> None:
        super().__init__()
        self.udif = udif
        self.pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self.pos, io.SEEK_END: self.udif.size_bytes}[whence]
        if base + offset < 0:
            raise OSError("seek before the start of the disk")
        self.pos = base + offset
        return self.pos

    def readinto(self, buf: Any) -> int:
        data = self.udif.read(self.pos, len(buf))
        buf[: len(data)] = data
        self.pos += len(data)
        return len(data)


class DmgIsoVolume(IsoReader):
    """The ISO volume inside an open UDIF image, as :class:`~imaging.iso_read.IsoReader` shows
    it (the ``vfs.imagefs.ImageView`` protocol: thread-safe reads).

    Args:
        udif: the open container (stays owned by the caller).
        tree: ``"rr"``, ``"udf"``, ``"joliet"``, ``"iso"`` or None for the richest one present.

    Raises:
        ImageCorruptError: pycdlib cannot parse the volume, or a chunk it needs is damaged.
    """

    # Only the I/O differs from IsoReader (its _pread): tree choice, loading and reads are its own.
    def __init__(self, udif: Disk, *, tree: str | None = None) -> None:
        self.path = udif.path
        self.udif = udif
        self._fp = io.BufferedReader(UdifDisk(udif), buffer_size=64 * 1024)
        self.iso = pycdlib.PyCdlib()
        try:
            self.iso.open_fp(self._fp)
            self._choose_tree(tree)
            self._load()
        except PyCdlibException as e:
            raise ImageCorruptError(f"{self.path.name}: ISO volume inside is not readable: {e}") from None
        except (OSError, ValueError, IndexError, KeyError) as e:
            raise ImageCorruptError(f"{self.path.name}: damaged ISO structure inside: {e}") from None

    def _pread(self, size: int, offset: int) -> bytes:
        return self.udif.read(offset, size)

    def close(self) -> None:
        """Release pycdlib's state (the UDIF image stays open: its owner closes it)."""
        try:
            self.iso.close()
        except Exception:  # noqa: BLE001 - pycdlib refuses close() on a half-opened image
            pass
