"""The write-back service: uploads dirty files after the write-back delay, re-keys renamed
objects and empties the trash.

An upload runs in three steps (see :meth:`pool.pool.Pool.upload_begin`): the key is chosen and
the file marked ``uploading`` on the trio thread; the cache file is copied to a temporary key
and read back in a worker thread; then, back on the trio thread and with no await in between,
the file is marked clean only if its write generation did not move meanwhile. Writes are
handled on the trio thread too, so no write can slip between that check and the commit.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

import trio

from pool.catalog import now_ns
from pool.errors import DarkstorageError
from pool.pool import Pool

if TYPE_CHECKING:
    from .operations import Operations

log = logging.getLogger(__name__)

RETRY_MIN_S = 1.0
RETRY_MAX_S = 60.0


class WriteBack:
    """Background uploads for one mount.

    Args:
        ops: the mounted filesystem.
        delay_s: seconds a file stays dirty before its upload starts.
        transfers: uploads running at once.
    """

    def __init__(self, ops: Operations, delay_s: float, transfers: int = 4) -> None:
        self.ops = ops
        self.pool = ops.pool
        self.delay_s = delay_s
        self.limiter = trio.CapacityLimiter(transfers)
        self.inflight: set[int] = set()
        self.retry_at: dict[int, tuple[float, float]] = {}  # ino -> (monotonic time, backoff)
        self.uploaded = 0
        self.failed = 0
        self._wake = trio.Event()
        self._chores_pool: Pool | None = None

    def wake(self) -> None:
        self._wake.set()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            task_status.started()
            while True:
                await self.tick(nursery)
                with trio.move_on_after(0.5):
                    await self._wake.wait()
                self._wake = trio.Event()

    async def tick(self, nursery: trio.Nursery, *, force: bool = False) -> int:
        """Start uploads that are due; returns how many started."""
        before = now_ns() - (0 if force else int(self.delay_s * 1e9))
        started = 0
        t = time.monotonic()
        for ino in self.ops.cat.dirty_due(before, limit=256):
            if ino in self.inflight:
                continue
            of = self.ops.data.files.get(ino)
            if of is not None and of.writers > 0:
                continue
            retry = self.retry_at.get(ino)
            if retry is not None and retry[0] > t and not force:
                continue
            self.inflight.add(ino)
            nursery.start_soon(self._upload, ino)
            started += 1
        if not started:
            await self.chores()
        return started

    async def _upload(self, ino: int) -> None:
        try:
            async with self.limiter:
                data = self.ops.data
                gen = data.generation(ino)
                job = self.pool.upload_begin(ino)
                if job is None:
                    return
                try:
                    stored = await trio.to_thread.run_sync(self.pool.upload_transfer, job)
                except (DarkstorageError, OSError) as e:
                    log.warning("upload of %s failed, will retry: %s", job.key, e)
                    self.pool.upload_commit(job, None, False)
                    self.failed += 1
                    _, backoff = self.retry_at.get(ino, (0.0, RETRY_MIN_S / 2))
                    backoff = min(backoff * 2, RETRY_MAX_S)
                    self.retry_at[ino] = (time.monotonic() + backoff, backoff)
                    return
                if self.pool.upload_commit(job, stored, data.generation(ino) == gen):
                    data.mark_clean(ino)
                    # its cache copy is evictable now: without this, a cache filled by writes
                    # would stay over its limit until some later close() happened to evict
                    data.evict()
                    self.retry_at.pop(ino, None)
                    self.uploaded += 1
                    log.debug("uploaded %s (%d bytes)", job.key, stored.size)
        finally:
            self.inflight.discard(ino)

    async def chores(self) -> None:
        """Re-key renamed objects and delete trashed ones, in a worker thread with its own
        catalog connection."""
        if self._chores_pool is None:
            self._chores_pool = Pool(self.pool.config)

        def work() -> None:
            assert self._chores_pool is not None
            try:
                self._chores_pool.process_rekeys()
                self._chores_pool.process_trash()
            except (DarkstorageError, OSError) as e:
                log.warning("background chores: %s", e)

        await trio.to_thread.run_sync(work)

    async def flush_all(self, timeout_s: float = 600.0) -> int:
        """Upload every dirty file now (ignoring the delay). Returns how many are still dirty
        (open for writing, or failing) when done or after *timeout_s*."""
        with trio.move_on_after(timeout_s):
            async with trio.open_nursery() as nursery:
                while True:
                    started = await self.tick(nursery, force=True)
                    if not started and not self.inflight:
                        break
                    await trio.sleep(0.05)
                    if not self.inflight and self._only_stuck():
                        break
        await self.chores()
        states = self.ops.cat.count_by_state()
        return states.get("dirty", 0) + states.get("uploading", 0)

    def _only_stuck(self) -> bool:
        """True when every dirty file is either open for writing or failed this round."""
        for ino in self.ops.cat.dirty_due(now_ns(), limit=1024):
            of = self.ops.data.files.get(ino)
            if (of is None or of.writers == 0) and ino not in self.retry_at:
                return False
        return True

    async def close(self) -> None:
        if self._chores_pool is not None:
            self._chores_pool.close()
            self._chores_pool = None
