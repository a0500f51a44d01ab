"""UDIF writer/reader: every format round-trips, every checksum catches damage."""

from __future__ import annotations

import io
import os
import struct
from pathlib import Path

import pytest

from imaging.udif import CHUNK_BYTES, FORMATS, write_udif
from imaging.udif_read import UdifImage
from pool.errors import ImageCorruptError, UsageError

DISK = os.urandom(CHUNK_BYTES + 4096) + bytes(3 * CHUNK_BYTES) + (b"text " * 300_000)[:CHUNK_BYTES] + bytes(1024)


def write(path: Path, fmt: str, blocks: list[bytes | int]) -> None:
    with open(path, "wb") as f:
        write_udif(f, blocks, fmt=fmt, partition_name="disk image (Apple_HFS : 0)", segment_id=bytes(16), workers=2)


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_roundtrip(tmp_path: Path, fmt: str) -> None:
    p = tmp_path / "x.dmg"
    write(p, fmt, [DISK[: 7777 * 512], DISK[7777 * 512 :], 2 * CHUNK_BYTES + 512])
    with UdifImage(p) as img:
        assert img.size_bytes == len(DISK) + 2 * CHUNK_BYTES + 512
        assert img.read(0, img.size_bytes) == DISK + bytes(2 * CHUNK_BYTES + 512)
        assert img.read(CHUNK_BYTES - 3, 10) == (DISK + bytes(10))[CHUNK_BYTES - 3 : CHUNK_BYTES + 7]
        assert img.verify() == []


def test_damage_named(tmp_path: Path) -> None:
    p = tmp_path / "x.dmg"
    write(p, "UDZO", [DISK])
    raw = bytearray(p.read_bytes())
    raw[100] ^= 0xFF
    p.write_bytes(bytes(raw))
    with UdifImage(p) as img:
        problems = img.verify()
    assert any("data fork" in s for s in problems)
    assert any("blkx 0" in s for s in problems)


def test_partition_checksum_mismatch(tmp_path: Path) -> None:
    p = tmp_path / "x.dmg"
    write(p, "UDRO", [DISK])  # raw chunks: a flipped byte decodes fine, only the CRCs catch it
    raw = bytearray(p.read_bytes())
    raw[5] ^= 1
    p.write_bytes(bytes(raw))
    with UdifImage(p) as img:
        problems = img.verify()
    assert any("blkx 0" in s and "CRC-32" in s for s in problems)


def test_not_a_dmg(tmp_path: Path) -> None:
    p = tmp_path / "x.dmg"
    p.write_bytes(b"\0" * 4096)
    with pytest.raises(ImageCorruptError, match="koly"):
        UdifImage(p)
    write(p, "UDZO", [DISK])
    raw = bytearray(p.read_bytes())
    koly = len(raw) - 512
    xml_off = struct.unpack_from(">Q", raw, koly + 0xD8)[0]
    raw[xml_off + 10 : xml_off + 20] = b"#" * 10
    p.write_bytes(bytes(raw))
    with pytest.raises(ImageCorruptError, match="property list"):
        UdifImage(p)


def test_bad_input() -> None:
    with pytest.raises(UsageError):
        write_udif(io.BytesIO(), [b"x" * 100], fmt="UDZO", partition_name="p", segment_id=bytes(16))
    with pytest.raises(UsageError):
        write_udif(io.BytesIO(), [], fmt="NOPE", partition_name="p", segment_id=bytes(16))
