"""The test servers themselves (tests/servers): each one serves a real round trip through its fsspec
filesystem, rejects a wrong credential with an error instead of hanging, and comes back on the same
port with its data after a stop or a kill. Plus the store behaviour later suites rely on: moto
refuses to read a GLACIER object until it is restored, Azurite refuses to read an archived blob."""

from __future__ import annotations

import concurrent.futures
import ftplib
import gc
import re
import socket
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import fsspec
import pytest

from tests.conftest import pattern
from tests.servers.base import ServerStartError, StoreServer
from tests.servers.cloud import AzuriteServer
from tests.servers.files import FtpServer
from tests.servers.fixtures import SERVER_FIXTURES, run_server
from tests.servers.s3 import MotoS3Server

pytestmark = pytest.mark.server

T = TypeVar("T")

HANG_GUARD_S = 60.0
"""A call that has not returned by then is taken as hung (they answer in well under a second)."""

AUTH_REFUSALS = {
    "s3": r"SignatureDoesNotMatch|signature we calculated does not match|InvalidAccessKeyId|AccessDenied|Forbidden",
    "abfs": r"AuthorizationFailure|failed to authenticate",
    "sftp": r"Permission denied",
    "ftp": r"530",
    "webdav": r"401",
}
"""What each protocol's client says when the server refuses the credentials."""


def within(timeout_s: float, call: Callable[[], T]) -> T:
    """Run *call* in a worker thread; fail the test if it has not returned after *timeout_s*."""
    pool = concurrent.futures.ThreadPoolExecutor(1)
    try:
        return pool.submit(call).result(timeout=timeout_s)
    except concurrent.futures.TimeoutError:
        pytest.fail(f"no answer within {timeout_s:.0f}s: the call hangs")
    finally:
        pool.shutdown(wait=False)


@pytest.fixture(params=SERVER_FIXTURES)
def server(request: pytest.FixtureRequest) -> StoreServer:
    """Each session server in turn."""
    srv = request.getfixturevalue(request.param)
    assert isinstance(srv, StoreServer)
    srv.start()  # a no-op unless an earlier test left it stopped
    return srv


def test_round_trip(server: StoreServer, tmp_path: Path) -> None:
    fs = server.filesystem()
    root = server.fresh_root()
    assert fs.ls(root, detail=False) == []
    data = pattern(7, 300_000)
    local = tmp_path / "up.bin"
    local.write_bytes(data)

    fs.makedirs(f"{root}/dir", exist_ok=True)
    fs.put_file(str(local), f"{root}/dir/file.bin")
    fs.pipe_file(f"{root}/small.txt", b"hello")

    assert sorted(p.rstrip("/").rsplit("/", 1)[-1] for p in fs.ls(root, detail=False)) == ["dir", "small.txt"]
    assert fs.info(f"{root}/dir/file.bin")["size"] == len(data)
    fs.get_file(f"{root}/dir/file.bin", str(tmp_path / "down.bin"))
    assert (tmp_path / "down.bin").read_bytes() == data
    with fs.open(f"{root}/dir/file.bin", "rb") as f:  # ranged read (sshfs' cat_file ignores start/end)
        f.seek(200_000)
        assert f.read(10) == data[200_000:200_010]

    fs.rm(f"{root}/dir/file.bin")
    fs.rm(f"{root}/small.txt")
    fs.invalidate_cache()
    assert not fs.exists(f"{root}/dir/file.bin")
    assert not fs.exists(f"{root}/small.txt")


def test_fresh_roots_are_distinct_and_empty(server: StoreServer) -> None:
    fs = server.filesystem()
    first, second = server.fresh_root(), server.fresh_root()
    assert first != second
    fs.pipe_file(f"{first}/only-here", b"x")
    assert fs.ls(second, detail=False) == []


def test_wrong_credentials_are_refused_promptly(server: StoreServer) -> None:
    if not server.checks_credentials:
        pytest.skip(f"{server.name} accepts any credentials (no auth in the emulator)")
    root = server.fresh_root()
    server.filesystem().pipe_file(f"{root}/secret.txt", b"s")

    def attempt() -> BaseException | None:
        try:
            server.filesystem(wrong=True).cat_file(f"{root}/secret.txt")
        except Exception as exc:
            return exc
        return None

    refused = within(HANG_GUARD_S, attempt)
    assert refused is not None, "the wrong credential was accepted"
    assert re.search(AUTH_REFUSALS[server.protocol], str(refused)), repr(refused)


def test_ftps_refuses_a_plain_ftp_login(ftps_server: FtpServer) -> None:
    plain = {**ftps_server.fsspec_kwargs(), "tls": False}
    with pytest.raises(ftplib.error_perm, match="SSL/TLS required"):
        within(HANG_GUARD_S, lambda: fsspec.filesystem("ftp", skip_instance_cache=True, **plain).ls("/"))


@pytest.mark.parametrize("kill", [False, True], ids=["stop", "kill"])
def test_restart_keeps_port_and_data(server: StoreServer, kill: bool) -> None:
    if isinstance(server, MotoS3Server):
        pytest.skip("moto keeps its state in memory (see test_moto_restart_comes_back_empty)")
    root = server.fresh_root()
    server.filesystem().pipe_file(f"{root}/kept.bin", pattern(1, 5000))
    port = server.port
    if kill:
        server.settle()
    server.stop(kill=kill)
    assert not server.running
    with pytest.raises(Exception):  # noqa: B017 - any client error: nothing listens
        within(HANG_GUARD_S, lambda: socket.create_connection((server.host, port), timeout=2).close())
    server.start()
    assert server.port == port
    assert server.filesystem().cat_file(f"{root}/kept.bin") == pattern(1, 5000)


# The abandoned file object tries its upload again when garbage-collected, and fails again.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_killed_mid_write_fails_promptly_and_comes_back(server: StoreServer) -> None:
    if server.protocol == "gcs":
        pytest.skip("gcsfs retries a refused connection 6 times with backoff (~33 s), fixed in gcsfs")
    root = server.fresh_root()
    fs = server.filesystem()
    open_files = [fs.open(f"{root}/big.bin", "wb")]
    open_files[0].write(pattern(3, 300_000))
    server.stop(kill=True)

    def finish() -> BaseException | None:
        try:
            open_files[0].write(pattern(4, 300_000))
            open_files[0].close()
        except Exception as exc:
            return exc
        return None

    assert within(HANG_GUARD_S, finish) is not None, "a write to a killed server succeeded"
    open_files.clear()
    gc.collect()  # its failing retry-on-collect happens here, under this test's warning filter
    server.start()
    fs = server.filesystem()
    again = server.fresh_root()
    fs.pipe_file(f"{again}/after.bin", b"back")
    assert fs.cat_file(f"{again}/after.bin") == b"back"


def test_moto_restart_comes_back_empty(moto_server: MotoS3Server) -> None:
    root = moto_server.fresh_root()
    old_key = moto_server.user
    moto_server.restart()
    fs = moto_server.filesystem()
    assert not fs.exists(root)
    assert moto_server.user != old_key
    assert fs.ls("", detail=False) == []


def test_moto_glacier_object_needs_restore(moto_server: MotoS3Server) -> None:
    s3 = moto_server.boto3_client()
    bucket = moto_server.fresh_root()
    s3.put_object(Bucket=bucket, Key="cold.bin", Body=b"frozen", StorageClass="GLACIER")
    assert s3.head_object(Bucket=bucket, Key="cold.bin")["StorageClass"] == "GLACIER"
    with pytest.raises(s3.exceptions.InvalidObjectState):
        s3.get_object(Bucket=bucket, Key="cold.bin")
    s3.restore_object(Bucket=bucket, Key="cold.bin", RestoreRequest={"Days": 1})
    assert "x-amz-restore" in s3.head_object(Bucket=bucket, Key="cold.bin")["ResponseMetadata"]["HTTPHeaders"]
    assert s3.get_object(Bucket=bucket, Key="cold.bin")["Body"].read() == b"frozen"


def test_azurite_archive_tier_blocks_reads(azure_server: AzuriteServer) -> None:
    from azure.core.exceptions import HttpResponseError

    container = azure_server.fresh_root()
    blob = azure_server.blob_service().get_blob_client(container, "archived.bin")
    blob.upload_blob(b"deep")
    blob.set_standard_blob_tier("Archive")
    assert blob.get_blob_properties().blob_tier == "Archive"
    with pytest.raises(HttpResponseError, match="BlobArchived|archive"):
        blob.download_blob().readall()


def test_a_server_that_cannot_start_fails_with_its_log(tmp_path: Path) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        server = FtpServer(workdir=tmp_path, port=squatter.getsockname()[1])
        with pytest.raises(ServerStartError, match=r"(?s)ftpd exited .*Address already in use"):
            server.start(timeout_s=HANG_GUARD_S)
    assert not server.running


def test_a_port_taken_before_the_first_start_is_retried_on_a_new_one(tmp_path_factory: pytest.TempPathFactory) -> None:
    made: list[FtpServer] = []
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        taken = squatter.getsockname()[1]

        def make(workdir: Path) -> FtpServer:
            made.append(FtpServer(workdir=workdir, port=0 if made else taken))
            return made[-1]

        run = run_server(make, tmp_path_factory, "ftp-retry")
        server = next(run)
        assert [s.port == taken for s in made] == [True, False]
        assert server.filesystem().ls("/", detail=False) == []
        run.close()
    assert not server.running
