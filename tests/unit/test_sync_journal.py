"""The sync journal: migrations keep rows, rows round-trip, pending copies."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from sync.journal import MIGRATIONS, Journal, Synced
from sync.model import FILE, Entry


def test_migration_3_keeps_rows_and_drops_rowids(tmp_path: Path) -> None:
    path = tmp_path / "j.db"
    db = sqlite3.connect(path, isolation_level=None)
    for i in range(2):  # a journal as the first two migrations left it
        db.executescript(f"BEGIN; {MIGRATIONS[i]}; PRAGMA user_version = {i + 1}; COMMIT;")
    db.execute(
        "INSERT INTO entries VALUES ('a.txt', 'file', 'h', NULL, 'a.txt', 3, 5, 420, NULL, 'a.txt', 3, 6, 420, 'e', 7)"
    )
    db.execute("INSERT INTO pending VALUES ('b.txt', 2, 'b.txt', 4, 8, 420)")
    db.close()
    j = Journal(path)
    try:
        assert j.db.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
        assert j.load() == {
            "a.txt": Synced("a.txt", FILE, "h", None, "a.txt", 3, 5, 420, None, "a.txt", 3, 6, 420, "e")
        }
        assert j.pending() == [("b.txt", 2, Entry("b.txt", FILE, 4, 8, 420))]
        sql = " ".join(r[0] for r in j.db.execute("SELECT sql FROM sqlite_master WHERE name IN ('entries', 'pending')"))
        assert sql.count("WITHOUT ROWID") == 2
    finally:
        j.close()


def test_rows_round_trip_and_pending_until_cleared(tmp_path: Path) -> None:
    j = Journal(tmp_path / "j.db")
    try:
        e1 = Entry("Dir/x.bin", FILE, 10, 1_700_000_000_123_456_789, 0o644)
        e2 = Entry("dir/x.bin", FILE, 10, 1_700_000_000_000_000_000, None, etag="v1")
        j.begin_copies([("dir/x.bin", 2, e1)])
        j.commit_copy("dir/x.bin", e1, e2, "d" * 32)
        row = j.load()["dir/x.bin"]
        assert row.side1 == e1.with_hash("d" * 32) and row.side2 == e2.with_hash("d" * 32)
        assert row == Synced.of("dir/x.bin", FILE, "d" * 32, e1, e2)
        assert [k for k, _, _ in j.pending()] == ["dir/x.bin"]  # until the copy phase ends
        j.clear_all_pending()
        assert j.pending() == []
        assert not j.completed
        j.mark_completed()
        first = j.get_meta("completed_ns")
        j.mark_completed()  # a later run writes nothing
        assert j.completed and j.get_meta("completed_ns") == first
    finally:
        j.close()
