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
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from pool.durable import boot_id
from pool.errors import NotFoundError, SyncAbortedError

from .journal import Journal, Synced
from .model import FILE, Entry, key_of
from .options import SyncOptions, delete_limit
from .plan import Plan, RunResult
from .planner import SideStats, SideView, plan_sync
from .registry import pair_lock
from .scanner import Filters, ForkedScan, LocalScan
from .sides import LocationLike, Side

if TYPE_CHECKING:
    from pool.transferlog import TransferLog

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


@dataclass
class Scanned:
    """Both sides' scans (by rel) and the journal rows the planner needs.

    Attributes:
        scans: side 1's and side 2's entries; without the print groups found settled.
        rows: journal rows by key; without the rows of the groups found settled.
        settled_files: files in the groups found settled (each side holds them as recorded).
        has_files: whether each side holds any file at all (settled groups included).
    """

    scans: list[dict[str, Entry]]
    rows: dict[str, Synced]
    settled_files: int = 0
    has_files: tuple[bool, bool] = (False, False)


def _scan(sides: dict[int, Side], filters: Filters, journal: Journal, by_folder: bool) -> Scanned:
    """Both sides' scans and the journal's rows. Listing a remote store waits on the network,
    so remote sides are listed in threads meanwhile; local scans run one after the other
    (CPython threads take turns on the interpreter, and thousands of short ``lstat`` calls
    handing it back and forth make two scanning threads slower than one).

    *by_folder* (two local folders, see :func:`_by_folder`): print groups (parts of folders,
    :func:`sync.model.group_of`) whose scans on both sides print as their journal rows do
    (:func:`sync.model.group_print`) are settled as a whole: neither their rows nor their
    entries reach the planner."""
    if by_folder:
        return _scan_by_folder(sides, filters, journal)
    remote = [n for n in (1, 2) if not sides[n].is_local]
    if not remote:
        scans, rows = [sides[1].scan(filters), sides[2].scan(filters)], journal.load()
    else:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=len(remote)) as ex:
            listing = {n: ex.submit(sides[n].scan, filters) for n in remote}
            local = {n: sides[n].scan(filters) for n in (1, 2) if n not in listing}
            rows = journal.load()
            scans = [local[n] if n in local else listing[n].result() for n in (1, 2)]
    has = tuple(any(e.kind == FILE for e in scan.values()) for scan in scans)
    return Scanned(scans, rows, 0, (has[0], has[1]))


def _by_folder(sides: dict[int, Side], options: SyncOptions, journal: Journal, fold_case: bool) -> bool:
    """Whether this run may settle whole print groups by their prints: two local folders (whose
    scans list every folder and give no ETags), names not case-folded, contents not compared
    (``--checksum``), a pair that finished a run before and whose last run left no copies in
    flight (those are recovered key by key)."""
    return (
        sides[1].is_local
        and sides[2].is_local
        and not fold_case
        and not options.checksum
        and journal.completed
        and not journal.pending()
    )


def _scan_by_folder(sides: dict[int, Side], filters: Filters, journal: Journal) -> Scanned:
    forked = None
    if threading.active_count() == 1:  # side 2 is scanned by a child process meanwhile
        sides[2].temps = []
        forked = ForkedScan(sides[2].root, filters)
    try:
        s1 = sides[1].scan_folders(filters)
        s2 = None
        if forked is not None:
            try:
                s2 = forked.prints(sides[2].temps)
            except FileNotFoundError:
                s2 = LocalScan(nfc=True)
        if s2 is None:
            forked = None
            s2 = sides[2].scan_folders(filters)
        stored = journal.prints()
        settled: set[str] = set()
        # a name not in NFC may be spelled differently on the two sides, and the planner
        # then needs the spellings of every folder: no group is settled whole then
        if s1.names_nfc() and s2.names_nfc():
            settled = {g for g, (f1, f2) in stored.items()
                       if f1 is not None and s1.prints.get(g) == f1 and s2.prints.get(g) == f2}  # fmt: skip
        if forked is not None and s2.prints:
            got = forked.groups(g for g in s2.prints if g not in settled)
            s2.groups = got if got is not None else sides[2].scan_folders(filters).groups
    finally:
        if forked is not None:
            forked.close()
    has = (any(s1.files.values()), any(s2.files.values()))
    if not settled:
        return Scanned([s1.flat(), s2.flat()], journal.load(), 0, has)
    rows = journal.load_groups(g for g in stored if g not in settled)
    files = sum(s1.files[g] for g in settled)
    log.debug("%d of %d groups settled by their prints (%d files)", len(settled), len(stored), files)
    return Scanned([s1.flat(settled), s2.flat(settled)], rows, files, has)


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
    scanned = _scan(sides, filters, journal, _by_folder(sides, options, journal, fold_case))
    scans, rows = scanned.scans, scanned.rows
    views = {n: _view(sides[n], scans[n - 1], options) for n in (1, 2)}
    if held and not options.force:
        for n in (1, 2):
            if not scanned.has_files[n - 1] and _journal_files(journal):
                raise SyncAbortedError(
                    f"sync aborted: {sides[n].display} is empty but held files at the last sync"
                    " (unmounted drive? nothing changed; --force to proceed)"
                )
    if options.checksum:
        for n in (1, 2):
            _prehash(sides[n], views[n], options.transfers)
    _recover_pending(journal, rows, views, fold_case, dry_run, sides)
    plan, stats = plan_sync(
        views[1], views[2], rows, options,
        first_run=first_run, fold_case=fold_case, host=host, settled_files=scanned.settled_files,
    )  # fmt: skip
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
    if plan.changes or plan.records or plan.forgets:
        from .executor import Executor  # here: a run with nothing to do needs none of it

        executor = Executor(sides, journal, options, transfer_log=transfer_log, progress=progress)
        try:
            result = executor.run(plan)
            _finish_run(journal, sides, fold_case, result)  # while the copies' last flush runs
        finally:
            executor.finish()
    else:
        result = RunResult()
        _finish_run(journal, sides, fold_case, result)
    return RunOutcome(plan, result, first_run, stats)


def _finish_run(journal: Journal, sides: dict[int, Side], fold_case: bool, result: RunResult) -> None:
    if not result.failures:
        journal.mark_completed()
    if sides[1].is_local and sides[2].is_local and not fold_case:
        journal.refresh_prints()  # for the next run's groups settled whole (see _scan)


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
