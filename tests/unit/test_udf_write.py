"""imaging.udf_write: a UDF-only image built from a temp tree, checked by udfinfo, 7-Zip and Linux."""

from __future__ import annotations

import binascii
import calendar
import hashlib
import os
import shutil
import stat
import subprocess
import uuid
from pathlib import Path

import pytest

from imaging.udf_format import BLOCK, cs0, dstring, symlink_bytes, tagged, timestamp, udf_permissions
from imaging.udf_write import UdfLayout, UdfNode, plan_udf, write_udf

EPOCH_NS = 1_700_000_000 * 10**9
BIG = 3 * 1024 * 1024 + 123  # a "big-ish" file: several blocks, a partial last one


def make_tree(root: Path) -> Path:
    (root / "a" / "b" / "c").mkdir(parents=True)
    (root / "a" / "b" / "c" / "deep.txt").write_text("deep\n")
    (root / "big.bin").write_bytes((hashlib.sha256(b"x").digest() * (BIG // 32 + 1))[:BIG])
    (root / "empty").write_bytes(b"")
    (root / "café é.txt").write_text("latin-1 name\n")
    (root / "日本").mkdir()
    (root / "日本" / "語 file.txt").write_text("16-bit name\n")
    (root / "with space").mkdir()
    many = root / "many"
    many.mkdir()
    for i in range(300):  # ~300 FIDs: a FID stream over several blocks
        (many / f"entry number {i:04d} with a longish name.txt").write_text(str(i))
    (root / "orig.txt").write_text("linked twice\n")
    os.link(root / "orig.txt", root / "a" / "hard.txt")
    os.symlink("a/b/c/deep.txt", root / "rel-link")
    os.symlink("/etc/hostname", root / "abs-link")
    os.symlink("../big.bin", root / "a" / "up-link")
    os.chmod(root / "orig.txt", 0o640)
    os.chmod(root / "big.bin", 0o755)
    os.chmod(root / "with space", 0o1777)
    os.chown(root / "orig.txt", 1234, 5678) if os.geteuid() == 0 else None
    for p in [root / "big.bin", root / "orig.txt", root / "日本", root / "a" / "b"]:
        os.utime(p, ns=(EPOCH_NS + 123_456_789_000, EPOCH_NS + 987_654_321_000))
    return root


def tree_nodes(src: Path) -> tuple[UdfNode, list[tuple[UdfNode, Path]]]:
    """UdfNodes for *src* (hard links by inode); files to place: (node, path) in walk order."""
    seen: dict[tuple[int, int], UdfNode] = {}
    files: list[tuple[UdfNode, Path]] = []

    def node_for(path: Path, name: str) -> UdfNode:
        st = path.lstat()
        node = UdfNode(
            name=name,
            kind="dir",
            mode=st.st_mode,
            uid=st.st_uid,
            gid=st.st_gid,
            mtime_ns=st.st_mtime_ns,
            atime_ns=st.st_mtime_ns,  # reading the source moves atime: keep builds comparable
            ctime_ns=st.st_ctime_ns,
        )
        if stat.S_ISLNK(st.st_mode):
            node.kind, node.target = "symlink", os.readlink(path)
        elif stat.S_ISDIR(st.st_mode):
            node.children = [node_for(path / n, n) for n in os.listdir(path)]
        else:
            node.kind, node.size = "file", st.st_size
            key = (st.st_dev, st.st_ino)
            if key in seen:
                node.link_to = seen[key]
            else:
                seen[key] = node
                files.append((node, path))
        return node

    return node_for(src, ""), files


def build_image(src: Path, out: Path, seed: int = 7) -> int:
    """A UDF-only image: VRS 16-18, VDS 32/48, LVID 64, AVDP 256 + last, partition from 257."""
    root, files = tree_nodes(src)
    # the plan does not depend on data blocks: plan once to size the metadata, then place data
    plan = plan_udf(root)
    meta_start = 257
    block = meta_start + plan.blocks
    for node, _path in files:
        node.data_block = block
        block += -(-node.size // BLOCK)
    total = block + 1  # + the closing anchor
    layout = UdfLayout(
        vrs=16,
        main_vds=32,
        reserve_vds=48,
        lvid=64,
        partition_start=257,
        partition_blocks=block - 257,
        meta_start=meta_start,
        anchors=(256, total - 1),
    )
    with open(out, "wb") as f:
        f.truncate(total * BLOCK)
        fd = f.fileno()
        write_udf(
            plan,
            lambda b, off: os.pwrite(fd, b, off),
            layout,
            volume_id="UDF Test é",
            build_time_ns=EPOCH_NS,
            seed=seed,
        )
        for node, path in files:
            os.pwrite(fd, path.read_bytes(), node.data_block * BLOCK)
    return total


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("udf")
    src = make_tree(base / "src")
    out = base / "t.udf"
    build_image(src, out)
    return src, out


def test_crc_is_crc_itu_t() -> None:
    assert binascii.crc_hqx(bytes([0x70, 0x6A, 0x77]), 0) == 0x3299  # ECMA-167 1/7.2.6 example


def test_encodings() -> None:
    assert cs0("abé") == b"\x08ab\xe9"
    assert cs0("日本") == b"\x10\x65\xe5\x67\x2c"
    d = dstring("VOL", 32)
    assert len(d) == 32 and d[:4] == b"\x08VOL" and d[31] == 4
    assert dstring("", 32) == bytes(32)
    assert len(dstring("x" * 100, 32)) == 32 and dstring("x" * 100, 32)[31] == 31
    assert udf_permissions(0o754) == 4 | 5 << 5 | 7 << 10
    assert (
        symlink_bytes("/a/../b/.")
        == b"\x02\0\0\0" + b"\x05\x02\0\0\x08a" + b"\x03\0\0\0" + b"\x05\x02\0\0\x08b" + b"\x04\0\0\0"
    )
    ts = timestamp(EPOCH_NS + 123_456_789)  # 2023-11-14 22:13:20.123456 UTC
    assert ts == bytes([0x00, 0x10]) + (2023).to_bytes(2, "little") + bytes([11, 14, 22, 13, 20, 12, 34, 56])
    tag = tagged(8, 5, bytes(496))
    assert tag[4] == (sum(tag[0:4]) + sum(tag[5:16])) & 0xFF


def test_plan_errors() -> None:
    root = UdfNode("", "dir", children=[UdfNode("x", "file"), UdfNode("x", "file")])
    with pytest.raises(ValueError, match="duplicate"):
        plan_udf(root)
    with pytest.raises(ValueError, match="not valid"):
        plan_udf(UdfNode("", "dir", children=[UdfNode("é" * 255, "file")]))
    with pytest.raises(ValueError, match="hard link"):
        plan_udf(UdfNode("", "dir", children=[UdfNode("l", "file", link_to=UdfNode("o", "file"))]))
    with pytest.raises(ValueError, match="too large"):
        plan_udf(UdfNode("", "dir", children=[UdfNode("f", "file", size=1 << 40)]))


def test_big_file_extents(tmp_path: Path) -> None:
    """A 5 GiB file (sparse) gets 5 short_ads of 2^30 - 2048 bytes and more: info length is 64-bit."""
    size = 5 * 1024**3 + 5
    f = UdfNode("huge", "file", size=size, data_block=300)
    root = UdfNode("", "dir", children=[f])
    plan = plan_udf(root)
    lay = UdfLayout(16, 32, 48, 64, 257, 300 - 257 + size // BLOCK + 1, 257)
    with open(tmp_path / "meta", "w+b") as f:
        write_udf(plan, lambda b, off: os.pwrite(f.fileno(), b, off), lay, volume_id="v", build_time_ns=0, seed=1)
        fe = os.pread(f.fileno(), BLOCK, (257 + 3) * BLOCK)  # FSD, TD, root FE (embedded FIDs), file FE
    assert int.from_bytes(fe[0:2], "little") == 261
    assert int.from_bytes(fe[56:64], "little") == size
    l_ad = int.from_bytes(fe[172:176], "little")
    ads = [
        (int.from_bytes(fe[176 + i : 180 + i], "little"), int.from_bytes(fe[180 + i : 184 + i], "little"))
        for i in range(0, l_ad, 8)
    ]
    assert sum(n for n, _ in ads) == size and all(n == (1 << 30) - BLOCK for n, _ in ads[:-1])
    assert ads[0][1] == 300 - 257 and all(b2 == b1 + n // BLOCK for (n, b1), (_, b2) in zip(ads, ads[1:], strict=False))


def test_directory_over_the_write_window(tmp_path: Path) -> None:
    """A directory whose FID stream (about 1.1 MiB) is longer than the 1 MiB write window."""
    names = [f"{i:05d} " + "n" * 230 for i in range(4500)]
    kids = [UdfNode(n, "file", mode=0o600, uid=i, mtime_ns=EPOCH_NS + i) for i, n in enumerate(names)]
    after = UdfNode("zz after", "dir", children=[UdfNode("last", "symlink", target="../big/00001 x")])
    root = UdfNode("", "dir", children=[UdfNode("big", "dir", children=kids), after])
    plan = plan_udf(root)
    assert plan.blocks > 4500 + 512  # the stream alone is over 512 blocks
    out = tmp_path / "wide.udf"
    total = 257 + plan.blocks + 1
    lay = UdfLayout(16, 32, 48, 64, 257, plan.blocks, 257, (256, total - 1))
    with open(out, "wb") as f:
        f.truncate(total * BLOCK)
        write_udf(plan, lambda b, off: os.pwrite(f.fileno(), b, off), lay, volume_id="w", build_time_ns=0, seed=0)
    got = read_udf(out)
    assert len(got) == 4500 + 3
    assert got["big/" + names[4499]]["uid"] == 4499 and got["big/" + names[0]]["mode"] == 0o600
    assert got["zz after/last"]["target"] == "../big/00001 x"
    assert got["big"]["nlink"] == 1 and got["zz after"]["nlink"] == 1


def test_reproducible(image: tuple[Path, Path], tmp_path: Path) -> None:
    src, out = image
    again = tmp_path / "again.udf"
    build_image(src, again)
    assert again.read_bytes() == out.read_bytes()
    build_image(src, tmp_path / "other.udf", seed=8)
    assert (tmp_path / "other.udf").read_bytes() != out.read_bytes()


@pytest.mark.skipif(shutil.which("udfinfo") is None, reason="udftools not installed")
def test_udfinfo(image: tuple[Path, Path]) -> None:
    _src, out = image
    run = subprocess.run(["udfinfo", str(out)], capture_output=True, text=True, check=True)
    info = dict(line.split("=", 1) for line in run.stdout.splitlines() if "=" in line)
    assert run.stderr == "", run.stderr
    assert info["udfrev"] == "2.01" and info["integrity"] == "closed"
    assert info["label"] == "UDF Test é"
    assert info["impid"] == "*darkstorage"
    # files: big, empty, café, 語 file, 300 many, orig (hard link once), deep, 3 symlinks
    assert int(info["numfiles"]) == 1 + 1 + 1 + 1 + 300 + 1 + 1 + 3
    assert int(info["numdirs"]) == 1 + 3 + 1 + 1 + 1  # root, a/b/c, 日本, with space, many


@pytest.mark.skipif(shutil.which("7zz") is None, reason="7-Zip (7zz) not installed")
def test_7zip_refuses_symlinks(image: tuple[Path, Path]) -> None:
    """7-Zip's UDF reader knows File Entries of type file and directory only: a symlink (type 12,
    ECMA-167 4/14.6.6) makes it refuse the whole volume ("Unsupported feature"), whoever wrote it."""
    run = subprocess.run(["7zz", "t", str(image[1])], capture_output=True, text=True)
    assert run.returncode != 0 and "Unsupported feature" in run.stdout + run.stderr


@pytest.mark.skipif(shutil.which("7zz") is None, reason="7-Zip (7zz) not installed")
def test_7zip(image: tuple[Path, Path], tmp_path: Path) -> None:
    full, _ = image
    src = tmp_path / "src"
    shutil.copytree(full, src, symlinks=True)
    os.link(src / "orig.txt", src / "a" / "hard2.txt")  # copytree does not keep hard links
    for link in ["rel-link", "abs-link", "a/up-link"]:
        os.unlink(src / link)
    out = tmp_path / "nolinks.udf"
    build_image(src, out)
    subprocess.run(["7zz", "t", str(out)], capture_output=True, check=True)
    listing = subprocess.run(["7zz", "l", "-slt", str(out)], capture_output=True, text=True, check=True).stdout
    paths = {line[7:] for line in listing.splitlines() if line.startswith("Path = ")}
    assert "many/entry number 0299 with a longish name.txt" in paths
    assert "日本/語 file.txt" in paths and "café é.txt" in paths and "a/hard.txt" in paths
    subprocess.run(["7zz", "x", f"-o{tmp_path / 'x'}", str(out)], capture_output=True, check=True)
    for rel in [
        "big.bin",
        "a/hard.txt",
        "a/b/c/deep.txt",
        "日本/語 file.txt",
        "many/entry number 0150 with a longish name.txt",
    ]:
        want = (src / rel).read_bytes() if rel != "a/hard.txt" else (src / "orig.txt").read_bytes()
        assert (tmp_path / "x" / rel).read_bytes() == want


def _symlink_target(data: bytes) -> str:
    """ECMA-167 4/14.16.1 path components back to a POSIX path (the test's own decoder)."""
    parts: list[str] = []
    absolute = False
    i = 0
    while i < len(data):
        kind, length = data[i], data[i + 1]
        ident = data[i + 4 : i + 4 + length]
        i += 4 + length
        if kind == 2:
            absolute = True
        elif kind in (3, 4):
            parts.append(".." if kind == 3 else ".")
        else:
            parts.append(ident[1:].decode("latin-1" if ident[0] == 8 else "utf-16-be"))
    return ("/" if absolute else "") + "/".join(parts)


def read_udf(image: Path) -> dict[str, dict[str, object]]:
    """Walk a UDF volume with pycdlib's descriptor parsers (tags, CRCs, File Entries, FIDs).

    Returns path -> {kind, mode, uid, gid, mtime_us, nlink, ino, data|target}.
    """
    from pycdlib.udf import UDFFileEntry, UDFFileIdentifierDescriptor, UDFTag

    raw = image.read_bytes()

    def tag_at(block: int, length: int = BLOCK, location: int | None = None) -> tuple[UDFTag, bytes]:
        data = raw[block * BLOCK : block * BLOCK + length]
        tag = UDFTag()
        tag.parse(data, block if location is None else location)  # checksum + CRC-ITU
        if location is not None:
            assert int.from_bytes(data[12:16], "little") == location
        return tag, data

    tag, avdp = tag_at(256)
    assert tag.tag_ident == 2
    vds = int.from_bytes(avdp[20:24], "little")
    part_start = fsd_rel = -1
    for i in range(16):
        tag, desc = tag_at(vds + i)
        assert int.from_bytes(desc[12:16], "little") == vds + i
        if tag.tag_ident == 5:
            part_start = int.from_bytes(desc[188:192], "little")
        elif tag.tag_ident == 6:
            fsd_rel = int.from_bytes(desc[252:256], "little")
        elif tag.tag_ident == 8:
            break
    tag, fsd = tag_at(part_start + fsd_rel, location=fsd_rel)
    assert tag.tag_ident == 256
    root_rel = int.from_bytes(fsd[404:408], "little")
    found: dict[str, dict[str, object]] = {}

    def entry(rel: int) -> tuple[UDFFileEntry, bytes]:
        tag, data = tag_at(part_start + rel, location=rel)
        assert tag.tag_ident == 261
        fe = UDFFileEntry()
        fe.parse(data, part_start + rel, None, tag)
        return fe, data

    def contents(fe: UDFFileEntry, data: bytes) -> bytes:
        alloc = fe.icb_tag.flags & 7
        if alloc == 3:
            return data[176 + fe.len_extended_attrs : 176 + fe.len_extended_attrs + fe.info_len]
        assert alloc == 0
        out = b"".join(
            raw[(part_start + ad.log_block_num) * BLOCK : (part_start + ad.log_block_num) * BLOCK + ad.extent_length]
            for ad in fe.alloc_descs
        )
        assert len(out) == fe.info_len
        return out

    def walk(rel: int, path: str) -> None:
        fe, data = entry(rel)
        stream = contents(fe, data)
        pos = 0
        first = True
        stream_block = rel if fe.icb_tag.flags & 7 == 3 else fe.alloc_descs[0].log_block_num
        while pos < len(stream):
            tag = UDFTag()
            tag.parse(stream[pos:], stream_block + pos // BLOCK)
            assert (
                tag.tag_ident == 257
                and int.from_bytes(stream[pos + 12 : pos + 16], "little") == stream_block + pos // BLOCK
            )
            fid = UDFFileIdentifierDescriptor()
            pos += fid.parse(stream[pos:], 0, tag, None)
            assert fid.isparent == first  # the parent FID comes first, and only once
            first = False
            if fid.isparent:
                continue
            name = fid.fi.decode(fid.encoding)
            child_rel = fid.icb.log_block_num
            kid, kid_data = entry(child_rel)
            assert int.from_bytes(fid.icb.impl_use[2:6], "little") == kid.unique_id & 0xFFFFFFFF
            kind = {4: "dir", 5: "file", 12: "symlink"}[kid.icb_tag.file_type]
            perms = kid.perms
            mode = (perms & 7) | (perms >> 5 & 7) << 3 | (perms >> 10 & 7) << 6
            flags = kid.icb_tag.flags
            mode |= (flags >> 6 & 1) * 0o4000 | (flags >> 7 & 1) * 0o2000 | (flags >> 8 & 1) * 0o1000
            t = kid.mod_time
            secs = calendar.timegm((t.year, t.month, t.day, t.hour, t.minute, t.second))
            us = t.centiseconds * 10000 + t.hundreds_microseconds * 100 + t.microseconds
            info: dict[str, object] = {
                "kind": kind,
                "mode": mode,
                "uid": kid.uid,
                "gid": kid.gid,
                "mtime_us": secs * 10**6 + us,
                "nlink": kid.file_link_count,
                "ino": child_rel,
            }
            sub = f"{path}/{name}" if path else name
            found[sub] = info
            if kind == "file":
                info["data"] = contents(kid, kid_data)
            elif kind == "symlink":
                info["target"] = _symlink_target(contents(kid, kid_data))
            else:
                walk(child_rel, sub)

    walk(root_rel, "")
    return found


def test_read_back(image: tuple[Path, Path]) -> None:
    """Names, bytes, modes, owners, mtimes, link counts, symlink targets read by another parser."""
    src, out = image
    got = read_udf(out)
    assert sorted(got) == sorted(str(p.relative_to(src)) for p in src.rglob("*"))
    for rel, info in got.items():
        st = (src / rel).lstat()
        assert info["mode"] == stat.S_IMODE(st.st_mode), rel
        assert (info["uid"], info["gid"]) == (st.st_uid, st.st_gid), rel
        assert info["mtime_us"] == st.st_mtime_ns // 1000, rel
        if info["kind"] == "file":
            assert stat.S_ISREG(st.st_mode) and info["data"] == (src / rel).read_bytes(), rel
            assert info["nlink"] == st.st_nlink, rel
        elif info["kind"] == "symlink":
            assert info["target"] == os.readlink(src / rel), rel
        else:
            assert stat.S_ISDIR(st.st_mode) and info["nlink"] == st.st_nlink - 1, rel  # UDF has no '.'
    assert got["a/hard.txt"]["ino"] == got["orig.txt"]["ino"]
    assert got["with space"]["mode"] == 0o1777 and got["big.bin"]["mode"] == 0o755


def _can_loop_mount() -> str | None:
    if os.geteuid() != 0:
        return "loop mounts need root"
    if not Path("/dev/loop-control").exists():
        return "no /dev/loop-control"
    if "udf" not in Path("/proc/filesystems").read_text():
        modprobe = shutil.which("modprobe")
        if modprobe is None or subprocess.run([modprobe, "udf"], capture_output=True).returncode:
            return "this kernel has no udf driver (not built in, no module to load)"
    return None


def test_linux_mount(image: tuple[Path, Path], tmp_path: Path) -> None:
    reason = _can_loop_mount()
    if reason:
        pytest.skip(reason)
    src, out = image
    mnt = tmp_path / f"mnt-{uuid.uuid4().hex[:8]}"
    mnt.mkdir()
    run = subprocess.run(["mount", "-o", "loop,ro", "-t", "udf", str(out), str(mnt)], capture_output=True, text=True)
    if run.returncode:
        pytest.skip(f"loop mount refused here: {run.stderr.strip()}")
    try:
        want = sorted(str(p.relative_to(src)) for p in src.rglob("*"))
        got = sorted(str(p.relative_to(mnt)) for p in mnt.rglob("*"))
        assert got == want
        for rel in want:
            a, b = (src / rel).lstat(), (mnt / rel).lstat()
            assert stat.S_IFMT(a.st_mode) == stat.S_IFMT(b.st_mode), rel
            assert a.st_mode == b.st_mode, rel
            assert (a.st_uid, a.st_gid) == (b.st_uid, b.st_gid), rel
            assert a.st_mtime_ns // 1000 == b.st_mtime_ns // 1000, rel
            if stat.S_ISLNK(a.st_mode):
                assert os.readlink(src / rel) == os.readlink(mnt / rel)
            elif stat.S_ISREG(a.st_mode):
                assert (src / rel).read_bytes() == (mnt / rel).read_bytes(), rel
                assert b.st_nlink == a.st_nlink, rel
            else:
                assert b.st_nlink == a.st_nlink, rel
        assert (mnt / "a" / "hard.txt").stat().st_ino == (mnt / "orig.txt").stat().st_ino
    finally:
        subprocess.run(["umount", str(mnt)], check=True)
