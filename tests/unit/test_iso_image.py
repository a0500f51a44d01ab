"""ISO writer/reader round trips without external tools: names, attributes, manifest, post steps."""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import os
import stat
from pathlib import Path

import pytest

from imaging.common import apply_permissions, check_max_file_size, normalized, walk_tree
from imaging.iso_build import IsoOptions, build_layout, udf_perms
from imaging.iso_names import DirNames
from imaging.iso_ops import extract, verify_image
from imaging.iso_post import post_process
from imaging.iso_read import IsoReader
from imaging.iso_write import write_image
from pool.errors import UsageError

EPOCH = 1_700_000_000


def make_tree(root: Path) -> Path:
    (root / "docs" / "deep" / "er").mkdir(parents=True)
    (root / "docs" / "report.pdf").write_bytes(b"%PDF-1.4 " + bytes(range(256)) * 40)
    (root / "docs" / "deep" / "er" / "notes.txt").write_text("notes\n")
    (root / "Ünïcödé – a name longer than sixty-four characters, which Joliet must shorten.txt").write_text("u")
    (root / "empty").write_bytes(b"")
    (root / "same.txt").write_text("x" * 3000)
    os.link(root / "same.txt", root / "hardlink.txt")
    os.symlink("docs/report.pdf", root / "link.pdf")
    os.chmod(root / "docs" / "report.pdf", 0o640)
    os.utime(root / "docs" / "report.pdf", ns=(1_000_000_000 * 10**9, 1_000_000_000 * 10**9))
    return root


def build(src: Path, out: Path, **kw: object) -> Path:
    layout = build_layout(walk_tree(src), IsoOptions(source_date_epoch=EPOCH, **kw))  # type: ignore[arg-type]
    write_image(layout, out)
    return out


def test_names_are_unique_and_legal() -> None:
    names = DirNames()
    a = names.iso("readme.md", is_dir=False)
    b = names.iso("README.MD", is_dir=False)
    assert a == "README.MD;1" and b != a and b.endswith(".MD;1")
    long = names.iso("x" * 80 + ".tar.gz", is_dir=False)
    assert len(long.split(";")[0]) <= 30 and long.endswith(".GZ;1")
    j1, j2 = names.joliet("é" * 70 + ".txt"), names.joliet("é" * 70 + ".txt")
    assert j1 != j2 and j1.endswith(".txt") and len(j1.encode()) <= 64


def test_udf_permissions() -> None:
    assert udf_perms(0o755) == (7 << 10) | (5 << 5) | 5
    assert udf_perms(0o640) == (6 << 10) | (4 << 5)


@pytest.mark.parametrize("tree", ["rr", "udf", "joliet"])
def test_round_trip_through_each_tree(tmp_path: Path, tree: str) -> None:
    src = make_tree(tmp_path / "src")
    iso = build(src, tmp_path / "a.iso")
    with IsoReader(iso, tree=tree) as r:
        nodes = {n.rel: (ino, n) for ino, n in r.walk()}
        ino, pdf = nodes["docs/report.pdf"]
        assert b"".join(r.chunks(ino)) == (src / "docs" / "report.pdf").read_bytes()
        assert r.read(ino, 9, 4) == bytes(range(4))
        assert pdf.mtime_ns == 1_000_000_000 * 10**9  # from the file, not the build time
        if tree in ("rr", "udf"):
            assert stat.S_IMODE(pdf.mode) == 0o640
            assert pdf.uid == os.stat(src / "docs" / "report.pdf").st_uid
            assert nodes["link.pdf"][1].target == b"docs/report.pdf"
            assert "Ünïcödé – a name longer than sixty-four characters, which Joliet must shorten.txt" in nodes
        else:
            long = [k for k in nodes if k.startswith("Ünïcödé")]
            assert len(long) == 1 and len(long[0].encode()) <= 64
        assert "docs/deep/er/notes.txt" in nodes


def test_reproducible_bytes_and_manifest(tmp_path: Path) -> None:
    src = make_tree(tmp_path / "src")
    a = build(src, tmp_path / "a.iso")
    b = build(src, tmp_path / "b.iso")
    assert a.read_bytes() == b.read_bytes()
    assert (tmp_path / "a.iso.sha256").read_text().split()[0] == hashlib.sha256(a.read_bytes()).hexdigest()
    report = verify_image(a)
    assert report.ok and report.manifest and report.files_checked == 6 and report.sidecar is True


def test_hard_links_share_data(tmp_path: Path) -> None:
    src = make_tree(tmp_path / "src")
    iso = build(src, tmp_path / "a.iso")
    with IsoReader(iso) as r:
        nodes = {n.rel: n for _, n in r.walk()}
    assert nodes["same.txt"].extents == nodes["hardlink.txt"].extents


def test_corrupted_file_is_named(tmp_path: Path) -> None:
    src = make_tree(tmp_path / "src")
    iso = build(src, tmp_path / "a.iso")
    with IsoReader(iso) as r:
        ((offset, _),) = next(n for _, n in r.walk() if n.rel == "docs/report.pdf").extents
    with open(iso, "r+b") as f:
        f.seek(offset + 100)
        f.write(b"\xff")
    report = verify_image(iso)
    assert not report.ok
    assert any("docs/report.pdf" in p for p in report.problems)
    assert any(p.startswith("image: SHA-256 differs") for p in report.problems)


def test_version_1_sha256_manifests_still_verify(tmp_path: Path) -> None:
    """Images written before the manifest went to XXH3-128 carry SHA-256 lines (version 1)."""
    from imaging import iso_manifest as m

    src = make_tree(tmp_path / "src")
    iso = build(src, tmp_path / "a.iso")
    (tmp_path / "a.iso.sha256").unlink()  # the rewrite below changes the image's bytes
    fd = os.open(iso, os.O_RDWR)
    try:
        current = m.read_manifest(fd)
        assert current is not None and all(len(d) == 32 for d in current.values())
        with IsoReader(iso) as r:
            sha = {
                n.rel: hashlib.sha256(b"".join(r.chunks(ino))).hexdigest() for ino, n in r.walk() if n.kind == "file"
            }
        body = b"".join(m._line(sha[rel], rel) for rel in current)
        head = m._MAGIC_V1 + f"{len(body)} {hashlib.sha256(body).hexdigest()}\n".encode()
        os.pwrite(fd, head.ljust(m.BLOCK, b"\0") + body, m.manifest_offset(fd))
        old = m.read_manifest(fd)
    finally:
        os.close(fd)
    assert old == sha
    assert verify_image(iso).ok
    with IsoReader(iso) as r:
        ((offset, _),) = next(n for _, n in r.walk() if n.rel == "docs/report.pdf").extents
    with open(iso, "r+b") as f:
        f.seek(offset + 100)
        f.write(b"\xff")
    assert verify_image(iso).problems == [
        "file docs/report.pdf: its digest differs from the image's manifest (data damaged)"
    ]


def test_damaged_structure_is_reported(tmp_path: Path) -> None:
    iso = build(make_tree(tmp_path / "src"), tmp_path / "a.iso")
    with open(iso, "r+b") as f:
        f.seek(16 * 2048 + 1)
        f.write(b"XXXXX")  # the PVD's "CD001"
    report = verify_image(iso)
    assert any(p.startswith("structure:") for p in report.problems)


def test_extract_pattern(tmp_path: Path) -> None:
    src = make_tree(tmp_path / "src")
    iso = build(src, tmp_path / "a.iso")
    out = tmp_path / "out"
    r = extract(iso, out, pattern="*.pdf")
    assert r.files == 1 and r.symlinks == 1
    assert (out / "docs" / "report.pdf").read_bytes() == (src / "docs" / "report.pdf").read_bytes()
    assert os.readlink(out / "link.pdf") == "docs/report.pdf"


def test_gzip_and_split_rejoin(tmp_path: Path) -> None:
    src = make_tree(tmp_path / "src")
    plain = build(src, tmp_path / "plain.iso")
    staged = build(src, tmp_path / "staged.iso")
    paths = post_process(staged, tmp_path / "out.iso", gzip_level=6, split_bytes=4096, mtime_s=EPOCH)
    assert [p.name for p in paths][:2] == ["out.iso.gz.001", "out.iso.gz.002"]
    assert all(p.with_name(p.name + ".sha256").exists() for p in paths)
    joined = b"".join(p.read_bytes() for p in paths)
    assert gzip.decompress(joined) == plain.read_bytes()
    assert not staged.exists()


def test_age_encryption_decrypts_with_pyrage(tmp_path: Path) -> None:
    pyrage = pytest.importorskip("pyrage")
    src = make_tree(tmp_path / "src")
    plain = build(src, tmp_path / "plain.iso")
    staged = build(src, tmp_path / "staged.iso")
    (enc,) = post_process(staged, tmp_path / "sec.iso", passphrase="correct horse")
    assert enc.name == "sec.iso.age"
    assert pyrage.passphrase.decrypt(enc.read_bytes(), "correct horse") == plain.read_bytes()
    with pytest.raises(pyrage.DecryptError):
        pyrage.passphrase.decrypt(enc.read_bytes(), "wrong")


def test_missing_boot_image_is_a_usage_error(tmp_path: Path) -> None:
    from pool.errors import NotFoundError

    src = make_tree(tmp_path / "src")
    with pytest.raises(NotFoundError):
        build_layout(walk_tree(src), IsoOptions(boot_image="boot/isolinux.bin"))
    with pytest.raises(UsageError):
        IsoOptions.for_format("hfs")


def test_normalized_permissions_are_mkisofs_r() -> None:
    tree = walk_tree(Path(__file__).parent)  # any tree: only its first entries' shapes matter
    entry = tree.entries[0]
    for kind, mode, want in (
        ("file", stat.S_IFREG | 0o640, stat.S_IFREG | 0o444),
        ("file", stat.S_IFREG | 0o4710, stat.S_IFREG | 0o555),  # any x bit: all x; set-uid cleared
        ("dir", stat.S_IFDIR | 0o1700, stat.S_IFDIR | 0o555),
        ("symlink", stat.S_IFLNK | 0o777, stat.S_IFLNK | 0o777),
    ):
        e = normalized(dataclasses.replace(entry, kind=kind, mode=mode, uid=1000, gid=100))
        assert (e.mode, e.uid, e.gid) == (want, 0, 0), (kind, oct(e.mode))
    assert apply_permissions(tree, "preserve") is tree
    with pytest.raises(UsageError):
        apply_permissions(tree, "keep")


@pytest.mark.parametrize("tree", ["rr", "udf"])
def test_permissions_normalize_round_trip(tmp_path: Path, tree: str) -> None:
    src = make_tree(tmp_path / "src")
    os.chmod(src / "docs" / "deep", 0o700)
    os.chmod(src / "same.txt", 0o751)
    layout = build_layout(apply_permissions(walk_tree(src), "normalize"), IsoOptions(source_date_epoch=EPOCH))
    write_image(layout, tmp_path / "n.iso")
    with IsoReader(tmp_path / "n.iso", tree=tree) as r:
        nodes = {n.rel: n for _, n in r.walk()}
    assert stat.S_IMODE(nodes["docs/report.pdf"].mode) == 0o444
    assert stat.S_IMODE(nodes["same.txt"].mode) == 0o555
    assert stat.S_IMODE(nodes["docs/deep"].mode) == 0o555
    assert all(n.uid == 0 and n.gid == 0 for n in nodes.values())
    assert stat.S_ISLNK(nodes["link.pdf"].mode) and nodes["link.pdf"].target == b"docs/report.pdf"


@pytest.mark.parametrize("fmt", ["iso9660", "joliet"])
def test_verify_names_damaged_file_without_real_names(tmp_path: Path, fmt: str) -> None:
    # plain ISO 9660 mangles names and Joliet shortens long ones: the manifest's names are matched
    # by data, so verify still passes and still names the damaged file
    src = make_tree(tmp_path / "src")
    layout = build_layout(walk_tree(src), IsoOptions.for_format(fmt, source_date_epoch=EPOCH))
    iso = tmp_path / "a.iso"
    write_image(layout, iso)
    report = verify_image(iso)
    assert report.ok and report.files_checked == 6, report.problems
    with IsoReader(iso) as r:
        ((offset, _),) = next(n for _, n in r.walk() if n.size == (src / "docs" / "report.pdf").stat().st_size).extents
    with open(iso, "r+b") as f:
        f.seek(offset + 100)
        f.write(b"\xff")
    report = verify_image(iso)
    (problem,) = [p for p in report.problems if p.startswith("file ")]
    if fmt == "iso9660":  # matched by data
        assert problem == "file docs/report.pdf: no file in the iso tree has its digest (data damaged or missing)"
    else:  # Joliet keeps this name
        assert problem.startswith("file docs/report.pdf: its digest differs")


def test_max_file_size(tmp_path: Path) -> None:
    tree = walk_tree(make_tree(tmp_path / "src"))
    check_max_file_size(tree, None)
    check_max_file_size(tree, 10_249)  # report.pdf is 9 + 10 240 bytes
    with pytest.raises(
        UsageError, match=r"^docs/report.pdf is 10.0 KiB \(10249 bytes\), over --max-file-size 10.0 KiB"
    ):
        check_max_file_size(tree, 10_248)
    with pytest.raises(UsageError, match=r"^hardlink.txt is .* \(\+2 more\)$"):
        check_max_file_size(tree, 2_000)


def test_isohybrid_mbr_code(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from imaging import iso_hybrid

    full = tmp_path / "mbr.bin"
    full.write_bytes(bytes(range(256)) * 2)  # a whole 512-byte MBR: its first 432 bytes are the code
    assert iso_hybrid.load_isohybrid_mbr(full) == full.read_bytes()[:432]
    (tmp_path / "big.bin").write_bytes(bytes(513))
    with pytest.raises(UsageError, match="is 513 bytes"):
        iso_hybrid.load_isohybrid_mbr(tmp_path / "big.bin")
    monkeypatch.setattr(iso_hybrid, "ISOHYBRID_MBR_PATHS", (tmp_path / "none.bin",))
    with pytest.raises(UsageError, match=r"install isolinux .* or pass --isohybrid-mbr FILE$"):
        iso_hybrid.load_isohybrid_mbr()
