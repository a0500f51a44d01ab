"""End to end through a real mount: a real tree copied in and read back after a remount, git and
SQLite working inside the mount, kill -9 of the mount process in the middle of writes, the CLI's
background mount / ``umount`` and read-only mounts.

Every mount is a ``darkstorage mount --foreground`` subprocess (:class:`tests.conftest.Mount`);
"remount" always means a fresh process over the same pool home.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
import signal
import sqlite3
import stat
import subprocess
import sysconfig
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import Mount, cli, pattern, wait_until

pytestmark = pytest.mark.fuse

STDLIB = Path(sysconfig.get_paths()["stdlib"])
MiB = 1 << 20


# -- helpers ---------------------------------------------------------------------------------


def sha256_file(path: Path | str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(MiB):
            h.update(chunk)
    return h.hexdigest()


def state_of(path: Path) -> str:
    return os.getxattr(path, "user.darkstorage.state").decode()


def write_fsync(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        view = memoryview(data)
        while view:
            n = os.write(fd, view[:MiB])
            view = view[n:]
        os.fsync(fd)
    finally:
        os.close(fd)


# -- a real tree: the Python standard library ------------------------------------------------


def _stdlib_ignore(src_dir: str, names: list[str]) -> set[str]:
    """copytree ``ignore``: no site-packages, no __pycache__, nothing unreadable or special."""
    skip = set()
    for n in names:
        if n in ("site-packages", "__pycache__"):
            skip.add(n)
            continue
        p = os.path.join(src_dir, n)
        try:
            st = os.lstat(p)
        except OSError:
            skip.add(n)
            continue
        if stat.S_ISLNK(st.st_mode):
            continue
        if stat.S_ISDIR(st.st_mode):
            if not os.access(p, os.R_OK | os.X_OK):
                skip.add(n)
        elif not stat.S_ISREG(st.st_mode) or not os.access(p, os.R_OK):
            skip.add(n)
    return skip


def _make_extra_tree(root: Path) -> None:
    """What the standard library lacks: symlinks (relative, absolute, dangling, to a
    directory), odd modes, odd names, empty files, old and precise mtimes, a user xattr."""
    (root / "sub dir" / "deeper").mkdir(parents=True)
    (root / "empty").write_bytes(b"")
    (root / "sub dir" / "deeper" / "data.bin").write_bytes(pattern(7, 3 * MiB + 123))
    (root / "unicodé ✓.txt").write_text("non-ascii name\n")
    (root / "script.sh").write_text("#!/bin/sh\necho hi\n")
    os.chmod(root / "script.sh", 0o755)
    (root / "private").write_text("secret\n")
    os.chmod(root / "private", 0o600)
    (root / "setuid").write_text("x")
    os.chmod(root / "setuid", 0o4755)
    (root / "sticky").mkdir()
    os.chmod(root / "sticky", 0o1777)
    os.symlink("sub dir/deeper/data.bin", root / "rel-link")
    os.symlink("/etc/hostname", root / "abs-link")
    os.symlink("does/not/exist", root / "dangling")
    os.symlink("sub dir", root / "dir-link")
    os.utime(root / "private", ns=(1_000_000_001, 1_000_000_001))
    os.utime(root / "empty", ns=(1_700_000_000_123_456_789, 1_700_000_000_123_456_789))
    try:
        os.setxattr(root / "private", "user.comment", b"kept across the copy")
    except OSError:
        pass  # the source filesystem has no user xattrs: nothing to compare then


def _manifest(root: Path, ignore: Callable[[str, list[str]], set[str]] | None) -> dict[str, tuple]:
    """``{relative path: (st_mode, mtime_ns, content sha256 | symlink target | None, xattrs)}``."""
    out: dict[str, tuple] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        skip = ignore(dirpath, dirnames + filenames) if ignore else set()
        dirnames[:] = sorted(d for d in dirnames if d not in skip)
        for name in dirnames + sorted(f for f in filenames if f not in skip):
            p = Path(dirpath) / name
            st = os.lstat(p)
            rel = str(p.relative_to(root))
            if stat.S_ISLNK(st.st_mode):
                content: str | None = os.readlink(p)
                xattrs: dict[str, bytes] = {}
            else:
                content = sha256_file(p) if stat.S_ISREG(st.st_mode) else None
                xattrs = {n: os.getxattr(p, n) for n in os.listxattr(p) if n.startswith("user.")}
            out[rel] = (st.st_mode, st.st_mtime_ns, content, xattrs)
    return out


@pytest.mark.slow
def test_stdlib_tree_survives_copy_unmount_and_remount(
    mounts: Callable[..., Mount], home: Path, tmp_path: Path
) -> None:
    extra = tmp_path / "extra"
    extra.mkdir()
    _make_extra_tree(extra)
    want_stdlib = _manifest(STDLIB, _stdlib_ignore)
    want_extra = _manifest(extra, None)
    regular = sum(1 for v in want_stdlib.values() if stat.S_ISREG(v[0]))
    assert regular > 1000, f"expected thousands of files in {STDLIB}, found {regular}"

    m = mounts("--write-back", "0.5s")
    dst = m.path / "b"
    shutil.copytree(STDLIB, dst / "stdlib", symlinks=True, ignore=_stdlib_ignore, copy_function=shutil.copy2)
    shutil.copytree(extra, dst / "extra", symlinks=True, copy_function=shutil.copy2)
    assert m.stop() == 0, m.log.read_text() if m.log else ""
    assert not os.path.ismount(m.path)

    m2 = mounts("--write-back", "0.5s")
    got_stdlib = _manifest(m2.path / "b" / "stdlib", None)
    got_extra = _manifest(m2.path / "b" / "extra", None)
    for want, got in ((want_stdlib, got_stdlib), (want_extra, got_extra)):
        assert sorted(got) == sorted(want)
        bad = {rel: (want[rel], got[rel]) for rel in want if got[rel] != want[rel]}
        assert not bad, f"{len(bad)} entries differ after remount, e.g. {list(bad.items())[:5]}"

    # the objects are plain files under the hot tier, keyed <bucket>/<path>, with the same bytes
    hot = home / "tiers" / "hot" / "b"
    for top, want in (("stdlib", want_stdlib), ("extra", want_extra)):
        for rel, (mode, _mtime, digest, _x) in want.items():
            if stat.S_ISREG(mode):
                obj = hot / top / rel
                assert obj.is_file(), f"{obj} missing from the hot tier"
                assert sha256_file(obj) == digest, f"{obj} differs from the source"
    assert m2.stop() == 0


def test_attribute_changes_reach_the_object_metadata(mounts: Callable[..., Mount], home: Path) -> None:
    m = mounts("--write-back", "0.2s")
    p = m.path / "b" / "f"
    p.write_bytes(b"x")
    wait_until(lambda: state_of(p) == "clean", "write-back")
    os.chmod(p, 0o600)
    os.utime(p, ns=(5 * 10**9, 5 * 10**9))
    assert m.stop() == 0
    obj = home / "tiers" / "hot" / "b" / "f"
    st = os.stat(obj)
    assert (stat.S_IMODE(st.st_mode), st.st_mtime_ns) == (0o600, 5 * 10**9)
    attrs = json.loads(os.getxattr(obj, "user.darkstorage.attrs"))
    assert (attrs["mode"], attrs["mtime_ns"]) == (stat.S_IFREG | 0o600, 5 * 10**9)


# -- real tools inside the mount -------------------------------------------------------------


def _git(repo: Path, *args: str, env: dict[str, str]) -> str:
    res = subprocess.run(
        ["git", "-c", "user.name=Test", "-c", "user.email=test@example.com", "-c", "init.defaultBranch=main", *args],
        cwd=repo,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 0, f"git {' '.join(args)} exited {res.returncode}: {res.stderr}"
    return res.stdout


def test_git_in_the_mount(mounts: Callable[..., Mount], tmp_path: Path) -> None:
    env = {
        **os.environ,
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_CONFIG_GLOBAL": os.devnull,
        "HOME": str(tmp_path),
        "GIT_TERMINAL_PROMPT": "0",
    }
    m = mounts("--write-back", "0.2s")
    repo = m.path / "b" / "repo"
    repo.mkdir()
    _git(repo, "init", "-q", env=env)
    (repo / "README").write_text("hello\n")
    (repo / "src").mkdir()
    for name in ("json", "email", "http"):
        shutil.copytree(STDLIB / name, repo / "src" / name, ignore=shutil.ignore_patterns("__pycache__"))
    (repo / "run.sh").write_text("#!/bin/sh\n")
    os.chmod(repo / "run.sh", 0o755)
    os.symlink("README", repo / "link")
    _git(repo, "add", "-A", env=env)
    _git(repo, "commit", "-q", "-m", "first", env=env)
    (repo / "README").write_text("hello again\n")
    (repo / "src" / "json" / "tool.py").unlink()
    _git(repo, "commit", "-q", "-a", "-m", "second", env=env)
    assert _git(repo, "status", "--porcelain", env=env) == ""
    assert _git(repo, "log", "--format=%s", env=env).split() == ["second", "first"]
    _git(repo, "fsck", "--full", "--strict", env=env)
    _git(repo, "gc", "-q", env=env)  # packs objects: renames, deletes, big sequential writes
    assert m.stop() == 0

    m2 = mounts("--write-back", "0.2s")
    repo = m2.path / "b" / "repo"
    assert _git(repo, "status", "--porcelain", env=env) == ""
    assert _git(repo, "log", "--format=%s", env=env).split() == ["second", "first"]
    _git(repo, "fsck", "--full", "--strict", env=env)
    assert _git(repo, "show", "HEAD:README", env=env) == "hello again\n"
    assert (repo / "link").readlink() == Path("README")
    assert os.stat(repo / "run.sh").st_mode & 0o111


def _fill(db: Path, journal_mode: str) -> None:
    con = sqlite3.connect(db, isolation_level=None)
    try:
        assert con.execute(f"PRAGMA journal_mode={journal_mode}").fetchone()[0] == journal_mode
        con.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, name TEXT, blob BLOB)")
        con.execute("CREATE INDEX t_name ON t(name)")
        for batch in range(10):
            con.execute("BEGIN")
            for i in range(100):
                n = batch * 100 + i
                con.execute("INSERT INTO t (id, name, blob) VALUES (?, ?, ?)", (n, f"row {n}", os.urandom(200 + n)))
            con.execute("COMMIT")
        con.execute("BEGIN")
        con.execute("UPDATE t SET name = name || '!' WHERE id % 7 = 0")
        con.execute("DELETE FROM t WHERE id % 10 = 9")
        con.execute("ROLLBACK")  # a rolled-back transaction changes nothing
    finally:
        con.close()


def _check(db: Path) -> None:
    con = sqlite3.connect(db)
    try:
        assert con.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        assert con.execute("SELECT count(*), sum(id), count(DISTINCT name) FROM t").fetchone() == (1000, 499500, 1000)
        assert con.execute("SELECT count(*) FROM t WHERE name LIKE '%!'").fetchone()[0] == 0
    finally:
        con.close()


def test_sqlite_in_the_mount(mounts: Callable[..., Mount]) -> None:
    m = mounts("--write-back", "0.2s")
    d = m.path / "b" / "db"
    d.mkdir()
    _fill(d / "rollback.db", "delete")
    _fill(d / "wal.db", "wal")
    _check(d / "rollback.db")
    _check(d / "wal.db")
    assert m.stop() == 0

    m2 = mounts("--write-back", "0.2s")
    d = m2.path / "b" / "db"
    _check(d / "rollback.db")
    _check(d / "wal.db")
    res = subprocess.run(
        ["sqlite3", str(d / "wal.db"), "PRAGMA integrity_check; SELECT count(*) FROM t;"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (res.returncode, res.stdout.split()) == (0, ["ok", "1000"]), res.stderr


# -- kill -9 of the mount process --------------------------------------------------------------


class Writer(threading.Thread):
    """Appends bytes of :meth:`expected` to a file in the mount, one chunk every few ms, until
    the mount dies; counts what the filesystem acknowledged."""

    CHUNK = 64 << 10
    PERIOD = pattern(99, 4 * MiB + 4321)  # the content repeats with this period

    def __init__(self, path: Path) -> None:
        super().__init__(daemon=True)
        self.path = path
        self.acked = 0
        self.error: OSError | None = None
        self.first_write_ns = 0
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        # an old mtime, saved before any data: after the crash the file's mtime must show the writes
        os.utime(self.fd, ns=(1_000_000_000, 1_000_000_000))

    @classmethod
    def expected(cls, size: int) -> bytes:
        return (cls.PERIOD * (size // len(cls.PERIOD) + 1))[:size]

    def run(self) -> None:
        ring = self.PERIOD + self.PERIOD[: self.CHUNK]
        self.first_write_ns = time.time_ns()
        try:
            while True:
                p = self.acked % len(self.PERIOD)
                self.acked += os.write(self.fd, ring[p : p + self.CHUNK])
                time.sleep(0.005)  # pacing, so the file stays a few MiB however long a scenario takes
        except OSError as e:
            self.error = e
        finally:
            try:
                os.close(self.fd)
            except OSError:
                pass


def _crash_scenario(name: str, m: Mount) -> dict[str, bytes]:
    """Write and fsync files as scenario *name* says; return what must survive, by path in b/."""
    b = m.path / "b"
    files = {f"f{i}.bin": pattern(i, size) for i, size in enumerate((0, 1, 4095, 65536, 3 * MiB + 17))}
    (b / "d").mkdir()
    files["d/nested.bin"] = pattern(50, 200_000)
    if name == "rewrite-after-upload":
        for rel, data in files.items():
            write_fsync(b / rel, data)
        wait_until(lambda: all(state_of(b / rel) == "clean" for rel in files), "uploads")
        # change clean files: truncate + rewrite, append, overwrite in the middle
        files["f2.bin"] = pattern(200, 10_000)
        write_fsync(b / "f2.bin", files["f2.bin"])
        with open(b / "f3.bin", "ab") as f:
            f.write(b"appended")
            f.flush()
            os.fsync(f.fileno())
        files["f3.bin"] += b"appended"
        with open(b / "f4.bin", "r+b") as f:
            f.seek(MiB)
            f.write(b"X" * 5000)
            f.flush()
            os.fsync(f.fileno())
        data = bytearray(files["f4.bin"])
        data[MiB : MiB + 5000] = b"X" * 5000
        files["f4.bin"] = bytes(data)
        return files
    for rel, data in files.items():
        write_fsync(b / rel, data)
    if name == "dirty-at-kill":
        assert {state_of(b / rel) for rel in files} == {"dirty"}
    elif name == "during-upload":
        files["big.bin"] = pattern(77, 48 * MiB)
        write_fsync(b / "big.bin", files["big.bin"])
        # best effort: kill while the upload runs (if it already finished, the scenario still holds)
        wait_until(lambda: state_of(b / "big.bin") in ("uploading", "clean"), "the upload to start")
    return files


@pytest.mark.parametrize(
    "scenario, write_back",
    [
        ("right-after-fsync", "0.2s"),
        ("dirty-at-kill", "60s"),
        ("rewrite-after-upload", "0.2s"),
        ("during-upload", "0s"),
    ],
)
def test_kill_9_loses_nothing_fsynced(mounts: Callable[..., Mount], home: Path, scenario: str, write_back: str) -> None:
    m = mounts("--write-back", write_back)
    writer = Writer(m.path / "b" / "writer.log")
    writer.start()
    wait_until(lambda: writer.acked >= 4 * Writer.CHUNK, "the writer to get going")
    files = _crash_scenario(scenario, m)
    assert writer.is_alive() and writer.error is None, writer.error
    m.kill()  # kill -9 while the writer is still writing
    m.detach()
    writer.join(30)
    assert not writer.is_alive()
    assert writer.error is not None, "the writer should have seen the mount die"
    want = {rel: hashlib.sha256(data).hexdigest() for rel, data in files.items()}

    m2 = mounts("--write-back", "0.2s")
    b = m2.path / "b"
    got = {rel: sha256_file(b / rel) for rel in files}
    assert got == want
    # every byte the filesystem acknowledged to the writer survived (a process crash, not a power cut)
    tail = (b / "writer.log").read_bytes()
    assert writer.acked <= len(tail) <= writer.acked + Writer.CHUNK
    assert tail == Writer.expected(len(tail))
    assert os.stat(b / "writer.log").st_mtime_ns >= writer.first_write_ns - 10**9, "mtime lost the writes"
    assert m2.stop() == 0, m2.log.read_text() if m2.log else ""

    hot = home / "tiers" / "hot" / "b"
    assert {rel: sha256_file(hot / rel) for rel in files} == want
    assert (hot / "writer.log").read_bytes() == tail


def test_kill_9_during_a_metadata_storm(mounts: Callable[..., Mount], home: Path) -> None:
    """Group commit: with creates, renames, mkdirs and unlinks streaming (most of them in an
    open group at any moment), a kill -9 keeps every acknowledged byte and leaves a catalog
    the next mount serves from; files whose creation was not committed yet leave no trace."""
    m = mounts("--write-back", "60s")
    b = m.path / "b"
    acked: dict[str, bytes] = {}
    stop = threading.Event()
    errors: list[BaseException] = []

    def storm() -> None:
        i = 0
        try:
            while not stop.is_set():
                d = b / f"d{i % 7}"
                d.mkdir(exist_ok=True)
                (d / f"e{i}").touch()
                if i % 3 == 0:
                    os.rename(d / f"e{i}", d / f"r{i}")
                if i % 5 == 0 and i:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(d / f"e{i - 5}")
                data = pattern(i, 100 + i % 5000)
                with open(b / f"w{i}", "wb", buffering=0) as f:
                    assert f.write(data) == len(data)  # the syscall returned: acknowledged
                    acked[f"w{i}"] = data
                i += 1
        except OSError:
            pass  # the mount died under us
        except BaseException as e:
            errors.append(e)

    t = threading.Thread(target=storm, daemon=True)
    t.start()
    wait_until(lambda: len(acked) >= 300, "the storm to get going")
    m.kill()
    stop.set()
    m.detach()
    t.join(30)
    assert not errors, errors
    m2 = mounts("--write-back", "0.2s")
    b2 = m2.path / "b"
    for name, data in acked.items():
        assert (b2 / name).read_bytes() == data, name
    # every name listed can be stat'ed and read: the catalog is consistent
    for root, _dirs, files in os.walk(b2):
        for f in files:
            (Path(root) / f).read_bytes()
    cache = home / "cache"
    cat = sqlite3.connect(home / "catalog.db")
    known = {r[0] for r in cat.execute("SELECT inode FROM objects")}
    assert all(int(n) in known for n in os.listdir(cache) if n.isdigit())
    assert m2.stop() == 0, m2.log.read_text() if m2.log else ""


# -- the CLI: background mount, umount, read-only --------------------------------------------


def test_background_mount_and_cli_umount_upload_everything(home: Path, tmp_path: Path) -> None:
    cli("bucket", "create", "b", home=home)
    mp = tmp_path / "bg"
    res = cli("mount", str(mp), "--write-back", "30s", home=home)
    try:
        assert os.path.ismount(mp), res.stdout
        files = {f"n{i}.bin": pattern(300 + i, 1000 * i + 1) for i in range(5)}
        for name, data in files.items():
            (mp / "b" / name).write_bytes(data)
        assert {state_of(mp / "b" / n) for n in files} == {"dirty"}
        st = json.loads(cli("status", "--json", home=home).stdout)
        assert [x["mountpoint"] for x in st["mounts"]] == [str(mp)]
        assert st["dirty_files"] == len(files)

        res = cli("umount", str(mp), home=home, check=False)
        assert res.returncode == 0, res.stderr
        assert not os.path.ismount(mp)
        hot = home / "tiers" / "hot" / "b"
        assert {n: (hot / n).read_bytes() for n in files} == files
        st = json.loads(cli("status", "--json", home=home).stdout)
        assert (st["mounts"], st["dirty_files"], st["clean_files"]) == ([], 0, len(files))
        res = cli("umount", str(mp), home=home, check=False)
        assert res.returncode == 3 and "Traceback" not in res.stderr, res.stderr
    finally:
        _stop_background(home, mp)


def _stop_background(home: Path, mp: Path) -> None:
    try:
        rec = json.loads((home / "run" / "mount.json").read_text())
    except (FileNotFoundError, ValueError):
        rec = None
    if rec is not None:
        try:
            os.kill(int(rec["pid"]), signal.SIGKILL)
        except ProcessLookupError:
            pass
    if os.path.ismount(mp):
        subprocess.run(["fusermount3", "-u", "-z", str(mp)], capture_output=True)


def test_read_only_mount_refuses_changes(mounts: Callable[..., Mount], home: Path) -> None:
    m = mounts("--write-back", "0.2s")
    b = m.path / "b"
    (b / "dir").mkdir()
    (b / "dir" / "f").write_bytes(b"contents")
    assert m.stop() == 0
    before = _catalog_rows(home)

    ro = mounts("--read-only")
    b = ro.path / "b"
    assert (b / "dir" / "f").read_bytes() == b"contents"
    changes: list[tuple[str, Callable[[], object]]] = [
        ("open for writing", lambda: open(b / "dir" / "f", "r+b")),
        ("truncate", lambda: os.truncate(b / "dir" / "f", 0)),
        ("create", lambda: open(b / "dir" / "new", "wb")),
        ("mkdir", lambda: os.mkdir(b / "dir2")),
        ("new bucket", lambda: os.mkdir(ro.path / "c")),
        ("unlink", lambda: os.unlink(b / "dir" / "f")),
        ("rmdir", lambda: os.rmdir(b / "dir")),
        ("rename", lambda: os.rename(b / "dir" / "f", b / "dir" / "g")),
        ("symlink", lambda: os.symlink("f", b / "dir" / "l")),
        ("link", lambda: os.link(b / "dir" / "f", b / "dir" / "h")),
        ("chmod", lambda: os.chmod(b / "dir" / "f", 0o600)),
        ("utime", lambda: os.utime(b / "dir" / "f", ns=(1, 1))),
        ("setxattr", lambda: os.setxattr(b / "dir" / "f", "user.x", b"1")),
    ]
    for what, change in changes:
        with pytest.raises(OSError) as exc:
            change()
        assert exc.value.errno == errno.EROFS, f"{what}: {exc.value}"
    assert (b / "dir" / "f").read_bytes() == b"contents"
    assert ro.stop() == 0
    assert _catalog_rows(home) == before  # not even an atime changed


def _catalog_rows(home: Path) -> list[tuple]:
    con = sqlite3.connect(home / "catalog.db")
    try:
        return (
            con.execute("SELECT * FROM inodes ORDER BY id").fetchall()
            + con.execute("SELECT * FROM dentries ORDER BY id").fetchall()
            + con.execute("SELECT * FROM objects ORDER BY inode").fetchall()
        )
    finally:
        con.close()


def test_mount_again_after_a_crash_at_the_same_place(mounts: Callable[..., Mount], home: Path) -> None:
    """After kill -9 the mountpoint is a dead FUSE mount (ENOTCONN); mounting there again
    detaches it first and serves the pool, fsync'ed data included."""
    m = mounts("--write-back", "60s")
    write_fsync(m.path / "b" / "kept", b"survives")
    assert m.proc is not None
    m.proc.kill()
    m.proc.wait()
    assert m.listed()  # the corpse is still in the mount table
    m2 = mounts(path=m.path)
    assert (m2.path / "b" / "kept").read_bytes() == b"survives"
    assert m2.stop() == 0
