"""bucket2iso images checked by independent tools (genisoimage, xorriso, 7-Zip, udftools, gdisk, QEMU)."""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import cli, wait_until

EPOCH = "1700000000"
ISOLINUX = Path("/usr/lib/ISOLINUX/isolinux.bin")
LDLINUX = Path("/usr/lib/syslinux/modules/bios/ldlinux.c32")
OVMF = Path("/usr/share/ovmf/OVMF.fd")


def need(*tools: str) -> None:
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        pytest.skip(f"needs {', '.join(missing)} (Makefile APT_TEST)")


def run(*cmd: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    res = subprocess.run(cmd, capture_output=True, text=True, errors="replace", timeout=300)
    if check and res.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} exited {res.returncode}: {res.stdout[-2000:]} {res.stderr[-2000:]}")
    return res


def make_tree(root: Path) -> Path:
    (root / "docs" / "a" / "b").mkdir(parents=True)
    (root / "docs" / "report.pdf").write_bytes(os.urandom(300_000))
    (root / "docs" / "a" / "b" / "deep.txt").write_text("deep\n")
    (root / "Ünïcödé name that is much longer than the sixty-four characters Joliet allows.txt").write_text("ü\n")
    (root / "script.sh").write_text("#!/bin/sh\necho hi\n")
    os.chmod(root / "script.sh", 0o750)
    os.symlink("docs/report.pdf", root / "link.pdf")
    os.utime(root / "docs" / "report.pdf", (1_500_000_000, 1_500_000_000))
    return root


def tree_state(root: Path) -> dict[str, tuple]:
    out: dict[str, tuple] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            st = p.lstat()
            rel = str(p.relative_to(root))
            if stat.S_ISLNK(st.st_mode):
                out[rel] = ("l", os.readlink(p))
            elif stat.S_ISDIR(st.st_mode):
                out[rel] = ("d", stat.S_IMODE(st.st_mode))
            else:
                out[rel] = ("f", stat.S_IMODE(st.st_mode), int(st.st_mtime), p.read_bytes())
    return out


def test_independent_tools_read_every_tree(tmp_path: Path, home: Path) -> None:
    need("isoinfo", "xorriso", "7zz", "udfinfo")
    src = make_tree(tmp_path / "src")
    iso = tmp_path / "out.iso"
    labels = ["--volume-name", "BACKUP2026", "--publisher", "ACME", "--source-date-epoch", EPOCH]
    res = cli("bucket2iso", str(src), "--output", str(iso), *labels, "--json", home=home)
    assert json.loads(res.stdout)["files"] == 4
    info = run("isoinfo", "-d", "-i", str(iso)).stdout
    assert "Volume id: BACKUP2026" in info and "Publisher id: ACME" in info
    assert "Joliet" in info and "Rock Ridge signatures" in info
    listing = run("isoinfo", "-l", "-R", "-i", str(iso)).stdout
    assert "report.pdf" in listing and "link.pdf -> docs/report.pdf" in listing
    joliet = run("isoinfo", "-l", "-J", "-i", str(iso)).stdout
    assert "n\ufffdc\ufffdd\ufffd name" in joliet or "Ünïcödé" in joliet  # isoinfo prints Joliet names as Latin-1
    found = run("xorriso", "-indev", str(iso), "-find", "/", "-type", "f").stdout
    assert "'/docs/a/b/deep.txt'" in found
    assert "Everything is Ok" in run("7zz", "t", str(iso)).stdout
    assert "label=BACKUP2026" in run("udfinfo", str(iso)).stdout
    out = tmp_path / "xorriso-out"
    run("xorriso", "-osirrox", "on", "-indev", str(iso), "-extract", "/", str(out))
    assert tree_state(out) == tree_state(src)
    # reproducible: the same tree and options give the same bytes
    again = tmp_path / "again.iso"
    cli("bucket2iso", str(src), "--output", str(again), *labels, home=home)
    assert again.read_bytes() == iso.read_bytes()
    assert subprocess.run(["sha256sum", "-c", iso.name + ".sha256"], cwd=tmp_path, capture_output=True).returncode == 0


def _modes(listing: str) -> dict[str, str]:
    """name -> "mode uid gid" from an ``isoinfo -l -R`` listing (first occurrence of each name)."""
    out: dict[str, str] = {}
    for line in listing.splitlines():
        parts = line.split()
        if len(parts) >= 12 and parts[0][0] in "-dl" and parts[-1] not in (".", ".."):
            out.setdefault(parts[11], f"{parts[0]} {parts[2]} {parts[3]}")
    return out


def test_permissions_preserve_and_normalize(tmp_path: Path, home: Path) -> None:
    need("isoinfo", "xorriso")
    src = make_tree(tmp_path / "src")
    os.chmod(src / "docs" / "a", 0o700)
    uid, gid = os.getuid(), os.getgid()
    if uid == 0:  # show that owners are carried (a non-root user's files are theirs already)
        uid, gid = 1234, 567
        for p in (src / "script.sh", src / "docs"):
            os.chown(p, uid, gid, follow_symlinks=False)
    owner = f"{uid:o} {gid:o}"  # isoinfo prints owners in octal
    modes = {}
    for policy in ("preserve", "normalize"):
        iso = tmp_path / f"{policy}.iso"
        cli("bucket2iso", str(src), "-o", str(iso), "--format", "rock-ridge", "--permissions", policy, home=home)
        modes[policy] = _modes(run("isoinfo", "-l", "-R", "-i", str(iso)).stdout)
        lsdl = run("xorriso", "-indev", str(iso), "-find", "/", "-exec", "lsdl").stdout
        modes[policy + "-xorriso"] = {
            line.split("'")[1]: line.split()[0] for line in lsdl.splitlines() if line.count("'") >= 2
        }
    keep, norm = modes["preserve"], modes["normalize"]
    assert keep["script.sh"] == f"-rwxr-x--- {owner}" and keep["docs"] == f"drwxr-xr-x {owner}"
    assert keep["a"].startswith("drwx------")
    assert norm["script.sh"] == "-r-xr-xr-x 0 0"
    assert norm["report.pdf"] == "-r--r--r-- 0 0"
    assert norm["a"] == "dr-xr-xr-x 0 0" and norm["docs"] == "dr-xr-xr-x 0 0"
    assert modes["normalize-xorriso"]["/docs/a/b/deep.txt"] == "-r--r--r--"
    assert modes["preserve-xorriso"]["/docs/a"] == "drwx------"


def test_max_file_size_refuses_before_writing(tmp_path: Path, home: Path) -> None:
    src = make_tree(tmp_path / "src")
    iso = tmp_path / "m.iso"
    res = cli("bucket2iso", str(src), "-o", str(iso), "--max-file-size", "100K", home=home, check=False)
    assert res.returncode == 2, res.stderr
    assert res.stderr.strip() == (
        "darkstorage: docs/report.pdf is 293.0 KiB (300000 bytes), over --max-file-size 100.0 KiB (102400 bytes)"
    )
    assert not iso.exists() and not list(tmp_path.glob("m.iso*"))
    cli("bucket2iso", str(src), "-o", str(iso), "--format", "udf", "--max-file-size", "unlimited", home=home)
    cli("bucket2iso", str(src), "-o", str(iso), "--multi-session", home=home)
    before = iso.read_bytes()
    (src / "new.bin").write_bytes(bytes(300_000))
    res = cli(
        "bucket2iso",
        str(src),
        "-o",
        str(iso),
        "--multi-session",
        "--append",
        "--max-file-size",
        "250K",
        home=home,
        check=False,
    )
    assert res.returncode == 2 and res.stderr.endswith("(+1 more)\n"), res.stderr
    assert iso.read_bytes() == before


def test_cli_verify_checks_sidecars_made_by_coreutils(tmp_path: Path, home: Path) -> None:
    """``iso verify --checksum ALG`` checks IMAGE.<alg> as sha512sum/sha1sum/md5sum/b2sum wrote
    it; a named sidecar that is missing exits 3, one in the wrong format 2, a mismatch 18."""
    src = make_tree(tmp_path / "src")
    iso = tmp_path / "out.iso"
    cli("bucket2iso", str(src), "--output", str(iso), home=home)
    tools = {"SHA512": ("sha512sum", ".sha512"), "SHA1": ("sha1sum", ".sha1"), "MD5": ("md5sum", ".md5"),
             "BLAKE2B": ("b2sum", ".b2")}  # fmt: skip
    for alg, (tool, suffix) in tools.items():
        side = iso.with_name(iso.name + suffix)
        r = cli("iso", "verify", str(iso), "--checksum", alg.lower(), home=home, check=False)
        assert r.returncode == 3 and side.name in r.stderr, r.stderr
        out = subprocess.run([tool, iso.name], cwd=tmp_path, capture_output=True, text=True, check=True).stdout
        side.write_text(out)
        assert "ok (sidecar ok" in cli("iso", "verify", str(iso), "--checksum", alg, home=home).stdout
        digest = out.split()[0]
        side.write_text(("0" if digest[0] != "0" else "1") + out[1:])
        r = cli("iso", "verify", str(iso), "--checksum", alg, home=home, check=False)
        assert r.returncode == 18 and side.name in r.stderr, r.stderr
    iso.with_name(iso.name + ".md5").write_text("not a digest\n")
    r = cli("iso", "verify", str(iso), "--checksum", "MD5", home=home, check=False)
    assert r.returncode == 2 and "md5sum" in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert cli("iso", "verify", str(iso), "--checksum", "CRC32", home=home, check=False).returncode == 2


def test_cli_verify_extract_ls_and_corruption(tmp_path: Path, home: Path) -> None:
    src = make_tree(tmp_path / "src")
    iso = tmp_path / "out.iso"
    cli("bucket2iso", str(src), "--output", str(iso), home=home)
    assert "ok" in cli("iso", "verify", str(iso), "--checksum", "SHA256", home=home).stdout
    rows = json.loads(cli("iso", "ls", str(iso), "--json", home=home).stdout)
    assert {r["path"] for r in rows} >= {"docs/report.pdf", "link.pdf", "docs/a/b/deep.txt"}
    assert "script.sh" in cli("iso", "ls", str(iso), "--long", home=home).stdout
    cli("iso", "extract", str(iso), "--pattern", "*.pdf", "--output", str(tmp_path / "x"), home=home)
    assert (tmp_path / "x" / "docs" / "report.pdf").read_bytes() == (src / "docs" / "report.pdf").read_bytes()
    assert not (tmp_path / "x" / "script.sh").exists()
    from imaging.iso_read import IsoReader

    with IsoReader(iso) as r:
        ((offset, _),) = next(n for _, n in r.walk() if n.rel == "docs/report.pdf").extents
    with open(iso, "r+b") as f:
        f.seek(offset + 1234)
        byte = f.read(1)
        f.seek(offset + 1234)
        f.write(bytes([byte[0] ^ 0xFF]))
    bad = cli("iso", "verify", str(iso), home=home, check=False)
    assert bad.returncode == 18, bad.stderr
    assert "docs/report.pdf" in bad.stdout + bad.stderr


def test_extract_refuses_escaping_names(tmp_path: Path, home: Path) -> None:
    import io

    import pycdlib

    evil = tmp_path / "evil.iso"
    iso = pycdlib.PyCdlib()
    iso.new(interchange_level=3, rock_ridge="1.12")
    iso.add_fp(io.BytesIO(b"pwned\n"), 6, iso_path="/A.TXT;1", rr_name="AAAAAAAAAAAAAAA")
    iso.write(str(evil))
    iso.close()
    data = evil.read_bytes()
    assert data.count(b"AAAAAAAAAAAAAAA") == 1
    evil.write_bytes(data.replace(b"AAAAAAAAAAAAAAA", b"../../escape.tx"))  # Rock Ridge NM with ".."
    out = tmp_path / "out"
    res = cli("iso", "extract", str(evil), "--output", str(out), home=home, check=False)
    assert res.returncode == 19, res.stderr
    assert not (tmp_path / "escape.tx").exists() and not (tmp_path.parent / "escape.tx").exists()
    # a symlink inside the output pointing outside, then a member through it
    iso2 = pycdlib.PyCdlib()
    iso2.new(interchange_level=3, rock_ridge="1.12")
    iso2.add_symlink(symlink_path="/LNK;1", rr_symlink_name="lnk", rr_path=str(tmp_path))
    iso2.add_directory("/LNK2", rr_name="lnk2")
    iso2.add_fp(io.BytesIO(b"x"), 1, iso_path="/LNK2/F.TXT;1", rr_name="f.txt")
    twisted = tmp_path / "twisted.iso"
    iso2.write(str(twisted))
    iso2.close()
    raw = twisted.read_bytes()
    twisted.write_bytes(raw.replace(b"NM\x09\x01\x00lnk2", b"NM\x09\x01\x00lnk/"))  # "lnk/f.txt" goes through lnk
    res = cli("iso", "extract", str(twisted), "--output", str(tmp_path / "out2"), home=home, check=False)
    assert res.returncode == 19, res.stdout + res.stderr
    assert not (tmp_path / "f.txt").exists()


def _boot_tree(root: Path) -> Path:
    need("mkfs.vfat", "mcopy", "grub-mkstandalone")
    (root / "isolinux").mkdir(parents=True)
    shutil.copy(ISOLINUX, root / "isolinux" / "isolinux.bin")
    shutil.copy(LDLINUX, root / "isolinux" / "ldlinux.c32")
    (root / "isolinux" / "isolinux.cfg").write_text(
        "SERIAL 0 115200\nSAY DARKSTORAGE-BIOS-BOOT-OK\nPROMPT 0\nTIMEOUT 1\n"
    )
    cfg = root.parent / "grub.cfg"
    cfg.write_text("echo DARKSTORAGE-UEFI-BOOT-OK\nsleep 30\n")
    efi = root.parent / "BOOTX64.EFI"
    run(
        "grub-mkstandalone",
        "-O",
        "x86_64-efi",
        "-o",
        str(efi),
        "--locales=",
        "--fonts=",
        "--themes=",
        "--install-modules=normal echo sleep configfile",
        f"boot/grub/grub.cfg={cfg}",
    )
    img = root / "boot" / "efiboot.img"
    img.parent.mkdir()
    run("mkfs.vfat", "-C", str(img), "4096")
    run("mmd", "-i", str(img), "::/EFI", "::/EFI/BOOT")
    run("mcopy", "-i", str(img), str(efi), "::/EFI/BOOT/BOOTX64.EFI")
    (root / "readme.txt").write_text("bootable\n")
    return root


@pytest.fixture
def bootable_iso(tmp_path: Path, home: Path) -> Path:
    if not ISOLINUX.exists() or not OVMF.exists():
        pytest.skip("needs isolinux, syslinux-common and ovmf (Makefile APT_TEST)")
    src = _boot_tree(tmp_path / "src")
    iso = tmp_path / "boot.iso"
    cli(
        "bucket2iso",
        str(src),
        "--output",
        str(iso),
        "--bootable",
        "--boot-image",
        "isolinux/isolinux.bin",
        "--uefi",
        "--efi-image",
        "boot/efiboot.img",
        "--hybrid",
        "--bios",
        "--source-date-epoch",
        EPOCH,
        home=home,
    )
    return iso


def test_el_torito_and_hybrid_tables_are_valid(bootable_iso: Path, home: Path) -> None:
    need("xorriso", "sgdisk")
    report = run(
        "xorriso", "-indev", str(bootable_iso), "-report_el_torito", "plain", "-report_system_area", "plain"
    ).stdout
    assert "El Torito boot img :   1  BIOS  y   none" in report
    assert "El Torito boot img :   2  UEFI  y   none" in report
    assert "GPT" in report and "CRC" not in report.replace("GPT CRC", "")
    sg = run("sgdisk", "-v", str(bootable_iso)).stdout
    assert "No problems found" in sg, sg
    parts = run("sgdisk", "-p", str(bootable_iso)).stdout
    assert "EF00" in parts
    assert "Everything is Ok" in run("7zz", "t", str(bootable_iso)).stdout if shutil.which("7zz") else True
    # the protective MBR holds the isohybrid code but no active partition, which pycdlib refuses
    # unless the reader hides the MBR from it
    assert "System area summary: MBR isohybrid cyl-align-on GPT" in report
    assert "ok (sidecar ok, 5 file digests ok)" in cli("iso", "verify", str(bootable_iso), home=home).stdout


_ANSI = re.compile(r"\x1b(\[[0-9;?]*[A-Za-z]|c)")


def _boots(args: list[str], marker: str, tmp_path: Path) -> str:
    # TCG, not KVM: OVMF and isolinux stop under this machine's nested KVM (an emulation failure)
    need("qemu-system-x86_64")
    log = tmp_path / f"serial-{len(list(tmp_path.glob('serial-*')))}.log"
    proc = subprocess.Popen(
        [
            "qemu-system-x86_64",
            "-m",
            "256",
            "-nographic",
            "-no-reboot",
            "-serial",
            f"file:{log}",
            "-monitor",
            "none",
            "-display",
            "none",
            *args,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )

    def text() -> str:
        # SeaBIOS's serial console mirrors the screen and may put cursor moves (ESC [ row ; col H)
        # in the middle of a line isolinux writes to the port itself
        return _ANSI.sub("", log.read_text(errors="replace")) if log.exists() else ""

    deadline = time.monotonic() + 180
    try:
        while marker not in text():
            if proc.poll() is not None or time.monotonic() > deadline:
                why = f"QEMU exited {proc.returncode}" if proc.returncode is not None else "timed out after 180 s"
                raise AssertionError(f"{why} waiting for {marker!r}; serial console ends: {text()[-800:]!r}")
            time.sleep(0.2)
    finally:
        proc.kill()
        proc.wait()
    return text()


@pytest.mark.slow
def test_boots_in_qemu_bios_cdrom(bootable_iso: Path, tmp_path: Path) -> None:
    # isolinux.bin (El Torito, boot info table) loads ldlinux.c32 from the image, which prints the
    # second banner on the serial port the config set up
    _boots(["-cdrom", str(bootable_iso), "-boot", "d"], "ISOLINUX 6.04 20200816  Copyright", tmp_path)


@pytest.mark.slow
def test_boots_in_qemu_bios_disk(bootable_iso: Path, tmp_path: Path, home: Path) -> None:
    # the same file as a hard disk: SeaBIOS runs the isohybrid MBR code, which loads isolinux.bin
    # from the LBA at MBR byte 432; isolinux says "EHDD" (hybrid disk mode) in its banner.
    # First the BIOS+UEFI image (protective MBR + GPT), then a BIOS-only one (MBR partition 0x17)
    disk = "format=raw,if=ide,media=disk,snapshot=on"
    log = _boots(["-drive", f"file={bootable_iso},{disk}"], "DARKSTORAGE-BIOS-BOOT-OK", tmp_path)
    assert "ISOLINUX 6.04 20200816 EHDD" in log
    bios_only = tmp_path / "bios-only.iso"
    cli(
        "bucket2iso",
        str(tmp_path / "src"),
        "--output",
        str(bios_only),
        "--bootable",
        "--boot-image",
        "isolinux/isolinux.bin",
        "--hybrid",
        "--bios",
        "--isohybrid-mbr",
        "/usr/lib/ISOLINUX/isohdpfx.bin",
        home=home,
    )
    report = run("xorriso", "-indev", str(bios_only), "-report_system_area", "plain").stdout
    assert "System area summary: MBR isohybrid" in report
    assert "MBR partition      :   1   0x80  0x17            0" in report
    log = _boots(["-drive", f"file={bios_only},{disk}"], "DARKSTORAGE-BIOS-BOOT-OK", tmp_path)
    assert "EHDD" in log


def test_hybrid_bios_refusals(bootable_iso: Path, tmp_path: Path, home: Path) -> None:
    base = ["bucket2iso", str(tmp_path / "src"), "--output", str(tmp_path / "x.iso"), "--hybrid", "--bios"]
    boot = ["--bootable", "--boot-image", "isolinux/isolinux.bin"]
    short = tmp_path / "short.bin"
    short.write_bytes(bytes(100))
    for extra, words in (
        (["--isohybrid-mbr", str(short), *boot], "isohybrid MBR code"),
        (["--bootable", "--boot-image", "readme.txt"], "no isohybrid signature"),
        (["--uefi", "--efi-image", "boot/efiboot.img"], "needs a BIOS boot image"),
    ):
        res = cli(*base, *extra, home=home, check=False)
        assert res.returncode == 2, res.stderr
        assert words in res.stderr and len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert not (tmp_path / "x.iso").exists()


@pytest.mark.slow
def test_boots_in_qemu_uefi_cdrom_and_usb(bootable_iso: Path, tmp_path: Path) -> None:
    _boots(["-bios", str(OVMF), "-cdrom", str(bootable_iso)], "DARKSTORAGE-UEFI-BOOT-OK", tmp_path)
    # the same file as a disk: the firmware finds the EFI System Partition through our GPT (the
    # MBR also holds the isohybrid BIOS code, see test_boots_in_qemu_bios_disk)
    _boots(
        ["-bios", str(OVMF), "-drive", f"file={bootable_iso},format=raw,if=virtio,snapshot=on"],
        "DARKSTORAGE-UEFI-BOOT-OK",
        tmp_path,
    )


def test_multi_session_append_keeps_old_files(tmp_path: Path, home: Path) -> None:
    need("xorriso")
    src = make_tree(tmp_path / "src")
    iso = tmp_path / "ms.iso"
    cli("bucket2iso", str(src), "--output", str(iso), "--multi-session", home=home)
    first = iso.stat().st_size
    (src / "new.txt").write_text("second session\n")
    cli("bucket2iso", str(src), "-o", str(iso), "--multi-session", "--append", "--permissions", "normalize", home=home)
    assert iso.stat().st_size > first
    lsdl = run("xorriso", "-indev", str(iso), "-find", "/", "-exec", "lsdl").stdout
    assert "-r--r--r--    1 0        0" in next(line for line in lsdl.splitlines() if "'/new.txt'" in line)
    assert "-r-xr-xr-x" in next(line for line in lsdl.splitlines() if "'/script.sh'" in line)
    out = tmp_path / "x"
    run("xorriso", "-osirrox", "on", "-indev", str(iso), "-extract", "/", str(out))
    assert (out / "new.txt").read_text() == "second session\n"
    assert (out / "docs" / "report.pdf").read_bytes() == (src / "docs" / "report.pdf").read_bytes()
    assert "ok" in cli("iso", "verify", str(iso), home=home).stdout


@pytest.mark.fuse
def test_iso_mount_serves_the_files(tmp_path: Path, home: Path) -> None:
    src = make_tree(tmp_path / "src")
    iso = tmp_path / "m.iso"
    cli("bucket2iso", str(src), "--output", str(iso), home=home)
    mp = tmp_path / "mp"
    mp.mkdir()
    cli("iso", "mount", str(iso), str(mp), home=home)
    try:
        assert (mp / "docs" / "report.pdf").read_bytes() == (src / "docs" / "report.pdf").read_bytes()
        assert os.readlink(mp / "link.pdf") == "docs/report.pdf"
        assert stat.S_IMODE(os.stat(mp / "script.sh").st_mode) == 0o750
    finally:
        subprocess.run(["fusermount3", "-u", str(mp)], capture_output=True)
        wait_until(lambda: not os.path.ismount(mp), timeout=30, what="unmount")


@pytest.mark.fuse
def test_bucket_image_from_the_mounted_tree(mounts, home: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    m = mounts()
    bucket = m.path / "b"
    (bucket / "photos").mkdir()
    (bucket / "photos" / "p1.jpg").write_bytes(os.urandom(200_000))
    (bucket / "notes.txt").write_text("hello\n")
    iso = tmp_path / "bucket.iso"
    cli("bucket2iso", "b", "--output", str(iso), home=home)
    from imaging.iso_read import IsoReader

    with IsoReader(iso) as r:
        files = {n.rel: b"".join(r.chunks(ino)) for ino, n in r.walk() if n.kind == "file"}
    assert files["photos/p1.jpg"] == (bucket / "photos" / "p1.jpg").read_bytes()
    assert files["notes.txt"] == b"hello\n"


@pytest.mark.slow
def test_file_over_4_gib(tmp_path: Path, home: Path) -> None:
    need("isoinfo", "udfinfo")
    if shutil.disk_usage(tmp_path).free < 12 << 30:
        pytest.skip("needs 12 GiB free for a 4.5 GiB image")
    src = tmp_path / "src"
    src.mkdir()
    big = src / "big.bin"
    size = (4 << 30) + (512 << 20) + 123
    with open(big, "wb") as f:  # sparse, with data at both ends and across the 4 GiB line
        f.write(b"head")
        f.seek(0xFFFFF800 - 2)
        f.write(b"XXXX")
        f.truncate(size)
        f.seek(size - 4)
        f.write(b"tail")
    iso = tmp_path / "big.iso"
    cli("bucket2iso", str(src), "--output", str(iso), home=home, timeout=900)
    listing = run("isoinfo", "-l", "-R", "-i", str(iso)).stdout
    assert listing.count("big.bin") == 2  # two multi-extent records
    sizes = run("xorriso", "-indev", str(iso), "-find", "/big.bin", "-exec", "lsdl").stdout
    assert str(size) in sizes
    from imaging.iso_read import IsoReader

    for tree in ("rr", "udf"):
        with IsoReader(iso, tree=tree) as r:
            ino, node = next((i, n) for i, n in r.walk() if n.rel == "big.bin")
            assert node.size == size
            assert r.read(ino, 0, 4) == b"head" and r.read(ino, size - 4, 4) == b"tail"
            assert r.read(ino, 0xFFFFF800 - 2, 4) == b"XXXX"
    assert "ok" in cli("iso", "verify", str(iso), home=home, timeout=900).stdout
    # Joliet alone (no Rock Ridge, no UDF): the same ISO 9660 level 3 multi-extent records
    iso.unlink()
    joliet = tmp_path / "big-joliet.iso"
    cli(
        "bucket2iso",
        str(src),
        "-o",
        str(joliet),
        "--format",
        "joliet",
        "--max-file-size",
        "unlimited",
        home=home,
        timeout=900,
    )
    assert run("isoinfo", "-l", "-J", "-i", str(joliet)).stdout.count("big.bin") == 2
    with IsoReader(joliet) as r:
        ino, node = next((i, n) for i, n in r.walk() if n.rel == "big.bin")
        assert node.size == size and r.read(ino, size - 4, 4) == b"tail"
