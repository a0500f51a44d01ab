"""Encrypted container (encrcdsa v2) and sparse formats: round trips, damage, wrong passwords."""

from __future__ import annotations

import os
import struct
from pathlib import Path

import pytest

from imaging.dmg import DmgImage, build_dmg, open_disk
from imaging.dmg_crypt import BLOCK_BYTES, EncryptedFile, EncryptedWriter, Keys
from imaging.hfsplus import HfsOptions
from imaging.sparse import (
    SparseBundle,
    SparseImage,
    check_bundle_sidecar,
    sparseimage_band_bytes,
    write_sparsebundle,
    write_sparseimage,
)
from imaging.udif import FileSpan
from pool.errors import AuthError, BusyError, ImageCorruptError, UsageError

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
    assert sparseimage_band_bytes(10 * 10**9) == 10 << 20  # 1008 bands cover 10 GB with 10 MiB bands
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
    with pytest.raises(UsageError):
        build_dmg(tmp_path / "src", tmp_path / "z.sparseimage", fmt="SPARSE", encrypt="AES-128", password="x")
