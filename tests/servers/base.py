"""The common part of every test server: free ports, a supervised subprocess with its log, readiness
by polling, stop/start on the same port and data, and the dataclass the fixtures yield."""

from __future__ import annotations

import atexit
import contextlib
import itertools
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import fsspec

log = logging.getLogger(__name__)

LOOPBACK = "127.0.0.1"
START_TIMEOUT_S = 60.0
"""Longest wait for a server to answer; they take 0.2-4 s on an idle machine (2 shared cores)."""
STOP_TIMEOUT_S = 10.0
LOG_TAIL_BYTES = 6000
CONNECT_TIMEOUT_S = 5.0
"""Client connect timeout used by ``fsspec_kwargs``: loopback answers at once or never."""
READ_TIMEOUT_S = 30.0
RETRIES = 2
"""Client retry budget used by ``fsspec_kwargs`` where the client takes one."""


_LIVE: set[StoreServer] = set()
"""Servers started and not stopped yet; stopped at interpreter exit if a fixture teardown never ran."""
STARTED: list[StoreServer] = []
"""Every server started in this process, in order (for failure reports)."""


@atexit.register
def _stop_leftovers() -> None:
    for server in list(_LIVE):
        server.stop(kill=True)


class ServerStartError(RuntimeError):
    """A test server did not come up; the message names it and carries the tail of its log."""


def free_ports(count: int = 1) -> list[int]:
    """*count* distinct TCP ports that were free on loopback a moment ago (bound together, then closed)."""
    socks = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((LOOPBACK, 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def port_open(port: int, host: str = LOOPBACK) -> bool:
    """True if something accepts TCP connections on *host*:*port*."""
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def descendants(pid: int) -> list[int]:
    """The pids of all processes below *pid* (children, grandchildren, ...), from /proc (Linux)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(b")") + 2 :].split()[1])  # fields after "(comm)": state, ppid
        children.setdefault(ppid, []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        kids = children.get(todo.pop(), [])
        found += kids
        todo += kids
    return found


def signal_all(group: int, pids: list[int], sig: signal.Signals) -> None:
    """Send *sig* once to the process group *group* and to each of *pids* outside it (gone ones are
    skipped). Once only: a second SIGTERM makes some servers (Azurite) exit without saving."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(group, sig)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            if os.getpgid(pid) != group:
                os.kill(pid, sig)


def tail(path: Path, size: int = LOG_TAIL_BYTES) -> str:
    """The last *size* bytes of the file at *path* as text ('' if it does not exist)."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - size))
            return f.read().decode(errors="replace")
    except FileNotFoundError:
        return ""


_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))
"""Loopback probes never go through an http_proxy from the environment."""


def urlopen_direct(url: str, timeout_s: float = 2.0) -> Any:
    """``urllib.request.urlopen`` without proxies; raises HTTPError on error statuses."""
    return _DIRECT.open(url, timeout=timeout_s)


def http_status(url: str, timeout_s: float = 2.0) -> int:
    """The HTTP status of a GET of *url* (error statuses included); raises OSError if nothing answers."""
    try:
        with urlopen_direct(url, timeout_s) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


@dataclass(eq=False)
class StoreServer:
    """A real storage server running on loopback for the tests.

    Subclasses set ``name`` and ``protocol`` and implement ``command()`` (the argv to run),
    ``ready()`` (one cheap readiness probe), ``fsspec_kwargs()`` and ``make_root()``.
    ``user``/``secret`` are the valid credentials (S3 access key / secret key, Azure account name /
    key, login / password); ``wrong_secret`` is a deliberately wrong secret for the same user.
    """

    name: ClassVar[str] = "server"
    protocol: ClassVar[str] = "file"
    stop_grace_s: ClassVar[float] = STOP_TIMEOUT_S
    """How long ``stop()`` waits after SIGTERM before SIGKILL."""
    checks_credentials: ClassVar[bool] = True
    """False for a server that accepts any credentials (fake-gcs-server)."""

    workdir: Path
    port: int = 0
    """0: a free port is picked at the first start."""
    host: str = LOOPBACK
    user: str = "darkstorage"
    secret: str = "s3cret-Pa55"
    wrong_secret: str = "not-the-secret"
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    _roots: itertools.count[int] = field(default_factory=itertools.count, repr=False)
    _prepared: bool = field(default=False, repr=False)

    # -- what a subclass provides ------------------------------------------------------------

    def command(self) -> Sequence[str]:
        """The argv that runs the server in the foreground."""
        raise NotImplementedError

    def environment(self) -> dict[str, str]:
        """Extra environment variables for the server process."""
        return {}

    def prepare(self) -> None:
        """Write config files, keys and folders before the first start (runs once)."""

    def ready(self) -> bool:
        """One readiness probe: True once the server serves requests."""
        return port_open(self.port, self.host)

    def settle(self) -> None:
        """Wait until everything acknowledged so far would survive ``stop(kill=True)``.

        A no-op for servers that write through to disk; Azurite saves its metadata every 5 s.
        """

    def after_start(self) -> None:
        """Work to do once the server answers (for example creating users)."""

    def fsspec_kwargs(self, *, wrong: bool = False) -> dict[str, Any]:
        """Keyword arguments for ``fsspec.filesystem(self.protocol, ...)``; *wrong* uses ``wrong_secret``."""
        raise NotImplementedError

    def make_root(self, name: str) -> str:
        """Create the empty bucket / container / folder *name* and return its path in the filesystem."""
        raise NotImplementedError

    # -- common behaviour --------------------------------------------------------------------

    @property
    def endpoint(self) -> str:
        """``host:port`` (subclasses with a URL give ``http://host:port``)."""
        return f"{self.host}:{self.port}"

    @property
    def log_path(self) -> Path:
        """The server's combined stdout/stderr; kept in the test tmp dir and appended across restarts."""
        return self.workdir / f"{self.name}.log"

    def log_size(self) -> int:
        """The current length of the log in bytes (0 before the first start)."""
        try:
            return self.log_path.stat().st_size
        except FileNotFoundError:
            return 0

    def log_tail(self, since: int = 0) -> str:
        """The end of the server log (at most ``LOG_TAIL_BYTES``), from byte *since* on."""
        return tail(self.log_path, min(LOG_TAIL_BYTES, max(0, self.log_size() - since)))

    def filesystem(self, *, wrong: bool = False) -> fsspec.AbstractFileSystem:
        """A new fsspec filesystem for this server (never a cached instance)."""
        return fsspec.filesystem(self.protocol, skip_instance_cache=True, **self.fsspec_kwargs(wrong=wrong))

    def fresh_root(self) -> str:
        """A new, empty bucket / container / folder (unique name per call); returns its path."""
        return self.make_root(f"t{os.getpid()}-{next(self._roots)}")

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self, timeout_s: float = START_TIMEOUT_S) -> None:
        """Start the server (on ``self.port``, keeping earlier data) and wait until it answers.

        Raises:
            ServerStartError: the process exited or did not answer within *timeout_s*; the message
                carries the tail of its log.
        """
        if self.running:
            return
        self.workdir.mkdir(parents=True, exist_ok=True)
        if not self._prepared:
            self.prepare()
            self._prepared = True
        argv = list(self.command())
        log.info("starting %s: %s", self.name, " ".join(argv))
        with open(self.log_path, "ab") as out:
            out.write(f"\n=== start {time.strftime('%H:%M:%S')}: {' '.join(argv)}\n".encode())
            out.flush()
            self.proc = subprocess.Popen(
                argv,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=self.workdir,
                env={**os.environ, **self.environment()},
                start_new_session=True,
            )
        _LIVE.add(self)
        if self not in STARTED:
            STARTED.append(self)
        self._wait(self.ready, "answer", timeout_s)
        self.after_start()

    def _wait(self, probe: Callable[[], bool], what: str, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        delay = 0.02
        while True:
            try:
                if probe():
                    return
            except Exception as exc:  # a probe failing is "not yet"
                log.debug("%s probe: %s", self.name, exc)
            assert self.proc is not None
            if self.proc.poll() is not None:
                code = self.proc.returncode
                self.proc = None
                _LIVE.discard(self)
                raise ServerStartError(
                    f"{self.name} exited with {code} before it would {what}; log:\n{self.log_tail()}"
                )
            if time.monotonic() > deadline:
                self.stop()
                raise ServerStartError(f"{self.name} did not {what} within {timeout_s:.0f}s; log:\n{self.log_tail()}")
            time.sleep(delay)
            delay = min(delay * 1.5, 0.25)

    def stop(self, *, kill: bool = False) -> None:
        """Stop the server: SIGTERM and wait (SIGKILL after a timeout), or SIGKILL at once if *kill*.

        The whole process group goes, so helper processes the server spawned do not linger.
        The data directory is kept: ``start()`` brings the same server back on the same port.
        """
        proc, self.proc = self.proc, None
        _LIVE.discard(self)
        if proc is None or proc.poll() is not None:
            return
        # sshd runs each session in a new session (setsid): not in the server's process group,
        # so the tree is collected from /proc first and every member is signalled.
        tree = [proc.pid, *descendants(proc.pid)]
        signal_all(proc.pid, tree, signal.SIGKILL if kill else signal.SIGTERM)
        try:
            proc.wait(self.stop_grace_s)
        except subprocess.TimeoutExpired:
            log.info("%s still running %ss after SIGTERM; killing it", self.name, self.stop_grace_s)
            signal_all(proc.pid, tree, signal.SIGKILL)
            proc.wait()
        # Let the port be reusable before a restart binds it again.
        self._wait_port_closed()

    def _wait_port_closed(self) -> None:
        deadline = time.monotonic() + STOP_TIMEOUT_S
        while port_open(self.port, self.host) and time.monotonic() < deadline:
            time.sleep(0.02)

    def restart(self) -> None:
        """``stop()`` then ``start()``."""
        self.stop()
        self.start()


def python_module(module: str, *args: str) -> list[str]:
    """argv running ``python -m MODULE ARGS`` with this interpreter."""
    return [sys.executable, "-m", module, *args]
