"""vfs.imagefs: a read-only FUSE view over any object with the ImageView methods, mounted for real."""

from __future__ import annotations

import errno
import os
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.fuse

# a tiny in-memory view, served by a child process (the FUSE loop needs its own process)
SERVER = textwrap.dedent("""
    import sys, types
    from pathlib import Path
    from vfs.imagefs import serve_image

    A = types.SimpleNamespace
    DATA = bytes(range(256)) * 4096 + b"end"
    class View:
        nodes = {
            1: A(mode=0o40755, nlink=3, uid=0, gid=0, size=0, atime_ns=0, mtime_ns=10**18, ctime_ns=10**18),
            2: A(mode=0o100644, nlink=1, uid=1000, gid=100, size=len(DATA), atime_ns=0, mtime_ns=1_500_000_000_123_456_789, ctime_ns=0),
            3: A(mode=0o40700, nlink=2, uid=0, gid=0, size=0, atime_ns=0, mtime_ns=0, ctime_ns=0),
            4: A(mode=0o120777, nlink=1, uid=0, gid=0, size=8, atime_ns=0, mtime_ns=0, ctime_ns=0),
        }
        dirs = {1: [("data.bin".encode(), 2), ("sub".encode(), 3), ("link".encode(), 4)], 3: []}
        def getattr(self, ino): return self.nodes[ino]
        def lookup(self, parent, name): return dict(self.dirs[parent])[name]
        def readdir(self, ino): return self.dirs[ino]
        def readlink(self, ino): return b"data.bin"
        def read(self, ino, off, size): return DATA[off:off + size]
        def listxattr(self, ino): return [b"user.origin"] if ino == 2 else []
        def getxattr(self, ino, name):
            if ino == 2 and name == b"user.origin": return b"image"
            raise KeyError(name)
    serve_image(View(), Path(sys.argv[1]), fsname="test-image")
""")


def test_image_view_mount(tmp_path: Path) -> None:
    mp = tmp_path / "mp"
    mp.mkdir()
    proc = subprocess.Popen([sys.executable, "-c", SERVER, str(mp)], cwd=ROOT, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 30
        while not os.path.ismount(mp):
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else b""
            assert time.monotonic() < deadline, "image view did not mount"
            time.sleep(0.02)
        assert sorted(os.listdir(mp)) == ["data.bin", "link", "sub"]
        data = (mp / "data.bin").read_bytes()
        assert data == bytes(range(256)) * 4096 + b"end"
        st = os.stat(mp / "data.bin")
        assert stat.S_IMODE(st.st_mode) == 0o644 and st.st_uid == 1000 and st.st_gid == 100
        assert st.st_mtime_ns == 1_500_000_000_123_456_789
        assert os.readlink(mp / "link") == "data.bin"
        assert os.getxattr(mp / "data.bin", "user.origin") == b"image"
        with pytest.raises(OSError) as e:
            open(mp / "data.bin", "r+b")
        assert e.value.errno == errno.EROFS
        with pytest.raises(OSError) as e:
            (mp / "new").write_bytes(b"x")
        assert e.value.errno == errno.EROFS
        with pytest.raises(FileNotFoundError):
            os.stat(mp / "missing")
        assert os.listdir(mp / "sub") == []
        assert os.stat(mp / "sub" / "..").st_ino == os.stat(mp).st_ino
    finally:
        subprocess.run(["fusermount3", "-u", str(mp)], capture_output=True)
        proc.wait(timeout=30)
    assert proc.returncode == 0


def test_bucket_source_through_running_and_temporary_mounts(mounts, home: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from agent.sources import source_tree
    from pool.errors import NotFoundError

    m = mounts()
    (m.path / "b" / "docs").mkdir()
    (m.path / "b" / "docs" / "a.txt").write_bytes(b"hello")
    with source_tree("b/docs") as folder:  # the running mount is used as it is
        assert folder == m.path / "b" / "docs"
        assert (folder / "a.txt").read_bytes() == b"hello"
    assert m.stop() == 0
    with source_tree("b") as folder:  # not mounted: a temporary read-only mount
        assert os.path.ismount(folder.parent)
        assert (folder / "docs" / "a.txt").read_bytes() == b"hello"
        with pytest.raises(OSError) as e:
            (folder / "new").write_bytes(b"x")
        assert e.value.errno == errno.EROFS
        temp_root = folder.parent
    assert not temp_root.exists()
    for bad in ("nosuchbucket", "b/nosuchdir", str(tmp_path / "missing")):
        with pytest.raises(NotFoundError):
            with source_tree(bad):
                pass
    with source_tree(str(tmp_path)) as folder:
        assert folder == tmp_path
