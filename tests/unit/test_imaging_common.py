"""imaging.common: sidecars, safe extraction paths, deterministic source walks."""

from __future__ import annotations

import hashlib
import os
import subprocess
from pathlib import Path

import pytest

from imaging.common import check_sidecar, safe_join, sha256_file, walk_tree, write_sidecar
from pool.errors import NotFoundError, UnsafePathError


def test_sidecar_is_sha256sum_format(tmp_path: Path) -> None:
    img = tmp_path / "backup.iso"
    img.write_bytes(os.urandom(3 << 20) + b"tail")
    digest = write_sidecar(img)
    assert digest == hashlib.sha256(img.read_bytes()).hexdigest() == sha256_file(img)
    res = subprocess.run(["sha256sum", "-c", "backup.iso.sha256"], cwd=tmp_path, capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr
    assert check_sidecar(img) is True
    with open(img, "r+b") as f:
        old = f.read(1001)[1000]
        f.seek(1000)
        f.write(bytes([old ^ 0xFF]))  # a changed byte (writing a fixed one matched 1 time in 256)
    assert check_sidecar(img) is False
    assert check_sidecar(tmp_path / "other.iso") is None


@pytest.mark.parametrize("member", ["../x", "a/../../x", "/etc/passwd", "a/..", "", "\\\\server\\x"])
def test_safe_join_refuses_escapes(tmp_path: Path, member: str) -> None:
    with pytest.raises(UnsafePathError):
        safe_join(tmp_path / "out", member)


def test_safe_join_refuses_symlink_redirect(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "link").symlink_to(tmp_path)
    with pytest.raises(UnsafePathError):
        safe_join(out, "link/evil")
    (out / "inner").symlink_to("sub")  # a relative link staying inside is fine
    (out / "sub").mkdir()
    assert safe_join(out, "inner/ok") == out.resolve() / "inner" / "ok"
    assert safe_join(out, "a/b/c.txt") == out.resolve() / "a" / "b" / "c.txt"


def test_walk_tree_is_deterministic_and_complete(tmp_path: Path) -> None:
    root = tmp_path / "src"
    (root / "b" / "deep").mkdir(parents=True)
    (root / "a").mkdir()
    (root / "empty").mkdir()
    (root / "b" / "deep" / "f.txt").write_bytes(b"x" * 10)
    (root / "a" / "é.txt").write_bytes(b"yy")
    (root / "a" / "link").symlink_to("../b/deep/f.txt")
    os.link(root / "a" / "é.txt", root / "a" / "hard")
    os.mkfifo(root / "fifo")
    (root / os.fsdecode(b"bad-\xff")).write_bytes(b"z")
    t1, t2 = walk_tree(root), walk_tree(root)
    assert [e.rel for e in t1.entries] == [e.rel for e in t2.entries]
    rels = [e.rel for e in t1.entries]
    assert rels[0] == ""
    for e in t1.entries[1:]:  # parents before children
        parent = e.rel.rpartition("/")[0]
        assert rels.index(parent) < rels.index(e.rel)
    kinds = {e.rel: e.kind for e in t1.entries}
    assert kinds["a/link"] == "symlink" and kinds["empty"] == "dir" and kinds["b/deep/f.txt"] == "file"
    assert t1.skipped == ["fifo"]
    assert t1.total_bytes == 10 + 2 + 2 + 1
    hard = [e for e in t1.entries if e.rel in ("a/hard", "a/é.txt")]
    assert hard[0].ino == hard[1].ino and hard[0].nlink == 2
    assert os.fsencode(next(e.rel for e in t1.entries if e.rel.startswith("bad-"))) == b"bad-\xff"
    link = next(e for e in t1.entries if e.rel == "a/link")
    assert link.target == "../b/deep/f.txt" and link.size == len("../b/deep/f.txt")


def test_walk_tree_missing(tmp_path: Path) -> None:
    with pytest.raises(NotFoundError):
        walk_tree(tmp_path / "nope")
