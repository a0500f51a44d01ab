"""HFS+ writer against our reader: names, extents overflow, xattrs, case clashes, reproducibility."""

from __future__ import annotations

import os
import unicodedata
from pathlib import Path

import pytest

from imaging.common import walk_tree
from imaging.hfsplus import HfsOptions, HfsPlusWriter
from imaging.hfsplus_format import decode_name, encode_name, fold_key, hfs_date, unix_ns
from imaging.hfsplus_read import HfsVolume
from imaging.udif import piece_bytes
from pool.errors import UnsupportedError, UsageError


def make_tree(root: Path) -> dict[str, bytes]:
    files = {
        "a.txt": b"hello\n",
        "empty": b"",
        "café ü.txt": b"accents",
        "😀 emoji.md": b"emoji",
        "sub/deeper/rand.bin": os.urandom(200_000),
        "x:y.txt": b"colon",
        "/".join(["d" * 40] * 6) + "/long-path.txt": b"deep",
    }
    for rel, data in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
    (root / "emptydir").mkdir()
    os.symlink("a.txt", root / "link")
    return files


def build(root: Path, **kw: object) -> tuple[bytes, HfsPlusWriter]:
    w = HfsPlusWriter(walk_tree(root), HfsOptions(volume_name="Vol", **kw))  # type: ignore[arg-type]
    data = b"".join(piece_bytes(p) for p in w.stream())
    assert len(data) == w.size_bytes
    return data, w


def volume(data: bytes) -> HfsVolume:
    return HfsVolume(lambda o, s: data[o : o + s], len(data))


@pytest.mark.parametrize("max_extent_blocks", [0xFFFFFFFF, 1])
def test_roundtrip_every_file(tmp_path: Path, max_extent_blocks: int) -> None:
    src = tmp_path / "src"
    files = make_tree(src)
    data, w = build(src, max_extent_blocks=max_extent_blocks)
    v = volume(data)
    assert v.check() == []
    assert v.volume_name == "Vol" and not v.case_sensitive and v.signature == b"H+"
    if max_extent_blocks == 1:  # 49 blocks of rand.bin: 8 in the catalog, 41 in overflow records
        assert (
            sum(
                len(ext)
                for _, ext in v.overflow[(v.lookup(v.lookup(v.lookup(1, b"sub"), b"deeper"), b"rand.bin") + 1, 0)]
            )
            == 41
        )
    seen = {}
    for path, e in v.walk():
        if e.kind == "file":
            seen[path] = v.read(e.ino, 0, e.size)
    want = {unicodedata.normalize("NFC", k): v_ for k, v_ in files.items()}
    assert seen == want
    assert v.readlink(v.lookup(1, b"link")) == b"a.txt"
    assert v.entries[v.lookup(1, b"emptydir") + 1].kind == "dir"


def test_xattrs_inline_and_fork(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    f = src / "f"
    f.write_bytes(b"x")
    try:
        os.setxattr(f, "user.small", b"v")
        os.setxattr(f, "user.big", os.urandom(4_000))
    except OSError:
        pytest.skip("no user xattrs on this filesystem")
    big = os.getxattr(f, "user.big")
    data, _ = build(src, include_metadata=True)
    v = volume(data)
    ino = v.lookup(1, b"f")
    assert v.listxattr(ino) == [b"user.big", b"user.small"]
    assert v.getxattr(ino, b"user.small") == b"v"
    assert v.getxattr(ino, b"user.big") == big
    data2, _ = build(src)
    assert volume(data2).listxattr(volume(data2).lookup(1, b"f")) == []


def test_case_clash_makes_hfsx(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "README").write_bytes(b"1")
    (src / "readme").write_bytes(b"2")
    data, w = build(src)
    v = volume(data)
    assert w.case_sensitive and v.signature == b"HX"
    assert v.read(v.lookup(1, b"README"), 0, 9) == b"1" and v.read(v.lookup(1, b"readme"), 0, 9) == b"2"


def test_permissions_and_dates(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    f = src / "tool"
    f.write_bytes(b"#!/bin/sh\n")
    os.chmod(f, 0o750)
    os.utime(f, ns=(1_600_000_000_000_000_000, 1_600_000_000_000_000_000))
    v = volume(build(src, include_permissions=True)[0])
    e = v.entries[v.lookup(1, b"tool") + 1]
    assert e.mode & 0o7777 == 0o750 and e.uid == os.getuid() and e.mtime_ns == 1_600_000_000_000_000_000
    v2 = volume(build(src)[0])
    e2 = v2.entries[v2.lookup(1, b"tool") + 1]
    assert e2.mode & 0o7777 == 0o755  # executable kept, owner "unknown" shown as the reader


def test_reproducible_with_source_date_epoch(tmp_path: Path) -> None:
    src = tmp_path / "src"
    make_tree(src)
    a, _ = build(src, source_date_epoch=1_700_000_000)
    b, _ = build(src, source_date_epoch=1_700_000_000)
    assert a == b


def test_size_option(tmp_path: Path) -> None:
    src = tmp_path / "src"
    make_tree(src)
    data, w = build(src, size_bytes=8 << 20)
    assert len(data) == 8 << 20 and volume(data).check() == []
    with pytest.raises(UsageError):
        build(src, size_bytes=64 << 10)


def test_names_and_dates_helpers() -> None:
    assert decode_name(encode_name("é")) == "e\u0301"  # stored decomposed
    assert decode_name(encode_name("a:b")) == "a:b"  # ':' is stored as '/'
    assert encode_name("\u2126") == "\u2126".encode("utf-16-be")  # U+2000-2FFF not decomposed
    assert fold_key(encode_name("ABC")) == fold_key(encode_name("abc"))
    assert fold_key("a\u200cb".encode("utf-16-be")) == fold_key(b"\0a\0b")  # ignorable dropped
    assert fold_key(b"\0\0") > fold_key(b"\0z")  # U+0000 sorts last
    assert unix_ns(hfs_date(1_000_000_000 * 10**9)) == 1_000_000_000 * 10**9
    with pytest.raises(ValueError):
        encode_name("x" * 256)


def test_undecodable_name_refused(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / os.fsdecode(b"bad\xff")).write_bytes(b"x")
    with pytest.raises(UnsupportedError):
        build(src)


@pytest.mark.parametrize("case_clash", [False, True])
def test_hard_links(tmp_path: Path, case_clash: bool) -> None:
    src = tmp_path / "src"
    (src / "d").mkdir(parents=True)
    (src / "a").write_bytes(b"linked data" * 500)
    os.setxattr(src / "a", "user.tag", b"v")
    os.link(src / "a", src / "d" / "b")
    (src / "single").write_bytes(b"one")
    os.link(src / "single", tmp_path / "outside")  # nlink 2, but one path in the tree: a plain file
    if case_clash:  # HFSX: binary key order puts the private folder's NUL names first
        (src / "X").write_bytes(b"")
        (src / "x").write_bytes(b"")
    data, w = build(src, include_metadata=True)
    v = volume(data)
    assert v.check() == [] and v.case_sensitive == case_clash
    paths = dict(v.walk())
    assert "\0\0\0\0HFS+ Private Data" not in paths  # hidden
    a, b = paths["a"], paths["d/b"]
    assert a.link == b.link != 0 and a.nlink == b.nlink == 2 and paths["single"].link == 0
    assert v.read(a.ino, 0, a.size) == v.read(b.ino, 0, b.size) == b"linked data" * 500
    node = v.lookup(1, b"a")
    assert node == v.lookup(v.lookup(1, b"d"), b"b") == a.link - 1  # one inode for every link
    assert v.getxattr(node, b"user.tag") == b"v"
    assert w.file_count == v.file_count == sum(1 for e in v.entries.values() if e.kind != "dir")
