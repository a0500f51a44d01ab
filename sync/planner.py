"""Three-way reconcile: each side against the journal, then the two sides against each other.

Per key (see :func:`sync.model.key_of`), each side is ``new`` (not in the journal), ``absent``,
``unchanged``, ``touched`` (metadata changed, same content), ``changed`` or ``deleted``
compared with its own state at the last sync (size, then mtime within the side's modify-window,
then ETag; XXH3-128 when they disagree but the size matches, or always with ``checksum``).

Two-way rules (as in Unison's reconciler and rclone bisync, with content hashes deciding ties):

- one side changed or new → copy it to the other side;
- both changed (or both new) with the same content → journal only, not a conflict;
- both changed differently → conflict: the policy picks the winner, the loser is renamed to a
  conflict copy ``name.conflict-<host>-<YYYYMMDD-HHMMSS>.ext`` (UTC time of the losing version)
  that is copied to the other side too, unless conflict copies are off;
- modified on one side, deleted on the other → the modification is copied back;
- deleted on both → the journal row goes; deleted on one side → deleted on the other, except on
  the first run (a merge) which never deletes;
- a file deleted on one side and a new file with the same size and XXH3-128 on that side is a move:
  the other side renames instead of copying and deleting;
- case-insensitive sides: a case-only rename is carried out as a rename; two names that fold to
  the same key on one side are not synced (reported) instead of overwriting each other.

One-way (path1 → path2): path1 always wins; path2's own edits of synced files are kept as
conflict copies on path2, files only on path2 are left alone.
"""

from __future__ import annotations

import os
import time
import unicodedata
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field

from .journal import Synced
from .model import DIR, FILE, LINK, Entry, key_of
from .options import SyncOptions
from .plan import Chmod, Conflict, Copy, Delete, Forget, Mkdir, Move, Plan, Record, Rmdir, Skip

NEW, ABSENT, UNCHANGED, TOUCHED, CHANGED, DELETED = "new", "absent", "unchanged", "touched", "changed", "deleted"
SAME = (UNCHANGED, TOUCHED)


@dataclass
class SideView:
    """What the planner knows of one side.

    Attributes:
        number: 1 or 2.
        scan: the side's entries keyed by rel (from :mod:`sync.scanner`); the planner may use
            it as :attr:`entries` and add reserved conflict-copy names to it.
        has_dirs, has_links, has_modes: capabilities (see :class:`sync.sides.Side`).
        window_ns: mtimes closer than this are equal on this side.
        hasher: XXH3-128 hex of an entry's content on this side (may be slow: remote reads).
    """

    number: int
    scan: dict[str, Entry]
    has_dirs: bool = True
    has_links: bool = True
    has_modes: bool = True
    window_ns: int = 0
    hasher: Callable[[Entry], str] | None = None
    entries: dict[str, Entry] = field(default_factory=dict)  # by key, filled by the planner (may be scan)
    hashes: dict[str, str] = field(default_factory=dict)  # rel -> digest computed in this run

    def hash(self, e: Entry) -> str:
        if e.kind == LINK:
            import xxhash

            return xxhash.xxh3_128_hexdigest((e.target or "").encode())
        h = self.hashes.get(e.rel)
        if h is None:
            if self.hasher is None:
                raise RuntimeError("no hasher for this side")
            h = self.hashes[e.rel] = self.hasher(e)
        return h


@dataclass
class SideStats:
    """Counts of one side against the journal (for the safety checks)."""

    journal_files: int = 0
    present: int = 0
    changed: int = 0
    deleted: int = 0


class Planner:
    """Builds the :class:`sync.plan.Plan` of one run.

    Args:
        v1, v2: the two sides.
        journal: the pair's journal rows by key (maybe without print groups settled as a whole).
        options: the pair's options (direction, policy, conflict copies, checksum).
        first_run: no run of the pair has finished: merge, never delete.
        fold_case: keys are case-folded (a side is case-insensitive).
        host: the name used in conflict copies.
        settled_files: files in print groups left out of *journal* and the scans as settled.
    """

    def __init__(
        self,
        v1: SideView,
        v2: SideView,
        journal: dict[str, Synced],
        options: SyncOptions,
        *,
        first_run: bool,
        fold_case: bool = False,
        host: str = "host",
        settled_files: int = 0,
    ) -> None:
        self.v = {1: v1, 2: v2}
        self.journal = journal
        self.options = options
        self.one_way = options.direction == "one-way"
        self.fold_case = fold_case
        self.host = host
        self.plan = Plan(first_run=first_run)
        self.first_run = first_run
        self.stats = {1: SideStats(), 2: SideStats()}
        self._states: dict[tuple[int, str], str] = {}
        self._planned_dirs: dict[int, dict[str, str]] = {1: {}, 2: {}}
        self._handled: set[str] = set()
        self._index(1, v2)
        self._index(2, v1)
        self._settled_files = settled_files
        self._settled = self._find_settled()
        self._unsettled = [j for key, j in journal.items() if key not in self._settled]

    # -- indexing -----------------------------------------------------------------------------

    def _index(self, n: int, other: SideView) -> None:
        """Key side *n*'s scan; report entries the pair cannot carry or whose names collide."""
        v = self.v[n]
        dirs = v.has_dirs and other.has_dirs
        own_keys = all(map(str.isascii, v.scan)) or all(map(_is_nfc, v.scan))
        if dirs and other.has_links and not self.fold_case and own_keys:
            v.entries = v.scan  # every name is its own key: nothing to drop, nothing collides
            return
        for rel in sorted(v.scan):
            e = v.scan[rel]
            if e.kind == DIR and not dirs:
                continue
            if e.kind == LINK and not other.has_links:
                self.plan.skips.append(Skip(n, rel, "symlink: the other side cannot store links"))
                continue
            k = key_of(rel, fold_case=self.fold_case)
            first = v.entries.get(k)
            if first is not None:
                why = "case-insensitive" if self.fold_case else "Unicode-normalised"
                self.plan.skips.append(Skip(n, rel, f"same {why} name as {first.rel}: not synced to avoid overwriting"))
                continue
            v.entries[k] = e

    def _find_settled(self) -> set[str]:
        """Keys both sides hold exactly as the journal recorded them (spelling, kind, mode, ETag;
        files: size and mtime; links: target), with permission bits agreeing: nothing to do,
        whatever the rules. Most keys of a rescan; they skip the per-key rules. ``checksum``
        compares contents, so then no key is settled without its rules."""
        if self.options.checksum:
            return set()
        e1s, e2s = self.v[1].entries, self.v[2].entries
        both_modes = self.v[1].has_modes and self.v[2].has_modes
        out = set()
        for key, j in self.journal.items():
            a = e1s.get(key)
            b = e2s.get(key)
            if a is None or b is None:
                continue
            kind = j.kind
            if (
                a.kind != kind
                or b.kind != kind
                or a.rel != j.rel1
                or b.rel != j.rel2
                or a.mode != j.mode1
                or b.mode != j.mode2
                or a.etag != j.etag1
                or b.etag != j.etag2
                or (both_modes and a.mode != b.mode)
            ):
                continue
            if kind == DIR:
                out.add(key)
            elif (
                a.size == j.size1
                and a.mtime_ns == j.mtime1_ns
                and b.size == j.size2
                and b.mtime_ns == j.mtime2_ns
                and a.target == b.target == j.target
            ):
                out.add(key)
                self._settled_files += kind == FILE
        return out

    # -- per-side state -----------------------------------------------------------------------

    def state(self, n: int, key: str) -> str:
        s = self._states.get((n, key))
        if s is None:
            s = self._states[(n, key)] = self._state(n, key)
        return s

    def _state(self, n: int, key: str) -> str:
        v = self.v[n]
        j = self.journal.get(key)
        cur = v.entries.get(key)
        if j is None:
            return NEW if cur is not None else ABSENT
        if cur is None:
            return DELETED
        je = j.side(n)
        if cur.kind != j.kind:
            return CHANGED
        if cur.kind == DIR:
            return UNCHANGED
        if cur.kind == LINK:
            return UNCHANGED if cur.target == je.target else CHANGED
        if cur.size != je.size:
            return CHANGED
        meta_same = abs(cur.mtime_ns - je.mtime_ns) <= v.window_ns or bool(cur.etag and cur.etag == je.etag)
        if meta_same and not self.options.checksum:
            return UNCHANGED
        if j.hash is None:
            return UNCHANGED if meta_same else CHANGED
        if v.hash(cur) != j.hash:
            return CHANGED
        return UNCHANGED if meta_same else TOUCHED

    def same_content(self, a: Entry, b: Entry, *, fast: bool) -> bool:
        """Whether side 1's *a* and side 2's *b* hold the same thing. *fast*: equal size and mtime
        (within both sides' windows) is enough, as in ``rclone check`` without ``--checksum``."""
        if a.kind != b.kind:
            return False
        if a.kind == DIR:
            return True
        if a.kind == LINK:
            return a.target == b.target
        if a.size != b.size:
            return False
        window = max(self.v[1].window_ns, self.v[2].window_ns, self.options.modify_window_ns)
        if fast and not self.options.checksum and abs(a.mtime_ns - b.mtime_ns) <= window:
            return True
        return self.v[1].hash(a) == self.v[2].hash(b)

    def _hash_of(self, n: int, e: Entry) -> str | None:
        return self.v[n].hashes.get(e.rel) if e.kind == FILE else (self.v[n].hash(e) if e.kind == LINK else None)

    # -- building the plan --------------------------------------------------------------------

    def build(self) -> Plan:
        keys = {j.key for j in self._unsettled}
        keys |= self.v[1].entries.keys() - self.journal.keys()
        keys |= self.v[2].entries.keys() - self.journal.keys()
        self._count_stats()
        self._detect_moves(1)
        if not self.one_way:
            self._detect_moves(2)
        # parents before children: mkdirs in order, and a new dir's spelling is known to its files
        for key in sorted(keys, key=lambda k: (k.count("/"), k)):
            if key in self._handled:
                continue
            if self.one_way:
                self._one_way(key)
            else:
                self._two_way(key)
        self.plan.rmdirs.sort(key=lambda r: -r.entry.rel.count("/"))
        return self.plan

    def _count_stats(self) -> None:
        for st in self.stats.values():
            st.journal_files = st.present = self._settled_files
        for j in self._unsettled:
            if j.kind != FILE:
                continue
            for n in (1, 2):
                st = self.stats[n]
                st.journal_files += 1
                s = self.state(n, j.key)
                if s == DELETED:
                    st.deleted += 1
                else:
                    st.present += 1
                    if s == CHANGED:
                        st.changed += 1

    def _detect_moves(self, a: int) -> None:
        """Files gone from side *a* whose content reappears under a new name on side *a*."""
        b = 3 - a
        gone: dict[tuple[int, str], list[str]] = defaultdict(list)
        for j in self._unsettled:
            key = j.key
            if j.kind == FILE and j.hash and self.state(a, key) == DELETED and self.state(b, key) in SAME:
                gone[(j.size1 if a == 1 else j.size2, j.hash)].append(key)
        if not gone or self.first_run:
            return
        sizes = {size for size, _ in gone}
        new = [(key, e) for key, e in self.v[a].entries.items()
               if e.kind == FILE and e.size in sizes and key not in self.journal and key not in self.v[b].entries]  # fmt: skip
        for key, e in sorted(new):
            candidates = gone.get((e.size, self.v[a].hash(e)))
            if not candidates:
                continue
            old = candidates.pop(0)
            h = self.journal[old].hash
            before = self.v[b].entries[old]
            self.plan.moves.append(
                Move(b, old, key, before, self._dest_rel(b, e.rel), "move", other=e.with_hash(h), hash=h)
            )
            self._handled.update((old, key))

    def _dest_rel(self, dst: int, src_rel: str) -> str:
        """*src_rel* spelled for side *dst*: parent folders that already exist there (under
        another normalisation or case) keep that side's spelling."""
        parts = src_rel.split("/")
        out = ""
        for i, part in enumerate(parts[:-1]):
            pk = key_of("/".join(parts[: i + 1]), fold_case=self.fold_case)
            have = self.v[dst].entries.get(pk)
            spelled = have.rel if have is not None and have.kind == DIR else self._planned_dirs[dst].get(pk)
            out = spelled if spelled is not None else (f"{out}/{part}" if out else part)
        return f"{out}/{parts[-1]}" if out else parts[-1]

    def _propagate(self, src: int, key: str, e: Entry, dst_before: Entry | None, dst_rel: str | None = None) -> None:
        """Make side 3-src hold what side *src* holds at *key*."""
        dst = 3 - src
        rel = dst_rel or (dst_before.rel if dst_before is not None else self._dest_rel(dst, e.rel))
        if e.kind == DIR:
            self._planned_dirs[dst][key] = rel
            if dst_before is not None and dst_before.kind == DIR:
                pair = (e, dst_before) if src == 1 else (dst_before, e)
                self.plan.records.append(Record(key, pair[0], pair[1], None))
            else:
                self.plan.mkdirs.append(Mkdir(dst, key, e, rel, dst_before))
            return
        self.plan.copies.append(Copy(src, dst, key, e, rel, dst_before, self._hash_of(src, e)))

    def _delete(self, n: int, key: str, e: Entry) -> None:
        if e.kind == DIR:
            self.plan.rmdirs.append(Rmdir(n, key, e))
        else:
            self.plan.deletes.append(Delete(n, key, e))

    def _in_sync(self, key: str, a: Entry, b: Entry, j: Synced | None) -> None:
        """Both sides hold the same content: refresh the journal row if anything moved on,
        carry permission changes and case-only renames."""
        s1, s2 = self.state(1, key), self.state(2, key)
        if j is not None and a.kind != DIR and self.fold_case:
            if self._case_rename(key, a, b, j):
                return
        h = (j.hash if j is not None else None) or self.v[1].hashes.get(a.rel) or self.v[2].hashes.get(b.rel)
        if a.kind == LINK:
            h = self.v[1].hash(a)
        if (
            self.v[1].has_modes
            and self.v[2].has_modes
            and a.mode is not None
            and b.mode is not None
            and a.mode != b.mode
        ):
            j1 = j.mode1 if j is not None else None
            # the side whose mode moved on since the last sync wins (path1 if both or unknown)
            if j is not None and a.mode == j1 and not self.one_way:
                self.plan.chmods.append(Chmod(1, key, a.rel, b.mode, a._replace(mode=b.mode), b, h))
            else:
                self.plan.chmods.append(Chmod(2, key, b.rel, a.mode, a, b._replace(mode=a.mode), h))
            return
        if j is None or s1 == TOUCHED or s2 == TOUCHED or a.rel != j.rel1 or b.rel != j.rel2:
            self.plan.records.append(Record(key, a, b, h))
        elif a.mode != j.mode1 or b.mode != j.mode2 or a.etag != j.etag1 or b.etag != j.etag2:
            self.plan.records.append(Record(key, a, b, h))

    def _case_rename(self, key: str, a: Entry, b: Entry, j: Synced) -> bool:
        """A case-only rename on one side (same folded key, new spelling): rename the other."""

        def nfc(s: str) -> str:
            return unicodedata.normalize("NFC", s)

        renamed1 = nfc(a.rel) != nfc(j.rel1)
        renamed2 = nfc(b.rel) != nfc(j.rel2)
        if renamed1 == renamed2 or (self.one_way and renamed2):
            return False
        src, e, other = (1, a, b) if renamed1 else (2, b, a)
        dst = 3 - src
        new_rel = self._dest_rel(dst, e.rel)
        if nfc(new_rel) == nfc(other.rel):
            return False
        self.plan.moves.append(Move(dst, key, key, other, new_rel, "case", other=e, hash=j.hash))
        return True

    def _conflict(self, key: str, a: Entry, b: Entry) -> None:
        policy = self.options.conflict_resolution
        if a.kind != b.kind and DIR in (a.kind, b.kind):
            winner = 1 if a.kind == DIR else 2  # a folder keeps the name; the file is renamed aside
        elif self.one_way:
            winner = 1
        else:
            winner = self._winner(policy, a, b)
        w, lose = (a, b) if winner == 1 else (b, a)
        loser = 3 - winner
        keep = self.options.conflict_copies or policy == "keep-both" or a.kind != b.kind
        copy_rel = None
        if keep:
            copy_rel = self._conflict_name(loser, lose)
            ckey = key_of(copy_rel, fold_case=self.fold_case)
            self.plan.moves.append(Move(loser, key, ckey, lose, copy_rel, "conflict"))
            if not self.one_way:
                self.plan.copies.append(
                    Copy(loser, winner, ckey, lose.with_rel(copy_rel), self._dest_rel(winner, copy_rel), None,
                         self._hash_of(loser, lose), verify_source=False)
                )  # fmt: skip
            self._propagate(winner, key, w, None, dst_rel=lose.rel)
        else:
            self._propagate(winner, key, w, lose)
        self.plan.conflicts.append(Conflict(key, w.rel, policy if a.kind == b.kind else "folder", winner, copy_rel))

    @staticmethod
    def _winner(policy: str, a: Entry, b: Entry) -> int:
        if policy == "path1":
            return 1
        if policy == "path2":
            return 2
        if policy in ("larger", "smaller") and a.size != b.size:
            return 1 if (a.size > b.size) == (policy == "larger") else 2
        if policy == "oldest":
            return 1 if a.mtime_ns <= b.mtime_ns else 2
        return 1 if a.mtime_ns >= b.mtime_ns else 2  # newest, keep-both, and ties of larger/smaller

    def _conflict_name(self, n: int, e: Entry) -> str:
        """``dir/name.conflict-<host>-<YYYYMMDD-HHMMSS>.ext`` (UTC mtime of the losing version),
        with ``-2``, ``-3``... when taken on either side."""
        head, _, base = e.rel.rpartition("/")
        stem, ext = os.path.splitext(base)
        stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime(e.mtime_ns // 1_000_000_000))
        for i in range(1, 10_000):
            name = f"{stem}.conflict-{self.host}-{stamp}{'' if i == 1 else f'-{i}'}{ext}"
            rel = f"{head}/{name}" if head else name
            k = key_of(rel, fold_case=self.fold_case)
            if k not in self.v[1].entries and k not in self.v[2].entries and k not in self.journal:
                self.v[n].entries[k] = e.with_rel(rel)  # reserve the name
                return rel
        raise RuntimeError("no free conflict-copy name")  # pragma: no cover

    # -- the rules ----------------------------------------------------------------------------

    def _two_way(self, key: str) -> None:
        j = self.journal.get(key)
        a, b = self.v[1].entries.get(key), self.v[2].entries.get(key)
        s1, s2 = self.state(1, key), self.state(2, key)
        if j is None:
            if a is not None and b is not None:
                if self.same_content(a, b, fast=True):
                    self._in_sync(key, a, b, None)
                else:
                    self._conflict(key, a, b)
            elif a is not None:
                self._propagate(1, key, a, None)
            elif b is not None:
                self._propagate(2, key, b, None)
            return
        if s1 == DELETED and s2 == DELETED:
            self.plan.forgets.append(Forget(key))
        elif s1 == DELETED or s2 == DELETED:
            gone, kept = (1, 2) if s1 == DELETED else (2, 1)
            e = self.v[kept].entries[key]
            if self.state(kept, key) in SAME and not self.first_run:
                self._delete(kept, key, e)
            else:  # modified vs deleted keeps the modification; the first run never deletes
                self._propagate(kept, key, e, None)
        elif s1 in SAME and s2 in SAME:
            assert a is not None and b is not None
            self._in_sync(key, a, b, j)
        elif s2 in SAME:
            assert a is not None
            self._propagate(1, key, a, b)
        elif s1 in SAME:
            assert b is not None
            self._propagate(2, key, b, a)
        else:
            assert a is not None and b is not None
            if self.same_content(a, b, fast=False):
                self._in_sync(key, a, b, None)
            else:
                self._conflict(key, a, b)

    def _one_way(self, key: str) -> None:
        j = self.journal.get(key)
        a, b = self.v[1].entries.get(key), self.v[2].entries.get(key)
        s1, s2 = self.state(1, key), self.state(2, key)
        if a is None:
            if j is None:
                return  # only on the destination: left alone
            if s2 in SAME and b is not None and not self.first_run:
                self._delete(2, key, b)
            else:
                self.plan.forgets.append(Forget(key))  # destination edits are kept; no longer synced
            return
        if b is None:
            self._propagate(1, key, a, None)
            return
        if j is not None and s1 in SAME and s2 in SAME:
            self._in_sync(key, a, b, j)
        elif j is not None and s2 in SAME:
            self._propagate(1, key, a, b)
        elif self.same_content(a, b, fast=j is None):
            self._in_sync(key, a, b, None)
        else:
            self._conflict(key, a, b)  # the destination's own version is kept as a conflict copy


def _is_nfc(rel: str) -> bool:
    return rel.isascii() or unicodedata.is_normalized("NFC", rel)


def plan_sync(
    v1: SideView,
    v2: SideView,
    journal: dict[str, Synced],
    options: SyncOptions,
    *,
    first_run: bool,
    fold_case: bool = False,
    host: str = "host",
    settled_files: int = 0,
) -> tuple[Plan, dict[int, SideStats]]:
    """Plan one run (see the module docstring). Returns the plan and each side's counts.

    *journal* and the views' scans may leave out whole print groups the caller found settled (every
    entry on both sides as its row records it); *settled_files* counts the files there."""
    p = Planner(v1, v2, journal, options, first_run=first_run, fold_case=fold_case, host=host,
                settled_files=settled_files)  # fmt: skip
    return p.build(), p.stats
