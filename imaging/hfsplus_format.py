"""HFS+ / HFSX on-disk structures shared by the writer and the reader (Apple TN1150).

Everything is big-endian. Sources: Apple Technical Note TN1150 "HFS Plus Volume Format"
(volume header, fork data, B-tree nodes and header record, catalog/extents/attributes keys and
records, dates, BSD info, symbolic links, the Unicode decomposition rules for names).
"""

from __future__ import annotations

import struct
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

SIG_HFSPLUS = b"H+"
SIG_HFSX = b"HX"
VERSION_HFSPLUS = 4
VERSION_HFSX = 5
VH_OFFSET = 1024  #: the volume header; the alternate sits 1024 bytes before the volume's end

# catalog node ids (TN1150 "Catalog File")
CNID_ROOT_PARENT = 1
CNID_ROOT_FOLDER = 2
CNID_EXTENTS = 3
CNID_CATALOG = 4
CNID_BAD_BLOCKS = 5
CNID_ALLOCATION = 6
CNID_STARTUP = 7
CNID_ATTRIBUTES = 8
CNID_FIRST_USER = 16

# catalog record types
REC_FOLDER = 1
REC_FILE = 2
REC_FOLDER_THREAD = 3
REC_FILE_THREAD = 4

# attributes record types
ATTR_INLINE = 0x10
ATTR_FORK = 0x20

# B-tree node kinds
NODE_LEAF = -1
NODE_INDEX = 0
NODE_HEADER = 1
NODE_MAP = 2

BT_BIG_KEYS = 0x2
BT_VARIABLE_INDEX_KEYS = 0x4
KEY_COMPARE_BINARY = 0xBC  #: HFSX catalog: binary order of UTF-16 code units
KEY_COMPARE_FOLD = 0xCF  #: HFSX catalog: case-folding order (unused here)

FILE_THREAD_EXISTS = 0x0002
FILE_HAS_ATTRIBUTES = 0x0004
FILE_HAS_LINK_CHAIN = 0x0020  #: hard link (or its indirect node) in a link chain (Mac OS X 10.5+)
VOLUME_UNMOUNTED = 0x0100

HFS_EPOCH_OFFSET_S = 2082844800  #: seconds from 1904-01-01 to 1970-01-01 (both GMT)
UNKNOWN_ID = 99  #: owner/group "unknown": macOS shows the current user
PRIVATE_DIR_NAME = "\0\0\0\0HFS+ Private Data"  #: TN1150 "Hard Links": holds the indirect node files

VOLUME_HEADER = struct.Struct(">2sHI4sIIIIIIIIIIIIIIIQ32s80s80s80s80s80s")
FORK_DATA = struct.Struct(">QII64s")
NODE_DESCRIPTOR = struct.Struct(">IIbBHH")
HEADER_RECORD = struct.Struct(">HIIIIHHIIHIBBI64s")
BSD_INFO = struct.Struct(">IIBBHI")
FOLDER_RECORD = struct.Struct(">hHIIIIIII16s16s16sII")
FILE_RECORD = struct.Struct(">hHIIIIIII16s16s16sII80s80s")
assert VOLUME_HEADER.size == 512 and HEADER_RECORD.size == 106
assert FOLDER_RECORD.size == 88 and FILE_RECORD.size == 248

MAX_EXTENTS = 8  #: extents in a fork record / an extents-overflow record
HEADER_MAP_OFFSET = 14 + 106 + 128  #: the map record in a header node


def hfs_date(unix_ns: int) -> int:
    """An HFS+ date (unsigned seconds since 1904-01-01 GMT) from ns since the Unix epoch,
    clamped to the representable range (1904-2040)."""
    return max(0, min(0xFFFFFFFF, unix_ns // 1_000_000_000 + HFS_EPOCH_OFFSET_S))


def unix_ns(hfs_seconds: int) -> int:
    """ns since the Unix epoch from an HFS+ date."""
    return (hfs_seconds - HFS_EPOCH_OFFSET_S) * 1_000_000_000


def _excluded(ch: str) -> bool:
    """TN1150: characters in these ranges are never decomposed in HFS+ names."""
    c = ord(ch)
    return 0x2000 <= c <= 0x2FFF or 0xF900 <= c <= 0xFAFF or 0x2F800 <= c <= 0x2FAFF


def hfs_decompose(name: str) -> str:
    """Apple's variant of canonical decomposition (NFD) for HFS+ names (TN1150 "Unicode
    Subtleties"): NFD, except the ranges U+2000-U+2FFF, U+F900-U+FAFF and U+2F800-U+2FAFF stay as
    they are. Python's Unicode tables are newer than Apple's; names made of characters that
    existed in Unicode 3.2 decompose identically."""
    if name.isascii():
        return name
    out: list[str] = []
    run: list[str] = []
    for ch in name:
        if _excluded(ch):
            out.append(unicodedata.normalize("NFD", "".join(run)))
            run.clear()
            out.append(ch)
        else:
            run.append(ch)
    out.append(unicodedata.normalize("NFD", "".join(run)))
    return "".join(out)


def encode_name(posix_name: str) -> bytes:
    """A POSIX file name as an HFS+ catalog name: ``:`` becomes ``/`` (HFS+ stores the other
    separator), Apple-decomposed, UTF-16BE.

    Raises:
        ValueError: undecodable bytes in the name, or longer than 255 UTF-16 units.
    """
    if any(0xDC80 <= ord(c) <= 0xDCFF for c in posix_name):
        raise ValueError("the name is not valid UTF-8")
    units = hfs_decompose(posix_name.replace(":", "/")).encode("utf-16-be")
    if len(units) > 510:
        raise ValueError("the name is longer than 255 UTF-16 units")
    return units


def decode_name(units: bytes) -> str:
    """The POSIX name of an HFS+ catalog name (``/`` back to ``:``), kept decomposed."""
    return units.decode("utf-16-be", errors="surrogatepass").replace("/", ":")


def _case_fold_table() -> dict[int, int]:
    """Apple's HFS+ case-folding table (TN1150 "Case-Insensitive String Comparison",
    gLowerCaseTable) as the code units it changes; ignorable characters map to 0 and U+0000 to
    U+FFFF. Units not listed fold to themselves."""
    t: dict[int, int] = {0x0000: 0xFFFF}

    def shift(first: int, last: int, delta: int) -> None:
        for c in range(first, last + 1):
            t[c] = c + delta

    def pairs(first: int, last: int) -> None:  # upper case at even units, lower case right after
        for c in range(first, last + 1, 2):
            t[c] = c + 1

    shift(0x0041, 0x005A, 0x20)
    t.update({0x00C6: 0x00E6, 0x00D0: 0x00F0, 0x00D8: 0x00F8, 0x00DE: 0x00FE})
    t.update(
        {
            0x0110: 0x0111,
            0x0126: 0x0127,
            0x0132: 0x0133,
            0x013F: 0x0140,
            0x0141: 0x0142,
            0x014A: 0x014B,
            0x0152: 0x0153,
            0x0166: 0x0167,
            0x0181: 0x0253,
            0x0182: 0x0183,
            0x0184: 0x0185,
            0x0186: 0x0254,
            0x0187: 0x0188,
            0x0189: 0x0256,
            0x018A: 0x0257,
            0x018B: 0x018C,
            0x018E: 0x01DD,
            0x018F: 0x0259,
            0x0190: 0x025B,
            0x0191: 0x0192,
            0x0193: 0x0260,
            0x0194: 0x0263,
            0x0196: 0x0269,
            0x0197: 0x0268,
            0x0198: 0x0199,
            0x019C: 0x026F,
            0x019D: 0x0272,
            0x019F: 0x0275,
            0x01A2: 0x01A3,
            0x01A4: 0x01A5,
            0x01A7: 0x01A8,
            0x01A9: 0x0283,
            0x01AC: 0x01AD,
            0x01AE: 0x0288,
            0x01B1: 0x028A,
            0x01B2: 0x028B,
            0x01B3: 0x01B4,
            0x01B5: 0x01B6,
            0x01B7: 0x0292,
            0x01B8: 0x01B9,
            0x01BC: 0x01BD,
            0x01C4: 0x01C6,
            0x01C5: 0x01C6,
            0x01C7: 0x01C9,
            0x01C8: 0x01C9,
            0x01CA: 0x01CC,
            0x01CB: 0x01CC,
            0x01E4: 0x01E5,
            0x01F1: 0x01F3,
            0x01F2: 0x01F3,
        }
    )
    shift(0x0391, 0x03A1, 0x20)
    shift(0x03A3, 0x03A9, 0x20)
    pairs(0x03E2, 0x03EE)
    t.update(
        {
            0x0402: 0x0452,
            0x0404: 0x0454,
            0x0405: 0x0455,
            0x0406: 0x0456,
            0x0408: 0x0458,
            0x0409: 0x0459,
            0x040A: 0x045A,
            0x040B: 0x045B,
            0x040F: 0x045F,
        }
    )
    shift(0x0410, 0x0418, 0x20)
    shift(0x041A, 0x042F, 0x20)
    pairs(0x0460, 0x0474)
    pairs(0x0478, 0x0480)
    pairs(0x0490, 0x04BE)
    t.update({0x04C3: 0x04C4, 0x04C7: 0x04C8, 0x04CB: 0x04CC})
    shift(0x0531, 0x0556, 0x30)
    shift(0x10A0, 0x10C5, 0x30)
    for first, last in ((0x200C, 0x200F), (0x202A, 0x202E), (0x206A, 0x206F), (0xFEFF, 0xFEFF)):
        for c in range(first, last + 1):
            t[c] = 0
    shift(0x2160, 0x216F, 0x10)
    shift(0xFF21, 0xFF3A, 0x20)
    return t


_FOLD = _case_fold_table()


def fold_key(units: bytes) -> bytes:
    """The sort key of a catalog name on a case-insensitive HFS+ volume: each UTF-16 unit
    through Apple's case-folding table, ignorable units dropped (TN1150 FastUnicodeCompare).
    Comparing two keys as bytes gives FastUnicodeCompare's order; equal keys are names HFS+
    considers the same."""
    n = len(units) // 2
    codes = struct.unpack(f">{n}H", units)
    folded = [f for f in (_FOLD.get(c, c) for c in codes) if f]
    return struct.pack(f">{len(folded)}H", *folded)


def uni_str(units: bytes) -> bytes:
    """HFSUniStr255: a length in UTF-16 units, then the units."""
    return struct.pack(">H", len(units) // 2) + units


def catalog_key(parent_cnid: int, units: bytes) -> bytes:
    """HFSPlusCatalogKey: keyLength, parentID, nodeName."""
    body = struct.pack(">I", parent_cnid) + uni_str(units)
    return struct.pack(">H", len(body)) + body


def attr_key(cnid: int, name_units: bytes, start_block: int = 0) -> bytes:
    """HFSPlusAttrKey: keyLength, pad, fileID, startBlock, attrNameLen, attrName."""
    body = struct.pack(">HII", 0, cnid, start_block) + uni_str(name_units)
    return struct.pack(">H", len(body)) + body


def extent_key(cnid: int, start_block: int, fork_type: int = 0) -> bytes:
    """HFSPlusExtentKey: keyLength (10), forkType, pad, fileID, startBlock."""
    return struct.pack(">HBBII", 10, fork_type, 0, cnid, start_block)


def extents_field(extents: list[tuple[int, int]]) -> bytes:
    """HFSPlusExtentRecord: eight (startBlock, blockCount) pairs, zero-padded."""
    assert len(extents) <= MAX_EXTENTS
    pairs = [*extents, *([(0, 0)] * (MAX_EXTENTS - len(extents)))]
    return b"".join(struct.pack(">II", s, n) for s, n in pairs)


def fork_data(logical_bytes: int, total_blocks: int, extents: list[tuple[int, int]], clump_bytes: int = 0) -> bytes:
    """HFSPlusForkData (80 bytes) with the first eight extents."""
    return FORK_DATA.pack(logical_bytes, clump_bytes, total_blocks, extents_field(extents[:MAX_EXTENTS]))


def parse_extents(raw: bytes) -> list[tuple[int, int]]:
    """The non-empty (startBlock, blockCount) pairs of an HFSPlusExtentRecord."""
    pairs = [struct.unpack_from(">II", raw, 8 * i) for i in range(MAX_EXTENTS)]
    return [(s, n) for s, n in pairs if n]


@dataclass
class ForkInfo:
    """A parsed HFSPlusForkData."""

    logical_bytes: int
    total_blocks: int
    extents: list[tuple[int, int]]

    @classmethod
    def parse(cls, raw: bytes) -> ForkInfo:
        logical, _clump, blocks, ext = FORK_DATA.unpack(raw)
        return cls(logical, blocks, parse_extents(ext))


#: Finder flags (Inside Macintosh: Macintosh Toolbox Essentials, ch. 7 "Finder Interface";
#: TN1150 keeps them in a catalog record's userInfo: ``FInfo.fdFlags`` / ``DInfo.frFlags``, offset 8)
FINDER_HAS_CUSTOM_ICON = 0x0400  #: kHasCustomIcon
FINDER_IS_INVISIBLE = 0x4000  #: kIsInvisible


@dataclass(frozen=True)
class PlannedEntry:
    """Where an entry sits in the planned volume: what an alias to it records.

    Attributes:
        cnid: its catalog node ID; parent_cnid: its folder's; name: its name;
        create_date: its creation date in HFS+ seconds (since 1904-01-01 GMT).
    """

    cnid: int
    parent_cnid: int
    name: str
    create_date: int


@dataclass
class ExtraEntry:
    """A file or folder generated for the volume rather than walked from the source.

    Attributes:
        rel: ``/``-separated path from the volume root; its folder must exist (in the tree or
            as an earlier extra).
        data: the file's bytes, or a function of the planned volume (a :class:`~imaging.hfsplus.HfsPlusWriter`
            with every CNID assigned: :meth:`~imaging.hfsplus.HfsPlusWriter.planned`, ``volume_date``) that returns
            them, called once before the layout is fixed; None for a folder.
        finder_flags: Finder flags (``fdFlags``/``frFlags``), e.g. :data:`FINDER_IS_INVISIBLE`.
        type_code, creator_code: a file's Finder type and creator (4 bytes each).
    """

    rel: str
    data: bytes | Callable[[Any], bytes] | None
    finder_flags: int = 0
    type_code: bytes = bytes(4)
    creator_code: bytes = bytes(4)
