"""Buckets and tiers through the CLI and a real mount: bucket commands and their exit codes,
default-tier rules, page-in from the cold tier, tier moves to the archive tier and restores,
cache eviction, and tier moves refused while a file has changes not uploaded yet.

The pool is the embedded default one: one local directory per tier under ``home/tiers/``, the
archive tier simulating restore latency (``[pool] restore_latency_s`` in ``config.toml``).
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import random
import sqlite3
import subprocess
import tomllib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import tomli_w

from tests.conftest import Mount, cli, pattern, wait_until

MiB = 1 << 20
TIERS = ("hot", "warm", "cold", "archive", "offsite")


# -- helpers ---------------------------------------------------------------------------------


def xattr(path: Path, name: str) -> str:
    return os.getxattr(path, f"user.darkstorage.{name}").decode()


def one_line_error(res: subprocess.CompletedProcess[str], code: int) -> str:
    """Assert exit *code* and a single-line error on stderr without a traceback; return it."""
    assert res.returncode == code, f"exit {res.returncode}, wanted {code}: {res.stdout}{res.stderr}"
    assert "Traceback" not in res.stderr + res.stdout
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("darkstorage:"), res.stderr
    return lines[0]


def set_pool_config(home: Path, **values: float) -> None:
    """Change ``[pool]`` values in the pool's config.toml (read by each process at start)."""
    p = home / "config.toml"
    raw = tomllib.loads(p.read_text())
    raw.setdefault("pool", {}).update(values)
    p.write_text(tomli_w.dumps(raw))


def copies(home: Path, key: str) -> list[str]:
    """Tiers whose directory holds object *key*, plus any temporary leftovers of it."""
    found = []
    name = key.rpartition("/")[2]
    for t in TIERS:
        p = home / "tiers" / t / key
        if p.exists():
            found.append(t)
        found += [f"{t}:{q.name}" for q in p.parent.glob(f".darkstorage-tmp-*-{name}")] if p.parent.exists() else []
    return found


def catalog(home: Path, sql: str, *args: object) -> list[tuple]:
    con = sqlite3.connect(home / "catalog.db", timeout=30)
    try:
        return con.execute(sql, args).fetchall()
    finally:
        con.close()


def cache_entry(home: Path, ino: int) -> tuple[int, int] | None:
    """``(complete, bytes)`` of the catalog's cache row for *ino*, or None."""
    rows = catalog(home, "SELECT complete, bytes FROM cache WHERE inode = ?", ino)
    return rows[0] if rows else None


def cache_disk_bytes(home: Path) -> int:
    """Bytes the cache directory really uses on disk."""
    return sum(p.stat().st_blocks * 512 for p in (home / "cache").iterdir() if p.is_file())


def cli_json(*args: str, home: Path) -> object:
    return json.loads(cli(*args, "--json", home=home).stdout)


def stop(m: Mount) -> None:
    code = m.stop()
    assert code == 0, (m.log.read_text() if m.log else "") + f"\nexit code {code}"


# -- buckets ---------------------------------------------------------------------------------


@pytest.mark.fuse
def test_bucket_create_list_remove(home: Path, tmp_path: Path) -> None:
    cli("bucket", "create", "photos", home=home)
    cli("bucket", "create", "docs", home=home)
    assert "already exists" in one_line_error(cli("bucket", "create", "photos", home=home, check=False), 4)
    assert [(b["name"], b["files"], b["bytes"]) for b in cli_json("bucket", "list", home=home)] == [
        ("docs", 0, 0),
        ("photos", 0, 0),
    ]
    assert "photos" in cli("bucket", "list", home=home).stdout

    m = Mount(home, tmp_path / "mnt", ["--write-back", "0.2s"]).start()
    try:
        (m.path / "photos" / "2024").mkdir()
        (m.path / "photos" / "a.jpg").write_bytes(pattern(1, 1000))
        (m.path / "photos" / "2024" / "b.jpg").write_bytes(pattern(2, 2345))
    finally:
        stop(m)
    hot = home / "tiers" / "hot" / "photos"
    assert (hot / "a.jpg").read_bytes() == pattern(1, 1000)
    assert [(b["name"], b["files"], b["bytes"]) for b in cli_json("bucket", "list", home=home)] == [
        ("docs", 0, 0),
        ("photos", 2, 3345),
    ]

    err = one_line_error(cli("bucket", "remove", "photos", home=home, check=False), 5)
    assert "not empty" in err and "--force" in err
    assert [b["name"] for b in cli_json("bucket", "list", home=home)] == ["docs", "photos"]
    assert (hot / "2024" / "b.jpg").exists()

    res = cli("bucket", "remove", "photos", "--force", home=home)
    assert "2 file(s)" in res.stdout
    assert [b["name"] for b in cli_json("bucket", "list", home=home)] == ["docs"]
    assert not hot.exists() or not [p for p in hot.rglob("*") if p.is_file()], "the bucket's objects are left behind"
    cli("bucket", "remove", "docs", home=home)  # empty: no --force needed
    assert cli_json("bucket", "list", home=home) == []
    one_line_error(cli("bucket", "remove", "docs", home=home, check=False), 3)

    # the name is free again, and the mount shows the new, empty bucket
    cli("bucket", "create", "photos", home=home)
    m = Mount(home, tmp_path / "mnt", ["--write-back", "0.2s"]).start()
    try:
        assert os.listdir(m.path) == ["photos"]
        assert os.listdir(m.path / "photos") == []
    finally:
        stop(m)


@pytest.mark.slow  # dozens of CLI processes
def test_cli_exit_codes(home: Path, tmp_path: Path) -> None:
    cli("bucket", "create", "b", home=home)
    empty = tmp_path / "empty"
    empty.mkdir()
    one_line: list[tuple[int, str | None, Path, tuple[str, ...]]] = []  # (code, text in message, home, args)
    for bad in ("bad name", "a/b", ".hidden", "-x", "x" * 256, "ü"):
        one_line.append((2, "bad bucket name", home, ("bucket", "create", "--", bad)))
    for args in (
        ("bucket", "remove", "nope"),
        ("tiers", "set", "nope/x", "--default", "cold"),
        ("tiers", "stats", "nope"),
        ("tiers", "list", "nope"),
        ("tiers", "assign", "nope/f", "--tier", "cold"),
        ("tiers", "restore", "b/nope", "--status"),
        ("umount", str(tmp_path / "not-mounted")),
    ):
        one_line.append((3, None, home, args))
    # nothing set up yet: a home that does not exist, and an empty one
    for fresh in (tmp_path / "missing", empty):
        for args in (
            ("bucket", "list"),
            ("bucket", "create", "x"),
            ("status",),
            ("tiers", "list"),
            ("tiers", "stats"),
            ("mount", str(tmp_path / "m2")),
        ):
            one_line.append((6, "darkstorage init", fresh, args))
        # umount needs no pool (image views mount without one): "not mounted"
        one_line.append((3, "is not mounted", fresh, ("umount", str(tmp_path / "m2"))))
    click_usage = [
        ("tiers", "set", "b", "--default", "tepid"),
        ("bucket", "frobnicate"),
        ("mount", str(tmp_path / "m"), "--cache-max-size", "lots"),
        ("bucket", "create"),
    ]

    with ThreadPoolExecutor(4) as ex:  # independent commands: run a few at once
        results = list(ex.map(lambda c: cli(*c[3], home=c[2], check=False), one_line))
        usage_results = list(ex.map(lambda a: cli(*a, home=home, check=False), click_usage))
    for (code, text, _, args), res in zip(one_line, results, strict=True):
        msg = one_line_error(res, code)
        assert text is None or text in msg, (args, msg)
    for res in usage_results:  # click's own usage errors: a usage text, exit 2, no traceback
        assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr

    assert [b["name"] for b in cli_json("bucket", "list", home=home)] == ["b"]
    assert not os.path.ismount(tmp_path / "m2")
    assert os.listdir(empty) == []  # a failed command leaves nothing behind
    cli("init", home=empty)
    assert cli_json("bucket", "list", home=empty) == []


# -- default tier rules and page-in ------------------------------------------------------------


@pytest.mark.fuse
def test_default_tier_rules_place_new_files(mounts: Callable[..., Mount], home: Path) -> None:
    m = mounts("--write-back", "0.2s")
    cli("tiers", "set", "b", "--default", "warm", home=home)  # while mounted: applies to new files
    cli("tiers", "set", "b/coldstuff", "--default", "cold", home=home)
    cli("tiers", "set", "b/coldstuff/hot/", "--default", "hot", home=home)
    rules = cli_json("tiers", "list", "b", home=home)["rules"]  # type: ignore[index]
    assert [(r["prefix"], r["tier"]) for r in rules] == [("", "warm"), ("coldstuff", "cold"), ("coldstuff/hot/", "hot")]
    b = m.path / "b"
    (b / "coldstuff" / "sub" / "deeper").mkdir(parents=True)
    (b / "coldstuff" / "hot").mkdir()
    want = {
        "coldstuff/x.bin": "cold",
        "coldstuff/sub/deeper/y.bin": "cold",
        "coldstuff/hot/z.bin": "hot",  # the longest rule wins
        "coldstuffing.bin": "warm",  # a prefix is a path, not a string prefix
        "other.bin": "warm",
    }
    for i, rel in enumerate(want):
        (b / rel).write_bytes(pattern(i, 10_000 + i))
    assert {rel: xattr(b / rel, "tier") for rel in want} == want
    wait_until(lambda: all(xattr(b / rel, "state") == "clean" for rel in want), "write-back")
    for i, (rel, tier) in enumerate(want.items()):
        assert copies(home, f"b/{rel}") == [tier], rel
        assert (home / "tiers" / tier / "b" / rel).read_bytes() == pattern(i, 10_000 + i)
        assert (b / rel).read_bytes() == pattern(i, 10_000 + i)
    stats = cli_json("tiers", "stats", "b", home=home)
    assert {t: v["files"] for t, v in stats.items()} == {"hot": 1, "warm": 2, "cold": 2, "archive": 0, "offsite": 0}


@pytest.mark.fuse
def test_page_in_from_cold(mounts: Callable[..., Mount], home: Path) -> None:
    cli("tiers", "set", "b/cold/", "--default", "cold", home=home)
    m = mounts("--write-back", "0.2s", "--cache-max-size", "4M")
    p = m.path / "b" / "cold" / "big.bin"
    p.parent.mkdir()
    size = 12 * MiB + 4321
    data = pattern(5, size)
    p.write_bytes(data)
    ino = os.stat(p).st_ino
    assert xattr(p, "tier") == "cold"
    wait_until(lambda: xattr(p, "state") == "clean", "write-back")
    assert (home / "tiers" / "cold" / "b" / "cold" / "big.bin").read_bytes() == data
    # clean now and bigger than the cache limit: its cache copy goes, reads page in from cold
    wait_until(lambda: cache_entry(home, ino) is None, "the clean file's cache to be evicted")
    used0 = cli_json("status", home=home)["cache"]["used_bytes"]  # type: ignore[index]

    rng = random.Random(42)
    fd = os.open(p, os.O_RDONLY)
    try:
        for _ in range(6):
            off = rng.randrange(0, size)
            n = rng.choice((1, 100, 4096, 70_000, MiB + 3))
            assert os.pread(fd, n, off) == data[off : off + n], (off, n)
        assert os.pread(fd, 10, size - 3) == data[-3:]
        assert os.pread(fd, 10, size + 100) == b""
        complete, nbytes = cache_entry(home, ino) or (None, 0)
        assert complete == 0 and 0 < nbytes < size, (complete, nbytes)
        used1 = cli_json("status", home=home)["cache"]["used_bytes"]  # type: ignore[index]
        assert used1 > used0
        # now all of it, in odd-sized sequential reads
        got, off = bytearray(), 0
        while chunk := os.pread(fd, 333_333, off):
            got += chunk
            off += len(chunk)
        assert got == data
        assert cache_entry(home, ino) == (1, pytest.approx(size, abs=64 << 10))
        assert xattr(p, "tier") == "cold"
    finally:
        os.close(fd)
    # reopened and read again (the cache may have been evicted on close: page-in again)
    assert hashlib.sha256(p.read_bytes()).digest() == hashlib.sha256(data).digest()
    assert copies(home, "b/cold/big.bin") == ["cold"]


# -- archive: tier moves and restores ----------------------------------------------------------


@pytest.mark.fuse
@pytest.mark.slow  # waits out simulated restore latencies
def test_assign_to_archive_and_restore(mounts: Callable[..., Mount], home: Path) -> None:
    set_pool_config(home, restore_latency_s=2.0, restore_wait_s=0.3)
    m = mounts("--write-back", "0.2s", "--cache-max-size", "64K")
    d = m.path / "b" / "arch"
    d.mkdir()
    files = {
        "a.bin": pattern(10, MiB + 5),
        "c.bin": pattern(11, 700_000),
        "d.bin": pattern(12, 3),
        "keep.bin": pattern(13, 5000),
    }
    for name, data in files.items():
        (d / name).write_bytes(data)
    wait_until(lambda: all(xattr(d / n, "state") == "clean" for n in files), "write-back")
    wait_until(
        lambda: all(cache_entry(home, os.stat(d / n).st_ino) is None for n in ("a.bin", "c.bin")),
        "the clean files' caches to be evicted",
    )
    assert all(copies(home, f"b/arch/{n}") == ["hot"] for n in files)

    # (a) moved while mounted; the restore takes longer than open() waits: EAGAIN, then readable
    res = cli("tiers", "assign", "b/arch/a.bin", "--tier", "archive", "--json", home=home)
    assert json.loads(res.stdout) == [{"key": "b/arch/a.bin", "outcome": "moved"}]
    assert copies(home, "b/arch/a.bin") == ["archive"]
    assert (home / "tiers" / "archive" / "b" / "arch" / "a.bin").read_bytes() == files["a.bin"]
    assert xattr(d / "a.bin", "tier") == "archive"
    assert xattr(d / "a.bin", "restore") == "none"
    with pytest.raises(OSError) as exc:
        open(d / "a.bin", "rb")
    assert exc.value.errno == errno.EAGAIN
    assert xattr(d / "a.bin", "restore").startswith("pending")
    res = cli("tiers", "restore", "b/arch/a.bin", "--status", "--json", home=home, check=False)
    assert res.returncode == 9 and json.loads(res.stdout)["state"] == "pending", res.stderr
    with pytest.raises(OSError) as exc:
        open(d / "a.bin", "rb")  # still pending: the second open does not restart the clock either
    assert exc.value.errno == errno.EAGAIN
    wait_until(
        lambda: cli("tiers", "restore", "b/arch/a.bin", "--status", home=home, check=False).returncode == 0,
        "the simulated restore",
        timeout=20,
    )
    with open(d / "a.bin", "rb") as f:
        assert xattr(d / "a.bin", "restore") == "cached"
        assert f.read() == files["a.bin"]
    assert copies(home, "b/arch/a.bin") == ["archive"]  # reading does not move it back
    assert cli("tiers", "restore", "b/arch/a.bin", "--status", home=home, check=False).returncode == 0
    stop(m)

    # moved while not mounted
    for name in ("c.bin", "d.bin"):
        res = cli("tiers", "assign", f"b/arch/{name}", "--tier", "archive", home=home)
        assert copies(home, f"b/arch/{name}") == ["archive"]
    res = cli("tiers", "assign", "b/arch/a.bin", "--tier", "archive", "--json", home=home)
    assert json.loads(res.stdout) == [{"key": "b/arch/a.bin", "outcome": "already"}]
    listed = cli_json("tiers", "files", "--tier", "archive", home=home)
    assert sorted((f["path"], f["bytes"], f["state"]) for f in listed) == [  # type: ignore[union-attr]
        (f"b/arch/{n}", len(files[n]), "clean") for n in ("a.bin", "c.bin", "d.bin")
    ]
    stats = cli_json("tiers", "stats", "b", home=home)
    assert stats["archive"] == {"files": 3, "bytes": sum(len(files[n]) for n in ("a.bin", "c.bin", "d.bin"))}
    assert stats["hot"] == {"files": 1, "bytes": len(files["keep.bin"])}
    whole = cli_json("tiers", "stats", home=home)
    assert whole == stats

    # (b) open() waits longer than the restore takes: it just waits and succeeds
    set_pool_config(home, restore_latency_s=1.0, restore_wait_s=20.0)
    m = mounts("--write-back", "0.2s", "--cache-max-size", "64K")
    d = m.path / "b" / "arch"
    with open(d / "c.bin", "rb") as f:
        assert xattr(d / "c.bin", "restore") == "cached"
        assert f.read() == files["c.bin"]
    # a restore asked for from the CLI: exit 9 while pending, then 0, then open is immediate
    res = cli("tiers", "restore", "b/arch/d.bin", "--json", home=home, check=False)
    assert res.returncode == 9 and json.loads(res.stdout)["state"] == "pending", res.stderr
    assert cli("tiers", "restore", "b/arch/d.bin", "--status", home=home, check=False).returncode == 9
    wait_until(
        lambda: cli("tiers", "restore", "b/arch/d.bin", "--status", home=home, check=False).returncode == 0,
        "the simulated restore",
        timeout=20,
    )
    assert (d / "d.bin").read_bytes() == files["d.bin"]
    assert (d / "keep.bin").read_bytes() == files["keep.bin"]
    assert cli("tiers", "restore", "b/arch/keep.bin", "--status", home=home).stdout.strip().endswith("not-needed")

    # and back to hot from the archive, through the restored copy
    res = cli("tiers", "assign", "b/arch/c.bin", "--tier", "hot", "--json", home=home)
    assert json.loads(res.stdout) == [{"key": "b/arch/c.bin", "outcome": "moved"}]
    assert copies(home, "b/arch/c.bin") == ["hot"]
    assert (d / "c.bin").read_bytes() == files["c.bin"]
    stop(m)


# -- cache eviction ------------------------------------------------------------------------


@pytest.mark.fuse
def test_cache_eviction_keeps_the_limit_but_never_open_or_dirty_files(mounts: Callable[..., Mount], home: Path) -> None:
    limit = 4 * MiB
    cli("tiers", "set", "b/cold/", "--default", "cold", home=home)
    m = mounts("--write-back", "0.2s", "--cache-max-size", "4M")
    cold = m.path / "b" / "cold"
    cold.mkdir()
    files = {f"f{i}.bin": pattern(20 + i, 2 * MiB) for i in range(5)}
    for name, data in files.items():
        (cold / name).write_bytes(data)
    wait_until(lambda: all(xattr(cold / n, "state") == "clean" for n in files), "write-back")
    # once the files are clean and closed, the cache shrinks back under the limit
    wait_until(lambda: cache_disk_bytes(home) <= limit, "the cache to shrink under its limit")
    stop(m)

    m = mounts("--write-back", "60s", "--cache-max-size", "4M")
    b = m.path / "b"
    cold = b / "cold"
    dirty = pattern(30, 3 * MiB)
    (b / "dirty.bin").write_bytes(dirty)  # stays dirty for a minute: must never be evicted
    dirty_ino = os.stat(b / "dirty.bin").st_ino
    assert xattr(b / "dirty.bin", "state") == "dirty"
    keep = os.open(cold / "f0.bin", os.O_RDONLY)  # stays open: must never be evicted
    try:
        assert os.pread(keep, MiB, 0) == files["f0.bin"][:MiB]
        keep_ino = os.fstat(keep).st_ino
        for _round in range(2):
            for name in ("f1.bin", "f2.bin", "f3.bin", "f4.bin"):
                assert (cold / name).read_bytes() == files[name]
                pinned = (cache_entry(home, dirty_ino) or (0, 0))[1] + (cache_entry(home, keep_ino) or (0, 0))[1]
                used = cache_disk_bytes(home)
                assert used <= limit + pinned, f"cache {used} bytes after closing {name}, limit {limit} + {pinned}"
                assert cache_entry(home, dirty_ino) is not None, "a dirty file's cache was evicted"
                assert cache_entry(home, keep_ino) is not None, "an open file's cache was evicted"
        assert os.pread(keep, 2 * MiB, MiB) == files["f0.bin"][MiB:]
        assert os.pread(keep, 2 * MiB, 0) == files["f0.bin"]
    finally:
        os.close(keep)
    assert (b / "dirty.bin").read_bytes() == dirty
    assert xattr(b / "dirty.bin", "state") == "dirty"
    assert cache_disk_bytes(home) <= limit + len(dirty) + 64 * 1024
    stop(m)  # uploads the dirty file
    assert (home / "tiers" / "hot" / "b" / "dirty.bin").read_bytes() == dirty


# -- tier moves of files with unsaved changes -------------------------------------------------


@pytest.mark.fuse
def test_tier_move_of_a_dirty_file_is_refused(mounts: Callable[..., Mount], home: Path) -> None:
    m = mounts("--write-back", "60s")
    b = m.path / "b"
    (b / "dir").mkdir()
    v1 = pattern(40, 300_000)
    (b / "dir" / "f.bin").write_bytes(v1)
    res = cli("tiers", "assign", "b/dir/f.bin", "--tier", "cold", home=home, check=False)
    assert res.returncode == 7 and "Traceback" not in res.stderr, res.stdout + res.stderr
    assert "waiting for upload" in res.stdout
    assert (xattr(b / "dir" / "f.bin", "tier"), xattr(b / "dir" / "f.bin", "state")) == ("hot", "dirty")
    assert copies(home, "b/dir/f.bin") == []
    assert (b / "dir" / "f.bin").read_bytes() == v1
    stop(m)
    assert copies(home, "b/dir/f.bin") == ["hot"]
    assert (home / "tiers" / "hot" / "b" / "dir" / "f.bin").read_bytes() == v1

    # clean, then changed again: refused again, alone or as part of a recursive move
    m = mounts("--write-back", "60s")
    b = m.path / "b"
    (b / "dir" / "other.bin").write_bytes(b"other")
    stop(m)
    m = mounts("--write-back", "60s")
    b = m.path / "b"
    with open(b / "dir" / "f.bin", "ab") as f:
        f.write(b"more")
    v2 = v1 + b"more"
    assert xattr(b / "dir" / "f.bin", "state") == "dirty"
    res = cli("tiers", "assign", "b/dir/f.bin", "--tier", "cold", home=home, check=False)
    assert res.returncode == 7, res.stdout + res.stderr
    res = cli("tiers", "assign", "b/dir", "--tier", "cold", "--recursive", "--json", home=home, check=False)
    assert res.returncode == 7, res.stdout + res.stderr
    outcomes = {r["key"]: r["outcome"] for r in json.loads(res.stdout)}
    assert outcomes["b/dir/other.bin"] == "moved"
    assert "waiting for upload" in outcomes["b/dir/f.bin"]
    assert copies(home, "b/dir/other.bin") == ["cold"]
    assert copies(home, "b/dir/f.bin") == ["hot"]
    assert (home / "tiers" / "hot" / "b" / "dir" / "f.bin").read_bytes() == v1  # the old version, still there
    assert (b / "dir" / "f.bin").read_bytes() == v2
    assert (b / "dir" / "other.bin").read_bytes() == b"other"
    stop(m)
    assert (home / "tiers" / "hot" / "b" / "dir" / "f.bin").read_bytes() == v2

    # uploaded now: the move goes through, and the mount reads it from its new tier
    cli("tiers", "assign", "b/dir/f.bin", "--tier", "cold", home=home)
    assert copies(home, "b/dir/f.bin") == ["cold"]
    assert (home / "tiers" / "cold" / "b" / "dir" / "f.bin").read_bytes() == v2
    m = mounts("--write-back", "60s")
    assert xattr(m.path / "b" / "dir" / "f.bin", "tier") == "cold"
    assert (m.path / "b" / "dir" / "f.bin").read_bytes() == v2
    stop(m)


@pytest.mark.fuse
def test_bucket_changes_from_the_cli_show_in_a_running_mount(mounts: Callable[..., Mount], home: Path) -> None:
    """The kernel caches names for --attr-timeout (10 s by default); `bucket create/remove`
    tell the mount, so the change shows at once, not after the timeout. The mount also keeps
    listings in memory: the root is listed before the changes, so the one after them must see
    the other process's changes through the catalog's namespace_version."""
    cli("bucket", "create", "extra", home=home)
    m = mounts()
    (m.path / "extra" / "f").write_bytes(b"x")
    assert os.stat(m.path / "extra").st_nlink == 2
    assert sorted(os.listdir(m.path)) == ["b", "extra"] and os.listdir(m.path / "extra") == ["f"]
    cli("bucket", "remove", "extra", "--force", home=home)
    wait_until(lambda: not os.path.exists(m.path / "extra"), "the removed bucket to vanish", timeout=5)
    cli("bucket", "create", "fresh", home=home)
    wait_until(lambda: os.path.isdir(m.path / "fresh"), "the new bucket to appear", timeout=5)
    assert sorted(os.listdir(m.path)) == ["b", "fresh"]
