"""Shared fixtures: an isolated pool home per test and a real mount in a subprocess."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
pytest_plugins = ["tests.servers.fixtures"]


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh pool home (``DARKSTORAGE_HOME``) with the embedded default pool."""
    h = tmp_path / "home"
    monkeypatch.setenv("DARKSTORAGE_HOME", str(h))
    from pool.pool import Pool

    pool, _ = Pool.init(h)
    pool.close()
    return h


def cli(
    *args: str, home: Path, check: bool = True, timeout: float = 120, **kw: object
) -> subprocess.CompletedProcess[str]:
    """Run ``darkstorage ARGS`` in a subprocess against pool *home*."""
    env = {**os.environ, "DARKSTORAGE_HOME": str(home)}
    res = subprocess.run(
        [sys.executable, "-m", "agent", *args], env=env, capture_output=True, text=True, timeout=timeout, cwd=ROOT, **kw
    )  # type: ignore[call-overload]
    if check and res.returncode != 0:
        raise AssertionError(f"darkstorage {' '.join(args)} exited {res.returncode}: {res.stderr}")
    return res


@dataclass
class Mount:
    """A running ``darkstorage mount --foreground`` process."""

    home: Path
    path: Path
    args: list[str] = field(default_factory=list)
    proc: subprocess.Popen[bytes] | None = None
    log: Path | None = None

    def start(self) -> Mount:
        self.path.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "DARKSTORAGE_HOME": str(self.home)}
        self.log = self.home / f"mount-{int(time.time() * 1000)}.log"
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "agent", "mount", str(self.path), "--foreground", *self.args],
                env=env,
                stdout=out,
                stderr=out,
                cwd=ROOT,
            )
        deadline = time.monotonic() + 30
        while not self.ready():
            if self.proc.poll() is not None:
                raise AssertionError(f"mount died ({self.proc.returncode}): {self.log.read_text()}")
            if time.monotonic() > deadline:
                self.kill()
                raise AssertionError(f"mount did not come up: {self.log.read_text()}")
            time.sleep(0.02)
        return self

    def ready(self) -> bool:
        """Mounted by *our* process: its record names our pid (written once the kernel mount
        exists) and the mountpoint answers. ``os.path.ismount`` alone can be fooled by a dead
        mount left at the same place."""
        assert self.proc is not None
        try:
            rec = json.loads((self.home / "run" / "mount.json").read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return False
        if rec.get("pid") != self.proc.pid:
            return False
        try:
            return os.path.ismount(self.path) and os.stat(self.path) is not None
        except OSError:
            return False

    def stop(self, timeout: float = 120) -> int:
        """Unmount cleanly (SIGTERM: flush, then unmount). Returns the exit code."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
                raise
        self.detach()
        return self.proc.returncode

    def kill(self) -> None:
        """kill -9 the mount process (a crash), then detach the dead mount."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.detach()

    def listed(self) -> bool:
        """True while the mount table lists our mountpoint. ``os.path.ismount`` is not enough:
        it says False for a dead FUSE mount (lstat fails with ENOTCONN)."""
        target = str(self.path.absolute())
        with open("/proc/self/mounts") as f:
            return any(line.split()[1].replace("\\040", " ") == target for line in f)

    def detach(self) -> None:
        """Make sure the mountpoint is no mount any more (lazy unmount of a live or dead one)."""
        deadline = time.monotonic() + 10
        while self.listed():
            subprocess.run(["fusermount3", "-u", "-z", str(self.path)], capture_output=True)
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.path} stays mounted")
            time.sleep(0.02)


@pytest.fixture
def mounts(home: Path, tmp_path: Path) -> Iterator[Callable[..., Mount]]:
    """``start(*args, path=None)``: start a mount of the test's pool (bucket ``b`` exists);
    every mount started is stopped (or its corpse unmounted) at teardown."""
    cli("bucket", "create", "b", home=home)
    started: list[Mount] = []

    def start(*args: str, path: Path | None = None) -> Mount:
        m = Mount(home, path or tmp_path / "mnt", list(args))
        started.append(m)
        return m.start()

    yield start
    for m in started:
        if m.proc is not None and m.proc.poll() is None:
            try:
                m.stop(timeout=60)
            except Exception:
                m.kill()
        m.detach()


@pytest.fixture
def mounted(home: Path, tmp_path: Path) -> Iterator[Mount]:
    """The default pool with a bucket ``b``, mounted at ``tmp_path/mnt`` (write-back 0.2s)."""
    cli("bucket", "create", "b", home=home)
    m = Mount(home, tmp_path / "mnt", ["--write-back", "0.2s", "--allow-other"]).start()
    try:
        yield m
    finally:
        if m.proc is not None and m.proc.poll() is None:
            m.stop()
        else:
            m.detach()


def wait_until(pred: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    """Poll *pred* until it is true; fail with *what* after *timeout* seconds."""
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.02)


def pattern(seed: int, size: int) -> bytes:
    """Deterministic incompressible-looking bytes (no two seeds alike)."""
    out = bytearray()
    block = 0
    while len(out) < size:
        out += hashlib.sha512(f"{seed}:{block}".encode()).digest() * 64
        block += 1
    return bytes(out[:size])
