"""bucket2dmg --icon/--background/--license/--compress through the CLI, checked by 7-Zip,
dmg2img + libfshfs and the ds_store / mac_alias libraries; ``dmg mount`` without a mount point."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT, cli, wait_until
from tests.unit.test_dmg_finder import icns, png

needs_7zz = pytest.mark.skipif(shutil.which("7zz") is None, reason="Debian package 7zip not installed")


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    src = tmp_path / "app"
    src.mkdir()
    (src / "README.txt").write_text("read me\n")
    out = {"src": src, "icon": tmp_path / "app.icns", "bg": tmp_path / "bg.png", "lic": tmp_path / "LICENSE.txt"}
    out["icon"].write_bytes(icns())
    out["bg"].write_bytes(png(640, 400))
    out["lic"].write_text("Licence\n\nYou may use this — with care.\n")
    return out


@needs_7zz
@pytest.mark.skipif(shutil.which("dmg2img") is None, reason="Debian package dmg2img not installed")
def test_cli_icon_background_license_read_by_7zip_dmg2img_libfshfs(
    tmp_path: Path, home: Path, files: dict[str, Path]
) -> None:
    from ds_store import DSStore
    from mac_alias import Alias

    image = tmp_path / "app.dmg"
    cli(
        "bucket2dmg", str(files["src"]), "--output", str(image), "--compress", "UDBZ", "--size", "auto",
        "--icon", str(files["icon"]), "--background", str(files["bg"]), "--window-size", "700x450",
        "--icon-size", "96", "--license", str(files["lic"]), "--volume-name", "App 1.0", home=home,
    )  # fmt: skip
    t = subprocess.run(["7zz", "t", str(image)], capture_output=True, text=True)
    assert t.returncode == 0 and "Everything is Ok" in t.stdout, t.stdout + t.stderr
    out = tmp_path / "7z"
    subprocess.run(["7zz", "x", "-y", f"-o{out}", str(image)], check=True, capture_output=True)
    vol = out / "App 1.0"
    assert (vol / ".VolumeIcon.icns").read_bytes() == files["icon"].read_bytes()
    assert (vol / ".background" / "bg.png").read_bytes() == files["bg"].read_bytes()
    store = DSStore.open(io.BytesIO((vol / ".DS_Store").read_bytes()), "r")
    settings = {(e.filename, e.code): e.value for e in store}
    assert settings[(".", b"bwsp")]["WindowBounds"] == "{{200, 120}, {700, 450}}"
    assert settings[(".", b"icvp")]["iconSize"] == 96.0
    alias = Alias.from_bytes(settings[(".", b"icvp")]["backgroundImageAlias"])
    raw = tmp_path / "app.raw"
    subprocess.run(["dmg2img", str(image), str(raw)], check=True, capture_output=True)
    import pyfshfs

    v = pyfshfs.volume()
    v.open(str(raw))
    try:
        bg = v.get_file_entry_by_path("/.background/bg.png")
        assert (alias.target.cnid, alias.target.folder_cnid) == (bg.identifier, bg.parent_identifier)
        assert alias.volume.name == v.get_name() == "App 1.0"
    finally:
        v.close()
    info = json.loads(cli("dmg", "info", str(image), "--json", home=home).stdout)
    assert info["license"] == files["lic"].read_text() and info["chunks"] == ["bzip2"]
    assert info["custom_icon"] is True and info["background"]["path"] == "/.background/bg.png"
    verify = cli("dmg", "verify", str(image), home=home)
    assert "licence agreement present" in verify.stdout


def test_cli_refusals(tmp_path: Path, home: Path, files: dict[str, Path]) -> None:
    image = str(tmp_path / "x.dmg")
    r = cli(
        "bucket2dmg", str(files["src"]), "-o", image, "--compress", "UDZO", "--format", "ULMO", home=home, check=False
    )
    assert r.returncode == 2 and "disagree" in r.stderr and "Traceback" not in r.stderr
    r = cli("bucket2dmg", str(files["src"]), "-o", image, "--icon", str(files["bg"]), home=home, check=False)
    assert r.returncode == 2 and "not an Apple icon file" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    r = cli("bucket2dmg", str(files["src"]), "-o", image, "--format", "SPARSE", "--license", str(files["lic"]),
            home=home, check=False)  # fmt: skip
    assert r.returncode == 2 and "--license needs a UDIF image" in r.stderr
    cli("bucket2dmg", str(files["src"]), "-o", image, "--compress", "ULMO", "--format", "ULMO", home=home)


@pytest.mark.fuse
def test_dmg_mount_without_a_mount_point(tmp_path: Path, home: Path, files: dict[str, Path]) -> None:
    image = tmp_path / "backup.dmg"
    cli("bucket2dmg", str(files["src"]), "-o", str(image), home=home)
    work = tmp_path / "cwd"
    work.mkdir()
    env = {**os.environ, "DARKSTORAGE_HOME": str(home), "PYTHONPATH": str(ROOT)}
    views = [work / "backup", work / "backup-2"]
    try:
        for view in views:
            r = subprocess.run([sys.executable, "-m", "agent", "dmg", "mount", str(image)], cwd=work, env=env,
                               capture_output=True, text=True, timeout=60)  # fmt: skip
            assert r.returncode == 0, r.stderr
            wait_until(lambda v=view: os.path.ismount(v), "dmg mount")  # type: ignore[misc]
            assert str(view) in " ".join(r.stdout.split())
            assert (view / "README.txt").read_text() == "read me\n"
    finally:
        for view in views:
            subprocess.run(["fusermount3", "-u", str(view)], capture_output=True)
    r = subprocess.run([sys.executable, "-m", "agent", "dmg", "mount", str(tmp_path / "none.dmg")], cwd=work,
                       env=env, capture_output=True, text=True, timeout=60)  # fmt: skip
    assert r.returncode == 3 and not (work / "none").exists()
