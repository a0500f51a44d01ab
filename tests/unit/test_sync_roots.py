"""Local roots without fsspec: the local copier, and a LocalRoot synced with an fsspec store.

The store is fsspec's in-memory filesystem (a real fsspec filesystem, no server needed); the
S3 and SFTP servers are exercised in tests/integration/test_sync_scenarios.py.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import xxhash
from fsspec.implementations.memory import MemoryFileSystem

from pool.locations import Location
from sync.engine import RunOutcome, run_pair
from sync.localcopy import copy_local
from sync.model import FILE, TEMP_PREFIX, Entry
from sync.options import SyncOptions
from sync.sides import LocalRoot, Side


def _entry(path: Path, rel: str) -> Entry:
    st = path.stat()
    return Entry(rel, FILE, st.st_size, st.st_mtime_ns, st.st_mode & 0o7777)


def test_copy_local_keeps_bytes_mode_and_mtime(tmp_path: Path) -> None:
    src, dst = tmp_path / "src.bin", tmp_path / "out" / "dst.bin"
    dst.parent.mkdir()
    data = os.urandom(3 << 20)  # several reads
    src.write_bytes(data)
    os.chmod(src, 0o640)
    os.utime(src, ns=(1_600_000_000_123_456_789, 1_600_000_000_123_456_789))
    r = copy_local(str(src), str(dst), "out/dst.bin", _entry(src, "src.bin"), chunk_bytes=1 << 20)
    assert dst.read_bytes() == data and r.digest == xxhash.xxh3_128_hexdigest(data)
    st = dst.stat()
    assert st.st_mode & 0o7777 == 0o640 and st.st_mtime_ns == 1_600_000_000_123_456_789
    assert r.after == Entry("out/dst.bin", FILE, len(data), st.st_mtime_ns, 0o640)
    assert not r.source_changed and r.attempts == 1
    assert not [n for n in os.listdir(dst.parent) if n.startswith(TEMP_PREFIX)]


def test_copy_local_reports_a_source_changed_since_the_scan(tmp_path: Path) -> None:
    src, dst = tmp_path / "src.txt", tmp_path / "dst.txt"
    src.write_bytes(b"as scanned")
    scanned = _entry(src, "src.txt")
    src.write_bytes(b"written after the scan")
    r = copy_local(str(src), str(dst), "dst.txt", scanned)
    assert r.source_changed and dst.read_bytes() == b"written after the scan"


def test_copy_local_into_a_missing_folder_leaves_nothing(tmp_path: Path) -> None:
    src = tmp_path / "src.txt"
    src.write_bytes(b"x")
    with pytest.raises(FileNotFoundError):
        copy_local(str(src), str(tmp_path / "nope" / "dst.txt"), "nope/dst.txt", _entry(src, "src.txt"))
    assert os.listdir(tmp_path) == ["src.txt"]


def test_local_root_with_an_fsspec_store_both_ways(tmp_path: Path) -> None:
    root = tmp_path / "a"
    (root / "sub").mkdir(parents=True)
    (root / "x.txt").write_text("hello")
    (root / "sub" / "y.bin").write_bytes(b"\0" * 3000)
    local = LocalRoot(str(root), "./a")
    assert Side(local, 1).is_local and Side(local, 1).fs is None
    fs = MemoryFileSystem(skip_instance_cache=True)
    store = Location("integration", fs, f"/{tmp_path.name}/root", "mem:root")

    def run() -> None:
        out = run_pair(local, store, SyncOptions(), name="t", journal_path=tmp_path / "j.db",
                       lock_path=tmp_path / "j.lock")  # fmt: skip
        assert out.result is not None and not out.result.failures

    run()
    assert fs.cat_file(f"{store.root}/x.txt") == b"hello" and len(fs.cat_file(f"{store.root}/sub/y.bin")) == 3000
    fs.pipe_file(f"{store.root}/back.txt", b"from the store")
    run()
    assert (root / "back.txt").read_bytes() == b"from the store"


def _run(a: Path, b: Path, tmp_path: Path) -> RunOutcome:
    return run_pair(LocalRoot(str(a), "./a"), LocalRoot(str(b), "./b"), SyncOptions(), name="t",
                    journal_path=tmp_path / "j.db", lock_path=tmp_path / "j.lock")  # fmt: skip


def test_local_copies_flush_once_and_keep_their_notes_until_then(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Local copies reach the disk through one syncfs of the destination; the run's
    pending-copy notes (which a run after a power cut checks) stay until that flush."""
    import sync.executor
    from sync.journal import Journal

    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    for i in range(5):
        (a / f"f{i}").write_bytes(b"x" * i)
    seen: list[tuple[str, int]] = []

    def fake_syncfs(path: str | os.PathLike[str]) -> None:
        seen.append((str(path), len(Journal(tmp_path / "j.db").pending())))

    monkeypatch.setattr(sync.executor, "sync_filesystem", fake_syncfs)
    out = _run(a, b, tmp_path)
    assert out.result is not None and out.result.copied == 5
    assert seen == [(str(b), 5)]  # one flush of the destination, every copy's note still there
    j = Journal(tmp_path / "j.db")
    assert len(j.load()) == 5 and j.pending() == []


@pytest.mark.parametrize("damage", ["short", "missing", "zeros"])
def test_copies_lost_in_a_power_cut_are_not_carried_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, damage: str
) -> None:
    """A run whose copies were committed but never flushed (the machine went down before the
    end of its copy phase): after the reboot, a copy that did not reach the disk whole is never
    taken for an edit of the destination, and the source's bytes survive on both sides."""
    import pool.durable
    import sync.engine
    from sync.journal import Journal

    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    data = os.urandom(5000)
    (a / "doc").write_bytes(data)
    (a / "other").write_bytes(b"fine")
    monkeypatch.setattr(Journal, "clear_all_pending", lambda self: None)  # the copy phase never ended
    first = _run(a, b, tmp_path).result
    assert first is not None and first.copied == 2
    monkeypatch.undo()
    st = os.stat(b / "doc")
    if damage == "missing":
        os.unlink(b / "doc")
    else:  # what the disk held after the cut: the metadata without all the data
        (b / "doc").write_bytes(data[:100] if damage == "short" else bytes(len(data)))
        os.utime(b / "doc", ns=(st.st_atime_ns, st.st_mtime_ns))
    monkeypatch.setattr(sync.engine, "boot_id", lambda: "another boot")
    assert pool.durable.boot_id() != "another boot"
    out = _run(a, b, tmp_path)
    assert out.result is not None and not out.result.failures
    assert (a / "doc").read_bytes() == data  # never overwritten by the damaged copy
    names = sorted(p.name for p in b.iterdir())
    if damage == "missing":
        assert names == ["doc", "other"] and (b / "doc").read_bytes() == data
    else:  # the damaged file is kept as a conflict copy beside the source's bytes
        assert any((b / n).read_bytes() == data for n in names if n.startswith("doc")), names
    assert (b / "other").read_bytes() == b"fine"


def test_copies_of_a_killed_run_then_edited_propagate(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Same boot (only the process was killed after copying): an edit of the copy before the
    next run is an edit, carried to the other side without a conflict."""
    from sync.journal import Journal

    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    (a / "doc").write_bytes(b"first")
    monkeypatch.setattr(Journal, "clear_all_pending", lambda self: None)
    first = _run(a, b, tmp_path).result
    assert first is not None and first.copied == 1
    monkeypatch.undo()
    (b / "doc").write_bytes(b"edited on b")
    out = _run(a, b, tmp_path)
    assert out.result is not None and out.result.copied == 1
    assert (a / "doc").read_bytes() == b"edited on b" and sorted(os.listdir(a)) == ["doc"]
