"""The three-way planner on hand-made scans and journals (no filesystem)."""

from __future__ import annotations

import unicodedata

import pytest
import xxhash

from sync.journal import Synced
from sync.model import DIR, FILE, Entry, key_of
from sync.options import SyncOptions, delete_limit
from sync.plan import Plan
from sync.planner import SideView, plan_sync

S = 1_000_000_000


def f(rel: str, data: bytes, mtime_s: int = 1000, **kw: object) -> tuple[Entry, bytes]:
    return Entry(rel, FILE, len(data), mtime_s * S, 0o644, **kw), data  # type: ignore[arg-type]


class World:
    """Two sides (rel -> (entry, content)) and a journal built from a previous 'sync'."""

    def __init__(self) -> None:
        self.sides: dict[int, dict[str, tuple[Entry, bytes]]] = {1: {}, 2: {}}
        self.journal: dict[str, Synced] = {}
        self.hashed: list[tuple[int, str]] = []

    def both(self, rel: str, data: bytes, mtime_s: int = 1000) -> None:
        e, _ = f(rel, data, mtime_s)
        h = xxhash.xxh3_128_hexdigest(data)
        self.sides[1][rel] = self.sides[2][rel] = (e, data)
        self.journal[key_of(rel, fold_case=False)] = Synced.of(rel, FILE, h, e, e)

    def put(self, n: int, rel: str, data: bytes, mtime_s: int = 2000) -> None:
        self.sides[n][rel] = f(rel, data, mtime_s)

    def view(self, n: int) -> SideView:
        def hasher(e: Entry) -> str:
            self.hashed.append((n, e.rel))
            return xxhash.xxh3_128_hexdigest(self.sides[n][e.rel][1])

        return SideView(n, {r: e for r, (e, _) in self.sides[n].items()}, hasher=hasher)

    def plan(self, first_run: bool = False, fold_case: bool = False, **opts: object) -> Plan:
        p, _ = plan_sync(
            self.view(1), self.view(2), self.journal, SyncOptions(**opts),  # type: ignore[arg-type]
            first_run=first_run, fold_case=fold_case, host="h",
        )  # fmt: skip
        return p


def copies(p: Plan) -> set[tuple[int, int, str]]:
    return {(c.src, c.dst, c.dst_rel) for c in p.copies}


def test_unchanged_tree_plans_nothing_and_hashes_nothing() -> None:
    w = World()
    for i in range(5):
        w.both(f"d/f{i}", b"x" * i)
    p = w.plan()
    assert p.changes == 0 and not p.records and not w.hashed


def test_one_sided_changes_propagate_both_ways() -> None:
    w = World()
    for name in "abcd":
        w.both(name, name.encode())
    w.put(1, "a", b"new a")  # changed on 1
    w.put(2, "b", b"new b")  # changed on 2
    w.put(1, "n1", b"only on 1")
    w.put(2, "n2", b"only on 2")
    del w.sides[1]["c"]  # deleted on 1
    p = w.plan()
    assert copies(p) == {(1, 2, "a"), (2, 1, "b"), (1, 2, "n1"), (2, 1, "n2")}
    assert [(d.side, d.entry.rel) for d in p.deletes] == [(2, "c")]
    assert not p.conflicts


@pytest.mark.parametrize(
    "policy,winner",
    [("newest", 2), ("oldest", 1), ("larger", 1), ("smaller", 2), ("path1", 1), ("path2", 2), ("keep-both", 2)],
)
def test_conflict_policies(policy: str, winner: int) -> None:
    w = World()
    w.both("doc.txt", b"base")
    w.put(1, "doc.txt", b"side one, longer", mtime_s=2000)
    w.put(2, "doc.txt", b"side two", mtime_s=3000)
    p = w.plan(conflict_resolution=policy)
    [c] = p.conflicts
    assert c.winner == winner
    assert c.copy_rel == f"doc.conflict-h-{'19700101-005000' if winner == 1 else '19700101-003320'}.txt"
    loser = 3 - winner
    [m] = p.moves
    assert (m.side, m.entry.rel, m.new_rel, m.reason) == (loser, "doc.txt", c.copy_rel, "conflict")
    assert copies(p) == {(winner, loser, "doc.txt"), (loser, winner, c.copy_rel)}


def test_no_conflict_copies_overwrites_loser_but_keep_both_still_keeps() -> None:
    w = World()
    w.both("a", b"base")
    w.put(1, "a", b"one", 2000)
    w.put(2, "a", b"two", 3000)
    p = w.plan(conflict_copies=False)
    assert not p.moves and copies(p) == {(2, 1, "a")} and p.conflicts[0].copy_rel is None
    p = w.plan(conflict_copies=False, conflict_resolution="keep-both")
    assert p.conflicts[0].copy_rel is not None


def test_identical_changes_on_both_sides_are_not_a_conflict() -> None:
    w = World()
    w.both("a", b"base")
    w.put(1, "a", b"same new content", 2000)
    w.put(2, "a", b"same new content", 2500)
    p = w.plan()
    assert not p.conflicts and p.changes == 0
    assert [r.key for r in p.records] == ["a"]


def test_modify_vs_delete_keeps_the_modification_and_delete_delete_is_quiet() -> None:
    w = World()
    w.both("m", b"base")
    w.both("gone", b"g")
    for n in (1, 2):
        w.both(f"keep{n}", b"k")  # so deletes stay under 50%
    w.put(2, "m", b"modified")
    del w.sides[1]["m"]
    del w.sides[1]["gone"], w.sides[2]["gone"]
    p = w.plan()
    assert copies(p) == {(2, 1, "m")} and not p.deletes
    assert [x.key for x in p.forgets] == ["gone"]


def test_move_detected_by_content_hash() -> None:
    w = World()
    w.both("old/name.bin", b"payload" * 100)
    w.both("other", b"o")
    del w.sides[1]["old/name.bin"]
    w.put(1, "new/place.bin", b"payload" * 100)
    p = w.plan()
    [m] = p.moves
    assert (m.side, m.entry.rel, m.new_rel, m.reason) == (2, "old/name.bin", "new/place.bin", "move")
    assert not p.copies and not p.deletes


def test_first_run_merges_and_never_deletes() -> None:
    w = World()
    w.both("a", b"a")
    del w.sides[1]["a"]  # in the journal of an unfinished first run, gone from side 1
    w.put(1, "x", b"x1", 2000)
    w.put(2, "x", b"x2", 3000)
    p = w.plan(first_run=True)
    assert not p.deletes and (2, 1, "a") in copies(p)
    assert len(p.conflicts) == 1  # both sides' x are kept (one as a conflict copy)


def test_unicode_nfc_and_nfd_names_are_the_same_file() -> None:
    w = World()
    nfc, nfd = unicodedata.normalize("NFC", "café.txt"), unicodedata.normalize("NFD", "café.txt")
    w.put(1, nfc, b"same", 1000)
    w.put(2, nfd, b"same", 1000)
    p = w.plan()
    assert p.changes == 0 and [r.key for r in p.records] == [nfc]


def test_case_insensitive_destination_never_gets_two_names_for_one_slot() -> None:
    w = World()
    w.put(1, "Report.txt", b"upper")
    w.put(1, "report.txt", b"lower")
    p = w.plan(fold_case=True)
    assert copies(p) == {(1, 2, "Report.txt")}
    assert [(s.side, s.rel) for s in p.skips] == [(1, "report.txt")]


def test_case_only_rename_on_case_insensitive_pair_is_a_rename() -> None:
    w = World()
    e, _ = f("Report.txt", b"r")
    w.sides[1]["report.txt"] = (e.with_rel("report.txt"), b"r")
    w.sides[2]["Report.txt"] = (e, b"r")
    w.journal["report.txt"] = Synced.of("report.txt", FILE, xxhash.xxh3_128_hexdigest(b"r"), e, e)
    p = w.plan(fold_case=True)
    [m] = p.moves
    assert (m.side, m.entry.rel, m.new_rel, m.reason) == (2, "Report.txt", "report.txt", "case")


def test_new_file_follows_existing_folder_spelling_on_other_side() -> None:
    w = World()
    nfd = unicodedata.normalize("NFD", "Été")
    w.sides[1]["Été"] = (Entry("Été", DIR), b"")
    w.sides[2][nfd] = (Entry(nfd, DIR), b"")
    w.put(1, "Été/new.txt", b"n")
    p = w.plan()
    assert copies(p) == {(1, 2, f"{nfd}/new.txt")}


def test_one_way_keeps_destination_edits_as_conflict_copy_and_leaves_extras() -> None:
    w = World()
    w.both("a", b"a")
    w.both("b", b"b")
    w.put(2, "a", b"edited on destination")
    w.put(2, "extra", b"only on destination")
    p = w.plan(direction="one-way")
    assert copies(p) == {(1, 2, "a")}
    [m] = p.moves
    assert m.side == 2 and m.reason == "conflict"
    assert not p.deletes


def test_mtime_within_window_is_equal_without_hashing() -> None:
    w = World()
    w.put(1, "a", b"abc", 1000)
    e, _ = f("a", b"abc")
    w.sides[2]["a"] = (Entry("a", FILE, 3, 1000 * S + 400_000_000, 0o644), b"abc")
    v1, v2 = w.view(1), w.view(2)
    v2.window_ns = S - 1
    p, _ = plan_sync(v1, v2, {}, SyncOptions(), first_run=True)
    assert p.changes == 0 and not w.hashed


def test_delete_limit_parsing() -> None:
    assert delete_limit("50%", 10) == 5
    assert delete_limit("3", 1000) == 3
    with pytest.raises(Exception, match="max-delete"):
        delete_limit("lots", 10)
