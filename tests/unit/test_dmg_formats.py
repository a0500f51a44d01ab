"""Encrypted container (encrcdsa v2) and sparse formats: round trips, damage, wrong passwords."""

from __future__ import annotations

import os
import struct
from pathlib import Path

import pytest

from imaging.dmg import DmgImage, build_dmg, open_disk
from imaging.dmg_crypt import BLOCK_BYTES, DATA_OFFSET, EncryptedFile, EncryptedWriter, Keys, Sealer
from imaging.hfsplus import HfsOptions
from imaging.hfsplus_read import HfsVolume
from imaging.sparse import SPRS_HEADER, SPRS_NODE, SparseBundle, SparseImage, check_bundle_sidecar
from imaging.sparse_write import kept_blocks, sparseimage_band_bytes, write_sparsebundle, write_sparseimage
from imaging.udif import FileSpan, Piece
from pool.errors import AuthError, BusyError, ImageCorruptError, UnsupportedError, UsageError

PLAIN = os.urandom(3 * BLOCK_BYTES + 1234)


@pytest.mark.parametrize("cipher", ["AES-128", "AES-256"])
def test_encrypted_roundtrip_any_offset(tmp_path: Path, cipher: str) -> None:
    p = tmp_path / "e.bin"
    with open(p, "wb") as out:
        w = EncryptedWriter(out, Keys.new(cipher), "pw", iterations=1000)
        w.write(PLAIN[:5000])
        w.write(PLAIN[5000:])
        assert w.finish() == len(PLAIN)
    assert PLAIN[:64] not in p.read_bytes()
    e = EncryptedFile(p, "pw")
    try:
        assert e.key_bits == (128 if cipher == "AES-128" else 256)
        assert e.size_bytes == len(PLAIN)
        assert e.pread(len(PLAIN) + 10, 0) == PLAIN
        for off, n in ((0, 1), (4095, 2), (4096, 4096), (7000, 9000), (len(PLAIN) - 3, 100)):
            assert e.pread(n, off) == PLAIN[off : off + n]
    finally:
        e.close()
    with pytest.raises(AuthError):
        EncryptedFile(p, "wrong")


def test_encrypted_header_damage(tmp_path: Path) -> None:
    p = tmp_path / "e.bin"
    with open(p, "wb") as out:
        w = EncryptedWriter(out, Keys.new("AES-128"), "pw", iterations=1000)
        w.write(PLAIN)
        w.finish()
    raw = bytearray(p.read_bytes())
    raw[8:12] = struct.pack(">I", 9)
    p.write_bytes(bytes(raw))
    with pytest.raises(ImageCorruptError, match="version 9"):
        EncryptedFile(p, "pw")
    p.write_bytes(bytes(raw[:6000]))
    with pytest.raises(ImageCorruptError):
        EncryptedFile(p, "pw")


def make_tree(root: Path) -> dict[str, bytes]:
    files = {"a.txt": b"hello\n", "sub/b.bin": os.urandom(300_000), "sub/empty": b""}
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return files


def read_all(image: Path, password: str | None = None) -> dict[str, bytes]:
    out = {}
    with DmgImage(image, password=password) as d:
        for path, e in d.entries():
            if e.kind == "file":
                out[path] = d.volume.read(e.ino, 0, e.size + 1)
    return out


@pytest.mark.parametrize("fmt", ["UDZO", "UDRO"])
def test_encrypted_dmg_build_and_open(tmp_path: Path, fmt: str) -> None:
    files = make_tree(tmp_path / "src")
    image = tmp_path / "e.dmg"
    res = build_dmg(tmp_path / "src", image, fmt=fmt, encrypt="AES-256", password="s3cret")
    assert res.encryption == "AES-256" and image.read_bytes()[:8] == b"encrcdsa"
    assert read_all(image, "s3cret") == files
    asked = []
    with DmgImage(image, password=lambda: asked.append(1) or "s3cret") as d:
        assert d.disk.verify() == []
    assert asked == [1]
    with pytest.raises(UsageError, match="encrypted"):
        open_disk(image)
    with pytest.raises(AuthError, match="wrong password"):
        open_disk(image, "nope")
    # a plain image never asks
    build_dmg(tmp_path / "src", tmp_path / "p.dmg")
    with DmgImage(tmp_path / "p.dmg", password=lambda: pytest.fail("asked for a password")):
        pass


def test_encrypted_damage_found_by_verify(tmp_path: Path) -> None:
    make_tree(tmp_path / "src")
    image = tmp_path / "e.dmg"
    build_dmg(tmp_path / "src", image, fmt="UDRO", encrypt="AES-128", password="pw")
    raw = bytearray(image.read_bytes())
    raw[4096 + 100_000] ^= 1  # inside the encrypted data: one block decrypts to garbage
    image.write_bytes(bytes(raw))
    with DmgImage(image, password="pw") as d:
        assert any("CRC-32" in p for p in d.disk.verify())


def test_sparseimage_roundtrip_and_holes(tmp_path: Path) -> None:
    disk = 50 * (1 << 20)
    src = tmp_path / "f"
    src.write_bytes(b"x" * 5000)
    pieces = [b"\1" * 512, 3 << 20, FileSpan(src, 5000, "f"), bytes(120), disk - 512 - (3 << 20) - 5120]
    out = tmp_path / "x.sparseimage"
    res = write_sparseimage(out, pieces, disk)
    assert res.band_bytes == sparseimage_band_bytes(disk) == 1 << 20
    assert res.bands_written == 2  # band 0 and band 3; the zero bands are never written
    with SparseImage(out) as img:
        assert img.size_bytes == disk
        assert img.read(0, 512) == b"\1" * 512
        assert img.read(512 + (3 << 20), 5000) == b"x" * 5000
        assert img.read(10 << 20, 100) == bytes(100)
    assert sparseimage_band_bytes(10 * 10**9) == 16 << 20  # a power of two: 1008 x 16 MiB covers 10 GB
    with pytest.raises(UsageError):
        write_sparseimage(out, [b"\0" * 512], 1024)
    src.write_bytes(b"x" * 4000)  # changed since planned
    with pytest.raises(BusyError):
        write_sparseimage(tmp_path / "y.sparseimage", [FileSpan(src, 5000, "f"), disk - 5000 + 120], disk)


def test_sparsebundle_roundtrip(tmp_path: Path) -> None:
    disk = 40 * (1 << 20)
    out = tmp_path / "x.sparsebundle"
    res = write_sparsebundle(out, [b"\2" * 4096, (20 << 20) - 4096, b"\3" * 1024, disk - (20 << 20) - 1024], disk)
    assert res.bands_written == 2
    assert sorted(os.listdir(out / "bands")) == ["0", "2"]
    assert {"Info.plist", "Info.bckup", "token", "bands"} <= set(os.listdir(out))
    with SparseBundle(out) as b:
        assert b.read(0, 4096) == b"\2" * 4096 and b.read(20 << 20, 1024) == b"\3" * 1024
        assert b.read(30 << 20, 10) == bytes(10)


def test_sparse_builds_open_and_verify(tmp_path: Path) -> None:
    files = make_tree(tmp_path / "src")
    opts = HfsOptions(volume_name="v", size_bytes=2 * 10**9)
    for fmt, name in (("SPARSE", "v.sparseimage"), ("SPARSEBUNDLE", "v.sparsebundle")):
        image = tmp_path / name
        res = build_dmg(tmp_path / "src", image, fmt=fmt, opts=opts)
        assert res.volume_bytes >= 2 * 10**9 - 4096 and res.image_bytes < 40 * (1 << 20)
        assert read_all(image) == files
        with DmgImage(image) as d:
            assert d.volume.check() == []
    assert check_bundle_sidecar(tmp_path / "v.sparsebundle") == []
    (tmp_path / "v.sparsebundle" / "bands" / "0").write_bytes(b"junk")
    assert check_bundle_sidecar(tmp_path / "v.sparsebundle")


def stored_bytes(image: Path) -> bytes:
    """Every byte the image stores (a file, or all files of a bundle)."""
    files = [image] if image.is_file() else sorted(p for p in image.rglob("*") if p.is_file())
    return b"".join(p.read_bytes() for p in files)


@pytest.mark.parametrize(
    "fmt,name,cipher", [("SPARSE", "e.sparseimage", "AES-128"), ("SPARSEBUNDLE", "e.sparsebundle", "AES-256")]
)
def test_encrypted_sparse_formats_build_and_open(tmp_path: Path, fmt: str, name: str, cipher: str) -> None:
    files = make_tree(tmp_path / "src")
    image = tmp_path / name
    opts = HfsOptions(volume_name="v", size_bytes=2 * 10**9)
    res = build_dmg(tmp_path / "src", image, fmt=fmt, opts=opts, encrypt=cipher, password="s3cret")
    assert res.encryption == cipher
    assert res.image_bytes < 40 * (1 << 20)  # free space is not stored, encrypted or not
    assert files["sub/b.bin"][:4096] not in stored_bytes(image) and b"hello" not in stored_bytes(image)
    assert read_all(image, "s3cret") == files
    asked: list[int] = []

    def ask() -> str:
        asked.append(1)
        return "s3cret"

    with DmgImage(image, password=ask) as d:
        assert isinstance(d.volume, HfsVolume) and d.volume.check() == []
        assert isinstance(d.disk, SparseImage if fmt == "SPARSE" else SparseBundle)
    assert asked == [1]
    with pytest.raises(UsageError, match="encrypted"):
        open_disk(image)
    with pytest.raises(AuthError, match="wrong password"):
        open_disk(image, "nope")
    if fmt == "SPARSE":  # the whole sprs file inside the container
        raw = image.read_bytes()
        assert raw[:8] == b"encrcdsa" and b"sprs" not in raw[DATA_OFFSET : DATA_OFFSET + 4096]
        e = EncryptedFile(image, "s3cret")
        assert e.pread(4, 0) == b"sprs" and e.size_bytes % 4096 == 0 and len(raw) == DATA_OFFSET + e.size_bytes
        e.close()
    else:  # the header in token (data length 0), the bands encrypted in place
        token = (image / "token").read_bytes()
        block, size, offset = struct.unpack_from(">IQQ", token, 0x34)
        assert token[:8] == b"encrcdsa" and (block, size, offset) == (4096, 0, len(token))
        assert sorted(os.listdir(image / "bands"))[0] == "0"


def test_encrypted_bundle_reads_holes_as_zeros_and_stores_all_but_free_blocks(tmp_path: Path) -> None:
    disk = 24 * (1 << 20)
    band = 8 << 20
    body = os.urandom(5000)
    free = [(1 << 20, 20 << 20)]  # unallocated: an encrypted image need not store it
    pieces: list[Piece] = [body, disk - len(body) - 8192, b"\7" * 8192]
    out = tmp_path / "x.sparsebundle"
    res = write_sparsebundle(
        out, pieces, disk, band_bytes=band, seal=Sealer("AES-128", "pw", iterations=1000), free=free
    )
    assert sorted(os.listdir(out / "bands")) == ["0", "2"] and res.bands_written == 2
    # band 0: blocks [0, 1 MiB) stored (zeros included), the free rest a hole; band 2 from 20 MiB on
    assert (out / "bands" / "0").stat().st_blocks * 512 < 2 << 20
    with SparseBundle(out, "pw") as b:
        assert b.read(0, 5000) == body and b.read(5000, (1 << 20) - 5000) == bytes((1 << 20) - 5000)
        assert b.read(10 << 20, 4096) == bytes(4096)  # a missing band
        assert b.read(disk - 8192, 9000) == b"\7" * 8192
        assert b.read(12 << 20, 100) == bytes(100)
    with pytest.raises(UsageError):
        SparseBundle(out)
    with pytest.raises(UsageError, match="4096"):
        write_sparsebundle(
            tmp_path / "y.sparsebundle", [bytes(4608)], 4608, band_bytes=1536, seal=Sealer("AES-128", "p")
        )


def test_kept_blocks_skip_only_whole_free_blocks() -> None:
    B = BLOCK_BYTES
    slices: list[bytes | int] = [b"a" * 100, 10 * B - 100, b"z" * 10]
    got = list(kept_blocks(slices, [(2 * B + 10, 7 * B)]))
    # block 2 is only partly free: kept; blocks 3-6 skipped; 7-9 and the padded tail kept
    assert [(at, len(d)) for at, d in got] == [(0, 3 * B), (7 * B, 4 * B)]
    assert got[0][1][:100] == b"a" * 100 and got[1][1][3 * B : 3 * B + 10] == b"z" * 10
    assert got[1][1][3 * B + 10 :] == bytes(B - 10)
    assert [(a, len(d)) for a, d in kept_blocks([3 * B], [])] == [(0, 3 * B)]


def chained_pieces(band: int, n_bands: int) -> tuple[list[Piece], bytes, int]:
    data = os.urandom(n_bands * band)
    disk = 4 * n_bands * band
    return [data[: 5 * band], 3 * band, data[5 * band :], disk - len(data) - 3 * band], data, disk


def test_sparseimage_chains_index_nodes_past_1008_bands(tmp_path: Path) -> None:
    band = 4096  # small bands: 2500 stored bands need the header and two index nodes
    pieces, data, disk = chained_pieces(band, 2500)
    want = data[: 5 * band] + bytes(3 * band) + data[5 * band :]
    out = tmp_path / "c.sparseimage"
    res = write_sparseimage(out, pieces, disk, band_bytes=band)
    assert (res.bands_written, res.index_nodes) == (2500, 2)
    raw = out.read_bytes()
    first = SPRS_HEADER.unpack_from(raw)[5]
    assert first == 4096 + 1008 * band  # the first node sits where band slot 1008 would go
    magic, nr, flags, nxt, _ = SPRS_NODE.unpack_from(raw, first)
    assert (magic, nr, flags, nxt) == (b"sprs", 0, 1, first + 4096 + 1010 * band)
    assert struct.unpack_from(">I", raw, first + 0x38)[0] == 1008 + 3 + 1  # disk band 1011 (after the gap)
    assert raw[first + 4096 : first + 4096 + band] == want[1011 * band : 1012 * band]
    with SparseImage(out) as img:
        assert img.index_nodes == [first, nxt]
        assert img.read(0, len(want) + 10) == want + bytes(10)
    sealed = tmp_path / "ce.sparseimage"
    write_sparseimage(sealed, pieces, disk, band_bytes=band, seal=Sealer("AES-256", "pw", iterations=1000))
    with SparseImage(sealed, source=EncryptedFile(sealed, "pw")) as img:
        assert len(img.index_nodes) >= 2 and img.read(0, len(want)) == want


def test_sparseimage_reads_a_hand_made_chain_and_refuses_damaged_ones(tmp_path: Path) -> None:
    """A chain laid out by hand as fsdump/apfs-fuse describe it (not by our writer): a node
    placed anywhere, its bands right after it, band numbers in any order."""
    band = 512
    disk_bands = 3000
    head = bytearray(4096)
    SPRS_HEADER.pack_into(head, 0, b"sprs", 3, 1, 1, disk_bands, 0, disk_bands, bytes(28))
    numbers = list(range(2999, 2999 - 1008, -1))  # slots 0..1007 hold disk bands 2998 down to 1991
    struct.pack_into(">1008I", head, 64, *numbers)
    body = bytearray(1008 * band)
    for i, n in enumerate(numbers):
        body[i * band : (i + 1) * band] = bytes([n % 251]) * band
    node_at = 4096 + 1008 * band + 3 * band  # a gap before the node: only the pointer matters
    struct.pack_into(">Q", head, 20, node_at)
    node = bytearray(4096)
    SPRS_NODE.pack_into(node, 0, b"sprs", 0, 1, 0, bytes(36))
    struct.pack_into(">2I", node, 0x38, 1, 0)  # slot 0: disk band 0; slot 1 unused
    struct.pack_into(">I", node, 0x38 + 8, 6)  # slot 2: disk band 5
    tail = b"\x11" * band + b"\x22" * band + b"\x55" * band
    p = tmp_path / "h.sparseimage"
    p.write_bytes(bytes(head) + bytes(body) + bytes(3 * band) + bytes(node) + tail)
    with SparseImage(p) as img:
        assert img.read(0, band) == b"\x11" * band and img.read(5 * band, band) == b"\x55" * band
        assert img.read(band, band) == bytes(band)
        assert img.read(2998 * band, 2 * band) == bytes([2999 % 251]) * band + bytes(band)
        assert img.read(1991 * band, band) == bytes([1992 % 251]) * band
    loop = bytearray(p.read_bytes())
    struct.pack_into(">Q", loop, node_at + 12, node_at)  # the node points at itself
    p.write_bytes(bytes(loop))
    with pytest.raises(ImageCorruptError, match="loops"):
        SparseImage(p)
    loop[node_at : node_at + 4] = b"xxxx"
    p.write_bytes(bytes(loop))
    with pytest.raises(ImageCorruptError, match="signature"):
        SparseImage(p)
    struct.pack_into(">Q", loop, 20, 1 << 40)
    p.write_bytes(bytes(loop))
    with pytest.raises(ImageCorruptError, match="outside"):
        SparseImage(p)


def test_encrypted_sparse_damage_is_named(tmp_path: Path) -> None:
    make_tree(tmp_path / "src")
    image = tmp_path / "e.sparseimage"
    build_dmg(tmp_path / "src", image, fmt="SPARSE", encrypt="AES-128", password="pw")
    raw = bytearray(image.read_bytes())
    raw[DATA_OFFSET + 10] ^= 1  # the sprs header's block decrypts to garbage
    image.write_bytes(bytes(raw))
    with pytest.raises(ImageCorruptError, match="neither a sparse image nor a UDIF image"):
        open_disk(image, "pw")
    bundle = tmp_path / "e.sparsebundle"
    build_dmg(tmp_path / "src", bundle, fmt="SPARSEBUNDLE", encrypt="AES-128", password="pw")
    (bundle / "token").write_bytes((bundle / "token").read_bytes()[:0x2B0])
    with pytest.raises(ImageCorruptError, match="e.sparsebundle: password key item truncated"):
        open_disk(bundle, "pw")
    (bundle / "token").write_bytes(b"junk")
    with pytest.raises(UnsupportedError, match="not an encrcdsa header"):
        open_disk(bundle, "pw")
