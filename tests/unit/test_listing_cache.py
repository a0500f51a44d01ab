"""The catalog's listing cache (``Catalog.list_dir_rows``) and the entries readdir builds from
it: after any sequence of changes, a listing must say exactly what the catalog holds."""

from __future__ import annotations

import os
import random
import sqlite3
import stat
from types import SimpleNamespace
from typing import Any

import pyfuse3
import pytest

import pool.catalog as catalog_mod
from pool.catalog import ROOT, Catalog
from pool.pool import Pool
from vfs.operations import RENAME_EXCHANGE, RENAME_NOREPLACE, Operations

from .test_operations import CTX, bucket, fields, make_file

FIELDS = ("st_ino", "st_mode", "st_nlink", "st_uid", "st_gid", "st_size", "st_atime_ns", "st_mtime_ns", "st_ctime_ns")


def sql_listing(db: sqlite3.Connection, parent: int) -> list[tuple[int, bytes, int]]:
    """The truth, from a connection of its own: ``(cookie, name, inode)`` in cookie order."""
    return db.execute("SELECT id, name, inode FROM dentries WHERE parent = ? ORDER BY id", (parent,)).fetchall()


async def listed(ops: Operations, ino: int, monkeypatch: pytest.MonkeyPatch, room: int = 1 << 30) -> list[Any]:
    """Every entry readdir gives for directory *ino* (without "." and ".."), read *room*
    entries per call as the kernel does with a small buffer."""
    got: list[tuple[bytes, Any, int]] = []
    state = {"room": room}

    def reply(token: object, name: bytes, attr: Any, next_id: int) -> bool:
        if state["room"] == 0:
            return False
        state["room"] -= 1
        got.append((name, attr, next_id))
        return True

    monkeypatch.setattr(pyfuse3, "readdir_reply", reply)
    fh = await ops.opendir(ino, CTX)
    start = 0
    while True:
        state["room"] = room
        before = len(got)
        await ops.readdir(fh, start, None)  # type: ignore[arg-type]
        if len(got) == before:
            break
        start = got[-1][2]
    await ops.releasedir(fh)
    return [g for g in got if g[0] not in (b".", b"..")]


async def check_all(ops: Operations, truth: sqlite3.Connection, monkeypatch: pytest.MonkeyPatch) -> int:
    """Compare every directory's listing with the catalog, and each entry's attributes with
    getattr (which reads the catalog), and the inode count statfs gives with the table's.
    Returns how many entries were compared."""
    dirs = [r[0] for r in truth.execute("SELECT id FROM inodes WHERE mode & 61440 = 16384 AND nlink > 0")]
    assert ops.cat.count_inodes() == truth.execute("SELECT count(*) FROM inodes").fetchone()[0]  # statfs's figure
    n = 0
    for d in dirs:
        for room in (1 << 30, 3):
            got = await listed(ops, d, monkeypatch, room)
            want = sql_listing(truth, d)
            assert [(name, e.st_ino) for name, e, _ in got] == [(name, i) for _, name, i in want]
            for _, e, _ in got:
                a = await ops.getattr(e.st_ino, CTX)
                assert [getattr(e, f) for f in FIELDS] == [getattr(a, f) for f in FIELDS]
                n += 1
    return n


@pytest.mark.parametrize("grouped", [False, True], ids=["commit-each", "group-commit"])
async def test_listings_match_the_catalog_through_random_changes(
    ops: Operations, pool: Pool, monkeypatch: pytest.MonkeyPatch, grouped: bool
) -> None:
    truth = sqlite3.connect(pool.config.catalog_path)
    if grouped:  # as the mount runs: changes share commits, a failing one rolls back to a savepoint
        ops.cat.enable_group_commit()
    rng = random.Random(7)
    b = await bucket(ops)
    dirs, files = [b], []
    compared = 0
    for step in range(160):
        kind = rng.choice(
            [
                "create",
                "create",
                "mkdir",
                "write",
                "rename",
                "exchange",
                "link",
                "unlink",
                "rmdir",
                "setattr",
                "symlink",
                "fail",
                "update",
            ]
        )
        d = rng.choice(dirs)
        name = f"n{rng.randrange(12)}".encode()
        try:
            if kind == "create":
                files.append(await make_file(ops, d, name, b"x" * rng.randrange(100)))
            elif kind == "mkdir":
                dirs.append(int((await ops.mkdir(d, name, 0o755, CTX)).st_ino))
            elif kind == "symlink":
                await ops.symlink(d, name, b"target", CTX)
            elif kind == "write" and files:
                fi = await ops.open(rng.choice(files), os.O_WRONLY, CTX)
                await ops.write(fi.fh, rng.randrange(50), b"data")
                if rng.random() < 0.5:  # listed while still open: the size held in memory
                    ops.cat.commit_group()
                    compared += await check_all(ops, truth, monkeypatch)
                await ops.release(fi.fh)
            elif kind in ("rename", "exchange"):
                flags = RENAME_EXCHANGE if kind == "exchange" else rng.choice([0, RENAME_NOREPLACE])
                await ops.rename(d, name, rng.choice(dirs), f"n{rng.randrange(12)}".encode(), flags, CTX)
            elif kind == "link" and files:
                await ops.link(rng.choice(files), d, name, CTX)
            elif kind == "unlink":
                await ops.unlink(d, name, CTX)
            elif kind == "rmdir":
                await ops.rmdir(d, name, CTX)
            elif kind == "setattr" and files:
                attr = SimpleNamespace(st_mode=0o600, st_size=rng.randrange(20), st_atime_ns=5, st_mtime_ns=step)
                f = fields(update_mode=True, update_size=rng.random() < 0.5, update_atime=True, update_mtime=True)
                await ops.setattr(rng.choice(files), attr, f, None, CTX)
            elif kind == "update" and files:  # a column set directly, as pool code does
                ops.cat.update(rng.choice(files), uid=step, ctime_ns=step)
                ops.cat.commit_group()
                compared += await check_all(ops, truth, monkeypatch)
            elif kind == "fail":  # a change that fails half-way is rolled back
                with pytest.raises(sqlite3.IntegrityError), ops.cat.op():
                    a = ops.cat.new_inode(stat.S_IFREG | 0o644, 0, 0, step)
                    ops.cat.add_entry(d, b"doomed", a.id)
                    ops.cat.add_entry(d, b"doomed", a.id)
        except pyfuse3.FUSEError:
            pass  # ENOENT, EEXIST, ENOTEMPTY ...: the point is what the listing says afterwards
        dirs = [i for i in dirs if ops.cat.get(i) is not None and ops.cat.get(i).nlink > 0]  # type: ignore[union-attr]
        files = [i for i in files if ops.cat.get(i) is not None]
        if step % 8 == 0:
            ops.cat.commit_group()
            await ops.forget(list(ops.lookups.items()))  # the kernel drops its references ...
            ops.purge()  # ... and the write-back service purges on its ticks
            ops.save_atimes()
            ops.cat.commit_group()
            compared += await check_all(ops, truth, monkeypatch)
    ops.cat.commit_group()
    compared += await check_all(ops, truth, monkeypatch)
    assert compared > 500


async def test_another_connections_commit_is_seen(ops: Operations, pool: Pool, monkeypatch: pytest.MonkeyPatch) -> None:
    b = await bucket(ops)
    f = await make_file(ops, b, b"f", b"1234")
    assert [n for n, _, _ in await listed(ops, b, monkeypatch)] == [b"f"]
    other = Catalog(pool.config.catalog_path)  # another process, e.g. a sync run on the pool
    with other.tx():
        other.remove_entry(b, b"f")
        other.add_entry(b, b"g", f)
        other.update(f, size=2, mtime_ns=77)
    got = await listed(ops, b, monkeypatch)
    assert [(n, e.st_size, e.st_mtime_ns) for n, e, _ in got] == [(b"g", 2, 77)]
    other.close()


def test_listing_bounds_empty_the_cache_and_stay_right(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(catalog_mod, "LISTED_NAMES_MAX", 10)
    monkeypatch.setattr(catalog_mod, "CACHED_ROWS_MAX", 7)
    cat = Catalog(tmp_path / "c.db")
    cat.keep_listings()
    d = cat.new_inode(stat.S_IFDIR | 0o755, 0, 0, 1, nlink=2)
    cat.add_entry(ROOT, b"d", d.id)
    for i in range(25):
        a = cat.new_inode(stat.S_IFREG | 0o644, 0, 0, i, size=i)
        cat.add_entry(d.id, f"f{i:02d}".encode(), a.id)
        got, _ = cat.list_dir_rows(d.id, 0, 1000)
        assert [(c, n, r[0], r[4]) for c, n, r in got] == [
            (c, n, a.id, a.size) for c, n, a in cat.list_dir(d.id, 0, 1000)
        ]
        assert cat._listed <= 10 and len(cat._rows) <= 7
    # continuing a listing from a cookie, a few at a time
    first, _ = cat.list_dir_rows(d.id, 0, 4)
    rest, _ = cat.list_dir_rows(d.id, first[-1][0], 1000)
    assert [n for _, n, _ in first + rest] == [f"f{i:02d}".encode() for i in range(25)]


async def test_exchange_and_rename_show_in_the_next_listing(ops: Operations, monkeypatch: pytest.MonkeyPatch) -> None:
    b = await bucket(ops)
    f = await make_file(ops, b, b"f", b"file")
    d = int((await ops.mkdir(b, b"d", 0o755, CTX)).st_ino)
    g = await make_file(ops, d, b"g")

    async def names(ino: int) -> list[tuple[bytes, int]]:
        return [(n, e.st_ino) for n, e, _ in await listed(ops, ino, monkeypatch)]

    assert await names(b) == [(b"f", f), (b"d", d)]
    await ops.rename(b, b"f", b, b"d", RENAME_EXCHANGE, CTX)
    assert await names(b) == [(b"f", d), (b"d", f)]
    await ops.rename(d, b"g", b, b"h", 0, CTX)
    assert await names(b) == [(b"f", d), (b"d", f), (b"h", g)] and await names(d) == []


async def test_a_change_by_another_connection_is_seen_after_a_change_of_ours(
    ops: Operations, pool: Pool, monkeypatch: pytest.MonkeyPatch
) -> None:
    b = await bucket(ops)
    f = await make_file(ops, b, b"f")
    assert [n for n, _, _ in await listed(ops, b, monkeypatch)] == [b"f"]
    other = Catalog(pool.config.catalog_path)
    other.update(f, size=9)  # the other connection changes first ...
    await make_file(ops, b, b"g")  # ... then this one, before it lists again
    got = await listed(ops, b, monkeypatch)
    assert [(n, e.st_size) for n, e, _ in got] == [(b"f", 9), (b"g", 0)]
    other.close()


async def test_commits_elsewhere_that_leave_the_namespace_alone_keep_the_listings(
    ops: Operations, pool: Pool, monkeypatch: pytest.MonkeyPatch
) -> None:
    b = await bucket(ops)
    f = await make_file(ops, b, b"f", b"data")
    await listed(ops, b, monkeypatch)
    other = Catalog(pool.config.catalog_path)  # the write-back service's chores connection
    with other.tx():
        other.add_trash("hot", "b/old", None)
        other.update_object(f, etag="x")
    other.close()
    monkeypatch.setattr(catalog_mod, "_SQL_LIST_DIR", "SELECT no_such_column")  # no catalog read now
    assert [n for n, _, _ in await listed(ops, b, monkeypatch)] == [b"f"]


def test_every_transaction_of_another_connection_is_seen(tmp_path: Any) -> None:
    a, b = Catalog(tmp_path / "c.db"), Catalog(tmp_path / "c.db")
    a.keep_listings()  # the mount's connection; b is, say, a sync run writing into the pool
    d = b.new_inode(stat.S_IFDIR | 0o755, 0, 0, 1, nlink=2)
    b.add_entry(ROOT, b"d", d.id)
    for i in range(3):
        with b.tx():
            f = b.new_inode(stat.S_IFREG | 0o644, 0, 0, i)
            b.add_entry(d.id, f"f{i}".encode(), f.id)
        assert [n for _, n, _ in a.list_dir_rows(d.id, 0, 100)[0]] == [f"f{j}".encode() for j in range(i + 1)]
    a.close()
    b.close()


def test_a_directory_made_and_filled_here_is_listed_from_memory(tmp_path: Any) -> None:
    cat = Catalog(tmp_path / "c.db")
    cat.keep_listings()
    d = cat.new_inode(stat.S_IFDIR | 0o755, 0, 0, 1, nlink=2)
    cat.add_entry(ROOT, b"d", d.id)
    f = cat.new_inode(stat.S_IFREG | 0o644, 0, 0, 2)
    cat.add_entry(d.id, b"f", f.id)
    f.size = 5
    cat.save(f)
    got, from_memory = cat.list_dir_rows(d.id, 0, 100)
    assert from_memory and [(n, r[0], r[4]) for _, n, r in got] == [(b"f", f.id, 5)]
    cat.update(f.id, size=7)  # a column set directly: the row kept follows it
    got, from_memory = cat.list_dir_rows(d.id, 0, 100)
    assert from_memory and got[0][2][4] == 7
