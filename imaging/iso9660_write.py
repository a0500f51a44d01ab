"""Byte layouts of the ISO 9660 structures the writer emits, packed with :mod:`struct`.

Sources: ECMA-119 4th edition (ISO 9660: volume descriptors 8.4/8.5, directory records 9.1,
path tables 9.4, dates 8.4.26.1/9.1.5), IEEE P1281 SUSP 1.12 (SP, CE, ER entries), IEEE P1282
RRIP 1.12 (PX, TF, NM, SL entries), Microsoft's Joliet specification (1995: UCS-2 big-endian
identifiers, escape sequence ``%/E`` for level 3) and the El Torito Bootable CD-ROM Format
Specification 1.0 (boot record volume descriptor, boot catalog, boot info table as mkisofs
writes it). Every function returns ``bytes``; numbers ECMA-119 calls "both-byte orders" are
written little-endian then big-endian (7.2.3/7.3.3).
"""

from __future__ import annotations

import struct
import time

BLOCK = 2048
MAX_EXTENT = 0xFFFFF800  # the largest extent a directory record can describe, block-aligned
DR_MAX = 255  # a directory record's length is one byte (9.1.1)
SU_BUDGET = 254  # records are kept to an even length (9.1.1/9.1.13): System Use room is counted to 254

# 9.1: length, ext. attr. length, extent (LE, BE), data length (LE, BE), date, flags,
# unit size, gap size, volume sequence number (LE, BE), identifier length
_DR = struct.Struct("<BBI4sI4s7sBBBH2sB")
_PT_L = struct.Struct("<BBIH")
_PT_M = struct.Struct(">BBIH")

FLAG_DIR = 0x02
FLAG_MULTI_EXTENT = 0x80

SUSP_SP = b"SP\x07\x01\xbe\xef\x00"  # SUSP 5.3: check bytes BE EF, LEN_SKP 0
RRIP_ID = b"IEEE_P1282"
RRIP_DES = b"THE IEEE P1282 PROTOCOL PROVIDES SUPPORT FOR POSIX FILE SYSTEM SEMANTICS"
RRIP_SRC = b"PLEASE CONTACT THE IEEE STANDARDS DEPARTMENT, PISCATAWAY, NJ, USA FOR THE P1282 SPECIFICATION"
CE_LEN = 28


def both16(n: int) -> bytes:
    """A 16-bit number in both byte orders (ECMA-119 7.2.3)."""
    return struct.pack("<H", n) + struct.pack(">H", n)


def both32(n: int) -> bytes:
    """A 32-bit number in both byte orders (ECMA-119 7.3.3)."""
    return n.to_bytes(4, "little") + n.to_bytes(4, "big")


def dr_date(secs: int) -> bytes:
    """The 7-byte recording date of a directory record (ECMA-119 9.1.5), UTC, offset 0.

    Years outside 1900..2155 are clamped (the field counts years since 1900 in one byte).
    """
    return _dr_date(secs)


_date_cache: dict[int, bytes] = {}


def _dr_date(secs: int) -> bytes:
    got = _date_cache.get(secs)
    if got is None:
        secs = min(max(secs, -2208988800), 5869583999)  # 1900-01-01 .. 2155-12-31 23:59:59
        t = time.gmtime(secs)
        got = bytes((t.tm_year - 1900, t.tm_mon, t.tm_mday, t.tm_hour, t.tm_min, t.tm_sec, 0))
        if len(_date_cache) > 65536:
            _date_cache.clear()
        _date_cache[secs] = got
    return got


def vd_date(secs: float | None) -> bytes:
    """The 17-byte volume date (ECMA-119 8.4.26.1); None: "not specified" (16 zeros digits, 0)."""
    if secs is None:
        return b"0" * 16 + b"\x00"
    t = time.gmtime(int(secs))
    return b"%04d%02d%02d%02d%02d%02d00\x00" % (t.tm_year, t.tm_mon, t.tm_mday, t.tm_hour, t.tm_min, t.tm_sec)


def dir_record(ident: bytes, extent: int, length: int, date: bytes, flags: int, su: bytes = b"") -> bytes:
    """One directory record (ECMA-119 9.1) with System Use bytes *su* (already padded to even).

    Args:
        ident: the file identifier (``b"\\x00"`` for ".", ``b"\\x01"`` for "..").
        extent: first logical block; length: data length in bytes (< 2**32).
        date: 7 bytes from :func:`dr_date`; flags: 9.1.6 bits.

    Raises:
        ValueError: the record would be longer than 255 bytes.
    """
    n = len(ident)
    pad = b"" if n & 1 else b"\x00"
    total = 33 + n + len(pad) + len(su)
    if total > DR_MAX:
        raise ValueError(f"directory record of {total} bytes (at most {DR_MAX})")
    return (
        _DR.pack(
            total, 0, extent, extent.to_bytes(4, "big"), length, length.to_bytes(4, "big"),
            date, flags, 0, 0, 1, b"\x00\x01", n,
        )
        + ident
        + pad
        + su
    )  # fmt: skip


def dir_record_into(
    buf: bytearray, pos: int, ident: bytes, extent: int, length: int, date: bytes, flags: int, su: bytes = b""
) -> int:
    """:func:`dir_record` packed straight into *buf* at *pos*; returns the record's length.

    The caller has checked that the record fits (at most 255 bytes, within its block).
    """
    n = len(ident)
    start = pos + 33
    end = start + n + (0 if n & 1 else 1)
    total = end - pos + len(su)
    _DR.pack_into(
        buf, pos, total, 0, extent, extent.to_bytes(4, "big"), length, length.to_bytes(4, "big"),
        date, flags, 0, 0, 1, b"\x00\x01", n,
    )  # fmt: skip
    buf[start : start + n] = ident
    if not n & 1:
        buf[start + n] = 0
    if su:
        buf[end : end + len(su)] = su
    return total


def path_table_record(ident: bytes, extent: int, parent: int, *, big_endian: bool) -> bytes:
    """One path table record (ECMA-119 9.4): type L (little-endian) or M (big-endian)."""
    n = len(ident)
    head = (_PT_M if big_endian else _PT_L).pack(n, 0, extent, parent)
    return head + ident + (b"\x00" if n & 1 else b"")


def _a_field(text: str, size: int, *, ucs2: bool) -> bytes:
    if ucs2:
        raw = text.encode("utf-16-be")[: size - (size % 2)]
        raw = raw[: len(raw) - (len(raw) % 2)]
        return raw + (b"\x00 " * size)[len(raw) : size]
    return text.encode("ascii", "replace")[:size].ljust(size, b" ")


def volume_descriptor(
    *,
    joliet: bool,
    system_id: str,
    volume_id: str,
    volume_blocks: int,
    path_table_bytes: int,
    l_table: int,
    m_table: int,
    root_record: bytes,
    volume_set_id: str,
    publisher: str,
    preparer: str,
    application: str,
    copyright_file: str,
    abstract_file: str,
    created: float,
) -> bytes:
    """The Primary (ECMA-119 8.4) or Joliet Supplementary (8.5, escape ``%/E``) Volume Descriptor.

    Identifiers are a-/d-characters padded with spaces in the PVD and UCS-2 big-endian padded with
    ``00 20`` in the Joliet SVD. Creation and modification dates are *created* (UTC); expiration
    and effective dates are "not specified".
    """
    u = joliet
    out = bytearray(BLOCK)
    out[0] = 2 if joliet else 1
    out[1:7] = b"CD001\x01"
    out[8:40] = _a_field(system_id, 32, ucs2=u)
    out[40:72] = _a_field(volume_id, 32, ucs2=u)
    out[80:88] = both32(volume_blocks)
    if joliet:
        out[88:91] = b"%/E"  # UCS-2 level 3
    out[120:124] = both16(1)
    out[124:128] = both16(1)
    out[128:132] = both16(BLOCK)
    out[132:140] = both32(path_table_bytes)
    out[140:144] = struct.pack("<I", l_table)
    out[148:152] = struct.pack(">I", m_table)
    out[156:190] = root_record
    out[190:318] = _a_field(volume_set_id, 128, ucs2=u)
    out[318:446] = _a_field(publisher, 128, ucs2=u)
    out[446:574] = _a_field(preparer, 128, ucs2=u)
    out[574:702] = _a_field(application, 128, ucs2=u)
    out[702:739] = _a_field(copyright_file, 37, ucs2=u)
    out[739:776] = _a_field(abstract_file, 37, ucs2=u)
    out[776:813] = _a_field("", 37, ucs2=u)
    out[813:830] = vd_date(created)
    out[830:847] = vd_date(created)
    out[847:864] = vd_date(None)
    out[864:881] = vd_date(None)
    out[881] = 1
    out[883:1395] = b" " * 512  # Application Use (the manifest locator goes here later)
    return bytes(out)


def terminator() -> bytes:
    """The Volume Descriptor Set Terminator (ECMA-119 8.3)."""
    return b"\xffCD001\x01".ljust(BLOCK, b"\x00")


def boot_record(catalog_block: int) -> bytes:
    """The El Torito Boot Record Volume Descriptor (El Torito 1.0, 2.0) pointing at the catalog."""
    out = bytearray(BLOCK)
    out[0:7] = b"\x00CD001\x01"
    out[7:39] = b"EL TORITO SPECIFICATION".ljust(32, b"\x00")
    out[71:75] = struct.pack("<I", catalog_block)
    return bytes(out)


def boot_catalog(entries: list[tuple[int, int, int]]) -> bytes:
    """The El Torito boot catalog (El Torito 1.0, 2.1-2.4), one 2048-byte block.

    Args:
        entries: (platform id: 0 x86 BIOS or 0xEF UEFI, load block, sector count in 512-byte
            units) per bootable image, no-emulation; the first is the initial/default entry,
            each further one gets its own section header (the last one marked final, 0x91).
    """
    first = entries[0]
    validation = bytearray(32)
    validation[0] = 1
    validation[1] = first[0]
    validation[30:32] = b"\x55\xaa"
    csum = -sum(struct.unpack("<16H", bytes(validation))) & 0xFFFF
    validation[28:30] = struct.pack("<H", csum)
    out = bytearray(validation)
    out += _boot_entry(first[1], first[2])
    rest = entries[1:]
    for i, (platform, block, sectors) in enumerate(rest):
        header = 0x91 if i == len(rest) - 1 else 0x90
        out += struct.pack("<BBH", header, platform, 1).ljust(32, b"\x00")
        out += _boot_entry(block, sectors)
    return bytes(out.ljust(BLOCK, b"\x00"))


def _boot_entry(block: int, sectors: int) -> bytes:
    # boot indicator 0x88 (bootable), media 0 (no emulation), load segment 0 (= 0x7C0),
    # system type 0, sector count, load RBA
    return struct.pack("<BBHBBHI", 0x88, 0, 0, 0, 0, min(sectors, 0xFFFF), block).ljust(32, b"\x00")


def boot_info_table(pvd_block: int, file_block: int, length: int, checksum: int) -> bytes:
    """The 56-byte boot info table mkisofs writes at byte 8 of a no-emulation image.

    Fields (32-bit little-endian): the PVD's block, the image's block, its length in bytes and
    the 32-bit sum of its little-endian words from byte 64 on; then 40 reserved zero bytes.
    """
    return struct.pack("<IIII", pvd_block, file_block, length, checksum & 0xFFFFFFFF) + bytes(40)


def boot_checksum(data: bytes) -> int:
    """The boot info table checksum of an image's bytes (from byte 64, zero-padded to 4)."""
    body = data[64:]
    body += b"\x00" * (-len(body) % 4)
    return sum(struct.unpack(f"<{len(body) // 4}I", body)) & 0xFFFFFFFF


# -- SUSP / RRIP entries -------------------------------------------------------------------------
_px_heads: dict[tuple[int, int, int, int], bytes] = {}


def rr_px(mode: int, nlink: int, uid: int, gid: int, ino: int) -> bytes:
    """RRIP 1.12 PX entry (4.1.1): mode, links, uid, gid, serial number, 44 bytes."""
    key = (mode, nlink, uid, gid)
    head = _px_heads.get(key)
    if head is None:
        head = b"PX\x2c\x01" + both32(mode) + both32(nlink) + both32(uid) + both32(gid)
        if len(_px_heads) > 4096:
            _px_heads.clear()
        _px_heads[key] = head
    return head + ino.to_bytes(4, "little") + ino.to_bytes(4, "big")


def rr_tf(mtime: bytes, atime: bytes, ctime: bytes) -> bytes:
    """RRIP TF entry (4.1.6): modify, access and attributes-change times, 7-byte form."""
    return b"TF\x1a\x01\x0e" + mtime + atime + ctime


def rr_nm(name: bytes) -> list[bytes]:
    """RRIP NM entries (4.1.4) for *name*: pieces of at most 250 bytes, CONTINUE on all but the last."""
    if len(name) <= 250:
        return [b"NM" + bytes((5 + len(name), 1, 0)) + name]
    pieces = [name[i : i + 250] for i in range(0, len(name), 250)]
    return [b"NM" + bytes((5 + len(p), 1, 1 if i < len(pieces) - 1 else 0)) + p for i, p in enumerate(pieces)]


def rr_sl(target: bytes) -> list[bytes]:
    """RRIP SL entries (4.1.3) for a symlink *target*.

    Component records: ROOT (0x08) for a leading ``/``, CURRENT (0x02) for ``.``, PARENT (0x04)
    for ``..``, else the name, split into pieces of at most 248 bytes with CONTINUE (0x01) on all
    but the last. Entries hold at most 255 bytes; an entry followed by another of the same link
    has its CONTINUE flag set.
    """
    comps: list[bytes] = []
    if target.startswith(b"/"):
        comps.append(b"\x08\x00")
    for part in target.split(b"/"):
        if not part:
            continue
        if part == b".":
            comps.append(b"\x02\x00")
        elif part == b"..":
            comps.append(b"\x04\x00")
        else:
            pieces = [part[i : i + 248] for i in range(0, len(part), 248)]
            for i, p in enumerate(pieces):
                comps.append(bytes((1 if i < len(pieces) - 1 else 0, len(p))) + p)
    if not comps:
        comps.append(b"\x02\x00")  # an empty target reads as "."
    bodies: list[bytearray] = [bytearray()]
    for c in comps:
        if 5 + len(bodies[-1]) + len(c) > 255:
            bodies.append(bytearray())
        bodies[-1] += c
    return [b"SL" + bytes((5 + len(b), 1, 1 if i < len(bodies) - 1 else 0)) + bytes(b) for i, b in enumerate(bodies)]


def susp_ce(block: int, offset: int, length: int) -> bytes:
    """SUSP CE entry (5.1): where the Continuation Area of this System Use field lies."""
    return b"CE\x1c\x01" + both32(block) + both32(offset) + both32(length)


def susp_er() -> bytes:
    """SUSP ER entry (5.5) naming RRIP 1.12 (identifier ``IEEE_P1282``)."""
    return (
        b"ER"
        + bytes((8 + len(RRIP_ID) + len(RRIP_DES) + len(RRIP_SRC), 1, len(RRIP_ID), len(RRIP_DES), len(RRIP_SRC), 1))
        + RRIP_ID
        + RRIP_DES
        + RRIP_SRC
    )


def pack_su(entries: list[bytes], room: int) -> tuple[bytes, list[list[bytes]]]:
    """Split System Use *entries* between a record (*room* bytes) and Continuation Areas.

    Returns (the record's System Use bytes, of even length (a zero byte pads odd entries, SUSP
    5.1 readers stop when fewer than 4 bytes remain), with a 28-byte CE placeholder at its end when
    anything spills; the continuation areas, each a list of entries of at most 2048 bytes, every
    area but the last ending with a CE placeholder). The caller fills the CE placeholders once
    the areas have blocks (:func:`susp_ce`). Entries keep their order (SUSP 5.1).
    """
    total = sum(map(len, entries))
    if total <= room:
        su = b"".join(entries)
        return (su + b"\x00" if total & 1 else su), []
    inline: list[bytes] = []
    used = 0
    i = 0
    while i < len(entries) and used + len(entries[i]) + CE_LEN <= room:
        used += len(entries[i])
        inline.append(entries[i])
        i += 1
    inline.append(b"CE" + bytes(CE_LEN - 2))
    if used & 1:  # a zero byte after the last entry keeps the record even
        inline.append(b"\x00")
    areas: list[list[bytes]] = [[]]
    size = 0
    for e in entries[i:]:
        if size + len(e) + CE_LEN > BLOCK:
            areas[-1].append(b"CE" + bytes(CE_LEN - 2))
            areas.append([])
            size = 0
        areas[-1].append(e)
        size += len(e)
    return b"".join(inline), areas
