"""UDIF writer/reader: every format round-trips, every checksum catches damage."""

from __future__ import annotations

import io
import os
import struct
import zlib
from pathlib import Path

import pytest

from imaging.udif import CHUNK_BYTES, FORMATS, FileSpan, Piece, write_udif, zero_crc32
from imaging.udif_read import UdifImage
from pool.errors import BusyError, ImageCorruptError, UsageError

DISK = os.urandom(CHUNK_BYTES + 4096) + bytes(3 * CHUNK_BYTES) + (b"text " * 300_000)[:CHUNK_BYTES] + bytes(1024)


def write(path: Path, fmt: str, blocks: list[Piece]) -> None:
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


@pytest.mark.parametrize("n", [0, 1, 511, 4096, CHUNK_BYTES, CHUNK_BYTES + 12345, 10 * CHUNK_BYTES + 1])
def test_zero_run_crc_matches_zlib(n: int) -> None:
    head = os.urandom(777)
    assert zero_crc32(n) == zlib.crc32(bytes(n))
    assert zero_crc32(n, zlib.crc32(head)) == zlib.crc32(bytes(n), zlib.crc32(head))


def test_file_spans_write_the_same_bytes(tmp_path: Path) -> None:
    """A file read straight into the chunk buffers gives the same image as its bytes."""
    big = tmp_path / "big"
    big.write_bytes(DISK[: CHUNK_BYTES + 3 * 512 + 100])
    small = tmp_path / "small"
    small.write_bytes(DISK[5:1005])
    size = big.stat().st_size
    lead = DISK[: 3 * 512 + 7]
    end_pad = -(len(lead) + size + 1000) % 512
    spans: list[Piece] = [lead, FileSpan(big, size, "big"), FileSpan(small, 1000, "small"), end_pad, CHUNK_BYTES]
    plain: list[Piece] = [lead, big.read_bytes(), small.read_bytes(), bytes(end_pad), bytes(CHUNK_BYTES)]
    write(tmp_path / "a.dmg", "UDZO", spans)
    write(tmp_path / "b.dmg", "UDZO", plain)
    assert (tmp_path / "a.dmg").read_bytes() == (tmp_path / "b.dmg").read_bytes()
    with UdifImage(tmp_path / "a.dmg") as img:
        assert img.verify() == []
        assert img.read(len(lead), size) == big.read_bytes()


@pytest.mark.parametrize(("planned", "word"), [(5000, "grew"), (7000, "shrank")])
def test_file_span_that_changed_size(tmp_path: Path, planned: int, word: str) -> None:
    f = tmp_path / "f"
    f.write_bytes(b"z" * 6000)
    with pytest.raises(BusyError, match=word):
        write_udif(io.BytesIO(), [FileSpan(f, planned, "f")], fmt="UDZO", partition_name="p", segment_id=bytes(16))


@pytest.mark.parametrize("tree", [None, "rr", "udf", "iso"])  # the builder writes no Joliet
def test_iso_volume_inside_reads_like_the_raw_iso(tmp_path: Path, tree: str | None) -> None:
    """The ISO view over the compressed image shows what IsoReader shows on the unpacked ISO."""
    from imaging.dmg import DmgImage, build_dmg
    from imaging.dmg_iso import DmgIsoVolume
    from imaging.hfsplus import HfsOptions
    from imaging.iso_read import IsoReader

    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "sub" / "big.bin").write_bytes(DISK[: 2 * CHUNK_BYTES + 999])
    (src / "café.txt").write_bytes(b"accents")
    (src / "emptydir").mkdir()
    os.symlink("café.txt", src / "link")
    image = tmp_path / "i.dmg"
    build_dmg(src, image, filesystem="iso-udf", opts=HfsOptions(volume_name="V"), workers=2)
    raw = tmp_path / "raw.iso"
    with UdifImage(image) as img:
        raw.write_bytes(img.read(0, img.size_bytes))
        inside, plain = DmgIsoVolume(img, tree=tree), IsoReader(raw, tree=tree)
        try:
            assert inside.tree == plain.tree
            seen = {}
            for (ino, node), (ino2, node2) in zip(inside.walk(), plain.walk(), strict=True):
                assert (node.rel, node.kind, node.size, node.mode, node.target) == (
                    node2.rel,
                    node2.kind,
                    node2.size,
                    node2.mode,
                    node2.target,
                )
                if node.kind == "file":
                    data = inside.read(ino, 0, node.size + 10)
                    assert data == plain.read(ino2, 0, node2.size) == b"".join(inside.chunks(ino))
                    assert inside.read(ino, CHUNK_BYTES - 5, 10) == plain.read(ino2, CHUNK_BYTES - 5, 10)
                    seen[node.rel] = data
        finally:
            inside.close()
            plain.close()
    if tree in (None, "rr", "udf"):  # the trees that keep real names
        assert seen == {"sub/big.bin": DISK[: 2 * CHUNK_BYTES + 999], "café.txt": b"accents"}
    with DmgImage(image) as d:
        assert d.filesystem == "iso-udf"
        entries = dict(d.entries())
        assert entries["link"].kind == "symlink" and d.volume.readlink(entries["link"].ino) == "café.txt".encode()
        assert d.volume.read(entries["sub/big.bin"].ino, 0, 5) == DISK[:5]
