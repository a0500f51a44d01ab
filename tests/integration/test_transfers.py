"""Transfers against real servers on loopback (SeaweedFS S3, OpenSSH SFTP) and a real mount:
bytes, modes and mtimes kept both ways, resume after the server is stopped mid-transfer and
started again, wrong credentials not retried, and the CLI."""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from pool.errors import AuthError
from pool.locations import Location, local_location, resolve_location
from pool.transferlog import TransferLog
from pool.transfers import TransferOptions, copy_file, copy_tree
from tests.conftest import Mount, cli, pattern
from tests.unit import test_transfers as unit

pytestmark = pytest.mark.server

_fresh_breakers, tlog = unit._fresh_breakers, unit.tlog  # the unit tests' fixtures
_tree, _same_tree = unit._tree, unit._same_tree

RETRY = {"retries": 12, "backoff_initial_s": 0.2, "backoff_max_s": 2.0}


def _remote(server: Any, name: str) -> Location:
    """An integration location on *server* (built from the fixture's filesystem)."""
    return Location(
        "integration", server.filesystem(), server.fresh_root(), f"integration:{name}", name, reopen=server.filesystem
    )


def _restart_after(server: Any, threshold_bytes: int, down_s: float = 0.0) -> tuple[Callable[[int], None], list[bool]]:
    """A progress callback that stops *server* once *threshold_bytes* have moved and starts it
    again from another thread after *down_s* seconds (the copy meets a dead server, retries,
    and resumes)."""
    moved, fired = [0], [False]
    starter: list[threading.Thread] = []

    def progress(n: int) -> None:
        moved[0] += n
        if not fired[0] and moved[0] >= threshold_bytes:
            fired[0] = True
            server.stop(kill=True)

            def start() -> None:
                time.sleep(down_s)
                server.start()

            t = threading.Thread(target=start, daemon=True)
            starter.append(t)
            t.start()

    return progress, fired


def test_s3_push_pull_keeps_bytes_modes_mtimes(s3_server: Any, tmp_path: Path, tlog: TransferLog) -> None:
    src = tmp_path / "src"
    _tree(src)
    remote = _remote(s3_server, "seaweed")
    recs = copy_tree(local_location(src), remote, log=tlog)
    assert len(recs) == 3 and all(r.status == "ok" for r in recs)
    meta = remote.fs.metadata(f"{remote.root}/a.txt")
    assert meta["mtime"] == "1600000000.123456789" and meta["mode"] == "100640"  # rclone's keys
    out = tmp_path / "out"
    copy_tree(remote, local_location(out), log=tlog, options=TransferOptions(transfers=3))
    _same_tree(src, out)


def test_pool_bucket_to_s3_and_back(home: Path, s3_server: Any, tmp_path: Path, tlog: TransferLog) -> None:
    from pool.pool import Pool

    Pool.open(home).create_bucket("b")
    src = tmp_path / "src"
    _tree(src)
    copy_tree(local_location(src), resolve_location("b/critical/", destination=True, home=home), log=tlog)
    remote = _remote(s3_server, "seaweed")
    copy_tree(resolve_location("b/critical/", home=home), remote, log=tlog)
    copy_tree(remote, resolve_location("b/restored/", destination=True, home=home), log=tlog)
    copy_tree(resolve_location("b/restored", home=home), local_location(tmp_path / "out"), log=tlog)
    _same_tree(src, tmp_path / "out")


def test_sftp_push_pull_keeps_bytes_modes_mtimes(sftp_server: Any, tmp_path: Path, tlog: TransferLog) -> None:
    src = tmp_path / "src"
    _tree(src)
    remote = _remote(sftp_server, "ssh")
    copy_tree(local_location(src), remote, log=tlog)
    st = os.stat(Path(remote.root) / "a.txt")  # the server's own file
    assert (oct(st.st_mode), st.st_mtime_ns // 10**9) == (oct(0o100640), 1_600_000_000)
    assert not [p for p in Path(remote.root).rglob("*") if ".darkstorage-" in p.name]
    out = tmp_path / "out"
    copy_tree(remote, local_location(out), log=tlog)
    _same_tree(src, out, mtime_unit_ns=10**9)  # SFTP v3 keeps whole seconds


@pytest.mark.parametrize("direction", ["upload", "download"])
def test_sftp_transfer_reconnects_after_server_restart(
    sftp_server: Any, tmp_path: Path, tlog: TransferLog, direction: str
) -> None:
    """sshd killed mid-transfer (its sessions die with it) and started again: the dropped SFTP
    connection is replaced by a new one and the copy completes with exact bytes."""
    data = pattern(14, 6 << 20)
    remote = _remote(sftp_server, "ssh")
    local = local_location(tmp_path / "local")
    (tmp_path / "local").mkdir()
    if direction == "upload":
        (tmp_path / "local" / "big").write_bytes(data)
        src, dst = local, remote
    else:
        remote.fs.pipe_file(f"{remote.root}/big", data)
        src, dst = remote, local
    first_fs = remote.fs
    progress, fired = _restart_after(sftp_server, 1 << 20)
    rec = copy_file(src, "big", dst, "big", log=tlog, options=TransferOptions(**RETRY), progress=progress)
    assert fired[0] and rec.status == "ok" and rec.attempts >= 2
    assert remote.fs is not first_fs  # a new connection was made
    got = (
        (tmp_path / "local" / "big").read_bytes()
        if direction == "download"
        else (Path(remote.root) / "big").read_bytes()
    )
    assert got == data
    assert not [p for p in Path(remote.root).iterdir() if ".darkstorage-" in p.name]


@pytest.mark.slow
def test_s3_multipart_resumes_after_server_restart(s3_server: Any, tmp_path: Path, tlog: TransferLog) -> None:
    data = pattern(12, 11 << 20)  # three parts of S3's smallest size (SeaweedFS enforces it)
    (tmp_path / "big").write_bytes(data)
    remote = _remote(s3_server, "seaweed")
    # down longer than the S3 client's own retry (one, after at most ~2 s) lasts, so the
    # transfer's attempt fails and the next attempt resumes the multipart upload
    progress, fired = _restart_after(s3_server, 5 << 20, down_s=4.0)
    opts = TransferOptions(part_size_bytes=5 << 20, multipart_threshold_bytes=6 << 20, **RETRY)
    rec = copy_file(local_location(tmp_path), "big", remote, "big", log=tlog, options=opts, progress=progress)
    assert fired[0] and rec.status == "ok" and rec.attempts >= 2
    assert remote.fs.cat_file(f"{remote.root}/big") == data
    assert rec.parts_sent == 3  # every part sent exactly once: none re-sent after the restart
    assert rec.resumed_bytes >= 5 << 20
    assert tlog.multipart(f"{remote.root}/big") is None  # resume state dropped once complete
    assert tlog.get(rec.id) == rec


@pytest.mark.slow
def test_s3_download_resumes_after_server_restart(s3_server: Any, tmp_path: Path, tlog: TransferLog) -> None:
    data = pattern(13, 4 << 20)
    remote = _remote(s3_server, "seaweed")
    remote.fs.pipe_file(f"{remote.root}/big", data)
    progress, fired = _restart_after(s3_server, 1 << 20, down_s=4.0)  # outlast the S3 client's own retry
    rec = copy_file(
        remote,
        "big",
        local_location(tmp_path / "out"),
        "big",
        log=tlog,
        options=TransferOptions(**RETRY),
        progress=progress,
    )
    assert fired[0] and rec.attempts >= 2
    assert (tmp_path / "out" / "big").read_bytes() == data
    assert rec.resumed_bytes >= 1 << 20  # the kept partial file was continued by a ranged read
    assert not list((tmp_path / "out").glob(".big.darkstorage-partial-*"))


def test_wrong_key_fails_at_once(s3_server: Any, tmp_path: Path, tlog: TransferLog) -> None:
    (tmp_path / "x").write_bytes(b"x")
    root = s3_server.fresh_root()
    bad = Location("integration", s3_server.filesystem(wrong=True), root, "integration:bad", "bad")
    with pytest.raises(AuthError):
        copy_file(local_location(tmp_path), "x", bad, "x", log=tlog, options=TransferOptions(**RETRY))
    assert tlog.recent(1)[0].attempts == 1


@pytest.mark.fuse
def test_mounted_bucket_uses_the_mount(mounted: Mount, tmp_path: Path, tlog: TransferLog) -> None:
    src = tmp_path / "src"
    _tree(src)
    dst = resolve_location("b/in/", destination=True, home=mounted.home)
    assert dst.root == f"{mounted.path.absolute()}/b/in"
    copy_tree(local_location(src), dst, log=tlog)
    _same_tree(src, mounted.path / "b" / "in")
    copy_tree(resolve_location("b/in", home=mounted.home), local_location(tmp_path / "out"), log=tlog)
    _same_tree(src, tmp_path / "out")


def test_cli_push_pull_and_log(home: Path, tmp_path: Path) -> None:
    src = tmp_path / "src"
    _tree(src)
    cli("bucket", "create", "b", home=home)
    res = cli("push", str(src), "--to", "b/x/", "--transfers", "2", "--bwlimit", "50M", "--json", home=home)
    assert len(json.loads(res.stdout)["copied"]) == 3
    res = cli("push", str(src), "--to", "b/x/", "--dry-run", "--json", home=home)
    assert json.loads(res.stdout)["bytes"] == 300_006
    cli("pull", "b/x", "--to", str(tmp_path / "out"), home=home)
    _same_tree(src, tmp_path / "out")
    res = cli("push", str(tmp_path / "nope"), "--to", "b/x/", home=home, check=False)
    assert res.returncode == 3 and res.stderr.count("\n") == 1
    res = cli("transfers", "--last", "4", "--json", home=home)
    rows = json.loads(res.stdout)["transfers"]
    assert len(rows) == 4 and all(r["status"] == "ok" for r in rows)
    assert "example" in cli("transfers", "--help", home=home).stdout.lower()
