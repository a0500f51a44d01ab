"""Carrying out a plan: parallel transfers, the journal committed per file, crash safety.

Phases run in the order of :mod:`sync.plan`. File copies run on ``options.transfers`` worker
threads (:func:`sync.workers.run_parallel`); a phase of many copies between two local folders
runs on forked worker processes instead, at most one per CPU (:func:`sync.workers.run_forked`,
see there why). Between two local folders a copy goes through
:func:`sync.localcopy.copy_local`, otherwise through :func:`pool.transfers.copy_file` (both:
temporary name + rename, XXH3-128 of the bytes as they pass, read-back verification; the latter
also retries with backoff); both honour the bandwidth limit (a limited run stays on threads,
which share it). The journal is written only by the calling thread, one transaction per
finished file.

Before changing a destination the executor re-stats it: if it is no longer what the scan saw, a
user changed it during the run and the action is skipped (the next run sees both changes). After a
copy it checks the source: if the source changed meanwhile, the journal records the source state
as scanned, so the next run sees the change and carries it. A run killed at any point leaves every
journal row true for what both sides hold, so the rerun converges: a copy done but not committed
is still noted as pending and is recognised by its size and mtime, a delete done but not committed
looks like "deleted on both sides".

Copies between local folders are not flushed to disk one by one: every :data:`DURABLE_BATCH`
copies or :data:`DURABLE_EVERY_S` seconds one ``syncfs(2)`` of the destination makes them durable.
The last flush runs on a thread while the deletes (and the caller's own end-of-run work) go on;
:meth:`Executor.finish` waits for it. The copies' journal rows commit at once, but the run's
pending-copy notes stay until the last flush is over: a
run that finds notes from an earlier boot (a power cut or crash of the machine, not only of the
process) checks those copies' content before trusting their rows (see
:func:`sync.engine._recover_pending`).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from pool.durable import sync_filesystem
from pool.errors import AuthError, DarkstorageError
from pool.locations import mask_secrets

from .journal import Journal
from .localcopy import copy_local
from .model import DIR, FILE, LINK, Entry, parent_of
from .options import SyncOptions
from .plan import Chmod, Copy, Delete, Mkdir, Move, Plan, RunResult
from .sides import Side
from .workers import Outcome, can_fork, run_forked, run_parallel

if TYPE_CHECKING:
    from pool.transferlog import TransferLog, TransferRecord

log = logging.getLogger(__name__)

RECORD_BATCH = 1000
DURABLE_BATCH = 2000  #: local copies made durable together (one syncfs) ...
DURABLE_EVERY_S = 1.0  #: ... or after this long, whichever comes first


def same_state(side: Side, now: Entry | None, then: Entry | None) -> bool:
    """Whether *now* (a fresh stat) is still what the scan saw (*then*), at the side's precision."""
    if now is None or then is None:
        return now is None and then is None
    if now.kind != then.kind:
        return False
    if now.kind == DIR:
        return True
    if now.kind == LINK:
        return now.target == then.target
    if now.size != then.size:
        return False
    if now.etag and then.etag:
        return now.etag == then.etag
    return abs(now.mtime_ns - then.mtime_ns) < max(side.mtime_precision_ns, 1)


class Executor:
    """Runs plans for one pair.

    Args:
        sides: ``{1: Side, 2: Side}``.
        journal: the pair's journal (written from the calling thread only).
        options: the pair's options (transfers, bandwidth limit).
        transfer_log: where copies are recorded (None: not recorded).
        progress: called with ``(files_done_delta, bytes_done_delta)`` as work finishes.
    """

    def __init__(
        self,
        sides: dict[int, Side],
        journal: Journal,
        options: SyncOptions,
        *,
        transfer_log: TransferLog | None = None,
        progress: Callable[[int, int], None] | None = None,
    ) -> None:
        self.sides = sides
        self.journal = journal
        self.options = options
        self.tlog = transfer_log
        self.progress = progress or (lambda files, nbytes: None)
        self.result = RunResult()
        self._records: list[TransferRecord] = []  # local copies not in the transfer log yet
        self._unflushed: set[int] = set()  # sides with local copies not flushed to disk yet
        self._unflushed_n = 0
        self._flushed_at = time.monotonic()
        self._take: Callable[[int], None] | None = None
        self._flusher: threading.Thread | None = None  # the last flush, running (see finish)
        self._flush_error: OSError | None = None
        self._copies_over = False  # the copy phase ended without raising
        self._chunk = 1 << 20
        if options.bwlimit_bytes_per_s:
            from pool.resilience import bandwidth_bucket
            from pool.transfers import LOCAL_LIMIT_KEY

            bucket = bandwidth_bucket(LOCAL_LIMIT_KEY, options.bwlimit_bytes_per_s)
            if bucket is not None:
                self._take, self._chunk = bucket.take, bucket.chunk_bytes

    def _put(self, key: str, side_n: int, e_side: Entry, e_other: Entry, digest: str | None) -> None:
        e1, e2 = (e_side, e_other) if side_n == 1 else (e_other, e_side)
        self.journal.put(key, e1, e2, digest)

    def _fail(self, rel: str, e: BaseException) -> None:
        msg = str(e) or type(e).__name__
        log.warning("%s: %s", rel, msg)
        self.result.failures.append((rel, msg))

    def _changed(self, rel: str) -> None:
        log.info("%s changed during the run: left for the next run", rel)
        self.result.changed_during_run.append(rel)

    def run(self, plan: Plan) -> RunResult:
        """Carry out *plan*. Failures are collected in the result, never raised, except
        :class:`pool.errors.AuthError` (nothing more can work)."""
        # the print groups whose journal rows this run may change lose their prints in one
        # commit, not one each as their first row is written
        keys = [m.old_key for m in plan.moves] + [m.new_key for m in plan.moves]
        for items in (plan.records, plan.forgets, plan.mkdirs, plan.copies, plan.chmods, plan.deletes, plan.rmdirs):
            keys.extend(i.key for i in items)
        with self.journal.transaction():
            self.journal.unprint(keys)
        self._journal_only(plan)
        for m in plan.moves:
            self._move(m)
        local = self.sides[1].is_local and self.sides[2].is_local
        self._mkdirs(plan.mkdirs, local)
        self.journal.begin_copies((c.key, c.dst, c.src_entry) for c in plan.copies if c.src_entry.kind == FILE)
        try:
            self._parallel(plan.copies, self._copy_work, self._copy_and_flush, forkable=local and self._take is None)
        except BaseException:
            self._flush()
            raise
        self._copies_over = True
        self._flush_in_background()
        for c in plan.chmods:
            self._chmod(c)
        self._parallel(plan.deletes, self._delete_work, self._delete_done)
        for r in plan.rmdirs:
            try:
                if self.sides[r.side].rmdir(r.entry.rel):
                    self.journal.remove(r.key)
                    self.result.rmdirs += 1
            except OSError as e:
                self._fail(r.entry.rel, e)
        self.result.conflicts = len(plan.conflicts)
        return self.result

    def finish(self) -> None:
        """Wait for the last flush of the copies (started by :meth:`run`, which returns while it
        runs so that the caller's remaining work overlaps it), then forget the run's
        pending-copy notes: every copy is on disk now. Call it once after :meth:`run`, also
        when that raised (a copy phase cut short keeps its notes for the next run).

        Raises:
            OSError: the flush failed (the notes stay, so the next run checks those copies).
        """
        if self._flusher is not None:
            self._flusher.join()
            self._flusher = None
        if self._flush_error is not None:
            raise self._flush_error
        if self._copies_over:
            self.journal.clear_all_pending()

    def _flush_in_background(self) -> None:
        """:meth:`_flush` on a thread (it waits on the disk; the GIL is free meanwhile)."""
        if not self._unflushed:
            return

        def flush() -> None:
            try:
                self._flush()
            except OSError as e:
                self._flush_error = e

        self._flusher = threading.Thread(target=flush, name="sync-flush", daemon=True)
        self._flusher.start()

    def _journal_only(self, plan: Plan) -> None:
        for i in range(0, len(plan.records), RECORD_BATCH):
            with self.journal.transaction():
                self.journal.put_many((r.key, r.e1, r.e2, r.hash) for r in plan.records[i : i + RECORD_BATCH])
        with self.journal.transaction():
            self.journal.remove_many(f.key for f in plan.forgets)

    def _move(self, m: Move) -> None:
        side = self.sides[m.side]
        if not same_state(side, side.stat(m.entry.rel), m.entry):
            self._changed(m.entry.rel)
            return
        try:
            side.move(m.entry.rel, m.new_rel)
        except (OSError, DarkstorageError) as e:
            if isinstance(e, AuthError):
                raise
            self._fail(m.entry.rel, e)
            return
        if m.reason == "conflict":
            self.journal.remove(m.old_key)
            return
        after = side.stat(m.new_rel) or m.entry.with_rel(m.new_rel)
        if m.old_key != m.new_key:
            self.journal.remove(m.old_key)
        assert m.other is not None
        self._put(m.new_key, m.side, after, m.other, m.hash)
        self.result.moved += 1

    def _mkdirs(self, mkdirs: list[Mkdir], local: bool) -> None:
        """Make the folders, parents first: in order on one thread, or, many between two local
        folders, on worker processes (the order between workers is then loose: a folder made
        before its parent makes the parent too, and the parent's own turn then finds it and
        sets its mode)."""
        self._parallel(mkdirs, self._mkdir_work, self._mkdir_done, forkable=local, threads=1)

    def _mkdir_work(self, d: Mkdir) -> Entry | None:
        """Make one folder. Returns it as made, or None if the path changed since the scan."""
        side = self.sides[d.dst]
        now = side.stat(d.dst_rel)
        if now is not None and now.kind != DIR:
            if not same_state(side, now, d.dst_before):
                return None
            side.delete(d.dst_rel)
        side.makedirs(d.dst_rel, d.src_entry.mode if self.sides[3 - d.dst].has_modes else None)
        return side.stat(d.dst_rel) or Entry(d.dst_rel, DIR)

    def _mkdir_done(self, d: Mkdir, after: Entry | None) -> tuple[int, int]:
        if after is None:
            self._changed(d.dst_rel)
            return 0, 0
        self._put(d.key, 3 - d.dst, d.src_entry, after, None)
        self.result.mkdirs += 1
        return 1, 0

    def _chmod(self, c: Chmod) -> None:
        try:
            self.sides[c.side].chmod(c.rel, c.mode)
        except OSError as e:
            self._fail(c.rel, e)
            return
        self.journal.put(c.key, c.e1, c.e2, c.hash)
        self.result.chmods += 1

    # -- parallel phases ----------------------------------------------------------------------

    def _parallel(
        self,
        items: list[Any],
        work: Callable[[Any], Any],
        done: Callable[[Any, Any], tuple[int, int]],
        *,
        forkable: bool = False,
        threads: int | None = None,
    ) -> None:
        """Run *work* on *items* in parallel, *done* on each outcome here. *forkable*: the
        work is local file system calls only, so a large phase may run in worker processes
        (:func:`sync.workers.run_forked`); otherwise it runs on *threads* threads (default
        ``options.transfers``)."""

        def one_done(o: Outcome[Any, Any]) -> None:
            if o.error is not None:
                self._fail(getattr(o.item, "dst_rel", None) or o.item.entry.rel, o.error)
                return
            files, nbytes = done(o.item, o.value)
            if files or nbytes:
                self.progress(files, nbytes)
            if len(self._records) >= RECORD_BATCH:
                self._record_transfers()

        try:
            workers = min(self.options.transfers, os.cpu_count() or 1)
            if forkable and can_fork(len(items), workers):
                run_forked(items, work, one_done, workers=workers, size_of=_size_of)
            else:
                run_parallel(items, work, one_done, workers=threads or self.options.transfers, size_of=_size_of)
        finally:
            self._record_transfers()

    def _record_transfers(self) -> None:
        """Write the transfer-log rows of local copies (in groups: the log is not what makes a
        run safe to kill, the journal is)."""
        if self._records and self.tlog is not None:
            self.tlog.add_finished(self._records)
        self._records = []

    def _copy_work(self, c: Copy) -> tuple[str, Entry | None, str | None, Any]:
        """In a worker: pre-check, copy, post-check. Returns ``(status, dst entry, digest,
        transfer record of a local copy or None)``."""
        src, dst = self.sides[c.src], self.sides[c.dst]
        now = dst.stat(c.dst_rel)
        if not same_state(dst, now, c.dst_before):
            return "dst-changed", None, None, None
        e = c.src_entry
        if now is not None and now.kind != e.kind:
            if now.kind == DIR:
                if not dst.rmdir(c.dst_rel):
                    return "dst-changed", None, None, None
            else:
                dst.delete(c.dst_rel)
        if e.kind == LINK:
            assert e.target is not None
            dst.symlink(c.dst_rel, e.target)
            return "ok", dst.stat(c.dst_rel), c.hash, None
        if src.is_local and dst.is_local:
            return self._copy_local(c, src, dst)
        from pool.transfers import TransferOptions, copy_file

        topts = TransferOptions(transfers=self.options.transfers, bwlimit_bytes_per_s=self.options.bwlimit_bytes_per_s)
        rec = copy_file(src.transfer_location, e.rel, dst.transfer_location, c.dst_rel, options=topts, log=self.tlog)
        after = dst.stat(c.dst_rel)
        if c.verify_source and not same_state(src, src.stat(e.rel), e):
            return "src-changed", after, rec.xxh3_128, None
        return "ok", after, rec.xxh3_128, None

    def _copy_local(self, c: Copy, src: Side, dst: Side) -> tuple[str, Entry | None, str | None, Any]:
        from pool.transferlog import TransferRecord

        sp, dp = src.path(c.src_entry.rel), dst.path(c.dst_rel)
        try:
            r = copy_local(sp, dp, c.dst_rel, c.src_entry, take=self._take, chunk_bytes=self._chunk)
        except FileNotFoundError:
            if src.stat(c.src_entry.rel) is None:
                raise
            dst.makedirs(parent_of(c.dst_rel))  # its folder went away during the run: make it again
            r = copy_local(sp, dp, c.dst_rel, c.src_entry, take=self._take, chunk_bytes=self._chunk)
        size = r.after.size
        took = max(r.finished_ns - r.started_ns, 1)
        rec = TransferRecord(0, mask_secrets(f"{src.display.rstrip('/')}/{c.src_entry.rel}"),
                             mask_secrets(f"{dst.display.rstrip('/')}/{c.dst_rel}"), bytes=size,
                             duration_ns=took, throughput_bytes_per_s=size / (took / 1e9), attempts=r.attempts,
                             status="ok", xxh3_128=r.digest, started_ns=r.started_ns, finished_ns=r.finished_ns)  # fmt: skip
        return ("src-changed" if c.verify_source and r.source_changed else "ok"), r.after, r.digest, rec

    def _copy_and_flush(self, c: Copy, outcome: tuple[str, Entry | None, str | None, Any]) -> tuple[int, int]:
        """Commit the copy's row; every :data:`DURABLE_BATCH` local copies or
        :data:`DURABLE_EVERY_S` seconds, flush the destinations (:meth:`_flush`)."""
        done = self._copy_done(c, outcome)
        if outcome[3] is not None:  # a local copy (remote transfers are durable when they end)
            self._unflushed.add(c.dst)
            self._unflushed_n += 1
            if self._unflushed_n >= DURABLE_BATCH or time.monotonic() - self._flushed_at >= DURABLE_EVERY_S:
                self._flush()
        return done

    def _flush(self) -> None:
        """``syncfs`` each side that received local copies since the last flush (once for two
        sides on one filesystem)."""
        done: set[int] = set()
        for side_n in sorted(self._unflushed):
            root = self.sides[side_n].root
            try:
                dev = os.stat(root).st_dev
            except OSError:
                dev = -side_n
            if dev not in done:
                sync_filesystem(root)
                done.add(dev)
        self._unflushed.clear()
        self._unflushed_n = 0
        self._flushed_at = time.monotonic()

    def _copy_done(self, c: Copy, outcome: tuple[str, Entry | None, str | None, Any]) -> tuple[int, int]:
        status, after, digest, rec = outcome
        if rec is not None:
            self._records.append(rec)
        if status == "dst-changed" or after is None:
            self._changed(c.dst_rel)
            return 0, 0
        if status == "src-changed":
            # the journal keeps the source as scanned: the next run sees it changed and copies again
            self._changed(c.src_entry.rel)
        e_src = c.src_entry.with_hash(digest)
        e1, e2 = (e_src, after) if c.src == 1 else (after, e_src)
        self.journal.commit_copy(c.key, e1, e2, digest)
        self.result.copied += 1
        self.result.copied_bytes += c.size if c.src_entry.kind == FILE else 0
        return 1, c.size

    def _delete_work(self, d: Delete) -> str:
        side = self.sides[d.side]
        if not same_state(side, side.stat(d.entry.rel), d.entry):
            return "changed"
        side.delete(d.entry.rel)
        return "ok"

    def _delete_done(self, d: Delete, outcome: str) -> tuple[int, int]:
        if outcome == "changed":
            self._changed(d.entry.rel)
            return 0, 0
        self.journal.remove(d.key)
        self.result.deleted += 1
        return 1, 0


def _size_of(item: Any) -> int:
    return int(getattr(item, "size", 0))
