"""Encrypted DMGs, sparse images and bundles, reproducible iso-udf DMGs and files over 4 GiB,
checked by independent readers: Debian's vfdecrypt (dmg2img package) + 7-Zip for the encrypted
container, libyal's libmodi (disk images) + libfshfs (HFS+) for the sparse formats, and our CLI."""

from __future__ import annotations

import hashlib
import io
import json
import os
import plistlib
import shutil
import subprocess
import unicodedata
from pathlib import Path

import pytest

from imaging.common import walk_tree
from imaging.dmg_crypt import EncryptedFile, EncryptedWriter, Keys
from imaging.hfsplus import HfsOptions, HfsPlusWriter
from imaging.udif import write_udif
from tests.conftest import Mount, cli, wait_until
from tests.integration.test_dmg_tools import make_tree, nfc_files

needs_7zz = pytest.mark.skipif(shutil.which("7zz") is None, reason="Debian package 7zip not installed")
needs_vfdecrypt = pytest.mark.skipif(shutil.which("vfdecrypt") is None, reason="Debian package dmg2img not installed")
PW = "correct horse ✓"


@pytest.fixture
def src(tmp_path: Path) -> tuple[Path, dict[str, bytes]]:
    root = tmp_path / "src"
    return root, {unicodedata.normalize("NFC", k): v for k, v in make_tree(root).items()}


def seven_zip_files(raw: Path, out: Path) -> dict[str, bytes]:
    """``7zz t`` then ``7zz x`` of a raw UDIF file: the files of the HFS+ volume inside."""
    t = subprocess.run(["7zz", "t", str(raw)], capture_output=True, text=True)
    assert t.returncode == 0 and "Everything is Ok" in t.stdout, t.stdout + t.stderr
    subprocess.run(["7zz", "x", "-y", f"-o{out}", str(raw)], check=True, capture_output=True)
    (vol,) = [p for p in out.iterdir() if p.is_dir()]
    return nfc_files(vol)


@needs_7zz
@needs_vfdecrypt
def test_vfdecrypt_with_the_keys_then_7zip(
    tmp_path: Path, home: Path, src: tuple[Path, dict[str, bytes]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Our AES-128 image decrypts with Debian's vfdecrypt given the data keys (-k): the container
    layout, data offset/length and the per-block AES-CBC with HMAC-SHA1 IVs are right."""
    root, files = src
    image = tmp_path / "e.dmg"
    monkeypatch.setenv("DMGPW", PW)
    cli("bucket2dmg", str(root), "-o", str(image), "--encrypt", "AES-128", "--password-env", "DMGPW", home=home)
    e = EncryptedFile(image, PW)  # the keys (vfdecrypt -p cannot unwrap them: see the next test)
    keys = (e.keys.aes + e.keys.hmac).hex()
    e.close()
    raw = tmp_path / "plain.dmg"
    subprocess.run(["vfdecrypt", "-i", str(image), "-k", keys, "-o", str(raw)], check=True, capture_output=True)
    assert seven_zip_files(raw, tmp_path / "7z") == files


@needs_7zz
@needs_vfdecrypt
def test_vfdecrypt_with_the_password_then_7zip(tmp_path: Path, src: tuple[Path, dict[str, bytes]]) -> None:
    """vfdecrypt -p unwraps our password key item (PBKDF2-HMAC-SHA1, 3DES-EDE-CBC, PKCS#7) and
    decrypts. It hard-codes 1000 PBKDF2 rounds, reads the item at 0x2A8 and takes the HMAC key from
    the blob's first 20 bytes (the AES key's place), so this image is made with 1000 rounds and an
    HMAC key that starts with the AES key; our images use 200000 rounds and independent keys."""
    root, files = src
    tree = walk_tree(root)
    writer = HfsPlusWriter(tree, HfsOptions(volume_name="src"))
    k = Keys.new("AES-128")
    keys = Keys(k.aes, k.aes + k.aes[:4])
    image = tmp_path / "e.dmg"
    with open(image, "wb") as out:
        sink = EncryptedWriter(out, keys, PW, iterations=1000)
        write_udif(sink, writer.stream(), fmt="UDBZ", partition_name="disk image (Apple_HFS : 0)", segment_id=bytes(16))
        sink.finish()
    raw = tmp_path / "plain.dmg"
    subprocess.run(["vfdecrypt", "-i", str(image), "-p", PW, "-o", str(raw)], check=True, capture_output=True)
    assert seven_zip_files(raw, tmp_path / "7z") == files
    # a wrong password: vfdecrypt's key unwrap fails (bad padding) and no valid image comes out
    bad = tmp_path / "bad.dmg"
    subprocess.run(["vfdecrypt", "-i", str(image), "-p", "wrong", "-o", str(bad)], capture_output=True)
    assert subprocess.run(["7zz", "t", str(bad)], capture_output=True).returncode != 0


@pytest.mark.fuse
def test_encrypted_cli_prompt_file_env_wrong_password_and_mount(
    tmp_path: Path, home: Path, src: tuple[Path, dict[str, bytes]]
) -> None:
    root, files = src
    image = tmp_path / "s.dmg"
    # --password asks on the terminal (here: stdin), twice
    cli(
        "bucket2dmg",
        str(root),
        "-o",
        str(image),
        "--encrypt",
        "AES-256",
        "--password",
        home=home,
        input=f"{PW}\n{PW}\n",
    )
    assert image.read_bytes()[:8] == b"encrcdsa"
    cli_opens_encrypted(image, files, tmp_path, home)


def cli_opens_encrypted(image: Path, files: dict[str, bytes], tmp_path: Path, home: Path) -> None:
    """Every password option opens *image* (ls, verify, extract, mount), a wrong password gives
    one line and exit 15 (AUTH), no password and no terminal exit 2."""
    pwfile = tmp_path / "pw.txt"
    pwfile.write_text(PW + "\n")
    ls = cli("dmg", "ls", str(image), "--password-file", str(pwfile), "--json", home=home).stdout
    assert {unicodedata.normalize("NFC", e["path"]) for e in json.loads(ls)} >= set(files)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DMGPW", PW)
        cli("dmg", "verify", str(image), "--password-env", "DMGPW", home=home)
    out = tmp_path / "out"
    cli("dmg", "extract", str(image), "-o", str(out), "--password", home=home, input=PW + "\n")
    assert nfc_files(out) == files
    bad = tmp_path / "bad.txt"
    bad.write_text("nope\n")
    res = cli("dmg", "ls", str(image), "--password-file", str(bad), home=home, check=False)
    assert res.returncode == 15 and res.stderr.strip().count("\n") == 0 and "wrong password" in res.stderr
    res = cli("dmg", "ls", str(image), home=home, check=False, stdin=subprocess.DEVNULL)
    assert res.returncode == 2 and "Traceback" not in res.stderr
    # mount in the background: the server process gets the password privately
    view = tmp_path / "view"
    view.mkdir()
    cli("dmg", "mount", str(image), str(view), "--password-file", str(pwfile), home=home)
    try:
        wait_until(lambda: os.path.ismount(view), "dmg mount")
        assert nfc_files(view) == files
    finally:
        subprocess.run(["fusermount3", "-u", str(view)], capture_output=True)


def libmodi_files(image: Path) -> dict[str, bytes]:
    """Every file of the HFS+ volume in a sparse image/bundle, read by libmodi + libfshfs only."""
    import pyfshfs
    import pymodi

    h = pymodi.handle()
    h.open(str(image))
    if image.is_dir():
        # libmodi-python 20260902's open_band_data_files() looks for zero-padded names
        # ("00000000"); macOS and libmodi's own format notes name bands in plain hex ("0", "7f"),
        # as we do, so the band files are handed over by number.
        info = plistlib.loads((image / "Info.plist").read_bytes())
        n = -(-info["size"] // info["band-size"])
        bands = [image / "bands" / f"{i:x}" for i in range(n)]
        h.open_band_data_files_as_file_objects([open(b, "rb") if b.exists() else io.BytesIO() for b in bands])
    vol = pyfshfs.volume()
    vol.open_file_object(h)
    out: dict[str, bytes] = {}

    def walk(entry: object, prefix: str) -> None:
        for sub in entry.sub_file_entries:  # type: ignore[attr-defined]
            path = f"{prefix}{sub.name}"
            if sub.number_of_sub_file_entries or (sub.file_mode or 0) & 0o170000 == 0o040000:
                walk(sub, path + "/")
            elif (sub.file_mode or 0) & 0o170000 == 0o100000:
                out[unicodedata.normalize("NFC", path)] = sub.read()

    walk(vol.root_directory, "")
    return out


@pytest.mark.fuse
@pytest.mark.parametrize("fmt,name", [("SPARSE", "p.sparseimage"), ("SPARSEBUNDLE", "p.sparsebundle")])
def test_sparse_formats_read_by_libmodi_and_libfshfs(
    tmp_path: Path, home: Path, src: tuple[Path, dict[str, bytes]], fmt: str, name: str
) -> None:
    pytest.importorskip("pymodi")
    pytest.importorskip("pyfshfs")
    root, files = src
    image = tmp_path / name
    res = json.loads(
        cli("bucket2dmg", str(root), "-o", str(image), "--format", fmt, "--size", "10GB", "--json", home=home).stdout
    )
    assert res["volume_bytes"] >= 10 * 10**9 - 4096
    used = sum(p.stat().st_blocks * 512 for p in [image, *image.rglob("*")] if p.is_file())
    assert used < 30 * (1 << 20), used  # only written bands exist
    assert libmodi_files(image) == files
    cli("dmg", "verify", str(image), home=home)
    if image.is_dir():  # the bundle's sidecar lists every file, for sha256sum -c in its folder
        ok = subprocess.run(["sha256sum", "-c", f"{name}.sha256"], cwd=tmp_path, capture_output=True, text=True)
        assert ok.returncode == 0, ok.stdout + ok.stderr
    out = tmp_path / "out"
    cli("dmg", "extract", str(image), "-o", str(out), home=home)
    assert nfc_files(out) == files
    view = tmp_path / "view"
    view.mkdir()
    cli("dmg", "mount", str(image), str(view), home=home)
    try:
        wait_until(lambda: os.path.ismount(view), "dmg mount")
        assert nfc_files(view) == files
    finally:
        subprocess.run(["fusermount3", "-u", str(view)], capture_output=True)


def test_iso_udf_dmg_is_reproducible_with_owners(
    tmp_path: Path, home: Path, src: tuple[Path, dict[str, bytes]]
) -> None:
    root, _ = src
    a, b = tmp_path / "a.dmg", tmp_path / "b.dmg"
    for image in (a, b):
        cli(
            "bucket2dmg", str(root), "-o", str(image), "--filesystem", "iso-udf", "--include-permissions",
            "--source-date-epoch", "1700000000", home=home,
        )  # fmt: skip
    assert a.read_bytes() == b.read_bytes()
    rows = {e["path"]: e for e in json.loads(cli("dmg", "ls", str(a), "--json", home=home).stdout)}
    st = os.stat(root / "a.txt")
    assert (rows["a.txt"]["uid"], rows["a.txt"]["gid"]) == (st.st_uid, st.st_gid)
    assert rows["a.txt"]["mode"] & 0o7777 == st.st_mode & 0o7777


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while data := f.read(1 << 20):
            h.update(data)
    return h.hexdigest()


@pytest.mark.slow
@needs_7zz
def test_file_over_4_gib(tmp_path: Path, home: Path) -> None:
    """A 4.5 GiB file (a hole between data at both ends, so zero chunks keep this fast) in an
    HFS+ UDZO image: 7-Zip checks every CRC, our extract gives the same bytes."""
    root = tmp_path / "big"
    root.mkdir()
    big = root / "big.bin"
    size = 4 * (1 << 30) + (1 << 29)
    with open(big, "wb") as f:
        f.write(b"head" * 100_000)
        f.seek(size - 300_000)
        f.write(b"tail" * 75_000)
    image = tmp_path / "big.dmg"
    cli("bucket2dmg", str(root), "-o", str(image), home=home, timeout=600)
    t = subprocess.run(["7zz", "t", str(image)], capture_output=True, text=True, timeout=600)
    assert t.returncode == 0 and "Everything is Ok" in t.stdout, t.stdout + t.stderr
    out = tmp_path / "out"
    cli("dmg", "extract", str(image), "-o", str(out), home=home, timeout=600)
    assert (out / "big.bin").stat().st_size == size
    assert sha256_of(out / "big.bin") == sha256_of(big)


def _openssl(*args: str, data: bytes = b"") -> bytes:
    return subprocess.run(["openssl", *args], input=data, capture_output=True, check=True).stdout


@needs_7zz
@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl not installed")
def test_aes256_decrypted_by_openssl_then_7zip(tmp_path: Path, home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Debian's vfdecrypt is AES-128 only, so an AES-256 image is opened here with the openssl
    command line alone, following the public format notes: PBKDF2-HMAC-SHA1 of the password
    (openssl kdf), 3DES-EDE-CBC unwrap of the key blob (openssl enc), then each 4096-byte block
    AES-256-CBC with IV = HMAC-SHA1(HMAC key, block number) (openssl mac, openssl enc)."""
    import struct

    root = tmp_path / "small"
    root.mkdir()
    files = {"a.txt": b"alpha\n" * 100, "b.txt": b"beta\n"}
    for n, d in files.items():
        (root / n).write_bytes(d)
    image = tmp_path / "e.dmg"
    monkeypatch.setenv("DMGPW", PW)
    cli("bucket2dmg", str(root), "-o", str(image), "--encrypt", "AES-256", "--password-env", "DMGPW", home=home)
    raw = image.read_bytes()
    assert raw[:8] == b"encrcdsa" and struct.unpack_from(">I", raw, 24)[0] == 256
    block, size, offset, n_items = struct.unpack_from(">IQQI", raw, 0x34)
    assert n_items == 1
    aes, hmac_key = openssl_keys(raw[:offset], PW)
    plain = b""
    for n in range(-(-size // block)):
        block_iv = _openssl(
            "mac", "-digest", "SHA1", "-macopt", f"hexkey:{hmac_key.hex()}", "HMAC", data=struct.pack(">I", n)
        )
        enc = raw[offset + n * block : offset + (n + 1) * block]
        plain += _openssl(
            "enc", "-d", "-aes-256-cbc", "-nopad", "-K", aes.hex(), "-iv", block_iv.decode().strip()[:32], data=enc
        )
    udif = tmp_path / "plain.dmg"
    udif.write_bytes(plain[:size])
    assert seven_zip_files(udif, tmp_path / "7z") == files


@pytest.mark.fuse
def test_hard_links_stay_links(tmp_path: Path, home: Path) -> None:
    """Hard links become TN1150 links (indirect node files in the private folder, chained as Mac
    OS X 10.5+ does): libfshfs resolves them to one file with its link count; our extract and
    mount give hard links back. 7-Zip checks the image but does not resolve HFS+ links."""
    pytest.importorskip("pymodi")
    import pyfshfs
    import pymodi

    root = tmp_path / "src"
    (root / "d").mkdir(parents=True)
    (root / "a.txt").write_bytes(b"shared\n" * 1000)
    os.link(root / "a.txt", root / "d" / "b.txt")
    os.link(root / "a.txt", root / "c.txt")
    (root / "solo").write_bytes(b"solo")
    image = tmp_path / "h.dmg"
    cli("bucket2dmg", str(root), "-o", str(image), "--include-metadata", home=home)
    cli("dmg", "verify", str(image), home=home)
    h = pymodi.handle()
    h.open(str(image))
    vol = pyfshfs.volume()
    vol.open_file_object(h)
    ids = set()
    for p in ("/a.txt", "/c.txt", "/d/b.txt"):
        e = vol.get_file_entry_by_path(p)
        assert e.read() == b"shared\n" * 1000 and e.number_of_links == 3
        ids.add(e.identifier)
    assert len(ids) == 1 and vol.get_file_entry_by_path("/solo").number_of_links == 1
    if shutil.which("7zz"):
        assert subprocess.run(["7zz", "t", str(image)], capture_output=True).returncode == 0
    out = tmp_path / "out"
    cli("dmg", "extract", str(image), "-o", str(out), home=home)
    st = [os.stat(out / p) for p in ("a.txt", "c.txt", "d/b.txt")]
    assert len({s.st_ino for s in st}) == 1 and st[0].st_nlink == 3
    assert (out / "d" / "b.txt").read_bytes() == b"shared\n" * 1000
    assert sorted(os.listdir(out)) == ["a.txt", "c.txt", "d", "solo"]  # the private folder stays hidden
    view = tmp_path / "view"
    view.mkdir()
    cli("dmg", "mount", str(image), str(view), home=home)
    try:
        wait_until(lambda: os.path.ismount(view), "dmg mount")
        st = [os.stat(view / p) for p in ("a.txt", "c.txt", "d/b.txt")]
        assert len({s.st_ino for s in st}) == 1 and st[0].st_nlink == 3
        assert (view / "c.txt").read_bytes() == b"shared\n" * 1000
    finally:
        subprocess.run(["fusermount3", "-u", str(view)], capture_output=True)


# -- encrypted sparse images and bundles ------------------------------------------------------

needs_openssl = pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl not installed")


def small_tree(root: Path) -> dict[str, bytes]:
    """A few small files (names with accents and emoji, a subfolder): few blocks to decrypt."""
    files = {"a.txt": b"alpha\n" * 300, "café ü/😀.md": b"emoji " * 2000, "sub/deeper/data.bin": os.urandom(40_000)}
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return {unicodedata.normalize("NFC", k): v for k, v in files.items()}


def openssl_keys(region: bytes, password: str) -> tuple[bytes, bytes]:
    """The AES and HMAC keys of an encrcdsa header region, unwrapped by the openssl command line
    alone: PBKDF2-HMAC-SHA1 of the password (openssl kdf), 3DES-EDE-CBC (openssl enc)."""
    import struct

    key_bits = struct.unpack_from(">I", region, 24)[0]
    kind, item_off, _len = struct.unpack_from(">IQQ", region, 0x4C)
    assert region[:8] == b"encrcdsa" and kind == 1
    _kdf, _prng, rounds, salt_len, salt, iv_len, iv, _bits, _alg, _pad, _mode, blob_len = struct.unpack_from(
        ">IIII32sI32sIIIII", region, item_off
    )
    blob = region[item_off + 0x68 : item_off + 0x68 + blob_len]
    kek = _openssl(
        "kdf", "-keylen", "24", "-binary", "-kdfopt", "digest:SHA1", "-kdfopt", f"pass:{password}",
        "-kdfopt", f"hexsalt:{salt[:salt_len].hex()}", "-kdfopt", f"iter:{rounds}", "PBKDF2",
    )  # fmt: skip
    keyblob = _openssl("enc", "-d", "-des-ede3-cbc", "-K", kek.hex(), "-iv", iv[:iv_len].hex(), data=blob)
    n = key_bits // 8
    assert keyblob.endswith(b"CKIE\x00") and len(keyblob) == n + 20 + 5
    return keyblob[:n], keyblob[n : n + 20]


def openssl_decrypt(keys: tuple[bytes, bytes], blocks: dict[int, bytes], tmp: Path) -> dict[int, bytes]:
    """Decrypt 4096-byte ciphertext blocks (by block number) with openssl alone: the IVs are
    HMAC-SHA1(HMAC key, number) from one ``openssl dgst -mac HMAC`` over a 4-byte file per
    block, then ``openssl enc -aes-N-cbc`` per block. An all-zero block (a hole) stays zeros."""
    import struct

    aes, hmac_key = keys
    nums = [n for n in sorted(blocks) if blocks[n].count(0) != len(blocks[n])]
    if not nums:
        return {n: bytes(4096) for n in blocks}
    tmp.mkdir(exist_ok=True)
    names = []
    for n in nums:
        (tmp / f"{n}").write_bytes(struct.pack(">I", n))
        names.append(f"{n}")
    digests = subprocess.run(
        ["openssl", "dgst", "-sha1", "-mac", "HMAC", "-macopt", f"hexkey:{hmac_key.hex()}", *names],
        cwd=tmp, capture_output=True, check=True, text=True,
    ).stdout.splitlines()  # fmt: skip
    ivs = {int(line[line.index("(") + 1 : line.index(")")]): line.rsplit("= ", 1)[1][:32] for line in digests}
    out = {n: bytes(4096) for n in blocks}
    for n in nums:
        cbc = f"-aes-{len(aes) * 8}-cbc"
        out[n] = _openssl("enc", "-d", cbc, "-nopad", "-K", aes.hex(), "-iv", ivs[n], data=blocks[n])
    return out


def decrypt_sparseimage(image: Path, password: str, out: Path) -> None:
    """An encrypted .sparseimage decrypted by openssl into a plain one (the sprs file inside)."""
    import struct

    raw = image.read_bytes()
    size, offset = struct.unpack_from(">QQ", raw, 0x38)
    assert offset + size <= len(raw)
    blocks = {n: raw[offset + n * 4096 : offset + (n + 1) * 4096] for n in range(-(-size // 4096))}
    plain = openssl_decrypt(openssl_keys(raw[:offset], password), blocks, out.parent / "ivs")
    out.write_bytes(b"".join(plain[n] for n in sorted(plain))[:size])


def decrypt_sparsebundle(bundle: Path, password: str, out: Path) -> None:
    """An encrypted .sparsebundle decrypted by openssl into a plain one: the keys from ``token``,
    each band's blocks with IVs from the disk block number (band * band size + offset) / 4096."""
    info = plistlib.loads((bundle / "Info.plist").read_bytes())
    keys = openssl_keys((bundle / "token").read_bytes(), password)
    (out / "bands").mkdir(parents=True)
    shutil.copy(bundle / "Info.plist", out / "Info.plist")
    (out / "token").write_bytes(b"")
    for band in (bundle / "bands").iterdir():
        data = band.read_bytes()
        first = int(band.name, 16) * info["band-size"] // 4096
        blocks = {first + i: data[i * 4096 : (i + 1) * 4096] for i in range(len(data) // 4096)}
        plain = openssl_decrypt(keys, blocks, out.parent / f"ivs-{band.name}")
        (out / "bands" / band.name).write_bytes(b"".join(plain[n] for n in sorted(plain)))


@needs_openssl
@pytest.mark.fuse
@pytest.mark.parametrize(
    "fmt,name,cipher", [("SPARSE", "e.sparseimage", "AES-128"), ("SPARSEBUNDLE", "e.sparsebundle", "AES-256")]
)
def test_encrypted_sparse_formats_opened_by_openssl_then_libmodi(
    tmp_path: Path, home: Path, monkeypatch: pytest.MonkeyPatch, fmt: str, name: str, cipher: str
) -> None:
    """hdiutil's encrypted sparse layouts, checked without our code: openssl unwraps the keys
    and decrypts every stored block into a plain image or bundle, which libmodi + libfshfs read
    file by file. Then our CLI opens the encrypted image with each password option."""
    pytest.importorskip("pymodi")
    pytest.importorskip("pyfshfs")
    files = small_tree(tmp_path / "src")
    image = tmp_path / name
    monkeypatch.setenv("DMGPW", PW)
    res = json.loads(
        cli(
            "bucket2dmg", str(tmp_path / "src"), "-o", str(image), "--format", fmt, "--size", "5GB",
            "--encrypt", cipher, "--password-env", "DMGPW", "--json", home=home,
        ).stdout
    )  # fmt: skip
    assert res["encryption"] == cipher
    used = sum(p.stat().st_blocks * 512 for p in [image, *image.rglob("*")] if p.is_file())
    assert used < 20 * (1 << 20), used  # free space is not stored
    plain = tmp_path / ("plain.sparseimage" if fmt == "SPARSE" else "plain.sparsebundle")
    (decrypt_sparseimage if fmt == "SPARSE" else decrypt_sparsebundle)(image, PW, plain)
    assert libmodi_files(plain) == files
    cli_opens_encrypted(image, files, tmp_path, home)


def test_sparseimage_with_index_node_chain_through_the_cli(tmp_path: Path, home: Path) -> None:
    """``--band-size 4KB``: more than 1008 bands stored, so index nodes are chained as hdiutil
    chains them past 1008 MiB with its 1 MiB bands (libmodi reads no chains: our reader only)."""
    root = tmp_path / "src"
    root.mkdir()
    files = {"big.bin": os.urandom(6 << 20), "small.txt": b"small\n"}
    for n, d in files.items():
        (root / n).write_bytes(d)
    for enc in ([], ["--encrypt", "AES-128", "--password-file", str(tmp_path / "pw")]):
        (tmp_path / "pw").write_text(PW)
        image = tmp_path / f"c{len(enc)}.sparseimage"
        cli("bucket2dmg", str(root), "-o", str(image), "--format", "SPARSE", "--band-size", "4KB", *enc, home=home)
        pw = enc[-2:]
        cli("dmg", "verify", str(image), *pw, home=home)
        out = tmp_path / f"out{len(enc)}"
        cli("dmg", "extract", str(image), "-o", str(out), *pw, home=home)
        assert nfc_files(out) == files
    plain = (tmp_path / "c0.sparseimage").read_bytes()
    assert plain[:4] == b"sprs" and int.from_bytes(plain[20:28], "big") == 4096 + 1008 * 4096


@pytest.mark.fuse
def test_dmg_sync_of_encrypted_images(tmp_path: Path, home: Path, mounted: Mount) -> None:
    """``dmg sync`` restores an encrypted UDZO image and an encrypted sparse bundle into buckets
    through the running mount; a wrong password (exit 15) or none (exit 2) copies nothing."""
    files = small_tree(tmp_path / "src")
    pwfile, bad = tmp_path / "pw.txt", tmp_path / "bad.txt"
    pwfile.write_text(PW + "\n")
    bad.write_text("wrong\n")
    for fmt, name, bucket in (("UDZO", "s.dmg", "r1"), ("SPARSEBUNDLE", "s.sparsebundle", "r2")):
        image = tmp_path / name
        cli(
            "bucket2dmg", str(tmp_path / "src"), "-o", str(image), "--format", fmt, "--encrypt", "AES-256",
            "--password-file", str(pwfile), home=home,
        )  # fmt: skip
        cli("bucket", "create", bucket, home=home)
        res = cli("dmg", "sync", str(image), "--to", bucket, "--password-file", str(bad), home=home, check=False)
        assert res.returncode == 15 and "wrong password" in res.stderr and "Traceback" not in res.stderr
        res = cli("dmg", "sync", str(image), "--to", bucket, home=home, check=False, stdin=subprocess.DEVNULL)
        assert res.returncode == 2 and "password" in res.stderr
        assert not any((mounted.path / bucket).iterdir())
        dry = cli("dmg", "sync", str(image), "--to", bucket, "--dry-run", "--password-file", str(pwfile), home=home)
        assert "would copy 3 file(s)" in dry.stdout and not any((mounted.path / bucket).iterdir())
        cli("dmg", "sync", str(image), "--to", bucket, "--password-file", str(pwfile), home=home)
        assert nfc_files(mounted.path / bucket) == files
        again = cli("dmg", "sync", str(image), "--to", bucket, "--password-file", str(pwfile), home=home)
        assert "copied 0 file(s)" in again.stdout
