"""Operations called directly (no kernel): namespace semantics, data path, write-back."""

from __future__ import annotations

import errno
import os
import stat
from types import SimpleNamespace
from typing import Any

import pyfuse3
import pytest

from pool.catalog import ROOT
from pool.pool import Pool
from vfs.operations import RENAME_EXCHANGE, RENAME_NOREPLACE, Operations

CTX: Any = SimpleNamespace(uid=0, gid=0, pid=os.getpid(), umask=0o022)


def fields(**kw: bool) -> Any:
    names = ("update_atime", "update_mtime", "update_ctime", "update_mode", "update_uid", "update_gid", "update_size")
    return SimpleNamespace(**{n: kw.get(n, False) for n in names})


async def bucket(ops: Operations) -> int:
    return int((await ops.lookup(ROOT, b"b", CTX)).st_ino)


async def make_file(ops: Operations, parent: int, name: bytes, data: bytes = b"") -> int:
    fi, e = await ops.create(parent, name, 0o644, os.O_WRONLY, CTX)
    if data:
        assert await ops.write(fi.fh, 0, data) == len(data)
    await ops.release(fi.fh)
    return int(e.st_ino)


async def read_all(ops: Operations, ino: int) -> bytes:
    fi = await ops.open(ino, os.O_RDONLY, CTX)
    try:
        return await ops.read(fi.fh, 0, 1 << 24)
    finally:
        await ops.release(fi.fh)


async def expect_errno(code: int, coro: Any) -> None:
    with pytest.raises(pyfuse3.FUSEError) as ei:
        await coro
    assert ei.value.errno == code


async def test_create_write_read_and_attrs(ops: Operations) -> None:
    b = await bucket(ops)
    ino = await make_file(ops, b, b"f.txt", b"hello world")
    assert await read_all(ops, ino) == b"hello world"
    a = await ops.getattr(ino, CTX)
    assert a.st_size == 11 and stat.S_ISREG(a.st_mode) and a.st_nlink == 1
    obj = ops.cat.object(ino)
    assert obj is not None and obj.state == "dirty" and obj.tier == "hot"


async def test_errnos_of_the_namespace(ops: Operations) -> None:
    b = await bucket(ops)
    await make_file(ops, b, b"f")
    d = (await ops.mkdir(b, b"d", 0o755, CTX)).st_ino
    await make_file(ops, d, b"inner")
    await expect_errno(errno.EEXIST, ops.mkdir(b, b"f", 0o755, CTX))
    await expect_errno(errno.ENOTEMPTY, ops.rmdir(b, b"d", CTX))
    await expect_errno(errno.ENOTDIR, ops.rmdir(b, b"f", CTX))
    await expect_errno(errno.EISDIR, ops.unlink(b, b"d", CTX))
    await expect_errno(errno.ENOENT, ops.lookup(b, b"missing", CTX))
    await expect_errno(errno.ENAMETOOLONG, ops.lookup(b, b"x" * 256, CTX))
    await expect_errno(errno.ENAMETOOLONG, ops.mkdir(b, b"x" * 256, 0o755, CTX))
    assert (await ops.mkdir(b, b"y" * 255, 0o755, CTX)).st_ino
    await expect_errno(errno.EPERM, ops.create(ROOT, b"file-at-top", 0o644, os.O_WRONLY, CTX))
    await expect_errno(errno.EINVAL, ops.rename(b, b"d", d, b"self", 0, CTX))
    await expect_errno(errno.EISDIR, ops.rename(b, b"f", b, b"d", 0, CTX))
    e = await ops.mkdir(b, b"e", 0o755, CTX)
    await expect_errno(errno.ENOTDIR, ops.rename(b, b"e", b, b"f", 0, CTX))
    await expect_errno(errno.ENOTEMPTY, ops.rename(b, b"e", b, b"d", 0, CTX))
    await expect_errno(errno.EEXIST, ops.rename(b, b"f", b, b"e", RENAME_NOREPLACE, CTX))
    await expect_errno(errno.EPERM, ops.link(e.st_ino, b, b"dirlink", CTX))


async def test_directory_link_counts(ops: Operations) -> None:
    b = await bucket(ops)
    assert (await ops.getattr(b, CTX)).st_nlink == 2
    d1 = (await ops.mkdir(b, b"d1", 0o755, CTX)).st_ino
    d2 = (await ops.mkdir(b, b"d2", 0o755, CTX)).st_ino
    assert (await ops.getattr(b, CTX)).st_nlink == 4
    await ops.mkdir(d1, b"sub", 0o755, CTX)
    await ops.rename(d1, b"sub", d2, b"sub", 0, CTX)
    assert (await ops.getattr(d1, CTX)).st_nlink == 2
    assert (await ops.getattr(d2, CTX)).st_nlink == 3
    await ops.rmdir(d2, b"sub", CTX)
    assert (await ops.getattr(d2, CTX)).st_nlink == 2


async def test_hard_links_share_attributes(ops: Operations) -> None:
    b = await bucket(ops)
    ino = await make_file(ops, b, b"a", b"data")
    e = await ops.link(ino, b, b"b", CTX)
    assert e.st_ino == ino and e.st_nlink == 2
    await ops.setattr(ino, SimpleNamespace(st_mode=0o600), fields(update_mode=True), None, CTX)
    assert stat.S_IMODE((await ops.lookup(b, b"b", CTX)).st_mode) == 0o600
    await ops.unlink(b, b"a", CTX)
    assert (await ops.getattr(ino, CTX)).st_nlink == 1
    assert await read_all(ops, ino) == b"data"


async def test_unlinked_open_file_lives_until_release(ops: Operations, pool: Pool) -> None:
    b = await bucket(ops)
    ino = await make_file(ops, b, b"tmp", b"still here")
    await ops.lookup(b, b"tmp", CTX)
    fi = await ops.open(ino, os.O_RDONLY, CTX)
    await ops.unlink(b, b"tmp", CTX)
    assert await ops.read(fi.fh, 0, 100) == b"still here"
    await ops.release(fi.fh)
    assert pool.catalog.get(ino) is not None  # the kernel still holds a reference
    await ops.forget([(ino, ops.lookups[ino])])
    ops.purge()
    assert pool.catalog.get(ino) is None
    assert not pool.cache_path(ino).exists()


async def test_purge_spares_a_file_that_still_has_a_name(ops: Operations, pool: Pool) -> None:
    # The memory-only mark of an unlinked file would outlive an unlink whose transaction
    # rolled back: the purge must go by the catalog's link count, keeping the file and its bytes.
    b = await bucket(ops)
    ino = await make_file(ops, b, b"kept", b"precious")
    await ops.lookup(b, b"kept", CTX)
    ops.unlinked.add(ino)
    await ops.forget([(ino, ops.lookups[ino])])
    assert ino in ops.purge_queue
    assert ops.purge() == 0
    assert ino not in ops.unlinked and pool.catalog.get(ino) is not None
    assert pool.cache_path(ino).exists()
    assert await read_all(ops, ino) == b"precious"


async def test_rename_exchange_swaps(ops: Operations) -> None:
    b = await bucket(ops)
    f = await make_file(ops, b, b"f", b"file")
    d = (await ops.mkdir(b, b"d", 0o755, CTX)).st_ino
    await ops.rename(b, b"f", b, b"d", RENAME_EXCHANGE, CTX)
    assert (await ops.lookup(b, b"d", CTX)).st_ino == f
    assert (await ops.lookup(b, b"f", CTX)).st_ino == d


async def test_truncate_and_setattr_times(ops: Operations) -> None:
    b = await bucket(ops)
    ino = await make_file(ops, b, b"t", b"0123456789")
    before = await ops.getattr(ino, CTX)
    a = await ops.setattr(ino, SimpleNamespace(st_size=4), fields(update_size=True), None, CTX)
    assert a.st_size == 4 and a.st_mtime_ns > before.st_mtime_ns
    assert await read_all(ops, ino) == b"0123"
    a = await ops.setattr(
        ino,
        SimpleNamespace(st_atime_ns=1_000, st_mtime_ns=2_000),
        fields(update_atime=True, update_mtime=True),
        None,
        CTX,
    )
    assert (a.st_atime_ns, a.st_mtime_ns) == (1_000, 2_000) and a.st_ctime_ns > before.st_ctime_ns


async def test_readdir_offsets_are_stable(ops: Operations, monkeypatch: pytest.MonkeyPatch) -> None:
    b = await bucket(ops)
    names = [f"n{i:03d}".encode() for i in range(50)]
    for n in names:
        await make_file(ops, b, n)
    seen: list[bytes] = []
    state = {"room": 7, "last": 0}

    def reply(token: object, name: bytes, attr: object, next_id: int) -> bool:
        if state["room"] == 0:
            return False
        state["room"] -= 1
        seen.append(name)
        state["last"] = next_id
        return True

    monkeypatch.setattr(pyfuse3, "readdir_reply", reply)
    fh = await ops.opendir(b, CTX)
    await ops.readdir(fh, 0, None)  # type: ignore[arg-type]
    # entries change between two readdir calls: removed ones must not come back, none repeats
    await ops.unlink(b, names[0], CTX)
    await ops.unlink(b, names[30], CTX)
    await make_file(ops, b, b"late")
    while True:
        state["room"] = 7
        before = len(seen)
        await ops.readdir(fh, state["last"], None)  # type: ignore[arg-type]
        if len(seen) == before:
            break
    assert len(seen) == len(set(seen))
    assert names[30] not in seen
    assert set(names[1:30] + names[31:]) <= set(seen)


async def test_readdir_handles_dots_and_the_end_of_a_listing(ops: Operations, monkeypatch: pytest.MonkeyPatch) -> None:
    b = await bucket(ops)
    await ops.mkdir(b, b"d", 0o755, CTX)
    sub = int((await ops.lookup(b, b"d", CTX)).st_ino)
    await make_file(ops, sub, b"f")
    got: list[tuple[bytes, int, int]] = []

    def reply(token: object, name: bytes, attr: Any, next_id: int) -> bool:
        got.append((name, attr.st_ino, next_id))
        return True

    monkeypatch.setattr(pyfuse3, "readdir_reply", reply)
    fh = await ops.opendir(sub, CTX)
    await ops.readdir(fh, 0, None)  # type: ignore[arg-type]
    assert [(n, i) for n, i, _ in got] == [(b".", sub), (b"..", b), (b"f", got[2][1])]
    # the kernel asks again at the last cookie to see the end: answered without the catalog
    monkeypatch.setattr(ops.cat, "list_dir_rows", lambda *a: pytest.fail("catalog read at the end of a listing"))
    await ops.readdir(fh, got[-1][2], None)  # type: ignore[arg-type]
    assert len(got) == 3
    await ops.releasedir(fh)
    await expect_errno(errno.EBADF, ops.readdir(fh, 0, None))  # type: ignore[arg-type]


async def test_virtual_xattrs_and_user_xattrs(ops: Operations) -> None:
    b = await bucket(ops)
    ino = await make_file(ops, b, b"x", b"1")
    assert await ops.getxattr(ino, b"user.darkstorage.tier", CTX) == b"hot"
    assert await ops.getxattr(ino, b"user.darkstorage.restore", CTX) == b"not-needed"
    await expect_errno(errno.EPERM, ops.setxattr(ino, b"user.darkstorage.tier", b"cold", CTX))
    await ops.setxattr(ino, b"user.note", b"v", CTX)
    assert await ops.listxattr(ino, CTX) == [b"user.note"]
    await ops.removexattr(ino, b"user.note", CTX)
    await expect_errno(pyfuse3.ENOATTR, ops.getxattr(ino, b"user.note", CTX))
    await expect_errno(pyfuse3.ENOATTR, ops.removexattr(ino, b"user.note", CTX))


async def test_setgid_directory_inheritance(ops: Operations) -> None:
    b = await bucket(ops)
    d = await ops.mkdir(b, b"shared", 0o2775, CTX)
    await ops.setattr(d.st_ino, SimpleNamespace(st_gid=1234), fields(update_gid=True), None, CTX)
    sub = await ops.mkdir(d.st_ino, b"sub", 0o755, CTX)
    assert sub.st_gid == 1234 and sub.st_mode & stat.S_ISGID
    fi, f = await ops.create(d.st_ino, b"f", 0o644, os.O_WRONLY, CTX)
    await ops.release(fi.fh)
    assert f.st_gid == 1234 and not f.st_mode & stat.S_ISGID


async def test_access_checks(ops: Operations) -> None:
    b = await bucket(ops)
    ino = await make_file(ops, b, b"secret", b"x")
    await ops.setattr(ino, SimpleNamespace(st_mode=0o600), fields(update_mode=True), None, CTX)
    other: Any = SimpleNamespace(uid=65534, gid=65534, pid=os.getpid(), umask=0o022)
    assert await ops.access(ino, os.R_OK, CTX)
    await expect_errno(errno.EACCES, ops.access(ino, os.R_OK, other))
    await expect_errno(errno.EACCES, ops.access(ino, os.X_OK, CTX))


async def test_read_only_refuses_changes(pool: Pool) -> None:
    ro = Operations(pool, cache_max_bytes=1 << 20, read_only=True)
    b = await bucket(ro)
    await expect_errno(errno.EROFS, ro.mkdir(b, b"d", 0o755, CTX))
    await expect_errno(errno.EROFS, ro.create(b, b"f", 0o644, os.O_WRONLY, CTX))


async def test_write_back_backs_off_while_metadata_requests_stream(ops: Operations) -> None:
    from vfs.writeback import MAX_DEFER_S, WriteBack

    b = await bucket(ops)
    wb = WriteBack(ops, delay_s=5.0)
    assert not wb._busy()
    for i in range(300):  # a burst of creates: metadata requests
        await make_file(ops, b, f"f{i}".encode())
    assert wb._busy()
    fi = await ops.open(await make_file(ops, b, b"stream"), os.O_WRONLY, CTX)
    wb._busy()  # start a fresh measuring window
    for i in range(300):  # streaming writes do not count as busy
        await ops.write(fi.fh, i, b"x")
    assert not wb._busy()
    await ops.release(fi.fh)
    assert MAX_DEFER_S <= 10.0  # deferral is bounded


async def test_write_back_delay_counts_from_the_last_writers_close(ops: Operations) -> None:
    """Like rclone's ``--vfs-write-back``: the delay starts when the last writer closes the
    file, so a file written for longer than the delay is not due the moment it is closed, and
    a file still open for writing is never due."""
    from vfs.writeback import WriteBack

    b = await bucket(ops)
    wb = WriteBack(ops, delay_s=5.0)
    ino = await make_file(ops, b, b"f")
    fi = await ops.open(ino, os.O_WRONLY, CTX)
    await ops.write(fi.fh, 0, b"x" * 100)
    # ten seconds of writing later: the first write is older than the delay ...
    ops.cat.db.execute("UPDATE objects SET dirty_since_ns = dirty_since_ns - 10 * 1000000000 WHERE inode = ?", (ino,))
    assert ino not in [i for i, _ in wb._due(False)]  # ... but a writer holds it open
    await ops.release(fi.fh)
    assert ino not in [i for i, _ in wb._due(False)]  # closed just now: the delay starts again
    assert ino in [i for i, _ in wb._due(True)]  # a forced flush (umount) takes it at once
    ops.cat.db.execute("UPDATE objects SET dirty_since_ns = dirty_since_ns - 6 * 1000000000 WHERE inode = ?", (ino,))
    assert ino in [i for i, _ in wb._due(False)]
    # a read-only open and close does not restart it
    await read_all(ops, ino)
    assert ino in [i for i, _ in wb._due(False)]


async def test_sequential_reads_of_a_cached_file_prefetch_ahead_random_reads_do_not(
    ops: Operations, monkeypatch: pytest.MonkeyPatch
) -> None:
    import vfs.data

    advice: list[tuple[int, int]] = []
    real = os.posix_fadvise

    def spy(fd: int, off: int, length: int, how: int) -> None:
        assert how == os.POSIX_FADV_WILLNEED
        advice.append((off, length))
        real(fd, off, length, how)

    monkeypatch.setattr(vfs.data.os, "posix_fadvise", spy)
    mib = 1 << 20
    data = os.urandom(40 * mib)
    ino = await make_file(ops, await bucket(ops), b"big", data)
    fi = await ops.open(ino, os.O_RDONLY, CTX)
    for k in (7, 31, 2, 19, 11, 26):  # random reads: no advice
        assert await ops.read(fi.fh, k * mib + 123, 4096) == data[k * mib + 123 : k * mib + 123 + 4096]
    assert advice == []
    got = b"".join([await ops.read(fi.fh, k * mib, mib) for k in range(40)])
    assert got == data
    ahead = vfs.data.PREFETCH_BYTES
    # from the second read in a row on: the next PREFETCH_BYTES, asked again once half is read
    assert advice[0] == (3 * mib, ahead) and len(advice) >= 2
    assert all(
        off >= prev_off + prev_len // 2 for (prev_off, prev_len), (off, _) in zip(advice, advice[1:], strict=False)
    )
    assert advice[-1][0] + advice[-1][1] >= 40 * mib
    await ops.release(fi.fh)


async def test_upload_of_a_file_unlinked_meanwhile_stops(ops: Operations, pool: Pool) -> None:
    """A file unlinked while its upload is queued or in flight is not uploaded: the transfer
    stops (between 1 MiB chunks), leaves no temporary object, and the inode is purged."""
    from pool.backends import UploadCancelled
    from vfs.writeback import WriteBack

    b = await bucket(ops)
    data = os.urandom(3 << 20)
    ino = await make_file(ops, b, b"big", data)
    wb = WriteBack(ops, delay_s=0.0)
    hot = pool.backend("hot")
    assert hot.local_root is not None

    def objects() -> list[str]:
        return [str(p.relative_to(hot.local_root)) for p in hot.local_root.rglob("*") if p.is_file()]

    # in flight: stopped after its first chunk, the temporary object removed
    with pool.catalog.tx():
        job = pool.upload_begin(ino)
    assert job is not None
    asked = []

    def stop() -> bool:
        asked.append(1)
        return len(asked) > 1

    with pytest.raises(UploadCancelled):
        pool.upload_transfer(job, durable=False, stop=stop)
    assert len(asked) == 2 and objects() == []
    pool.upload_commit(job, None, False)
    # queued, then unlinked before the worker reached it: the batch result says cancelled
    with pool.catalog.tx():
        job = pool.upload_begin(ino)
    assert job is not None
    await ops.lookup(b, b"big", CTX)
    await ops.unlink(b, b"big", CTX)
    assert ino in ops.unlinked
    (res,) = wb._transfer([job])
    assert isinstance(res, UploadCancelled) and objects() == []
    with pool.lock.held(), pool.catalog.tx():
        wb._commit([job], [res], {ino: ops.data.generation(ino)})
    assert wb.cancelled == 1 and wb.failed == 0 and ino not in wb.retry_at
    await ops.forget([(ino, ops.lookups[ino])])
    ops.purge()
    assert pool.catalog.get(ino) is None and ino not in ops.unlinked and objects() == []
    # a file with another name left is not marked: its uploads go on
    keep = await make_file(ops, b, b"keep", b"kept")
    await ops.link(keep, b, b"keep2", CTX)
    await ops.lookup(b, b"keep", CTX)
    await ops.unlink(b, b"keep", CTX)
    assert keep not in ops.unlinked
