"""Hybrid ISO: an MBR and a GPT so the same image boots from a USB stick (BIOS and UEFI).

pycdlib's ``add_isohybrid(efi=True)`` writes a GPT whose CRCs ``sgdisk -v`` rejects, so only its
isohybrid MBR boot code is used (syslinux ``isohdpfx``: it loads the El Torito BIOS image from the
LBA stored at MBR byte 432); the partition tables are ours:

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
from typing import Any

from pycdlib.pycdlibexception import PyCdlibException

from pool.errors import UsageError

SECTOR = 512
ESP_TYPE = uuid.UUID("C12A7328-F81F-11D2-BA4B-00A0C93EC93B")
GPT_ENTRIES = 128
GPT_ENTRY_BYTES = 128
_ENTRY_SECTORS = GPT_ENTRIES * GPT_ENTRY_BYTES // SECTOR  # 32
_ALIGN_BYTES = 1 << 20
_HEADS, _SECTORS = 64, 32


@dataclass(frozen=True)
class HybridPlan:
    """Where the hybrid tables point (all LBAs in 512-byte sectors)."""

    bios: bool
    efi_lba: int | None
    efi_sectors: int
    disk_guid: uuid.UUID
    part_guid: uuid.UUID
    disk_signature: int


def _guid(seed: float, what: str) -> uuid.UUID:
    return uuid.UUID(bytes=hashlib.sha256(f"darkstorage {seed!r} {what}".encode()).digest()[:16], version=4)


def _boot_entries(iso: Any) -> tuple[Any, Any]:
    cat = iso.eltorito_boot_catalog
    if cat is None:
        raise UsageError("--hybrid needs a boot entry: add --bootable --boot-image and/or --uefi --efi-image")
    bios = efi = None
    if cat.validation_entry.platform_id == 0:
        bios = cat.initial_entry
    elif cat.validation_entry.platform_id == 0xEF:
        efi = cat.initial_entry
    for section in cat.sections:
        for entry in section.section_entries:
            if section.platform_id == 0xEF and efi is None:
                efi = entry
            elif section.platform_id == 0 and bios is None:
                bios = entry
    return bios, efi


def plan_hybrid(iso: Any, *, bios: bool, seed: float) -> HybridPlan:
    """Prepare the hybrid tables of the laid-out *iso* (before it is written).

    Raises:
        UsageError: no El Torito entry, ``bios`` without a BIOS entry, or a BIOS image without the
            isohybrid signature (isolinux 4+ has it).
    """
    bios_entry, efi_entry = _boot_entries(iso)
    signature = int.from_bytes(hashlib.sha256(f"darkstorage {seed!r} mbr".encode()).digest()[:4], "little")
    if bios:
        if bios_entry is None:
            raise UsageError("--hybrid --bios needs a BIOS boot image (--bootable --boot-image)")
        try:  # pycdlib's isohybrid MBR code; its partition table is replaced in write_hybrid
            iso.add_isohybrid(mbr_id=signature, efi=False)
        except PyCdlibException as e:
            raise UsageError(f"--hybrid --bios: {e} (use isolinux.bin from syslinux 4 or later)") from None
    efi_lba = efi_sectors = 0
    if efi_entry is not None:
        efi_lba = efi_entry.inode.extent_location() * 4
        efi_sectors = max(1, -(-efi_entry.inode.get_data_length() // SECTOR))
    return HybridPlan(
        bios=bios,
        efi_lba=efi_lba if efi_entry is not None else None,
        efi_sectors=efi_sectors,
        disk_guid=_guid(seed, "disk"),
        part_guid=_guid(seed, "esp"),
        disk_signature=signature,
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
    mbr = bytearray(os.pread(fd, SECTOR, 0).ljust(SECTOR, b"\0"))
    if not plan.bios:
        mbr[:440] = bytes(440)
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
