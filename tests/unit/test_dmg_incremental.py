"""The diff behind incremental DMG chains: size + mtime, and the content hash for racy files."""

from __future__ import annotations

import os
import time
from pathlib import Path

from imaging.common import walk_tree
from imaging.dmg_incremental import IMAGE_RE, diff_tree


def _touch(p: Path, data: bytes, mtime_ns: int) -> None:
    p.write_bytes(data)
    os.utime(p, ns=(mtime_ns, mtime_ns))


def test_racy_file_rewritten_in_the_same_tick_is_seen_by_its_hash(tmp_path: Path) -> None:
    now = time.time_ns()
    old = now - 3600 * 10**9
    _touch(tmp_path / "racy", b"AAAA", now)  # written just before the scan
    _touch(tmp_path / "settled", b"BBBB", old)
    first = diff_tree(walk_tree(tmp_path), None, now)
    assert sorted(first.changed) == ["racy", "settled"] and first.deleted == []
    assert first.state["racy"][5] is not None and first.state["settled"][5] is None
    # same size, same mtime, new bytes: only the racy one can be caught (by its hash)
    _touch(tmp_path / "racy", b"CCCC", now)
    _touch(tmp_path / "settled", b"DDDD", old)
    later = now + 3600 * 10**9
    second = diff_tree(walk_tree(tmp_path), first.state, later)
    assert second.changed == ["racy"]
    assert second.state["racy"][5] is None  # settled by now: size + mtime suffice from here on
    assert diff_tree(walk_tree(tmp_path), second.state, later).changed == []


def test_changes_deletions_and_kind_changes(tmp_path: Path) -> None:
    (tmp_path / "d" / "e").mkdir(parents=True)
    (tmp_path / "d" / "e" / "f").write_text("f")
    (tmp_path / "x").write_text("x")
    os.symlink("x", tmp_path / "l")
    base = diff_tree(walk_tree(tmp_path), None, time.time_ns())
    assert sorted(base.changed) == ["d/e/f", "l", "x"]
    import shutil

    shutil.rmtree(tmp_path / "d")
    (tmp_path / "x").unlink()
    (tmp_path / "x").mkdir()
    (tmp_path / "l").unlink()
    os.symlink("elsewhere", tmp_path / "l")
    d = diff_tree(walk_tree(tmp_path), base.state, time.time_ns())
    assert d.deleted == ["d", "x"]  # the folder once, not each file in it; x changed kind
    assert d.changed == ["l"]


def test_image_names() -> None:
    m = IMAGE_RE.match("daily-backup-20261202-020000-incr.dmg")
    assert m and m["stem"] == "daily-backup" and m["kind"] == "incr" and m["ext"] == ".dmg"
    assert IMAGE_RE.match("daily-backup.dmg") is None
