"""Pool operations without a mount: write-back upload, keys, trash, tier moves, recovery."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from pool.errors import BusyError, NotEmptyError, NotFoundError, UsageError
from pool.pool import Pool, StoredObject, UploadJob
from vfs.operations import Operations

from .test_operations import CTX, bucket, make_file, read_all


@pytest.fixture
def worker(pool: Pool) -> Iterator[Pool]:
    """A second pool on the same home: the transfer thread's own catalog connection."""
    w = Pool(pool.config)
    yield w
    w.close()


def placed_upload(pool: Pool, worker: Pool, ino: int) -> tuple[UploadJob, StoredObject]:
    """Begin an upload of *ino*, transfer it and place it at its key, as the transfer thread does."""
    job = pool.upload_begin(ino)
    assert job is not None
    stored = worker.upload_transfer(job)
    worker.upload_place([(job, stored)])
    return job, stored


def hot(pool: Pool, key: str) -> Path:
    root = pool.backends["hot"].local_root
    assert root is not None
    return root / key


async def test_upload_marks_clean_and_writes_plain_key(ops: Operations, pool: Pool) -> None:
    b = await bucket(ops)
    ino = await make_file(ops, b, b"a.txt", b"payload")
    assert pool.upload_now(ino)
    obj = pool.catalog.object(ino)
    assert obj is not None and obj.state == "clean" and obj.key == "b/a.txt" and obj.size == 7
    assert hot(pool, "b/a.txt").read_bytes() == b"payload"
    assert not [p for p in hot(pool, "b").iterdir() if ".darkstorage-tmp-" in p.name]


async def test_write_during_upload_keeps_file_dirty(ops: Operations, pool: Pool) -> None:
    b = await bucket(ops)
    ino = await make_file(ops, b, b"a", b"v1")
    gen = ops.data.generation(ino)
    job = pool.upload_begin(ino)
    assert job is not None
    stored = pool.upload_transfer(job)
    fi = await ops.open(ino, os.O_WRONLY, CTX)
    await ops.write(fi.fh, 0, b"v2")
    await ops.release(fi.fh)
    assert not pool.upload_commit(job, stored, ops.data.generation(ino) == gen)
    obj = pool.catalog.object(ino)
    assert obj is not None and obj.state == "dirty"
    assert pool.upload_now(ino)
    assert hot(pool, "b/a").read_bytes() == b"v2"


async def test_rename_then_reuse_of_the_old_name_loses_nothing(ops: Operations, pool: Pool) -> None:
    b = await bucket(ops)
    first = await make_file(ops, b, b"x", b"first")
    assert pool.upload_now(first)
    await ops.rename(b, b"x", b, b"y", 0, CTX)
    second = await make_file(ops, b, b"x", b"second")
    assert pool.upload_now(second)  # takes key b/x: the renamed file's object moves aside
    pool.process_rekeys()
    pool.process_trash()
    assert hot(pool, "b/x").read_bytes() == b"second"
    assert hot(pool, "b/y").read_bytes() == b"first"
    assert await read_all(ops, first) == b"first"


async def test_exchange_of_two_clean_files_rekeys_both(ops: Operations, pool: Pool) -> None:
    b = await bucket(ops)
    p = await make_file(ops, b, b"p", b"P")
    q = await make_file(ops, b, b"q", b"Q")
    assert pool.upload_now(p) and pool.upload_now(q)
    await ops.rename(b, b"p", b, b"q", 2, CTX)
    for _ in range(3):
        pool.process_rekeys()
    pool.process_trash()
    assert hot(pool, "b/p").read_bytes() == b"Q"
    assert hot(pool, "b/q").read_bytes() == b"P"


async def test_unlink_trashes_the_object(ops: Operations, pool: Pool) -> None:
    b = await bucket(ops)
    ino = await make_file(ops, b, b"gone", b"bye")
    assert pool.upload_now(ino)
    await ops.unlink(b, b"gone", CTX)
    assert pool.catalog.get(ino) is not None  # the kernel still references it
    await ops.forget([(ino, ops.lookups[ino])])
    ops.purge()
    assert pool.catalog.get(ino) is None
    pool.process_trash()
    assert not hot(pool, "b/gone").exists()


async def test_tier_move_copies_verifies_and_deletes_the_old_copy(ops: Operations, pool: Pool) -> None:
    b = await bucket(ops)
    ino = await make_file(ops, b, b"m", b"move me")
    with pytest.raises(BusyError):
        pool.move_to_tier(ino, "warm")  # still dirty
    assert pool.upload_now(ino)
    assert pool.move_to_tier(ino, "warm")
    warm = pool.backends["warm"].local_root
    assert warm is not None and (warm / "b/m").read_bytes() == b"move me"
    assert not hot(pool, "b/m").exists()
    obj = pool.catalog.object(ino)
    assert obj is not None and obj.tier == "warm"
    assert await read_all(ops, ino) == b"move me"


async def test_recovery_after_a_crash(ops: Operations, pool: Pool) -> None:
    b = await bucket(ops)
    ino = await make_file(ops, b, b"d", b"0123456789")
    # the agent died mid-upload, after more bytes reached the cache than the catalog knew of
    pool.catalog.update_object(ino, state="uploading")
    with open(pool.cache_path(ino), "ab") as f:
        f.write(b"abc")
    # and in the middle of a tier move whose temporary copy was already written
    other = await make_file(ops, b, b"o", b"other")
    assert pool.upload_now(other)
    tmp = pool.backends["cold"].tmp_key("b/o")
    cold = pool.backends["cold"].local_root
    assert cold is not None
    (cold / "b").mkdir(parents=True, exist_ok=True)
    (cold / tmp).write_bytes(b"other")
    pool.catalog.db.execute("INSERT INTO tier_moves VALUES (?, 'hot', 'cold', ?)", (other, tmp))
    stats = pool.recover()
    assert stats["uploads_resumed"] == 1 and stats["moves_rolled_back"] == 1
    a = pool.catalog.get(ino)
    assert a is not None and a.size == 13
    assert not (cold / tmp).exists()
    assert pool.upload_now(ino)
    assert hot(pool, "b/d").read_bytes() == b"0123456789abc"


def test_buckets(pool: Pool) -> None:
    with pytest.raises(UsageError):
        pool.create_bucket("../evil")
    pool.create_bucket("c")
    assert [b.name for b in pool.bucket_infos()] == ["b", "c"]
    with pytest.raises(NotFoundError):
        pool.remove_bucket("nope")
    pool.remove_bucket("c")
    assert [b.name for b in pool.bucket_infos()] == ["b"]


async def test_remove_non_empty_bucket_needs_force(ops: Operations, pool: Pool) -> None:
    b = await bucket(ops)
    ino = await make_file(ops, b, b"f", b"x")
    assert pool.upload_now(ino)
    with pytest.raises(NotEmptyError):
        pool.remove_bucket("b")
    assert pool.remove_bucket("b", force=True) == 1
    pool.process_trash()
    assert not hot(pool, "b/f").exists()


def test_placement_longest_prefix_wins(pool: Pool) -> None:
    from pool.catalog import ROOT

    pool.set_default_tier("b", "warm")
    pool.set_default_tier("b/raw/", "cold")
    b = pool.catalog.lookup(ROOT, b"b")
    assert b is not None
    assert pool.placement_tier(b, b"x") == "warm"
    assert pool.placement_tier(b, b"raw") == "cold"


async def test_placed_upload_of_a_file_renamed_meanwhile_is_rekeyed(ops: Operations, pool: Pool, worker: Pool) -> None:
    b = await bucket(ops)
    ino = await make_file(ops, b, b"old", b"bytes")
    job, stored = placed_upload(pool, worker, ino)
    assert job.placed and hot(pool, "b/old").read_bytes() == b"bytes"
    await ops.rename(b, b"old", b, b"new", 0, CTX)
    assert pool.upload_commit(job, stored, True)
    pool.process_rekeys()
    assert hot(pool, "b/new").read_bytes() == b"bytes" and not hot(pool, "b/old").exists()
    worker.close()


async def test_placed_upload_of_a_file_deleted_meanwhile_leaves_nothing(
    ops: Operations, pool: Pool, worker: Pool
) -> None:
    b = await bucket(ops)
    ino = await make_file(ops, b, b"gone", b"bytes")
    job, stored = placed_upload(pool, worker, ino)
    await ops.unlink(b, b"gone", CTX)
    await ops.forget([(ino, ops.lookups[ino])])
    ops.purge()
    assert not pool.upload_commit(job, stored, True)
    pool.process_trash()
    assert not hot(pool, "b/gone").exists()
    worker.close()


async def test_placed_upload_overtaken_by_a_write_stays_dirty(ops: Operations, pool: Pool, worker: Pool) -> None:
    b = await bucket(ops)
    ino = await make_file(ops, b, b"f", b"v1")
    gen = ops.data.generation(ino)
    job, stored = placed_upload(pool, worker, ino)
    fi = await ops.open(ino, os.O_WRONLY, CTX)
    await ops.write(fi.fh, 0, b"v2")
    await ops.release(fi.fh)
    assert not pool.upload_commit(job, stored, ops.data.generation(ino) == gen)
    obj = pool.catalog.object(ino)
    assert obj is not None and obj.state == "dirty"
    assert pool.upload_now(ino) and hot(pool, "b/f").read_bytes() == b"v2"


def test_config_save_keeps_sections_it_does_not_interpret(tmp_path: Path) -> None:
    from pool.config import PoolConfig

    pool, _ = Pool.init(tmp_path / "h")
    pool.close()
    cfg_path = tmp_path / "h" / "config.toml"
    cfg_path.write_text(cfg_path.read_text() + '\n[notify]\nwebhook_url = "http://127.0.0.1:9/hook"\n')
    cfg = PoolConfig.load(tmp_path / "h")
    cfg.write_back_s = 7.0
    cfg.save()
    text = cfg_path.read_text()
    assert 'webhook_url = "http://127.0.0.1:9/hook"' in text and "write_back_s = 7.0" in text
