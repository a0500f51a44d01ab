"""Group prints: a rescan settles whole print groups (parts of folders) whose scans print as
their journal rows do.

Two copies of the same pair go through the same random changes; one runs with folders settled
by their prints, the other compares every key. Their plans and resulting trees must agree at
every step. Real local folders, a real journal; the side-2 scan runs in a forked child.
"""

from __future__ import annotations

import logging
import os
import random
import shutil
import sqlite3
from pathlib import Path

import pytest

import sync.engine as engine
from pool.locations import local_location
from sync.journal import MIGRATIONS, Journal
from sync.model import FILE, Entry, group_of, parent_of
from sync.options import SyncOptions
from sync.scanner import Filters, ForkedScan, scan_local_folders

T0 = 1_700_000_000 * 10**9


def _run(base: Path, **opts: object) -> engine.RunOutcome:
    return engine.run_pair(
        local_location(base / "one"), local_location(base / "two"), SyncOptions(**opts),  # type: ignore[arg-type]
        name="t", journal_path=base / "j.db", lock_path=base / "j.lock", host="testhost",
    )  # fmt: skip


def _tree(root: Path) -> dict[str, tuple[str, bytes | str, int]]:
    out: dict[str, tuple[str, bytes | str, int]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath, name)
            rel = str(p.relative_to(root))
            st = p.lstat()
            if p.is_symlink():
                out[rel] = ("link", os.readlink(p), 0)
            elif p.is_dir():
                out[rel] = ("dir", b"", st.st_mode & 0o7777)
            else:
                out[rel] = ("file", p.read_bytes(), st.st_mode & 0o7777)
    return out


def _mutate(base: Path, rng: random.Random, step: int) -> None:
    """A few random changes on either side: edits (same size, other size), mtime-only touches,
    chmods, deletes, new files and folders, moves, symlinks, folder removals."""

    def stamp(p: Path) -> None:  # the same mtime in both copies of the pair
        os.utime(p, ns=(T0 + step * 10**9 + k, T0 + step * 10**9 + k), follow_symlinks=False)

    for k in range(rng.randint(1, 6)):
        side = base / rng.choice(("one", "two"))
        files = sorted(p for p in side.rglob("*") if p.is_file() and not p.is_symlink())
        dirs = sorted(p for p in side.rglob("*") if p.is_dir() and not p.is_symlink())
        what = rng.choice(("edit", "resize", "touch", "chmod", "rm", "new", "mkdir", "mv", "link", "rmtree"))
        if what in ("edit", "resize", "touch", "chmod", "rm", "mv") and not files:
            what = "new"
        if what == "edit":
            f = rng.choice(files)
            f.write_bytes(bytes(reversed(f.read_bytes())) if f.stat().st_size > 1 else b"xy")
            stamp(f)
        elif what == "resize":
            f = rng.choice(files)
            f.write_bytes(rng.randbytes(rng.randint(0, 64)))
            stamp(f)
        elif what == "touch":
            f = rng.choice(files)
            t = f.stat().st_mtime + rng.choice((-50, 50))
            os.utime(f, (t, t))
        elif what == "chmod":
            rng.choice(files).chmod(rng.choice((0o600, 0o640, 0o755)))
        elif what == "rm":
            rng.choice(files).unlink()
        elif what == "new":
            f = rng.choice([side, *dirs]) / f"n{step}-{k}.txt"
            f.write_bytes(rng.randbytes(rng.randint(1, 40)))
            stamp(f)
        elif what == "mkdir":
            (rng.choice([side, *dirs]) / f"d{step}-{k}").mkdir()
        elif what == "mv":
            f = rng.choice(files)
            f.rename(rng.choice([side, *dirs]) / f"m{step}-{k}-{f.name}")
        elif what == "link":
            f = rng.choice([side, *dirs]) / f"l{step}-{k}"
            f.symlink_to(rng.choice(("a", "../b", f"t{step}")))
            stamp(f)
        elif what == "rmtree" and dirs:
            shutil.rmtree(rng.choice(dirs))


@pytest.mark.parametrize("seed", range(6))
def test_settled_folders_plan_and_end_as_key_by_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, seed: int) -> None:
    rng = random.Random(seed)
    a, b = tmp_path / "a", tmp_path / "b"
    for base in (a, b):
        (base / "one").mkdir(parents=True)
        (base / "two").mkdir()
    for i in range(60):
        rel = f"f{i % 5}/g{i % 3}/x{i}.txt" if i % 4 else f"top{i}.txt"
        p = a / "one" / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(rng.randbytes(rng.randint(1, 50)))
        os.utime(p, ns=(T0 - i, T0 - i))
    shutil.copytree(a / "one", b / "one", symlinks=True, dirs_exist_ok=True)
    real = engine._by_folder
    used: list[bool] = []
    monkeypatch.setattr(engine, "_by_folder", lambda *args: used.append(real(*args)) or used[-1])
    for step in range(8):
        state = rng.getstate()
        _mutate(a, rng, step)
        rng.setstate(state)
        _mutate(b, rng, step)
        assert _tree(a / "one") == _tree(b / "one") and _tree(a / "two") == _tree(b / "two")
        with monkeypatch.context() as m:
            m.setattr(engine, "_by_folder", lambda *args: False)
            key_by_key = _run(b, conflict_resolution="path1")
        by_folder = _run(a, conflict_resolution="path1")
        assert by_folder.plan.summary() == key_by_key.plan.summary(), step
        assert by_folder.plan.lines() == key_by_key.plan.lines(), step
        assert _tree(a / "one") == _tree(b / "one") == _tree(a / "two") == _tree(b / "two"), step
    assert any(used), "no run settled folders by their prints"


def test_a_rescan_loads_no_rows_of_settled_folders(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    one = tmp_path / "one"
    for i in range(30):
        (one / f"d{i % 3}").mkdir(parents=True, exist_ok=True)
        (one / f"d{i % 3}" / f"f{i}").write_bytes(b"x" * i)
    (tmp_path / "two").mkdir()
    keys = [f"d{i}" for i in range(3)] + [f"d{i % 3}/f{i}" for i in range(30)]
    groups = {group_of(k) for k in keys}
    assert len(groups) > 4  # folders are split
    _run(tmp_path)
    caplog.set_level(logging.DEBUG, logger="sync.engine")
    out = _run(tmp_path)
    assert out.plan.changes == 0 and out.stats[1].journal_files == out.stats[1].present == 30
    assert f"{len(groups)} of {len(groups)} groups settled by their prints (30 files)" in caplog.text
    caplog.clear()
    (one / "d1" / "f1").write_bytes(b"changed")
    out = _run(tmp_path)
    assert [c.key for c in out.plan.copies] == ["d1/f1"]
    assert out.stats[1].journal_files == 30 and out.stats[1].changed == 1
    beside = [k for k in keys if group_of(k) == group_of("d1/f1")]  # loaded and compared again
    assert "d1/f1" in beside and len(beside) < 10
    settled = f"{len(groups) - 1} of {len(groups)} groups settled by their prints ({30 - len(beside)} files)"
    assert settled in caplog.text
    assert (tmp_path / "two" / "d1" / "f1").read_bytes() == b"changed"


def test_a_row_written_drops_its_folders_print_until_refreshed(tmp_path: Path) -> None:
    j = Journal(tmp_path / "j.db")
    try:
        e = Entry("d/x", FILE, 1, 5, 0o644)
        g = group_of("d/x")
        j.put("d/x", e, e, None)
        assert j.prints() == {g: (None, None)}
        assert j.refresh_prints() == 1
        fp1, fp2 = j.prints()[g]
        assert fp1 == fp2 and fp1 is not None
        # a scan of a folder holding exactly that entry prints the same
        (tmp_path / "r" / "d").mkdir(parents=True)
        (tmp_path / "r" / "d" / "x").write_bytes(b"1")
        os.chmod(tmp_path / "r" / "d" / "x", 0o644)
        os.utime(tmp_path / "r" / "d" / "x", ns=(5, 5))
        assert scan_local_folders(str(tmp_path / "r")).prints[g] == fp1
        with pytest.raises(RuntimeError), j.transaction():
            j.put("d/y", e._replace(rel="d/y"), e._replace(rel="d/y"), None)
            raise RuntimeError("rolled back")
        assert j.prints()[g] == (fp1, fp2)  # the rollback kept the print with the rows
        j.remove("d/x")
        assert j.prints() == {g: (None, None)}
        assert j.refresh_prints() == 0 and j.prints() == {}  # no rows left: forgotten
        # permission bits that differ between the sides: no print (no scan pair could match)
        j.put("m/x", e._replace(rel="m/x"), e._replace(rel="m/x", mode=0o600), None)
        assert j.refresh_prints() == 0 and j.prints() == {group_of("m/x"): (None, None)}
    finally:
        j.close()


def _journal_at(path: Path, version: int) -> sqlite3.Connection:
    """A journal as the first *version* migrations left it."""
    db = sqlite3.connect(path, isolation_level=None)
    db.create_function("ds_parent", 1, parent_of, deterministic=True)
    for i in range(version):
        db.executescript(f"BEGIN; {MIGRATIONS[i]}; PRAGMA user_version = {i + 1}; COMMIT;")
    return db


def test_migrations_4_and_5_group_rows_for_prints(tmp_path: Path) -> None:
    path = tmp_path / "j.db"
    db = _journal_at(path, 3)
    keys = ("top.txt", "a/b/c.txt", "a/b", "a/b/d.txt")
    for key in keys:
        db.execute(
            "INSERT INTO entries VALUES (?, 'file', 'h', NULL, ?, 1, 2, 420, NULL, ?, 1, 2, 420, 'e', 3)",
            (key, key, key),
        )
    db.close()
    j = Journal(path)
    try:
        assert dict(j.db.execute("SELECT key, grp FROM entries")) == {k: group_of(k) for k in keys}
        assert j.prints() == {group_of(k): (None, None) for k in keys}
        assert set(j.load()) == set(keys) and j.load()["a/b"].etag2 == "e"
        assert set(j.load_groups([group_of("a/b/c.txt"), group_of("top.txt")])) >= {"a/b/c.txt", "top.txt"}
        plan = " ".join(str(r) for r in j.db.execute("EXPLAIN QUERY PLAN SELECT * FROM entries WHERE grp = 'x'"))
        assert "PRIMARY KEY" in plan  # a range of the table itself, no lookup per row
        j.put("top.txt", Entry("top.txt", FILE, 5, 6, 0o644), Entry("top.txt", FILE, 5, 6, 0o644), None)
        j.remove("a/b/c.txt")
        assert j.count() == 3 and j.load()["top.txt"].size1 == 5
        assert "a/b/c.txt" not in j.load_groups([group_of("a/b/c.txt")])
    finally:
        j.close()


class _Exploding(Filters):
    def excluded(self, rel: str, *, is_dir: bool = False) -> bool:
        raise RuntimeError("boom")


def test_a_forked_scan_that_fails_lets_the_caller_scan(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "f").write_bytes(b"x")
    ok = ForkedScan(str(tmp_path), None)
    temps: list[str] = []
    try:
        got = ok.prints(temps)
        assert got is not None and got.files == {group_of("d"): 0, group_of("d/f"): 1} and got.nfc
        # the child holds nothing of ours open (a run lock must die with its holder)
        assert len(os.listdir(f"/proc/{ok.pid}/fd")) == 5  # stdin, stdout, stderr, two pipes
        assert got.prints == scan_local_folders(str(tmp_path)).prints
        g = group_of("d/f")
        groups = ok.groups([g])
        assert groups is not None and list(groups) == [g]
        assert groups[g]["d/f"] == scan_local_folders(str(tmp_path)).groups[g]["d/f"]
    finally:
        ok.close()
    bad = ForkedScan(str(tmp_path), _Exploding(["x"]))
    assert bad.prints(temps) is None and bad.pid == 0  # reaped
    missing = ForkedScan(str(tmp_path / "nope"), None)
    with pytest.raises(FileNotFoundError):
        missing.prints(temps)


def test_a_name_that_is_not_utf8_is_skipped_with_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    one = tmp_path / "one"
    one.mkdir()
    (tmp_path / "two").mkdir()
    (one / "ok.txt").write_bytes(b"fine")
    bad = os.fsencode(one) + b"/\xff-bad.txt"
    with open(bad, "wb") as f:
        f.write(b"x")
    os.mkdir(os.fsencode(one) + b"/d\xfe")
    caplog.set_level(logging.WARNING, logger="sync.scanner")
    for _ in range(2):  # the first run, then a rescan that settles groups by their prints
        out = _run(tmp_path)
        assert out.result is not None and not out.result.failures
    assert os.listdir(tmp_path / "two") == ["ok.txt"]
    assert os.path.exists(bad)  # left alone where it is
    assert "the name is not UTF-8 (not synced)" in caplog.text
