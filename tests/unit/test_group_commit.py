"""Group commit of the mount's catalog connection: what is durable when, and what a crash
with an open group leaves behind."""

from __future__ import annotations

import errno
import os
import sqlite3
from pathlib import Path

import pyfuse3
import pytest

from pool.catalog import Catalog
from pool.pool import Pool
from vfs.operations import Operations

from .test_operations import CTX, bucket, make_file, read_all


def other_view(pool: Pool) -> sqlite3.Connection:
    """A second connection, as another process (or a crash) would see the catalog."""
    return sqlite3.connect(pool.config.catalog_path)


def names_seen(db: sqlite3.Connection, parent: int) -> set[bytes]:
    return {r[0] for r in db.execute("SELECT name FROM dentries WHERE parent = ?", (parent,))}


@pytest.fixture
def grouped(pool: Pool) -> Operations:
    ops = Operations(pool, cache_max_bytes=1 << 30)
    opened: list[int] = []
    ops.cat.enable_group_commit(lambda: opened.append(1))
    return ops


def test_op_changes_wait_for_the_group_commit(tmp_path: Path) -> None:
    cat = Catalog(tmp_path / "c.db")
    opened: list[int] = []
    cat.enable_group_commit(lambda: opened.append(1))
    with cat.op():
        a = cat.new_inode(0o100644, 0, 0, 1)
    with cat.op():
        b = cat.new_inode(0o100644, 0, 0, 2)
    assert opened == [1] and cat.group_open
    other = sqlite3.connect(tmp_path / "c.db")
    assert other.execute("SELECT count(*) FROM inodes WHERE id IN (?, ?)", (a.id, b.id)).fetchone()[0] == 0
    cat.commit_group()
    assert not cat.group_open
    assert other.execute("SELECT count(*) FROM inodes WHERE id IN (?, ?)", (a.id, b.id)).fetchone()[0] == 2


def test_a_failing_op_undoes_only_itself(tmp_path: Path) -> None:
    cat = Catalog(tmp_path / "c.db")
    cat.enable_group_commit()
    with cat.op():
        a = cat.new_inode(0o100644, 0, 0, 1)
        cat.add_entry(1, b"x", a.id)
    with pytest.raises(sqlite3.IntegrityError), cat.op():
        b = cat.new_inode(0o100644, 0, 0, 2)
        cat.add_entry(1, b"x", b.id)  # UNIQUE (parent, name)
    assert cat.group_open
    cat.commit_group()
    assert cat.lookup(1, b"x") == a.id
    assert cat.get(b.id) is None


def test_tx_is_a_durability_point_for_the_open_group(tmp_path: Path) -> None:
    cat = Catalog(tmp_path / "c.db")
    cat.enable_group_commit()
    with cat.op():
        a = cat.new_inode(0o100644, 0, 0, 1)
    with pytest.raises(RuntimeError), cat.tx():
        cat.new_inode(0o100644, 0, 0, 3)
        raise RuntimeError("undo this part only")
    assert cat.group_open  # the failed tx left the group as it was
    with cat.tx():
        b = cat.new_inode(0o100644, 0, 0, 2)
    assert not cat.group_open
    other = sqlite3.connect(tmp_path / "c.db")
    ids = {r[0] for r in other.execute("SELECT id FROM inodes")}
    assert {a.id, b.id} <= ids and len(ids) == 3  # root, a, b


async def test_metadata_waits_but_written_bytes_commit_first(grouped: Operations, pool: Pool) -> None:
    ops = grouped
    b = await bucket(ops)
    view = other_view(pool)
    await make_file(ops, b, b"empty")
    await ops.mkdir(b, b"dir", 0o755, CTX)
    assert not names_seen(view, b) & {b"empty", b"dir"}  # waiting in the open group
    # a write is acknowledged only once the file it lands in is committed
    fi, e = await ops.create(b, b"data", 0o644, os.O_WRONLY, CTX)
    await ops.write(fi.fh, 0, b"acknowledged")
    assert {b"empty", b"dir", b"data"} <= names_seen(view, b)
    assert not ops.cat.group_open
    await ops.release(fi.fh)
    # unlink waits; fsyncdir makes it durable
    await ops.unlink(b, b"empty", CTX)
    assert b"empty" in names_seen(view, b)
    await ops.fsyncdir(b, False)
    assert b"empty" not in names_seen(view, b)


async def test_first_write_to_a_clean_file_commits_its_dirty_state(grouped: Operations, pool: Pool) -> None:
    ops = grouped
    b = await bucket(ops)
    ino = await make_file(ops, b, b"f", b"v1")
    ops.cat.commit_group()
    assert pool.upload_now(ino)
    await ops.rename(b, b"f", b, b"g", 0, CTX)  # leaves a group open
    assert ops.cat.group_open
    fi = await ops.open(ino, os.O_WRONLY, CTX)
    await ops.write(fi.fh, 0, b"v2")
    state = other_view(pool).execute("SELECT state FROM objects WHERE inode = ?", (ino,)).fetchone()[0]
    assert state == "dirty"
    await ops.release(fi.fh)
    assert await read_all(ops, ino) == b"v2"


async def test_a_crash_with_an_open_group_keeps_every_acknowledged_byte(grouped: Operations, pool: Pool) -> None:
    ops = grouped
    b = await bucket(ops)
    kept = await make_file(ops, b, b"kept", b"bytes the writer was told are written")
    # then metadata-only changes, and a file whose bytes reached the cache but were never
    # acknowledged (the process died between its pwrite and the commit)
    await make_file(ops, b, b"lost-empty")
    fi, e = await ops.create(b, b"unacked", 0o644, os.O_WRONLY, CTX)
    stray = int(e.st_ino)
    with open(pool.cache_path(stray), "wb") as f:
        f.write(b"never acknowledged")
    assert ops.cat.group_open
    # crash: the open transaction dies with the process
    ops.cat.db.close()
    pool.catalog = Catalog(pool.config.catalog_path)  # (for the fixture's teardown only)
    pool2 = Pool(pool.config)
    try:
        stats = pool2.recover()
        assert stats["stray_cache_files"] == 1
        assert not pool2.cache_path(stray).exists()
        cat = pool2.catalog
        assert cat.lookup(b, b"lost-empty") is None and cat.lookup(b, b"unacked") is None
        assert cat.lookup(b, b"kept") == kept
        ops2 = Operations(pool2, cache_max_bytes=1 << 30)
        assert await read_all(ops2, kept) == b"bytes the writer was told are written"
        # the lost inode numbers may come back; their stale cache file is gone
        fi2, e2 = await ops2.create(b, b"new", 0o644, os.O_WRONLY, CTX)
        await ops2.release(fi2.fh)
        assert await read_all(ops2, int(e2.st_ino)) == b""
    finally:
        pool2.close()


async def test_errors_inside_a_group_map_to_errnos(grouped: Operations) -> None:
    ops = grouped
    b = await bucket(ops)
    await make_file(ops, b, b"x")
    with pytest.raises(pyfuse3.FUSEError) as ei:
        await ops.create(b, b"x", 0o644, os.O_WRONLY | os.O_EXCL, CTX)
    assert ei.value.errno == errno.EEXIST
    assert ops.cat.group_open and ops.cat.lookup(b, b"x") is not None
