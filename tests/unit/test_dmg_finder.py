"""Volume icon, Finder window background (.DS_Store + alias) and licence agreement of DMG images,
read back by our reader, by the ds_store / mac_alias libraries and by libfshfs (pyfshfs)."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import pytest

from imaging.dmg import DmgImage, build_dmg
from imaging.dmg_finder import (
    FinderLayout,
    finder_summary,
    hfs_datetime,
    parse_window_size,
    picture_size,
    read_icns,
)
from imaging.hfsplus import HfsOptions
from imaging.hfsplus_format import CNID_ROOT_FOLDER, FINDER_HAS_CUSTOM_ICON, FINDER_IS_INVISIBLE
from imaging.udif_read import UdifImage
from imaging.udif_sla import BUTTONS_ENGLISH, license_from_resources, license_resources
from pool.errors import NotFoundError, UsageError


def png(w: int, h: int) -> bytes:
    def chunk(t: bytes, d: bytes) -> bytes:
        return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d))

    raw = b"".join(b"\0" + bytes((x * 7 + y) % 256 for x in range(3 * w)) for y in range(h))
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


def icns() -> bytes:
    element = png(32, 32)
    element = b"ic11" + struct.pack(">I", 8 + len(element)) + element
    return b"icns" + struct.pack(">I", 8 + len(element)) + element


@pytest.fixture
def assets(tmp_path: Path) -> dict[str, Path]:
    src = tmp_path / "src"
    (src / "docs").mkdir(parents=True)
    (src / "a.txt").write_bytes(b"hello\n")
    (src / "docs" / "r.pdf").write_bytes(b"%PDF-1.4")
    (src / ".DS_Store").write_bytes(b"the source's own, replaced")
    out = {"src": src, "icon": tmp_path / "vol.icns", "bg": tmp_path / "back ground.png", "lic": tmp_path / "L.txt"}
    out["icon"].write_bytes(icns())
    out["bg"].write_bytes(png(500, 300))
    out["lic"].write_text("Terms\n\nUse it — at your own risk. Déjà vu.\n")
    return out


def build(assets: dict[str, Path], out: Path, **kw: object) -> DmgImage:
    finder = FinderLayout.from_files(assets["icon"], assets["bg"], kw.pop("window", None), kw.pop("icon_size", None))  # type: ignore[arg-type]
    opts = HfsOptions(volume_name="Demo Vol", source_date_epoch=1_700_000_000)
    build_dmg(assets["src"], out, opts=opts, finder=finder, license_text=assets["lic"].read_text(), **kw)  # type: ignore[arg-type]
    return DmgImage(out)


def test_icns_and_picture_checks(tmp_path: Path) -> None:
    p = tmp_path / "x.icns"
    p.write_bytes(icns())
    assert read_icns(p) == icns()
    for bad in (b"icnx" + icns()[4:], icns()[:-1], b"ic"):
        p.write_bytes(bad)
        with pytest.raises(UsageError, match="not an Apple icon file"):
            read_icns(p)
    with pytest.raises(NotFoundError):
        read_icns(tmp_path / "none.icns")
    (tmp_path / "t.txt").write_text("not a picture")
    with pytest.raises(UsageError, match="not a PNG, TIFF or JPEG"):
        FinderLayout.from_files(background=tmp_path / "t.txt")
    with pytest.raises(UsageError, match="go with --background"):
        FinderLayout.from_files(window="800x600")
    assert parse_window_size("800X600") == (800, 600)
    for bad in ("800", "axb", "50x50"):
        with pytest.raises(UsageError):
            parse_window_size(bad)
    assert picture_size(png(321, 123)) == (321, 123)
    jpeg = b"\xff\xd8\xff\xe0" + struct.pack(">H", 4) + b"JF" + b"\xff\xc0" + struct.pack(">HBHH", 11, 8, 240, 320)
    assert picture_size(jpeg) == (320, 240)
    tiff = b"II*\x00" + struct.pack("<I", 8) + struct.pack("<H", 2)
    tiff += struct.pack("<HHII", 256, 3, 1, 640) + struct.pack("<HHII", 257, 4, 1, 480) + bytes(4)
    assert picture_size(tiff) == (640, 480)


def test_icon_background_and_alias_in_the_volume(tmp_path: Path, assets: dict[str, Path]) -> None:
    from ds_store import DSStore
    from mac_alias import Alias

    with build(assets, tmp_path / "x.dmg", icon_size=72) as d:
        vol = d.volume
        assert isinstance(d.disk, UdifImage) and d.disk.verify() == []
        assert vol.check() == []
        paths = {p: e for p, e in d.entries()}
        assert vol.entries[CNID_ROOT_FOLDER].finder_flags == FINDER_HAS_CUSTOM_ICON
        assert paths[".VolumeIcon.icns"].finder_flags == FINDER_IS_INVISIBLE
        assert vol.read(paths[".VolumeIcon.icns"].ino, 0, 1 << 20) == icns()
        assert paths[".background"].finder_flags == FINDER_IS_INVISIBLE
        bg = paths[".background/back ground.png"]
        assert vol.read(bg.ino, 0, 1 << 20) == assets["bg"].read_bytes()
        ds = paths[".DS_Store"]
        store = DSStore.open(io.BytesIO(vol.read(ds.ino, 0, ds.size)), "r")
        settings = {(e.filename, e.code): e.value for e in store}
        assert settings[(".", b"bwsp")]["WindowBounds"] == "{{200, 120}, {500, 300}}"  # the picture's size
        icvp = settings[(".", b"icvp")]
        assert icvp["backgroundType"] == 2 and icvp["iconSize"] == 72.0
        alias = Alias.from_bytes(icvp["backgroundImageAlias"])
        assert (alias.target.cnid, alias.target.folder_cnid) == (bg.cnid, paths[".background"].cnid)
        assert alias.target.filename == "back ground.png" and alias.target.folder_name == ".background"
        assert alias.target.cnid_path == (paths[".background"].cnid,)
        assert alias.target.posix_path == "/.background/back ground.png"
        assert alias.volume.name == "Demo Vol" and alias.volume.fs_type == b"H+"
        header_create = struct.unpack_from(">I", vol.header_raw, 16)[0]  # volume header createDate
        assert alias.volume.creation_date == hfs_datetime(header_create)
        summary = finder_summary(vol)
        assert summary["custom_icon"] and summary["background"]["cnid"] == bg.cnid
        raw = tmp_path / "x.raw"
        with open(raw, "wb") as f:
            for off in range(0, d.disk.size_bytes, 1 << 20):
                f.write(d.disk.read(off, 1 << 20))
    import pyfshfs  # libfshfs, an independent HFS+ reader

    v = pyfshfs.volume()
    v.open(str(raw))
    try:
        fe = v.get_file_entry_by_path("/.background/back ground.png")
        assert (fe.identifier, fe.parent_identifier) == (alias.target.cnid, alias.target.folder_cnid)
        assert fe.creation_time == alias.target.creation_date.replace(tzinfo=None)
        assert v.get_root_directory().creation_time == alias.volume.creation_date.replace(tzinfo=None)
        assert v.get_file_entry_by_path("/.DS_Store").read() == vol_bytes(tmp_path / "x.dmg", ".DS_Store")
        assert v.get_file_entry_by_path("/.VolumeIcon.icns").size == len(icns())
        assert v.get_name() == "Demo Vol"
    finally:
        v.close()


def vol_bytes(image: Path, rel: str) -> bytes:
    with DmgImage(image) as d:
        e = dict(d.entries())[rel]
        return d.volume.read(e.ino, 0, e.size)


def test_source_entries_at_generated_paths_are_replaced_and_builds_reproduce(
    tmp_path: Path, assets: dict[str, Path]
) -> None:
    build(assets, tmp_path / "a.dmg").close()
    build(assets, tmp_path / "b.dmg").close()
    assert (tmp_path / "a.dmg").read_bytes() == (tmp_path / "b.dmg").read_bytes()
    assert vol_bytes(tmp_path / "a.dmg", ".DS_Store").startswith(b"\0\0\0\1Bud1")
    assert vol_bytes(tmp_path / "a.dmg", "a.txt") == b"hello\n"


def test_license_resources_text_and_rtf(tmp_path: Path, assets: dict[str, Path]) -> None:
    res = license_resources("Hello — déjà\n")
    assert set(res) == {"LPic", "STR#", "TEXT"}
    assert res["LPic"][0]["Data"] == struct.pack(">hHhhh", 0, 1, 0, 0, 0) and res["LPic"][0]["ID"] == "5000"
    assert res["TEXT"][0]["Data"] == "Hello — déjà\n".encode("mac_roman")
    strs = res["STR#"][0]["Data"]
    count, pos, found = struct.unpack_from(">H", strs)[0], 2, []
    for _ in range(count):
        n = strs[pos]
        found.append(strs[pos + 1 : pos + 1 + n].decode("mac_roman"))
        pos += 1 + n
    assert tuple(found) == BUTTONS_ENGLISH and pos == len(strs)
    assert license_from_resources(res) == "Hello — déjà\n"
    rtf = license_resources("Zürich ✓ 😀 {x}\nline 2")
    assert set(rtf) == {"LPic", "STR#", "RTF "}
    body = rtf["RTF "][0]["Data"].decode("ascii")
    assert body.startswith("{\\rtf1") and "Z\\u252 rich" in body and "\\u10003 " in body
    assert "\\u-10179 \\u-8704 " in body and "\\{x\\}" in body and "\\par\n" in body  # a surrogate pair
    assert license_from_resources({}) is None
    with build(assets, tmp_path / "x.dmg", fmt="UDBZ") as d:
        assert isinstance(d.disk, UdifImage)
        assert d.disk.license_text == assets["lic"].read_text()
        assert d.disk.verify() == []


def test_refusals(tmp_path: Path, assets: dict[str, Path]) -> None:
    finder = FinderLayout.from_files(assets["icon"])
    with pytest.raises(UsageError, match="need an HFS"):
        build_dmg(assets["src"], tmp_path / "i.dmg", filesystem="iso-udf", finder=finder)
    with pytest.raises(UsageError, match="--license needs a UDIF image"):
        build_dmg(assets["src"], tmp_path / "s.sparseimage", fmt="SPARSE", license_text="x")
    with pytest.raises(UsageError, match="16 to 512"):
        FinderLayout.from_files(background=assets["bg"], icon_size=8)
