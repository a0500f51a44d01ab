"""Transfers between local folders and the unmounted pool: attributes, retries and their
classification, resume, the circuit breaker, the bandwidth limit, the log and the hooks.

Faults are injected by a real local filesystem subclass that drops the connection after a
given number of bytes (a store that cannot fail on demand is the reason: the server-level
fault tests in tests/integration/test_transfers.py stop real servers)."""

from __future__ import annotations

import errno
import http.server
import json
import os
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fsspec.implementations.local import LocalFileSystem

from pool.errors import AuthError, BackendError, IntegrityError, TransferError
from pool.locations import Location, local_location, resolve_location
from pool.notify import NotifyConfig
from pool.resilience import CircuitBreaker, CircuitOpenError, TokenBucket, is_transient, reset_breakers
from pool.transferlog import TransferLog
from pool.transfers import PARTIAL_MARK, TransferOptions, copy_file, copy_tree, plan_tree
from tests.conftest import pattern

FAST = {"backoff_initial_s": 0.01, "backoff_max_s": 0.05}


class FlakyFS(LocalFileSystem):
    """A local filesystem whose reads fail with ECONNRESET once *fail_after* bytes were read,
    *failures* times in all (then it behaves)."""

    def __init__(self, fail_after: int, failures: int = 1, exc: type[BaseException] = ConnectionResetError) -> None:
        super().__init__(skip_instance_cache=True)
        self.fail_after, self.failures, self.exc = fail_after, failures, exc
        self.opened_at: list[int] = []

    def _open(self, path: str, mode: str = "rb", *args: Any, **kw: Any) -> Any:
        f = super()._open(path, mode, *args, **kw)
        if "r" not in mode:
            return f
        fs = self
        real_read, real_seek = f.read, f.seek
        pos = [0]

        def seek(off: int, whence: int = 0) -> int:
            pos[0] = real_seek(off, whence)
            fs.opened_at.append(pos[0])
            return pos[0]

        def read(n: int = -1) -> bytes:
            if fs.failures > 0 and pos[0] >= fs.fail_after:
                fs.failures -= 1
                raise fs.exc(errno.ECONNRESET, "Connection reset by peer")
            data = real_read(n)
            pos[0] += len(data)
            return data

        f.read, f.seek = read, seek
        return f


@pytest.fixture(autouse=True)
def _fresh_breakers() -> Iterator[None]:
    reset_breakers()
    yield
    reset_breakers()


@pytest.fixture
def tlog(home: Path) -> Iterator[TransferLog]:
    log = TransferLog(home)
    yield log
    log.close()


def _tree(root: Path) -> None:
    (root / "d" / "e").mkdir(parents=True)
    (root / "a.txt").write_bytes(b"alpha\n")
    (root / "d" / "b.bin").write_bytes(pattern(1, 300_000))
    (root / "d" / "e" / "c.bin").write_bytes(b"")
    os.chmod(root / "a.txt", 0o640)
    os.chmod(root / "d" / "b.bin", 0o755)
    os.utime(root / "a.txt", ns=(1_600_000_000_123_456_789,) * 2)
    os.utime(root / "d" / "b.bin", ns=(1_500_000_000_000_000_001,) * 2)


def _same_tree(a: Path, b: Path, *, mtime_unit_ns: int = 1) -> None:
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    for rel in files:
        sa, sb = (a / rel).stat(), (b / rel).stat()
        assert (a / rel).read_bytes() == (b / rel).read_bytes(), rel
        assert oct(sa.st_mode) == oct(sb.st_mode), rel
        assert sa.st_mtime_ns // mtime_unit_ns == sb.st_mtime_ns // mtime_unit_ns, rel


def test_local_to_pool_to_local_keeps_bytes_modes_mtimes(home: Path, tmp_path: Path, tlog: TransferLog) -> None:
    from pool.pool import Pool

    Pool.open(home).create_bucket("b")
    src = tmp_path / "src"
    _tree(src)
    recs = copy_tree(local_location(src), resolve_location("b/in/", destination=True, home=home), log=tlog)
    assert sorted(r.destination for r in recs) == ["b/in/a.txt", "b/in/d/b.bin", "b/in/d/e/c.bin"]
    pool = Pool.open(home)
    ino, a = pool.resolve("b/in/a.txt")
    assert (oct(a.mode), a.mtime_ns, a.size) == (oct(0o100640), 1_600_000_000_123_456_789, 6)
    obj = pool.catalog.object(ino)
    assert obj is not None and obj.state == "clean" and obj.key == "b/in/a.txt"
    out = tmp_path / "out"
    copy_tree(resolve_location("b/in", home=home), local_location(out), log=tlog, options=TransferOptions(transfers=2))
    _same_tree(src, out)
    assert not [p for p in out.rglob("*") if PARTIAL_MARK in p.name]
    rows = tlog.recent(10)
    assert len(rows) == 6 and all(r.status == "ok" and r.attempts == 1 and r.finished_ns for r in rows)
    big = next(r for r in rows if r.destination.endswith("out/d/b.bin"))
    assert big.bytes == 300_000 and big.xxh3_128 and big.throughput_bytes_per_s and big.duration_ns


def test_single_file_source_copies_into_folder(tmp_path: Path) -> None:
    (tmp_path / "f.pdf").write_bytes(b"%PDF")
    src, dst = local_location(tmp_path / "f.pdf"), local_location(tmp_path / "into")
    assert plan_tree(src, dst) == [("", "f.pdf", 4)]
    copy_tree(src, dst)
    assert (tmp_path / "into" / "f.pdf").read_bytes() == b"%PDF"


def test_transient_error_resumes_partial_download(tmp_path: Path, tlog: TransferLog) -> None:
    data = pattern(2, 3 << 20)
    (tmp_path / "big").write_bytes(data)
    flaky = FlakyFS(fail_after=2 << 20)
    src = Location("integration", flaky, str(tmp_path), "integration:flaky", "flaky")
    rec = copy_file(src, "big", local_location(tmp_path / "out"), "big", log=tlog, options=TransferOptions(**FAST))
    assert (tmp_path / "out" / "big").read_bytes() == data
    assert rec.attempts == 2 and rec.status == "ok"
    assert rec.resumed_bytes == 2 << 20  # the kept partial file; the rest came from a ranged read
    assert flaky.opened_at[-1] == 2 << 20
    assert tlog.get(rec.id) == rec


def test_non_transient_errors_are_not_retried(tmp_path: Path, tlog: TransferLog) -> None:
    (tmp_path / "x").write_bytes(b"x")
    flaky = FlakyFS(fail_after=0, failures=5, exc=PermissionError)
    src = Location("integration", flaky, str(tmp_path), "integration:flaky", "flaky")
    with pytest.raises(TransferError) as e:
        copy_file(src, "x", local_location(tmp_path / "out"), "x", log=tlog, options=TransferOptions(**FAST))
    assert "after" not in str(e.value)  # no "(after N attempts)"
    with pytest.raises(TransferError, match="No such file"):
        copy_file(local_location(tmp_path), "missing", local_location(tmp_path / "out"), "m", log=tlog)
    rows = tlog.recent(2, failed_only=True)
    assert [r.attempts for r in rows] == [1, 1] and all(r.error for r in rows)


def test_retries_give_up_with_transfer_error(tmp_path: Path, tlog: TransferLog) -> None:
    (tmp_path / "x").write_bytes(b"xyz" * 1000)
    flaky = FlakyFS(fail_after=0, failures=100)
    src = Location("integration", flaky, str(tmp_path), "integration:flaky", "flaky")
    with pytest.raises(TransferError, match=r"after 3 attempts"):
        copy_file(src, "x", local_location(tmp_path / "o"), "x", log=tlog, options=TransferOptions(retries=2, **FAST))
    (row,) = tlog.recent(1)
    assert (row.status, row.attempts) == ("failed", 3) and "Connection reset" in (row.error or "")


def test_circuit_breaker_opens_then_recovers(tmp_path: Path, tlog: TransferLog) -> None:
    (tmp_path / "x").write_bytes(b"data")
    flaky = FlakyFS(fail_after=0, failures=3)
    src = Location("integration", flaky, str(tmp_path), "integration:flaky", "flaky")
    dst = local_location(tmp_path / "o")
    opts = TransferOptions(retries=5, breaker_threshold=3, breaker_cooldown_s=0.3, **FAST)
    with pytest.raises(TransferError, match="circuit open"):
        copy_file(src, "x", dst, "x", log=tlog, options=opts)
    assert tlog.breakers()[0]["state"] == "open" and tlog.breakers()[0]["failures"] == 3
    with pytest.raises(TransferError, match="circuit open"):  # fails fast while open
        copy_file(src, "x", dst, "x", log=tlog, options=opts)
    assert tlog.recent(1)[0].attempts == 1
    time.sleep(0.35)  # the cool-down (a state machine timer, not a speed assertion)
    rec = copy_file(src, "x", dst, "x", log=tlog, options=opts)  # half-open probe succeeds
    assert rec.status == "ok" and (tmp_path / "o" / "x").read_bytes() == b"data"
    assert tlog.breakers()[0]["state"] == "closed"


def test_breaker_half_open_failure_reopens() -> None:
    now = [0.0]
    b = CircuitBreaker("s", threshold=2, cooldown_s=10, clock=lambda: now[0])
    b.failure()
    b.before()
    b.failure()
    assert b.status.state == "open"
    with pytest.raises(CircuitOpenError):
        b.before()
    now[0] = 11
    b.before()
    assert b.status.state == "half-open"
    with pytest.raises(CircuitOpenError):
        b.before()  # one probe at a time
    b.failure()
    assert b.status.state == "open"
    now[0] = 22
    b.before()
    b.success()
    assert b.status == type(b.status)("closed", 0, b.status.opened_ns)


class _Resp(Exception):
    def __init__(self, status: int, code: str) -> None:
        super().__init__(code)
        self.response = {"Error": {"Code": code}, "ResponseMetadata": {"HTTPStatusCode": status}}


def _wrapped(inner: BaseException) -> BaseException:
    try:
        try:
            raise inner
        except BaseException as e:
            raise OSError(errno.EIO, "wrapped") from e
    except OSError as outer:
        return outer


@pytest.mark.parametrize(
    "exc, transient",
    [
        (ConnectionResetError(errno.ECONNRESET, "reset"), True),
        (ConnectionRefusedError(errno.ECONNREFUSED, "refused"), True),
        (TimeoutError("timed out"), True),
        (TimeoutError("timed out"), True),
        (_wrapped(_Resp(503, "SlowDown")), True),
        (_wrapped(_Resp(500, "InternalError")), True),
        (_Resp(429, "TooManyRequests"), True),
        (IntegrityError("mismatch"), True),
        (BackendError("tier x: reading y: [Errno 104] reset"), False),
        (_wrapped(_Resp(403, "SignatureDoesNotMatch")), False),
        (_Resp(403, "AccessDenied"), False),
        (_Resp(404, "NoSuchKey"), False),
        (FileNotFoundError("x"), False),
        (PermissionError("x"), False),
        (AuthError("bad key"), False),
        (CircuitOpenError("open"), False),
        (ValueError("x"), False),
    ],
)
def test_is_transient(exc: BaseException, transient: bool) -> None:
    assert is_transient(exc) is transient


def test_auth_error_is_raised_as_auth(tmp_path: Path) -> None:
    (tmp_path / "x").write_bytes(b"x")

    class Denied(LocalFileSystem):
        def info(self, path: str, **kw: Any) -> dict[str, Any]:
            raise _wrapped(_Resp(403, "InvalidAccessKeyId"))

    src = Location("integration", Denied(skip_instance_cache=True), str(tmp_path), "integration:s", "s")
    with pytest.raises(AuthError):
        copy_file(src, "x", local_location(tmp_path / "o"), "x", options=TransferOptions(**FAST))


def test_token_bucket_rate() -> None:
    now, slept = [0.0], []

    def sleep(s: float) -> None:
        slept.append(s)
        now[0] += s

    b = TokenBucket(1000, burst_bytes=100, clock=lambda: now[0], sleep=sleep)
    for _ in range(20):
        b.take(100)
    assert now[0] == pytest.approx(1.9, rel=0.01)  # 2000 bytes at 1000 B/s, first 100 free


def test_bandwidth_limit_limits(tmp_path: Path) -> None:
    rate = 400_000
    (tmp_path / "x").write_bytes(pattern(3, 400_000))
    t0 = time.monotonic()
    copy_file(
        local_location(tmp_path),
        "x",
        local_location(tmp_path / "o"),
        "x",
        options=TransferOptions(bwlimit_bytes_per_s=rate, checksum=False),
    )
    elapsed = time.monotonic() - t0
    assert 400_000 / elapsed <= 2 * rate  # not faster than twice the limit (behaviour, not speed)


class _Hook(http.server.BaseHTTPRequestHandler):
    received: list[dict[str, Any]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        _Hook.received.append(json.loads(body))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def webhook() -> Iterator[str]:
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Hook)
    _Hook.received = []
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}/hook"
    srv.shutdown()
    srv.server_close()


def test_webhook_and_command_fire_on_failure_and_large(home: Path, tmp_path: Path, webhook: str) -> None:
    out = tmp_path / "events.jsonl"
    cmd = f"{sys.executable} -c \"import sys,os; open({str(out)!r},'a').write(os.environ['DARKSTORAGE_EVENT']+' '+sys.stdin.read()+chr(10))\""
    with open(home / "config.toml", "a") as f:
        f.write(f'\n[notify]\nwebhook_url = "{webhook}"\ncommand = {json.dumps(cmd)}\nsize_threshold_bytes = 1000\n')
    cfg = NotifyConfig.load(home)
    assert cfg.webhook_url == webhook and cfg.size_threshold_bytes == 1000
    (tmp_path / "small").write_bytes(b"s")
    (tmp_path / "large").write_bytes(b"L" * 2000)
    opts = TransferOptions(notify=cfg, **FAST)
    src, dst = local_location(tmp_path), local_location(tmp_path / "o")
    copy_file(src, "small", dst, "small", options=opts)  # neither failed nor large: nothing
    copy_file(src, "large", dst, "large", options=opts)
    with pytest.raises(TransferError):
        copy_file(src, "missing", dst, "missing", options=opts)
    assert [(e["event"], e["bytes"]) for e in _Hook.received] == [("transfer.large", 2000), ("transfer.failed", 0)]
    assert _Hook.received[1]["status"] == "failed" and "missing" in _Hook.received[1]["source"]
    lines = out.read_text().splitlines()
    assert [ln.split(" ", 1)[0] for ln in lines] == ["transfer.large", "transfer.failed"]
    assert json.loads(lines[0].split(" ", 1)[1])["destination"].endswith("o/large")


def test_tree_failures_are_collected(tmp_path: Path, tlog: TransferLog) -> None:
    src = tmp_path / "src"
    _tree(src)

    class Denies(LocalFileSystem):
        def _open(self, path: str, mode: str = "rb", *args: Any, **kw: Any) -> Any:
            if path.endswith("a.txt") and "r" in mode:
                raise PermissionError(errno.EACCES, "Permission denied", path)
            return super()._open(path, mode, *args, **kw)

    loc = Location("local", Denies(skip_instance_cache=True), str(src), str(src))
    with pytest.raises(TransferError, match="1 of 3 file"):
        copy_tree(loc, local_location(tmp_path / "o"), log=tlog, options=TransferOptions(**FAST))
    assert (tmp_path / "o" / "d" / "b.bin").read_bytes() == (src / "d" / "b.bin").read_bytes()
    (failed,) = tlog.recent(10, failed_only=True)
    assert failed.attempts == 1 and "Permission denied" in (failed.error or "")
