"""Sync scenarios against real roots: local folder <-> local folder, SeaweedFS S3 and OpenSSH SFTP.

Side 1 is always a local folder; side 2 comes from the parametrised ``two`` root factory. Every
scenario ends by comparing both trees file by file (and, where it matters, the journal).

Run as ``python -m tests.integration.test_sync_scenarios CHILD_JSON`` this module is the child the
kill test starts and kills with SIGKILL at random points.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import fsspec
import pytest
import xxhash

from pool.errors import BusyError, SyncAbortedError
from pool.locations import Location, local_location
from sync.engine import RunOutcome, run_pair
from sync.journal import Journal
from sync.options import SyncOptions
from sync.registry import pair_lock

ROOT = Path(__file__).resolve().parents[2]
PAST = time.time() - 100_000
FUTURE = time.time() + 100_000


@dataclass
class Root:
    """A sync root and a way to look at and change it behind the engine's back."""

    kind: str
    loc: Location
    protocol: str = "file"
    fs_kwargs: dict[str, Any] | None = None

    def p(self, rel: str) -> str:
        return f"{self.loc.root}/{rel}"

    def write(self, rel: str, data: bytes, mtime: float | None = None) -> None:
        if self.kind == "local":
            path = Path(self.p(rel))
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
            if mtime is not None:
                os.utime(path, (mtime, mtime))
        else:
            assert mtime is None, "remote mtimes are the store's"
            self.loc.fs.pipe_file(self.p(rel), data)

    def read(self, rel: str) -> bytes:
        return bytes(self.loc.fs.cat_file(self.p(rel)))

    def rm(self, rel: str) -> None:
        self.loc.fs.rm_file(self.p(rel))

    def mv(self, a: str, b: str) -> None:
        if self.kind == "local":
            Path(self.p(b)).parent.mkdir(parents=True, exist_ok=True)
            os.rename(self.p(a), self.p(b))
        else:
            self.loc.fs.mv(self.p(a), self.p(b))

    def tree(self) -> dict[str, bytes]:
        """Every regular file below the root: rel -> content."""
        fs = self.loc.fs
        fs.invalidate_cache()
        base = self.loc.root.rstrip("/") + "/"
        out = {}
        for name, info in fs.find(self.loc.root, detail=True).items():
            if info.get("type") == "file" and not info.get("islink"):
                out[name[len(base) :]] = bytes(fs.cat_file(name))
        return out


def local_root(path: Path) -> Root:
    path.mkdir(parents=True, exist_ok=True)
    return Root("local", local_location(path))


@pytest.fixture(
    params=["local", pytest.param("s3", marks=pytest.mark.server), pytest.param("sftp", marks=pytest.mark.server)]
)
def two(request: pytest.FixtureRequest, tmp_path: Path) -> Root:
    """Side 2: a local folder, a fresh SeaweedFS bucket, or a fresh folder on the sshd server."""
    if request.param == "local":
        return local_root(tmp_path / "two")
    server = request.getfixturevalue("s3_server" if request.param == "s3" else "sftp_server")
    root = server.fresh_root()
    loc = Location("integration", server.filesystem(), root, f"{request.param}:{root}")
    return Root(request.param, loc, server.protocol, server.fsspec_kwargs())


@pytest.fixture
def one(tmp_path: Path) -> Root:
    return local_root(tmp_path / "one")


class Pair:
    def __init__(self, one: Root, two: Root, state: Path) -> None:
        self.one, self.two, self.state = one, two, state

    def sync(self, dry_run: bool = False, **opts: Any) -> RunOutcome:
        return run_pair(
            self.one.loc, self.two.loc, SyncOptions(**opts), name="t", journal_path=self.state / "j.db",
            lock_path=self.state / "j.lock", dry_run=dry_run, host="testhost",
        )  # fmt: skip

    def assert_same(self) -> dict[str, bytes]:
        t1, t2 = self.one.tree(), self.two.tree()
        assert nfc(t1) == nfc(t2)
        return t1

    def journal_keys(self) -> dict[str, str | None]:
        j = Journal(self.state / "j.db")
        try:
            return {k: h for k, kind, h in j.rows() if kind == "file"}
        finally:
            j.close()


def nfc(tree: dict[str, bytes]) -> dict[str, bytes]:
    return {unicodedata.normalize("NFC", k): v for k, v in tree.items()}


@pytest.fixture
def pair(one: Root, two: Root, tmp_path: Path) -> Pair:
    (tmp_path / "state").mkdir()
    return Pair(one, two, tmp_path / "state")


BASE = {
    "a.txt": b"alpha",
    "b.txt": b"bravo",
    "c.txt": b"charlie",
    "d.txt": b"delta",
    "dir/e.txt": b"echo",
    "dir/sub/f.txt": b"foxtrot",
    "name with spaces.txt": b"spaces",
    unicodedata.normalize("NFD", "café/crème brûlée.txt"): b"unicode",
}


def seed(p: Pair, files: dict[str, bytes] = BASE) -> None:
    for rel, data in files.items():
        p.one.write(rel, data, mtime=PAST)
    out = p.sync()
    assert out.first_run and out.result is not None and not out.result.failures
    p.assert_same()


def test_first_sync_then_changes_on_each_side_propagate(pair: Pair) -> None:
    seed(pair)
    pair.one.write("a.txt", b"alpha v2")
    pair.two.write("b.txt", b"bravo v2")
    pair.one.write("new1/n1.txt", b"new on one")
    pair.two.write("new2/n2.txt", b"new on two")
    pair.one.rm("c.txt")
    pair.two.rm("d.txt")
    out = pair.sync()
    assert out.result is not None and not out.result.failures and not out.plan.conflicts
    t = pair.assert_same()
    assert t["a.txt"] == b"alpha v2" and t["b.txt"] == b"bravo v2"
    assert "c.txt" not in t and "d.txt" not in t and t["new2/n2.txt"] == b"new on two"
    again = pair.sync()
    assert again.plan.changes == 0 and not again.plan.conflicts  # nothing left: mtime precision included
    assert set(nfc(pair.journal_keys())) == set(nfc(t))


@pytest.mark.parametrize("policy", ["newest", "oldest", "larger", "smaller", "path1", "path2", "keep-both"])
def test_changed_on_both_sides_each_policy(pair: Pair, policy: str) -> None:
    seed(pair)
    pair.one.write("a.txt", b"one: the longer edit", mtime=PAST + 50)  # older than side 2's (now)
    pair.two.write("a.txt", b"two: short")
    out = pair.sync(conflict_resolution=policy)
    [c] = out.plan.conflicts
    winner = {"newest": 2, "oldest": 1, "larger": 1, "smaller": 2, "path1": 1, "path2": 2, "keep-both": 2}[policy]
    assert c.winner == winner
    t = pair.assert_same()
    win, lose = (b"one: the longer edit", b"two: short") if winner == 1 else (b"two: short", b"one: the longer edit")
    assert t["a.txt"] == win
    assert c.copy_rel is not None and c.copy_rel.startswith("a.conflict-testhost-") and t[c.copy_rel] == lose
    assert pair.sync().plan.changes == 0


def test_no_conflict_copies_when_user_chose_so(pair: Pair) -> None:
    seed(pair)
    pair.one.write("a.txt", b"one", mtime=FUTURE)
    pair.two.write("a.txt", b"two")
    pair.sync(conflict_copies=False)
    t = pair.assert_same()
    assert t["a.txt"] == b"one" and not [k for k in t if "conflict" in k]


def test_identical_changes_are_not_conflicts(pair: Pair) -> None:
    seed(pair)
    pair.one.write("a.txt", b"the same new text")
    pair.two.write("a.txt", b"the same new text")
    out = pair.sync()
    assert not out.plan.conflicts and not out.plan.copies
    assert pair.assert_same()["a.txt"] == b"the same new text"


def test_modify_vs_delete_keeps_the_modification(pair: Pair) -> None:
    seed(pair)
    pair.one.rm("a.txt")
    pair.two.write("a.txt", b"modified while the other side deleted it")
    pair.one.write("b.txt", b"modified on one")
    pair.two.rm("b.txt")
    out = pair.sync()
    assert not out.plan.deletes
    t = pair.assert_same()
    assert t["a.txt"] == b"modified while the other side deleted it" and t["b.txt"] == b"modified on one"


def test_moves_are_carried_out_as_moves(pair: Pair) -> None:
    seed(pair)
    pair.one.mv("dir/e.txt", "moved/e-renamed.txt")
    pair.one.mv("dir/sub/f.txt", "moved/f.txt")
    ino = os.stat(pair.two.p("dir/e.txt")).st_ino if pair.two.kind == "local" else None
    out = pair.sync()
    assert {(m.entry.rel, m.new_rel) for m in out.plan.moves} == {
        ("dir/e.txt", "moved/e-renamed.txt"),
        ("dir/sub/f.txt", "moved/f.txt"),
    }
    assert not out.plan.copies and not out.plan.deletes
    t = pair.assert_same()
    assert t["moved/e-renamed.txt"] == b"echo"
    if ino is not None:
        assert os.stat(pair.two.p("moved/e-renamed.txt")).st_ino == ino  # renamed, not rewritten


def test_case_only_rename(pair: Pair) -> None:
    seed(pair)
    pair.one.mv("a.txt", "A.TXT")
    out = pair.sync()
    assert [(m.entry.rel, m.new_rel) for m in out.plan.moves] == [("a.txt", "A.TXT")]
    t = pair.assert_same()
    assert "A.TXT" in t and "a.txt" not in t


def test_max_delete_aborts_and_changes_nothing(pair: Pair) -> None:
    seed(pair)
    for rel in ("a.txt", "b.txt", "c.txt", "d.txt", "dir/e.txt"):
        pair.one.rm(rel)
    before = pair.two.tree()
    with pytest.raises(SyncAbortedError, match="max-delete"):
        pair.sync()
    assert pair.two.tree() == before
    with pytest.raises(SyncAbortedError):
        pair.sync(max_delete="4")
    out = pair.sync(max_delete="5")
    assert out.result is not None and out.result.deleted == 5
    pair.assert_same()


def test_empty_or_missing_side_aborts(pair: Pair, tmp_path: Path) -> None:
    seed(pair)
    before = pair.two.tree()
    os.rename(pair.one.loc.root, tmp_path / "unmounted")
    with pytest.raises(SyncAbortedError, match="missing"):
        pair.sync()
    os.makedirs(pair.one.loc.root)
    with pytest.raises(SyncAbortedError, match="empty"):
        pair.sync()
    assert pair.two.tree() == before


def test_every_file_changed_at_once_aborts(pair: Pair) -> None:
    seed(pair, {f"f{i:02}.txt": b"x%d" % i for i in range(12)})
    for i in range(12):
        pair.one.write(f"f{i:02}.txt", b"encrypted %d" % i)
    with pytest.raises(SyncAbortedError, match="every one"):
        pair.sync()
    assert pair.sync(force=True).result is not None
    pair.assert_same()


def test_dry_run_changes_nothing(pair: Pair) -> None:
    seed(pair)
    pair.one.write("a.txt", b"changed")
    pair.two.rm("b.txt")
    pair.two.write("x.txt", b"new")
    t1, t2 = pair.one.tree(), pair.two.tree()
    journal = (pair.state / "j.db").read_bytes()
    out = pair.sync(dry_run=True)
    assert out.result is None and len(out.plan.copies) == 2 and len(out.plan.deletes) == 1
    assert pair.one.tree() == t1 and pair.two.tree() == t2
    assert (pair.state / "j.db").read_bytes() == journal


def test_files_changing_during_a_run_are_left_for_the_next_run(pair: Pair, monkeypatch: pytest.MonkeyPatch) -> None:
    seed(pair)
    pair.one.write("a.txt", b"version 1")
    import pool.transfers
    import sync.executor

    def edit_first(real: Any) -> Any:
        """*real* copier, after a.txt was rewritten (scanned as version 1, copied as version 2)."""

        def copy(src: Any, *a: Any, **kw: Any) -> Any:
            if str(src).endswith("/a.txt") or a[0] == "a.txt":
                pair.one.write("a.txt", b"version 2, written during the run")
            return real(src, *a, **kw)

        return copy

    # a local destination is written by sync.localcopy, a remote one by pool.transfers
    monkeypatch.setattr(sync.executor, "copy_local", edit_first(sync.executor.copy_local))
    monkeypatch.setattr(pool.transfers, "copy_file", edit_first(pool.transfers.copy_file))
    out = pair.sync()
    assert out.result is not None and out.result.changed_during_run == ["a.txt"]
    monkeypatch.undo()
    out = pair.sync()
    assert not out.plan.conflicts
    assert pair.assert_same()["a.txt"] == b"version 2, written during the run"


class _Killed(BaseException):
    """Stands for SIGKILL: nothing after the raising point runs (no handler catches it)."""


def test_killed_after_a_copy_before_its_commit_then_edited(pair: Pair, monkeypatch: pytest.MonkeyPatch) -> None:
    """A copy that reached the destination, killed before its journal row, then edited on the
    source: the rerun carries the edit (on S3 the listing's time is the upload's, the copy is
    recognised by the source mtime stored with the object)."""
    seed(pair)
    pair.one.write("a.txt", b"version 1, copied before the kill", mtime=PAST + 10)

    def killed(*_a: Any, **_k: Any) -> None:
        raise _Killed

    monkeypatch.setattr(Journal, "commit_copy", killed)
    with pytest.raises(_Killed):
        pair.sync()
    monkeypatch.undo()
    assert pair.two.read("a.txt") == b"version 1, copied before the kill"
    pair.one.write("a.txt", b"version 2, edited after the kill")
    out = pair.sync()
    assert out.result is not None and not out.result.failures
    assert not out.plan.conflicts
    t = pair.assert_same()
    assert t["a.txt"] == b"version 2, edited after the kill"
    assert not [k for k in t if ".conflict-" in k]


def test_lock_per_pair(pair: Pair) -> None:
    with pair_lock(pair.state / "j.lock", "t"), pytest.raises(BusyError, match="already running"):
        pair.sync()
    seed(pair)  # the lock is free again


# -- local <-> local only: links, empty folders, permissions, filters, one-way, mtime precision ---


def test_links_empty_dirs_permissions_and_filters(tmp_path: Path) -> None:
    p = Pair(local_root(tmp_path / "1"), local_root(tmp_path / "2"), tmp_path)
    one = Path(p.one.loc.root)
    (one / "empty" / "deeper").mkdir(parents=True)
    (one / "script.sh").write_bytes(b"#!/bin/sh\n")
    os.chmod(one / "script.sh", 0o750)
    os.symlink("script.sh", one / "link")
    os.symlink("/nonexistent/target", one / "dangling")
    (one / "build").mkdir()
    (one / "build" / "out.o").write_bytes(b"obj")
    (one / "keep.log").write_bytes(b"log")
    p.sync(excludes=["build/", "*.log"])
    two = Path(p.two.loc.root)
    assert (two / "empty" / "deeper").is_dir()
    assert os.readlink(two / "link") == "script.sh" and os.readlink(two / "dangling") == "/nonexistent/target"
    assert os.stat(two / "script.sh").st_mode & 0o777 == 0o750
    assert not (two / "build").exists() and not (two / "keep.log").exists()
    os.chmod(two / "script.sh", 0o700)  # a permission change on side 2 comes back
    os.rmdir(one / "empty" / "deeper")  # an empty folder removed on side 1 goes
    p.sync(excludes=["build/", "*.log"])
    assert os.stat(one / "script.sh").st_mode & 0o777 == 0o700
    assert not (two / "empty" / "deeper").exists()


def test_one_way_mirror(tmp_path: Path) -> None:
    p = Pair(local_root(tmp_path / "src"), local_root(tmp_path / "dst"), tmp_path)
    for rel, data in BASE.items():
        p.one.write(rel, data)
    p.sync(direction="one-way")
    p.two.write("extra-on-destination.txt", b"mine")
    p.two.write("a.txt", b"edited on the destination")
    p.one.rm("b.txt")
    out = p.sync(direction="one-way")
    t2 = p.two.tree()
    assert t2["a.txt"] == b"alpha" and "b.txt" not in t2 and t2["extra-on-destination.txt"] == b"mine"
    assert [v for k, v in t2.items() if ".conflict-" in k] == [b"edited on the destination"]
    assert "extra-on-destination.txt" not in p.one.tree() and out.result is not None


def test_mtime_precision_differences(tmp_path: Path) -> None:
    """Side 2 rounds mtimes to whole seconds (FAT, SFTP, many NAS): no copies, no conflicts."""
    p = Pair(local_root(tmp_path / "1"), local_root(tmp_path / "2"), tmp_path)
    for rel, data in BASE.items():
        p.one.write(rel, data, mtime=PAST + 0.123456789)
        p.two.write(rel, data, mtime=float(int(PAST)))  # the same files, already there, truncated
    out = p.sync(modify_window_ns=1_000_000_000)
    assert out.plan.changes == 0 and not out.plan.conflicts
    for rel in BASE:
        os.utime(p.two.p(rel), (int(PAST) + 1, int(PAST) + 1))  # re-stamped by a copy tool
    out = p.sync(modify_window_ns=1_000_000_000)
    assert out.plan.changes == 0 and not out.plan.conflicts  # hashed: same content, journal refreshed


# -- killed runs ---------------------------------------------------------------------------------


def child_main(spec: dict[str, Any]) -> None:
    """Run one sync of the pair in *spec* (the kill test's child process)."""
    if spec["protocol"] == "file":
        loc2 = local_location(spec["root2"])
    else:
        fs = fsspec.filesystem(spec["protocol"], skip_instance_cache=True, **spec["fs_kwargs"])
        loc2 = Location("integration", fs, spec["root2"], "remote")
    state = Path(spec["state"])
    run_pair(local_location(spec["root1"]), loc2, SyncOptions(), name="t", journal_path=state / "j.db",
             lock_path=state / "j.lock", host="testhost")  # fmt: skip


def _completed(state: Path) -> bool:
    j = Journal(state / "j.db")
    try:
        return j.completed
    finally:
        j.close()


def _mutate(p: Pair, rng: random.Random, i: int, expected: dict[str, bytes]) -> None:
    """A few random changes on both sides between runs (never two on the same file), applied to
    the *expected* final tree too."""
    names = sorted(expected)
    rng.shuffle(names)
    # edit on one what is there already, but not a file of two's whose copy into one the journal
    # does not hold: a copy killed between its rename and its journal commit, then edited on its
    # destination, cannot be told from a file made there by someone else during the run, so the
    # engine keeps both versions (a conflict copy; docs/sync.md) rather than risk overwriting one
    journal = p.journal_keys() if (p.state / "j.db").exists() else {}
    edit = next(n for n in names if os.path.exists(p.one.p(n)) and (not n.startswith("new-two-") or n in journal))
    p.one.write(edit, b"edited on one %d" % i)
    expected[edit] = b"edited on one %d" % i
    # delete on two a file the journal knows as synced (a file copied by a run killed before its
    # journal commit, deleted before the next run, comes back: the engine cannot tell it from a
    # copy that never happened, and keeping data wins)
    known = journal if journal and _completed(p.state) else {}
    for gone in names:
        synced = gone in known and p.two.loc.fs.exists(p.two.p(gone)) and os.path.exists(p.one.p(gone))
        if gone != edit and synced and p.two.read(gone) == p.one.read(gone) == expected[gone]:
            p.two.rm(gone)
            del expected[gone]
            break
    new1, new2 = f"new/{i}/one-{i}.bin", f"new-two-{i}.txt"
    expected[new1] = os.urandom(rng.randrange(1, 300_000))
    expected[new2] = b"two %d" % i
    p.one.write(new1, expected[new1])
    p.two.write(new2, expected[new2])


@pytest.mark.slow
def test_killed_at_random_points_then_rerun_converges(pair: Pair) -> None:
    rng = random.Random(20261123)
    expected: dict[str, bytes] = {}
    for i in range(40):
        expected[f"start/{i:03}.bin"] = os.urandom(rng.randrange(1, 50_000))
        pair.one.write(f"start/{i:03}.bin", expected[f"start/{i:03}.bin"], mtime=PAST)
    spec = {
        "protocol": pair.two.protocol,
        "fs_kwargs": pair.two.fs_kwargs or {},
        "root1": pair.one.loc.root,
        "root2": pair.two.loc.root,
        "state": str(pair.state),
    }
    cmd = [sys.executable, "-m", "tests.integration.test_sync_scenarios", json.dumps(spec)]
    iterations = 20 if pair.two.kind == "local" else 8
    killed = 0
    full_run_s = 1.6  # how long an uninterrupted run takes here: kill points are drawn inside it
    for i in range(iterations):
        _mutate(pair, rng, i, expected)
        started = time.monotonic()
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            proc.wait(timeout=rng.uniform(0.1, 0.9) * full_run_s)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            killed += 1
        else:
            assert proc.returncode == 0, proc.stderr.read().decode() if proc.stderr else ""
            full_run_s = time.monotonic() - started  # the machine's pace: later kills land inside a run
        if proc.stderr:
            proc.stderr.close()
    assert killed >= iterations // 4, "the child always finished first: the kill points are not random enough"
    out = pair.sync()
    assert out.result is not None and not out.result.failures
    t = pair.assert_same()
    assert not [k for k in t if ".conflict-" in k], "a killed run made a spurious conflict"
    assert sorted(t) == sorted(expected), "a file was lost or resurrected"
    assert t == expected, "a file holds the wrong version"
    assert pair.sync().plan.changes == 0
    journal = pair.journal_keys()
    assert set(nfc(journal)) == set(nfc(t))
    for rel, h in journal.items():  # every journal hash is what both sides hold
        if h is not None:
            assert h == xxhash.xxh3_128_hexdigest(t[rel])


def test_a_large_local_copy_phase_runs_in_worker_processes(one: Root, tmp_path: Path) -> None:
    """Run in a fresh process: worker processes are only forked from a single-threaded one
    (this test process may hold fsspec's threads)."""
    from sync.workers import FORK_MIN_ITEMS

    p = Pair(one, local_root(tmp_path / "two"), tmp_path)
    n = FORK_MIN_ITEMS + 44
    files = {f"d{i % 7}/e{i % 280:03}/f{i:04}.bin": os.urandom(i * 37 % 9000) for i in range(n)}
    for rel, data in files.items():
        p.one.write(rel, data, mtime=PAST)
    for k in range(30):
        files[f"two-{k}.bin"] = os.urandom(k * 100)
        p.two.write(f"two-{k}.bin", files[f"two-{k}.bin"], mtime=PAST)
    modes = {}
    for i in range(0, 280, 3):  # folders' permission bits travel too
        modes[f"d{i % 7}/e{i:03}"] = 0o750 if i % 2 else 0o700
        os.chmod(p.one.p(f"d{i % 7}/e{i:03}"), modes[f"d{i % 7}/e{i:03}"])
    spec = {"protocol": "file", "fs_kwargs": {}, "root1": one.loc.root, "root2": p.two.loc.root, "state": str(tmp_path)}
    code = (
        "import json, sys; import sync.executor as ex; from tests.integration.test_sync_scenarios import child_main\n"
        "calls, real = [], ex.run_forked\n"
        "ex.run_forked = lambda items, *a, **kw: (calls.append(len(items)), real(items, *a, **kw))\n"
        "child_main(json.loads(sys.argv[1])); print(json.dumps(calls))"
    )
    run = subprocess.run([sys.executable, "-c", code, json.dumps(spec)], cwd=ROOT, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout.splitlines()[-1]) == [7 + 280, len(files)]  # the folders, then the copies
    assert p.assert_same() == files
    assert {rel: os.stat(p.two.p(rel)).st_mode & 0o7777 for rel in modes} == modes
    assert p.journal_keys() == {rel: xxhash.xxh3_128_hexdigest(d) for rel, d in files.items()}
    assert p.sync().plan.changes == 0


@pytest.mark.slow
def test_forked_copies_killed_at_random_points_then_rerun_converges(one: Root, tmp_path: Path) -> None:
    """The kill test for the worker-process path: every run copies more than FORK_MIN_ITEMS new
    files, and is killed once a random number of them has arrived (in the middle of the copies,
    which a random delay seldom hits), except every third run, which finishes."""
    from sync.workers import FORK_MIN_ITEMS

    rng = random.Random(20261203)
    two = local_root(tmp_path / "two")
    p = Pair(one, two, tmp_path)
    n_new = FORK_MIN_ITEMS + 20
    expected: dict[str, bytes] = {}
    spec = {"protocol": "file", "fs_kwargs": {}, "root1": one.loc.root, "root2": two.loc.root, "state": str(tmp_path)}
    cmd = [sys.executable, "-m", "tests.integration.test_sync_scenarios", json.dumps(spec)]
    killed = 0
    for i in range(9):
        for k in range(n_new):  # new files on side 1, enough for worker processes
            expected[f"n{i}/{k % 7}/f{k:04}.bin"] = os.urandom(rng.randrange(1, 60_000))
            one.write(f"n{i}/{k % 7}/f{k:04}.bin", expected[f"n{i}/{k % 7}/f{k:04}.bin"])
        journal = p.journal_keys()
        for rel in rng.sample(sorted(journal), min(len(journal), 60)):
            # new versions on either side, of files both sides hold as the journal records
            if journal[rel] == xxhash.xxh3_128_hexdigest(expected[rel]) and two.read(rel) == one.read(rel):
                expected[rel] = os.urandom(rng.randrange(1, 60_000))
                (one if rng.random() < 0.5 else two).write(rel, expected[rel])
        arrived_at = rng.randrange(5, n_new - 5) if i % 3 != 2 else n_new + 1
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        new_dir = Path(two.p(f"n{i}"))
        while proc.poll() is None:
            arrived = sum(1 for d in new_dir.glob("*") for f in d.glob("f*")) if new_dir.exists() else 0
            if arrived >= arrived_at:
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                killed += 1
                break
            time.sleep(0.002)
        else:
            assert proc.returncode == 0, proc.stderr.read().decode() if proc.stderr else ""
        if proc.stderr:
            proc.stderr.close()
    assert killed >= 4, "the runs finished before enough copies arrived to kill them in the middle"
    time.sleep(0.5)  # the killed runs' worker processes notice their parent is gone and stop
    out = p.sync()
    assert out.result is not None and not out.result.failures
    t = p.assert_same()
    assert not [k for k in t if ".conflict-" in k], "a killed run made a spurious conflict"
    assert t == expected, "a file was lost, resurrected or holds the wrong version"
    assert p.sync().plan.changes == 0


def test_cli_dry_run_and_abort_exit_codes(tmp_path: Path) -> None:
    from tests.conftest import cli

    home = tmp_path / "home"
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    for i in range(4):
        (a / f"f{i}").write_text(str(i))
    dry = cli("sync", str(a), "--with", str(b), "--dry-run", home=home)
    assert "copy" in dry.stdout and "dry run" in dry.stdout and not b.exists()
    cli("sync", str(a), "--with", str(b), home=home)
    assert sorted(os.listdir(b)) == ["f0", "f1", "f2", "f3"]
    for i in range(3):
        (a / f"f{i}").unlink()
    res = cli("sync", str(a), "--with", str(b), home=home, check=False)
    assert res.returncode == 17 and len(res.stderr.strip().splitlines()) == 1 and "max-delete" in res.stderr
    assert sorted(os.listdir(b)) == ["f0", "f1", "f2", "f3"]
    listed = json.loads(cli("sync", "list", "--json", home=home).stdout)
    assert listed[0]["last_result"] == "aborted"
    res = cli("sync", str(a), "--with", str(b), "--max-delete", "3", "--json", home=home)
    assert json.loads(res.stdout)["result"]["deleted"] == 3


if __name__ == "__main__":
    child_main(json.loads(sys.argv[1]))
