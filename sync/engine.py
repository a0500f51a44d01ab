"""One run of a sync pair: lock, scan, plan, safety checks, execute, commit.

Safety checks (each aborts with :class:`pool.errors.SyncAbortedError`, exit 17, before anything
changed; ``force`` skips them):

- a side that held files at the last sync is now empty or missing (an unmounted drive, a
  deleted or renamed root);
- the deletes planned on a side exceed ``max_delete`` (default 50% of the files it held);
- every file a side held changed at once (a clock or timezone jump, a re-encoding, ransomware),
  when it held at least :data:`ALL_CHANGED_MIN_FILES` files.

The first run of a pair (no run has finished yet) is a merge: both sides' files end up on both,
nothing is deleted; a first sync into an empty or missing destination folder simply copies.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from pool.durable import boot_id
from pool.errors import NotFoundError, SyncAbortedError
from pool.transferlog import TransferLog

from .executor import Executor, RunResult
from .journal import Journal, Synced
from .model import FILE, Entry, key_of
from .options import SyncOptions, delete_limit
from .plan import Plan
from .planner import SideStats, SideView, plan_sync
from .registry import pair_lock
from .scanner import Filters
from .sides import LocationLike, Side

log = logging.getLogger(__name__)

ALL_CHANGED_MIN_FILES = 10


@dataclass
class RunOutcome:
    """A run's plan and, unless it was a dry run, what the executor did."""

    plan: Plan
    result: RunResult | None
    first_run: bool
    stats: dict[int, SideStats]


def host_name() -> str:
    """This machine's short host name, safe inside a file name (for conflict copies)."""
    name = os.uname().nodename.split(".")[0] or "host"
    return "".join(c if c.isalnum() or c in "-_" else "-" for c in name)


def _view(side: Side, scan: dict, options: SyncOptions) -> SideView:  # type: ignore[type-arg]
    return SideView(
        number=side.number,
        scan=scan,
        has_dirs=side.has_dirs,
        has_links=side.has_links,
        has_modes=side.has_modes,
        window_ns=max(side.mtime_precision_ns - 1, options.modify_window_ns),
        hasher=lambda e: side.hash(e.rel),
    )


def _prehash(side: Side, view: SideView, workers: int) -> None:
    from concurrent.futures import ThreadPoolExecutor

    files = [e for e in view.scan.values() if e.kind == FILE]
    with ThreadPoolExecutor(max_workers=workers) as ex:
        for e, h in zip(files, ex.map(lambda e: side.hash(e.rel), files), strict=True):
            view.hashes[e.rel] = h


def _scan(
    sides: dict[int, Side], filters: Filters, journal: Journal
) -> tuple[list[dict[str, Entry]], dict[str, Synced]]:
    """Both sides' scans and the journal's rows. Listing a remote store waits on the network,
    so remote sides are listed in threads meanwhile; local scans run one after the other
    (CPython threads take turns on the interpreter, and thousands of short ``lstat`` calls
    handing it back and forth make two scanning threads slower than one)."""
    remote = [n for n in (1, 2) if not sides[n].is_local]
    if not remote:
        return [sides[1].scan(filters), sides[2].scan(filters)], journal.load()
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=len(remote)) as ex:
        listing = {n: ex.submit(sides[n].scan, filters) for n in remote}
        local = {n: sides[n].scan(filters) for n in (1, 2) if n not in listing}
        rows = journal.load()
        return [local[n] if n in local else listing[n].result() for n in (1, 2)], rows


def check_safety(plan: Plan, stats: dict[int, SideStats], sides: dict[int, Side], options: SyncOptions) -> None:
    """Raise :class:`SyncAbortedError` if a safety limit is crossed (see the module docstring)."""
    if options.force:
        return
    for n in (1, 2):
        st, name = stats[n], sides[n].display
        deletes = plan.deletes_on(n)
        limit = delete_limit(options.max_delete, st.journal_files)
        if deletes > limit:
            raise SyncAbortedError(
                f"sync aborted: {deletes} deletes on {name} exceed --max-delete {options.max_delete}"
                f" of {st.journal_files} files (nothing changed; --max-delete N|P% or --force to proceed)"
            )
        if st.journal_files >= ALL_CHANGED_MIN_FILES and st.present and st.changed == st.present:
            raise SyncAbortedError(
                f"sync aborted: every one of the {st.present} files on {name} changed since the last sync"
                " (clock or timezone change? nothing changed; --force to proceed)"
            )


def run_pair(
    loc1: LocationLike,
    loc2: LocationLike,
    options: SyncOptions,
    *,
    name: str,
    journal_path: Path | None,
    lock_path: Path,
    dry_run: bool = False,
    progress: Callable[[int, int], None] | None = None,
    on_plan: Callable[[Plan], None] | None = None,
    transfer_log: TransferLog | None = None,
    host: str | None = None,
) -> RunOutcome:
    """Run pair *name* once (see the module docstring).

    Args:
        loc1, loc2: the roots (path1, path2; for one-way, source and destination).
        journal_path: the pair's journal file (None: an in-memory journal, for a dry run of a new pair).
        lock_path: the pair's lock file.
        dry_run: plan and check, change nothing (neither side nor the journal).
        progress: ``(files_delta, bytes_delta)`` as the executor finishes work.
        on_plan: called with the plan before it is executed (to size a progress bar).

    Raises:
        SyncAbortedError: a safety check stopped the run before anything changed.
        BusyError: the pair is being synced by another process.
        NotFoundError: path1 does not exist on the first run.
        AuthError: a store rejected the credentials.
    """
    with pair_lock(lock_path, name), _cyclic_gc_paused():
        use_file = journal_path is not None and (not dry_run or journal_path.exists())
        journal = Journal(journal_path if use_file and journal_path is not None else ":memory:")
        try:
            return _run(loc1, loc2, options, journal, dry_run, progress, on_plan, transfer_log, host or host_name())
        finally:
            journal.close()


def _run(
    loc1: LocationLike,
    loc2: LocationLike,
    options: SyncOptions,
    journal: Journal,
    dry_run: bool,
    progress: Callable[[int, int], None] | None,
    on_plan: Callable[[Plan], None] | None,
    transfer_log: TransferLog | None,
    host: str,
) -> RunOutcome:
    sides = {1: Side(loc1, 1), 2: Side(loc2, 2)}
    first_run = not journal.completed
    held = journal.count()
    for n, side in sides.items():
        if side.exists():
            continue
        if held and not options.force:
            raise SyncAbortedError(
                f"sync aborted: {side.display} is missing but held files at the last sync"
                " (unmounted drive? nothing changed; --force to proceed)"
            )
        if n == 1:
            raise NotFoundError(f"{side.display}: no such folder")
        if not dry_run:
            side.makedirs_root()
    stored = journal.get_meta("fold_case")
    fold_case = stored == "1" if stored is not None else (sides[1].fold_case or sides[2].fold_case)
    filters = Filters.from_options(options.excludes, options.filter_from)
    scans, rows = _scan(sides, filters, journal)
    views = {n: _view(sides[n], scans[n - 1], options) for n in (1, 2)}
    if held and not options.force:
        for n in (1, 2):
            if not any(e.kind == FILE for e in scans[n - 1].values()) and _journal_files(journal):
                raise SyncAbortedError(
                    f"sync aborted: {sides[n].display} is empty but held files at the last sync"
                    " (unmounted drive? nothing changed; --force to proceed)"
                )
    if options.checksum:
        for n in (1, 2):
            _prehash(sides[n], views[n], options.transfers)
    _recover_pending(journal, rows, views, fold_case, dry_run, sides)
    plan, stats = plan_sync(views[1], views[2], rows, options, first_run=first_run, fold_case=fold_case, host=host)
    check_safety(plan, stats, sides, options)
    if dry_run:
        return RunOutcome(plan, None, first_run, stats)
    for side in sides.values():
        if side.remove_temps():
            log.info("removed temporary files of interrupted transfers on %s", side.display)
    if on_plan is not None:
        on_plan(plan)
    if stored is None:
        journal.set_meta("fold_case", "1" if fold_case else "0")
        journal.set_meta("path1", sides[1].display)
        journal.set_meta("path2", sides[2].display)
    ex2 = Executor(sides, journal, options, transfer_log=transfer_log, progress=progress)
    result = ex2.run(plan)
    if not result.failures:
        journal.mark_completed()
    return RunOutcome(plan, result, first_run, stats)


@contextlib.contextmanager
def _cyclic_gc_paused() -> Iterator[None]:
    """Pause Python's cyclic garbage collector for a run: scans and the journal make hundreds of
    thousands of tuples (no reference cycles) and each collection walks all of them again, which
    cost a rescan of 100,000 files about a tenth of its time. Reference counting still frees
    everything; the collector runs again afterwards (unless something else had paused it)."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def _recover_pending(
    journal: Journal,
    rows: dict[str, Synced],
    views: dict[int, SideView],
    fold_case: bool,
    dry_run: bool,
    sides: dict[int, Side],
) -> None:
    """Copies of a run that did not reach the end of its copy phase (killed, or the machine
    went down).

    Same boot (the process was killed): the page cache kept every byte written, so a destination
    holding a file of the source's size and mtime (within its window) counts as synced with
    those states (unless its journal row says so already: a copy committed before the kill
    keeps its row). Another boot (power cut, crash of the machine): copies into local folders
    may not have reached the disk before the flush that never came, so their content is
    hashed first; a row that vouches for a copy whose content differs is made to say both
    sides changed (the plan then compares their content and keeps both as a conflict, never
    carrying the damaged copy back over the source as an edit), and a copy without a row
    counts only with the source's content. Stores whose listings give the upload time, not the
    source's mtime (S3), are asked for the mtime the copy stored with the object instead."""
    pending = journal.pending()
    if not pending:
        return
    noted = journal.get_meta("pending_boot")
    rebooted = noted is not None and noted != boot_id()
    by_key: dict[int, dict[str, Entry]] = {1: {}, 2: {}}
    wanted = {k for k, _, _ in pending}
    for n in (1, 2):
        for rel, e in views[n].scan.items():
            k = key_of(rel, fold_case=fold_case)
            if k in wanted:
                by_key[n][k] = e
    for key, dst, src in pending:
        now = by_key[dst].get(key)
        j = rows.get(key)
        check = rebooted and sides[dst].is_local
        if check and j is not None and _same_file(j.side(3 - dst), src) and not _holds(views[dst], now, j.hash):
            log.warning("%s: the copy made before the machine went down is not on disk whole", key)
            e1, e2 = j.side(1)._replace(size=-1), j.side(2)._replace(size=-1)  # both sides count as changed
            rows[key] = Synced.of(key, FILE, None, e1, e2)
            if not dry_run:
                journal.put(key, e1, e2, None)
            continue
        if now is None or now.kind != FILE or now.size != src.size:
            continue
        if abs(now.mtime_ns - src.mtime_ns) > views[dst].window_ns:
            kept = sides[dst].kept_mtime_ns(now.rel)
            if kept is None or abs(kept - src.mtime_ns) > views[dst].window_ns:
                continue
        if j is not None and _same_file(j.side(dst), now) and _same_file(j.side(3 - dst), src):
            continue  # committed before the kill
        if check:
            origin = by_key[3 - dst].get(key)
            if (
                origin is None
                or not _same_file(origin, src)
                or not _holds(views[dst], now, views[3 - dst].hash(origin))
            ):
                continue
        e1, e2 = (src, now) if dst == 2 else (now, src)
        rows[key] = Synced.of(key, FILE, None, e1, e2)
        if not dry_run:
            journal.commit_copy(key, e1, e2, None)
    if not dry_run:
        journal.clear_all_pending()


def _holds(view: SideView, e: Entry | None, digest: str | None) -> bool:
    """*e* (on *view*'s side) is a file whose content hashes to *digest*."""
    return e is not None and e.kind == FILE and digest is not None and view.hash(e) == digest


def _same_file(a: Entry, b: Entry) -> bool:
    return a.kind == b.kind == FILE and a.size == b.size and a.mtime_ns == b.mtime_ns


def _journal_files(journal: Journal) -> int:
    return int(journal.db.execute("SELECT count(*) FROM entries WHERE kind = 'file'").fetchone()[0])
