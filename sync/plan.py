"""The actions a sync run carries out, and the plan that groups them in execution order.

Actions are named tuples (a first sync plans one per file, so they must be cheap to make).

Order (see :mod:`sync.executor`): journal-only records and forgets, then moves (detected moves,
case-only renames, conflict copies renamed aside), then new directories, then copies (in
parallel) and permission changes, then deletes, then empty directories deepest first.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, NamedTuple

from .model import Entry


class Record(NamedTuple):
    """Both sides already agree on *key*: write the journal row only."""

    key: str
    e1: Entry
    e2: Entry
    hash: str | None


class Forget(NamedTuple):
    """*key* is gone from both sides: drop its journal row."""

    key: str


class Move(NamedTuple):
    """Rename *entry* on *side* to *new_rel* (key *new_key*).

    ``reason``: ``"move"`` (the other side moved it: *other* is the other side's entry at the new
    key), ``"case"`` (case-only rename on a case-insensitive side), ``"conflict"`` (the losing
    version of a conflict renamed aside as a conflict copy).
    """

    side: int
    old_key: str
    new_key: str
    entry: Entry
    new_rel: str
    reason: str
    other: Entry | None = None
    hash: str | None = None


class Mkdir(NamedTuple):
    """Create directory *dst_rel* on side *dst* (mirrors *src_entry* of the other side)."""

    dst: int
    key: str
    src_entry: Entry
    dst_rel: str
    dst_before: Entry | None = None


class Copy(NamedTuple):
    """Copy *src_entry* from side *src* to *dst_rel* on side *dst*.

    *dst_before* is what the destination held when scanned (None: nothing); the executor skips the
    copy if the destination changed since. *verify_source*: re-stat the source before committing
    (off for conflict copies just renamed on stores where a rename rewrites the mtime).
    """

    src: int
    dst: int
    key: str
    src_entry: Entry
    dst_rel: str
    dst_before: Entry | None
    hash: str | None = None
    verify_source: bool = True

    @property
    def size(self) -> int:
        return self.src_entry.size if self.src_entry.kind == "file" else 0


class Chmod(NamedTuple):
    """Set permission bits *mode* on *side*'s *rel*; the journal row becomes (e1, e2)."""

    side: int
    key: str
    rel: str
    mode: int
    e1: Entry
    e2: Entry
    hash: str | None


class Delete(NamedTuple):
    """Delete file or link *entry* (as scanned) on *side*."""

    side: int
    key: str
    entry: Entry


class Rmdir(NamedTuple):
    """Remove directory *entry* on *side* if it is empty by then."""

    side: int
    key: str
    entry: Entry


class Conflict(NamedTuple):
    """Both sides changed *rel* differently (report only: the work is in moves and copies)."""

    key: str
    rel: str
    policy: str
    winner: int
    copy_rel: str | None


class Skip(NamedTuple):
    """Something on *side* that is not synced, and why (one line)."""

    side: int
    rel: str
    reason: str


@dataclass
class Plan:
    records: list[Record] = field(default_factory=list)
    forgets: list[Forget] = field(default_factory=list)
    moves: list[Move] = field(default_factory=list)
    mkdirs: list[Mkdir] = field(default_factory=list)
    copies: list[Copy] = field(default_factory=list)
    chmods: list[Chmod] = field(default_factory=list)
    deletes: list[Delete] = field(default_factory=list)
    rmdirs: list[Rmdir] = field(default_factory=list)
    conflicts: list[Conflict] = field(default_factory=list)
    skips: list[Skip] = field(default_factory=list)
    first_run: bool = False

    @property
    def changes(self) -> int:
        """Actions that change a side (journal-only work excluded)."""
        return (
            len(self.moves)
            + len(self.mkdirs)
            + len(self.copies)
            + len(self.chmods)
            + len(self.deletes)
            + len(self.rmdirs)
        )

    @property
    def copy_bytes(self) -> int:
        return sum(c.size for c in self.copies)

    def deletes_on(self, side: int) -> int:
        return sum(1 for d in self.deletes if d.side == side)

    def summary(self) -> dict[str, int]:
        return {
            "copies": len(self.copies),
            "copy_bytes": self.copy_bytes,
            "moves": sum(1 for m in self.moves if m.reason != "conflict"),
            "deletes": len(self.deletes),
            "mkdirs": len(self.mkdirs),
            "rmdirs": len(self.rmdirs),
            "chmods": len(self.chmods),
            "conflicts": len(self.conflicts),
            "skipped": len(self.skips),
        }

    def lines(self, names: tuple[str, str] = ("path1", "path2")) -> list[str]:
        """The plan as human-readable lines (for ``--dry-run``)."""
        n = {1: names[0], 2: names[1]}
        out: list[str] = []
        for cf in self.conflicts:
            kept = f", loser kept as {cf.copy_rel}" if cf.copy_rel else ", loser overwritten"
            out.append(f"conflict {cf.rel}: {cf.policy} -> {n[cf.winner]} wins{kept}")
        for m in self.moves:
            if m.reason != "conflict":
                out.append(f"move     {n[m.side]}: {m.entry.rel} -> {m.new_rel}")
        for mk in self.mkdirs:
            out.append(f"mkdir    {n[mk.dst]}: {mk.dst_rel}/")
        for c in self.copies:
            out.append(f"copy     {n[c.src]} -> {n[c.dst]}: {c.dst_rel}")
        for h in self.chmods:
            out.append(f"chmod    {n[h.side]}: {h.rel} {h.mode:o}")
        for d in self.deletes:
            out.append(f"delete   {n[d.side]}: {d.entry.rel}")
        for r in self.rmdirs:
            out.append(f"rmdir    {n[r.side]}: {r.entry.rel}/")
        for s in self.skips:
            out.append(f"skip     {n[s.side]}: {s.rel} ({s.reason})")
        return out

    def as_json(self) -> dict[str, Any]:
        return {
            "summary": self.summary(),
            "first_run": self.first_run,
            "conflicts": [
                {"path": c.rel, "policy": c.policy, "winner": c.winner, "conflict_copy": c.copy_rel}
                for c in self.conflicts
            ],
            "moves": [
                {"side": m.side, "from": m.entry.rel, "to": m.new_rel} for m in self.moves if m.reason != "conflict"
            ],
            "copies": [{"from": c.src, "to": c.dst, "path": c.dst_rel, "bytes": c.size} for c in self.copies],
            "deletes": [{"side": d.side, "path": d.entry.rel} for d in self.deletes],
            "mkdirs": [{"side": d.dst, "path": d.dst_rel} for d in self.mkdirs],
            "rmdirs": [{"side": r.side, "path": r.entry.rel} for r in self.rmdirs],
            "skipped": [{"side": s.side, "path": s.rel, "reason": s.reason} for s in self.skips],
        }


@dataclass
class RunResult:
    """What a run did.

    Attributes:
        copied, copied_bytes, moved, deleted, mkdirs, rmdirs, chmods: counts (bytes in bytes).
        conflicts: conflicts resolved.
        changed_during_run: rels skipped or left for the next run because they changed meanwhile.
        failures: ``(rel, one-line error)`` of actions that failed.
    """

    copied: int = 0
    copied_bytes: int = 0
    moved: int = 0
    deleted: int = 0
    mkdirs: int = 0
    rmdirs: int = 0
    chmods: int = 0
    conflicts: int = 0
    changed_during_run: list[str] = field(default_factory=list)
    failures: list[tuple[str, str]] = field(default_factory=list)

    def as_json(self) -> dict[str, object]:
        return {
            "copied": self.copied,
            "copied_bytes": self.copied_bytes,
            "moved": self.moved,
            "deleted": self.deleted,
            "mkdirs": self.mkdirs,
            "rmdirs": self.rmdirs,
            "chmods": self.chmods,
            "conflicts": self.conflicts,
            "changed_during_run": self.changed_during_run,
            "failures": [{"path": p, "error": e} for p, e in self.failures],
        }
