"""Hybrid ISO: an MBR and a GPT so the same image boots from a USB stick (BIOS and UEFI).

pycdlib's ``add_isohybrid`` is not used (its GPT has CRCs ``sgdisk -v`` rejects, and it leaves the
boot image LBA at MBR byte 432 zero when added after the layout, so BIOSes find nothing to load);
everything in the system area is ours:

* BIOS boot code (``--hybrid --bios``): the first 432 bytes of syslinux's ``isohdpfx.bin`` (Debian
  package ``isolinux``: ``/usr/lib/ISOLINUX/isohdpfx.bin``), then, as syslinux ``isohybrid.c``
  writes them, the El Torito BIOS image's LBA in 512-byte sectors (its 2048-byte LBA x 4) as a
  32-bit little-endian value at byte 432 and zero at byte 436. The MBR code loads the first 2 KiB
  of ``isolinux.bin`` from that LBA, checks the signature ``FB C0 78 70`` at offset 0x40 (isolinux
  4 and later) and jumps to the hybrid entry point after it; isolinux then finds the rest of itself
  through the El Torito boot info table (``boot_info_table``, written with the file's data). The
  code does not look at the partition table, so it goes with either table below;
* with a UEFI El Torito entry: a protective MBR (one 0xEE entry from LBA 1, UEFI 2.10 §5.2.3) and
  a GPT (UEFI 2.10 §5.3) whose single partition is an EFI System Partition over the El Torito EFI
  image, primary header at LBA 1 with 128 entries from LBA 2 (inside the ISO 9660 system area),
  backup entries and header in the last 33 sectors; CRC32s as the spec defines;
* BIOS only: an MBR with one active type 0x17 partition over the image (syslinux ``isohybrid``).

The image is padded to a whole MiB (64 heads x 32 sectors, as isohybrid does) so firmware that
reads by cylinders finds complete ones. GUIDs and the disk signature derive from the build time,
so reproducible builds stay reproducible.
"""

from __future__ import annotations

import hashlib
import os
import struct
import uuid
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pool.errors import NotFoundError, UsageError

SECTOR = 512
ESP_TYPE = uuid.UUID("C12A7328-F81F-11D2-BA4B-00A0C93EC93B")
GPT_ENTRIES = 128
GPT_ENTRY_BYTES = 128
_ENTRY_SECTORS = GPT_ENTRIES * GPT_ENTRY_BYTES // SECTOR  # 32
_ALIGN_BYTES = 1 << 20
_HEADS, _SECTORS = 64, 32


ISOHYBRID_MBR_PATHS = (
    Path("/usr/lib/ISOLINUX/isohdpfx.bin"),  # Debian, Ubuntu: package isolinux
    Path("/usr/lib/syslinux/bios/isohdpfx.bin"),  # Arch
    Path("/usr/share/syslinux/isohdpfx.bin"),  # Fedora, openSUSE
)
MBR_CODE_BYTES = 432  # isohybrid.c MBRSIZE: the boot code before the LBA field
ISOHYBRID_SIGNATURE = b"\xfb\xc0\x78\x70"  # isolinux.bin bytes 0x40..0x43 (isolinux 4+)
_SIGNATURE_OFFSET = 0x40


@dataclass(frozen=True)
class HybridPlan:
    """Where the hybrid tables point (all LBAs in 512-byte sectors).

    Attributes:
        bios: write the isohybrid BIOS boot code.
        mbr_code: the 432 bytes of boot code (empty without ``bios``).
        bios_lba: the El Torito BIOS image's LBA in 512-byte sectors (MBR byte 432).
        efi_lba, efi_sectors: the El Torito EFI image (None: no EFI entry, no GPT).
    """

    bios: bool
    efi_lba: int | None
    efi_sectors: int
    disk_guid: uuid.UUID
    part_guid: uuid.UUID
    disk_signature: int
    mbr_code: bytes = b""
    bios_lba: int = 0


def load_isohybrid_mbr(path: Path | None = None) -> bytes:
    """The isohybrid MBR boot code: the first 432 bytes of *path* or of syslinux's ``isohdpfx.bin``.

    Args:
        path: a 432..512-byte file (syslinux ``isohdpfx.bin``, ``isohdppx.bin``, ...); None looks in
            :data:`ISOHYBRID_MBR_PATHS` (Debian package ``isolinux`` first).

    Raises:
        NotFoundError: *path* does not exist.
        UsageError: no default file is installed, or *path* is not 432..512 bytes long.
    """
    if path is None:
        found = next((p for p in ISOHYBRID_MBR_PATHS if p.is_file()), None)
        if found is None:
            raise UsageError(
                f"--hybrid --bios needs the isohybrid MBR code: install isolinux ({ISOHYBRID_MBR_PATHS[0]}) "
                "or pass --isohybrid-mbr FILE"
            )
        path = found
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise NotFoundError(f"no such isohybrid MBR file: {path}") from None
    except IsADirectoryError:
        raise UsageError(f"--isohybrid-mbr {path} is a folder, not syslinux's isohdpfx.bin") from None
    if not MBR_CODE_BYTES <= len(data) <= SECTOR:
        raise UsageError(
            f"--isohybrid-mbr {path} is {len(data)} bytes; the isohybrid MBR code (syslinux isohdpfx.bin) "
            f"is {MBR_CODE_BYTES}"
        )
    return data[:MBR_CODE_BYTES]


def _guid(seed: float, what: str) -> uuid.UUID:
    return uuid.UUID(bytes=hashlib.sha256(f"darkstorage {seed!r} {what}".encode()).digest()[:16], version=4)


def _boot_entries(boot: list[Any]) -> tuple[Any, Any]:
    if not boot:
        raise UsageError("--hybrid needs a boot entry: add --bootable --boot-image and/or --uefi --efi-image")
    bios = next((e for e in boot if e.platform == 0), None)
    efi = next((e for e in boot if e.platform == 0xEF), None)
    return bios, efi


def _boot_image_head(entry: Any) -> bytes:
    """The first bytes of a boot entry's file (up to the isohybrid signature)."""
    from .iso_layout import read_head

    return read_head(entry.extent, _SIGNATURE_OFFSET + 4)


def plan_hybrid(boot: list[Any], *, bios: bool, seed: float, mbr_code: bytes | None = None) -> HybridPlan:
    """Prepare the hybrid tables of a laid-out image (before it is written).

    Args:
        boot: the layout's El Torito entries (:class:`imaging.iso_layout.BootEntry`: platform,
            extent, sectors), extents final.
        bios: put the isohybrid BIOS boot code into the MBR.
        seed: the build time; GUIDs and the MBR signature derive from it.
        mbr_code: the boot code (see :func:`load_isohybrid_mbr`); None loads the installed one.

    Raises:
        UsageError: no El Torito entry, ``bios`` without a BIOS entry, a BIOS image without the
            isohybrid signature (isolinux 4+ has it), or no isohybrid MBR code installed.
    """
    bios_entry, efi_entry = _boot_entries(boot)
    signature = int.from_bytes(hashlib.sha256(f"darkstorage {seed!r} mbr".encode()).digest()[:4], "little")
    bios_lba = 0
    if bios:
        if bios_entry is None:
            raise UsageError("--hybrid --bios needs a BIOS boot image (--bootable --boot-image)")
        if bios_entry.sectors != 4:  # the isohybrid MBR code loads 4 sectors (isohybrid.c)
            raise UsageError("--hybrid --bios needs a BIOS boot entry loading 4 sectors")
        if _boot_image_head(bios_entry)[_SIGNATURE_OFFSET:] != ISOHYBRID_SIGNATURE:
            raise UsageError(
                "--hybrid --bios: the boot image has no isohybrid signature at byte 0x40 "
                "(use isolinux.bin from syslinux 4 or later)"
            )
        mbr_code = load_isohybrid_mbr() if mbr_code is None else mbr_code
        bios_lba = bios_entry.extent.block * 4
    efi_lba = efi_sectors = 0
    if efi_entry is not None:
        efi_lba = efi_entry.extent.block * 4
        efi_sectors = max(1, -(-efi_entry.extent.length // SECTOR))
    return HybridPlan(
        bios=bios,
        efi_lba=efi_lba if efi_entry is not None else None,
        efi_sectors=efi_sectors,
        disk_guid=_guid(seed, "disk"),
        part_guid=_guid(seed, "esp"),
        disk_signature=signature,
        mbr_code=(mbr_code or b"")[:MBR_CODE_BYTES] if bios else b"",
        bios_lba=bios_lba,
    )


def _chs(lba: int) -> bytes:
    cyl, rest = divmod(lba, _HEADS * _SECTORS)
    if cyl > 1023:
        return b"\xfe\xff\xff"
    head, sect = divmod(rest, _SECTORS)
    return bytes([head, ((sect + 1) & 0x3F) | ((cyl >> 2) & 0xC0), cyl & 0xFF])


def _mbr_entry(active: bool, ptype: int, start: int, count: int) -> bytes:
    return (
        bytes([0x80 if active else 0])
        + _chs(start)
        + bytes([ptype])
        + _chs(start + count - 1)
        + struct.pack("<II", start, count)
    )


def _gpt_header(
    plan: HybridPlan, *, current: int, backup: int, entries_lba: int, last_usable: int, entries_crc: int
) -> bytes:
    def pack(crc: int) -> bytes:
        return struct.pack(
            "<8sIIIIQQQQ16sQIII",
            b"EFI PART",
            0x00010000,
            92,
            crc,
            0,
            current,
            backup,
            2 + _ENTRY_SECTORS,
            last_usable,
            plan.disk_guid.bytes_le,
            entries_lba,
            GPT_ENTRIES,
            GPT_ENTRY_BYTES,
            entries_crc,
        )

    return pack(zlib.crc32(pack(0))).ljust(SECTOR, b"\0")


def write_hybrid(fd: int, plan: HybridPlan, volume_bytes: int, end_bytes: int) -> int:
    """Write the MBR (and GPT) of *plan* into the image at *fd*; returns the new image size.

    Args:
        fd: the image, already holding the ISO volume and anything after it up to *end_bytes*.
        volume_bytes: size of the ISO 9660 volume.
        end_bytes: where the data after the volume ends; the backup GPT goes after it.
    """
    gpt = plan.efi_lba is not None
    need = end_bytes + ((1 + _ENTRY_SECTORS) * SECTOR if gpt else 0)
    total = -(-need // _ALIGN_BYTES) * _ALIGN_BYTES
    sectors = total // SECTOR
    mbr = bytearray(SECTOR)
    if plan.bios:
        head = os.pread(fd, _SIGNATURE_OFFSET + 4, plan.bios_lba * SECTOR)
        if head[_SIGNATURE_OFFSET:] != ISOHYBRID_SIGNATURE:  # the layout moved the image after planning
            raise OSError(f"no isohybrid boot image at 512-byte sector {plan.bios_lba} of the written image")
        mbr[:MBR_CODE_BYTES] = plan.mbr_code.ljust(MBR_CODE_BYTES, b"\0")
        mbr[432:440] = struct.pack("<II", plan.bios_lba, 0)  # isohybrid.c: boot image LBA x 4, then 0
    mbr[440:446] = struct.pack("<IH", plan.disk_signature, 0)
    table = bytearray(64)
    if gpt:
        table[0:16] = _mbr_entry(False, 0xEE, 1, min(sectors - 1, 0xFFFFFFFF))
    else:
        table[0:16] = _mbr_entry(True, 0x17, 0, min(sectors, 0xFFFFFFFF))
    mbr[446:510] = table
    mbr[510:512] = b"\x55\xaa"
    os.pwrite(fd, bytes(mbr), 0)
    if gpt:
        assert plan.efi_lba is not None
        name = "EFI boot".encode("utf-16-le").ljust(72, b"\0")
        entry = (
            ESP_TYPE.bytes_le
            + plan.part_guid.bytes_le
            + struct.pack("<QQQ", plan.efi_lba, plan.efi_lba + plan.efi_sectors - 1, 0)
            + name
        )
        entries = entry.ljust(GPT_ENTRIES * GPT_ENTRY_BYTES, b"\0")
        crc = zlib.crc32(entries)
        last_usable = sectors - 2 - _ENTRY_SECTORS
        backup_entries = sectors - 1 - _ENTRY_SECTORS
        primary = _gpt_header(
            plan, current=1, backup=sectors - 1, entries_lba=2, last_usable=last_usable, entries_crc=crc
        )
        secondary = _gpt_header(
            plan, current=sectors - 1, backup=1, entries_lba=backup_entries, last_usable=last_usable, entries_crc=crc
        )
        os.pwrite(fd, primary + entries, SECTOR)
        os.pwrite(fd, entries + secondary, backup_entries * SECTOR)
    os.ftruncate(fd, total)
    return total
