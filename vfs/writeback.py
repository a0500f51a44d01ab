"""The write-back service: uploads dirty files after the write-back delay, re-keys renamed
objects, records changed attributes with objects, and empties the trash.

An upload runs in three steps (see :meth:`pool.pool.Pool.upload_begin`): the key is chosen and
the file marked ``uploading`` on the event loop's thread; the cache file is copied to a
temporary key and read back in a worker thread; then, back on the event loop's thread and with
no await in between, the file is marked clean only if its write generation did not move
meanwhile. Writes are handled on the event loop's thread too, so no write can slip between
that check and the commit.

Small files upload in batches: one worker-thread trip and one ``syncfs(2)`` per batch instead
of one ``fsync(2)`` per object. No exception from one upload stops the service: it is logged,
the file stays dirty and is retried with exponential backoff.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from typing import TYPE_CHECKING

import anyio
import anyio.abc

from pool.backends import StoredObject, UploadCancelled
from pool.catalog import now_ns
from pool.pool import Pool, UploadJob

if TYPE_CHECKING:
    from .operations import Operations

log = logging.getLogger(__name__)

BUSY_REQUESTS_PER_S = 200.0  #: above this metadata request rate, background work waits ...
MAX_DEFER_S = 10.0  #: ... but never more than this beyond the write-back delay
RETRY_MIN_S = 1.0
RETRY_MAX_S = 60.0
BATCH_FILES = 128
BATCH_BYTES = 64 << 20


class WriteBack:
    """Background uploads for one mount.

    Args:
        ops: the mounted filesystem.
        delay_s: seconds a file stays dirty before its upload starts.
        transfers: upload batches running at once.
    """

    def __init__(self, ops: Operations, delay_s: float, transfers: int = 4) -> None:
        self.ops = ops
        self.pool = ops.pool
        self.delay_s = delay_s
        self.delay_s_now = delay_s  #: the delay in force: longer while the filesystem is busy
        self.limiter = anyio.CapacityLimiter(transfers)
        self.inflight: set[int] = set()
        self.retry_at: dict[int, tuple[float, float]] = {}  # ino -> (monotonic time, backoff)
        self.uploaded = 0
        self.failed = 0
        self.cancelled = 0  #: uploads stopped because the file was unlinked
        self._wake = anyio.Event()
        self._seen_requests = ops.requests
        self._seen_at = time.monotonic()
        self._local = threading.local()
        self._thread_pools: list[Pool] = []
        self._pools_lock = threading.Lock()

    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        async with anyio.create_task_group() as nursery:
            task_status.started()
            while True:
                try:
                    await self.tick(nursery)
                except Exception:
                    log.exception("write-back tick failed; retrying")
                with anyio.move_on_after(0.5):
                    await self._wake.wait()
                self._wake = anyio.Event()

    def _due(self, force: bool) -> list[tuple[int, int]]:
        """Due files not yet in flight, ``(inode, size)``; only as many as the running
        transfers will take soon (the next tick picks up the rest)."""
        before = now_ns() - (0 if force else int(self.delay_s_now * 1e9))
        t = time.monotonic()
        out: list[tuple[int, int]] = []
        room = int(self.limiter.total_tokens) * BATCH_FILES * 2 - len(self.inflight)
        if room <= 0:
            return out
        for ino, size in self.ops.cat.dirty_due_sizes(before, limit=room + len(self.inflight)):
            if len(out) >= room:
                break
            if ino in self.inflight:
                continue
            of = self.ops.data.files.get(ino)
            if of is not None and of.writers > 0:
                continue
            retry = self.retry_at.get(ino)
            if retry is not None and retry[0] > t and not force:
                continue
            out.append((ino, size))
        return out

    def _busy(self) -> bool:
        """True while the filesystem serves metadata requests (creates, lookups, unlinks...)
        faster than BUSY_REQUESTS_PER_S; streaming reads and writes do not count."""
        t = time.monotonic()
        rate = (self.ops.requests - self._seen_requests) / max(t - self._seen_at, 1e-3)
        self._seen_requests, self._seen_at = self.ops.requests, t
        return rate > BUSY_REQUESTS_PER_S

    async def tick(self, nursery: anyio.abc.TaskGroup, *, force: bool = False) -> int:
        """Start uploads that are due, in batches; returns how many files were started.

        While the filesystem is busy, uploads wait (foreground requests first), except for
        files dirty for longer than the write-back delay plus MAX_DEFER_S.
        """
        self.ops.purge()
        self.ops.save_atimes()
        busy = not force and self._busy()
        if busy:
            self.delay_s_now = self.delay_s + MAX_DEFER_S
        else:
            self.delay_s_now = self.delay_s
        due = self._due(force)
        batch: list[int] = []
        batch_bytes = 0
        for ino, size in due:
            pending = self.ops.pending.get(ino)
            if pending is not None:
                size = pending.size
            if batch and (len(batch) >= BATCH_FILES or batch_bytes + size > BATCH_BYTES):
                self._start(nursery, batch)
                batch, batch_bytes = [], 0
            batch.append(ino)
            batch_bytes += size
        if batch:
            self._start(nursery, batch)
        if not due and not busy:
            await self.chores()
        return len(due)

    def _start(self, nursery: anyio.abc.TaskGroup, batch: list[int]) -> None:
        self.inflight.update(batch)
        nursery.start_soon(self._upload_batch, batch)

    async def _upload_batch(self, inos: list[int]) -> None:
        try:
            async with self.limiter:
                data = self.ops.data
                gens = {ino: data.generation(ino) for ino in inos}
                jobs: list[UploadJob] = []
                with self.pool.catalog.tx():
                    for ino in inos:
                        try:
                            job = self.pool.upload_begin(ino)
                        except Exception:
                            log.exception("cannot start upload of inode %d", ino)
                            self._backoff(ino)
                            continue
                        if job is not None:
                            jobs.append(job)
                if not jobs:
                    return
                results = await anyio.to_thread.run_sync(self._transfer, jobs)
                with self.pool.lock.held(), self.pool.catalog.tx():  # one commit for the batch
                    self._commit(jobs, results, gens)
                # the cache copies are evictable now: without this, a cache filled by writes
                # would stay over its limit until some later close() happened to evict
                data.evict()
        finally:
            self.inflight.difference_update(inos)

    def _commit(self, jobs: list[UploadJob], results: list[StoredObject | BaseException], gens: dict[int, int]) -> None:
        data = self.ops.data
        for job, res in zip(jobs, results, strict=True):
            try:
                if isinstance(res, UploadCancelled):  # unlinked meanwhile: purged soon, not retried
                    self.pool.upload_commit(job, None, False)
                    self.cancelled += 1
                elif isinstance(res, BaseException):
                    log.warning("upload of %s failed, will retry: %s", job.key, res)
                    self.pool.upload_commit(job, None, False)
                    self._backoff(job.ino)
                elif self.pool.upload_commit(job, res, data.generation(job.ino) == gens[job.ino]):
                    data.mark_clean(job.ino)
                    self.retry_at.pop(job.ino, None)
                    self.uploaded += 1
            except Exception:
                log.exception("committing upload of %s failed; it stays dirty", job.key)
                self._backoff(job.ino)
                obj = self.pool.catalog.object(job.ino)
                if obj is not None and obj.state == "uploading":
                    self.pool.catalog.update_object(job.ino, state="dirty")

    def _thread_pool(self) -> Pool:
        """This worker thread's own pool (its own catalog connection)."""
        pool = getattr(self._local, "pool", None)
        if pool is None:
            pool = self._local.pool = Pool(self.pool.config)
            with self._pools_lock:
                self._thread_pools.append(pool)
        return pool

    def _transfer(self, jobs: list[UploadJob]) -> list[StoredObject | BaseException]:
        """Worker thread: copy and verify every job, make the batch durable, then put each
        object at its final key (so the event loop's thread only flips states)."""
        pool = self._thread_pool()
        out: list[StoredObject | BaseException] = []
        unlinked = self.ops.unlinked  # read here, written by the event loop's thread (set ops are atomic)
        for job in jobs:
            ino = job.ino
            try:
                if ino in unlinked:
                    raise UploadCancelled(f"{job.key} was unlinked")
                out.append(pool.upload_transfer(job, durable=False, stop=functools.partial(unlinked.__contains__, ino)))
            except Exception as e:
                out.append(e)
        for tier in {job.tier for job in jobs}:
            try:
                pool.backend(tier).sync()
            except OSError as e:
                out = [
                    e if not isinstance(r, BaseException) and j.tier == tier else r
                    for j, r in zip(jobs, out, strict=True)
                ]
        try:
            pool.upload_place([(j, r) for j, r in zip(jobs, out, strict=True) if not isinstance(r, BaseException)])
        except Exception:
            log.exception("placing a batch failed; the commit step places what is left")
        return out

    def _backoff(self, ino: int) -> None:
        self.failed += 1
        _, backoff = self.retry_at.get(ino, (0.0, RETRY_MIN_S / 2))
        backoff = min(backoff * 2, RETRY_MAX_S)
        self.retry_at[ino] = (time.monotonic() + backoff, backoff)

    async def chores(self) -> None:
        """Re-key renamed objects, record changed attributes and delete trashed objects, in a
        worker thread with its own catalog connection."""

        def work() -> None:
            pool = self._thread_pool()
            try:
                pool.process_rekeys()
                pool.process_trash()
                pool.catalog.checkpoint()
            except Exception:
                log.exception("background chores failed; retrying later")

        await anyio.to_thread.run_sync(work)

    async def flush_all(self, timeout_s: float = 600.0) -> int:
        """Upload every dirty file now (ignoring the delay). Returns how many are still dirty
        (open for writing, or failing) when done or after *timeout_s*."""
        with anyio.move_on_after(timeout_s):
            async with anyio.create_task_group() as nursery:
                while True:
                    started = await self.tick(nursery, force=True)
                    if not started and not self.inflight:
                        break
                    await anyio.sleep(0.05)
                    if not self.inflight and self._only_stuck():
                        break
        await self.chores()
        states = self.ops.cat.count_by_state()
        return states.get("dirty", 0) + states.get("uploading", 0)

    def _only_stuck(self) -> bool:
        """True when every dirty file is either open for writing or failed this round."""
        for ino in self.ops.cat.dirty_due(now_ns(), limit=4096):
            of = self.ops.data.files.get(ino)
            if (of is None or of.writers == 0) and ino not in self.retry_at:
                return False
        return True

    async def close(self) -> None:
        with self._pools_lock:
            pools, self._thread_pools = self._thread_pools, []
        for pool in pools:
            pool.close()
