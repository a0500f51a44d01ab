"""The ISO 9660 / Rock Ridge / Joliet structures of our own writer, read back by independent tools.

Edge cases of the record packing: names and symlinks too long for a directory record (SUSP CE
continuation areas, NM/SL entries split with CONTINUE), directories spanning several blocks,
deep directories, hard links, owners and set-uid modes. xorriso (libisofs) extracts the tree
with Rock Ridge; isoinfo lists Joliet; 7-Zip tests every file.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from imaging import iso9660_write as w
from imaging.common import walk_tree
from imaging.iso_build import IsoOptions, build_layout
from imaging.iso_read import IsoReader
from imaging.iso_write import write_image

EPOCH = 1_700_000_000
LONG_LINK = "x/" * 400 + "end"  # 803 bytes: four SL entries, in a continuation area


def need(*tools: str) -> None:
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        pytest.skip(f"needs {', '.join(missing)} (Makefile APT_TEST)")


def run(*cmd: str) -> str:
    res = subprocess.run(cmd, capture_output=True, text=True, errors="replace", timeout=300)
    assert res.returncode == 0, f"{' '.join(cmd)} exited {res.returncode}: {res.stderr[-2000:]}"
    return res.stdout + res.stderr


def edge_tree(root: Path) -> Path:
    root.mkdir()
    (root / ("L" * 255)).write_text("longest name\n")
    (root / ("é" * 120 + ".txt")).write_text("long UTF-8 name\n")
    os.symlink(LONG_LINK, root / "longlink")
    os.symlink("/abs/../rel/./" + "c" * 300, root / "odd-link")  # ROOT, PARENT, CURRENT, split component
    d = root
    for i in range(11):
        d = d / f"level{i}"
    d.mkdir(parents=True)
    (d / "deep.txt").write_text("deep\n")
    many = root / "many"
    many.mkdir()
    for i in range(300):  # ~40 KiB of records: a directory of many blocks
        (many / f"file-{i:04d}-{'n' * (i % 90)}.txt").write_text(str(i))
    (root / "h1").write_text("hard\n")
    os.link(root / "h1", root / "h2")
    os.link(root / "h1", many / "h3")
    os.chmod(root / "h1", 0o4751)
    if os.geteuid() == 0:
        os.chown(root / "h1", 1234, 5678)
    os.utime(root / "h1", ns=(1_500_000_000 * 10**9, 1_500_000_000 * 10**9))
    (root / "Mixed.Case.dir").mkdir()
    (root / "Mixed.Case.dir" / "a;b:c*?.txt").write_text("characters Joliet refuses\n")
    (root / "empty").write_bytes(b"")
    return root


@pytest.fixture(scope="module")
def edge_iso(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("isowriter")
    src = edge_tree(base / "src")
    iso = base / "edge.iso"
    write_image(build_layout(walk_tree(src), IsoOptions(source_date_epoch=EPOCH)), iso)
    return src, iso


def test_xorriso_extracts_the_rock_ridge_tree_exactly(edge_iso: tuple[Path, Path], tmp_path: Path) -> None:
    need("xorriso")
    src, iso = edge_iso
    out = tmp_path / "x"
    run("xorriso", "-osirrox", "on", "-indev", str(iso), "-extract", "/", str(out))
    seen = 0
    for dirpath, dirnames, filenames in os.walk(src):
        for name in dirnames + filenames:
            a = Path(dirpath) / name
            b = out / a.relative_to(src)
            sa, sb = a.lstat(), b.lstat()
            assert (sa.st_mode, sa.st_uid, sa.st_gid) == (sb.st_mode, sb.st_uid, sb.st_gid), a
            if stat.S_ISLNK(sa.st_mode):
                assert os.readlink(a) == os.readlink(b)
            elif stat.S_ISREG(sa.st_mode):
                assert int(sa.st_mtime) == int(sb.st_mtime), a
                assert a.read_bytes() == b.read_bytes(), a
            seen += 1
    assert seen == 13 + 310  # folders + files and symlinks
    shutil.rmtree(out)  # some extracted folders are read-only for others, not for root


def test_hard_links_and_link_counts(edge_iso: tuple[Path, Path]) -> None:
    need("isoinfo")
    _, iso = edge_iso
    listing = run("isoinfo", "-l", "-R", "-i", str(iso))
    lines = [line for line in listing.splitlines() if line.endswith(("  h1 ", "  h2 ", "  h3 "))]
    assert len(lines) == 3 and all(line.split()[1] == "3" for line in lines), lines  # PX links
    assert len({line.split("[")[1].split()[0] for line in lines}) == 1  # one extent
    with IsoReader(iso) as r:
        nodes = {n.rel: n for _, n in r.walk()}
    assert nodes["h1"].extents == nodes["h2"].extents == nodes["many/h3"].extents
    assert nodes["h1"].nlink == 3


def test_joliet_and_plain_views(edge_iso: tuple[Path, Path]) -> None:
    need("isoinfo", "7zz")
    _, iso = edge_iso
    info = run("isoinfo", "-d", "-i", str(iso))
    assert "Joliet with UCS level 3 found" in info and "Rock Ridge signatures version 1 found" in info
    joliet = run("isoinfo", "-l", "-J", "-i", str(iso))
    assert joliet.count(" file-0") == 300 and "a_b_c__.txt" in joliet
    plain = run("isoinfo", "-l", "-i", str(iso))
    assert "DEEP.TXT;1" in plain and "MIXED_CASE_DIR" in plain
    assert "Everything is Ok" in run("7zz", "t", str(iso))


def test_directory_records_are_sorted_even_and_block_aligned(edge_iso: tuple[Path, Path]) -> None:
    # ECMA-119 9.3 order, 9.1.1 even lengths, 6.8.1.1 no record crossing a block: the raw "many" folder
    _, iso = edge_iso
    with IsoReader(iso, tree="iso") as r:
        rec = r.iso.get_record(iso_path="/MANY")
        start, size = rec.extent_location() * 2048, rec.data_length
    data = Path(iso).read_bytes()[start : start + size]
    assert size >= 3 * 2048
    names: list[bytes] = []
    for blk in range(0, size, 2048):
        pos = blk
        while pos < blk + 2048 and data[pos]:
            n = data[pos]
            assert pos + n <= blk + 2048 and n % 2 == 0
            names.append(data[pos + 33 : pos + 33 + data[pos + 32]])
            pos += n
    idents = [n for n in names if n not in (b"\x00", b"\x01")]
    assert len(idents) == 301
    keys = [tuple(i.split(b";")[0].partition(b".")[::2]) for i in idents]
    assert keys == sorted(keys)


def test_susp_entries() -> None:
    nm = w.rr_nm(b"n" * 300)
    assert [e[4] for e in nm] == [1, 0] and b"".join(e[5:] for e in nm) == b"n" * 300
    sl = w.rr_sl(b"/a/../" + b"b" * 300)
    body = b"".join(e[5:] for e in sl)
    assert sl[0][4] == 1 and sl[-1][4] == 0 and all(len(e) <= 255 for e in sl)
    assert body.startswith(b"\x08\x00\x00\x01a\x04\x00\x01\xf8") and body.count(b"b") == 300
    su, areas = w.pack_su([b"A" * 200, b"B" * 100], 150)
    assert su.endswith(b"CE" + bytes(26)) and len(su) <= 150 and sum(map(len, areas[0])) == 300
