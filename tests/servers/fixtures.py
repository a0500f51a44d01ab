"""Session-scoped pytest fixtures starting each real test server once, and a report hook that adds
the log of every server a failed test used to its failure report."""

from __future__ import annotations

from collections.abc import Callable, Generator, Iterator
from pathlib import Path
from typing import TypeVar

import pytest

from tests.servers.base import STARTED, ServerStartError, StoreServer
from tests.servers.cloud import AzuriteServer, FakeGcsServer
from tests.servers.files import FtpServer, SftpServer, WebdavServer
from tests.servers.s3 import MotoS3Server, SeaweedS3Server

S = TypeVar("S", bound=StoreServer)

SERVER_FIXTURES = (
    "s3_server",
    "moto_server",
    "azure_server",
    "gcs_server",
    "sftp_server",
    "ftp_server",
    "ftps_server",
    "webdav_server",
)
"""Every server fixture's name, for suites that run against all of them (``request.getfixturevalue``)."""


def run_server(make: Callable[[Path], S], tmp: pytest.TempPathFactory, name: str) -> Generator[S, None, None]:
    """Start the server *make* builds in a fresh tmp dir, yield it, and always stop it."""
    server = make(tmp.mktemp(name, numbered=True))
    try:
        try:
            try:
                server.start()
            except ServerStartError as exc:
                # Free ports are picked, released, then bound by the server: another process may
                # take one in between. Once, start a new instance on new ports.
                if "address already in use" not in str(exc).lower():
                    raise
                server = make(tmp.mktemp(name, numbered=True))
                server.start()
        except (ServerStartError, FileNotFoundError) as exc:
            pytest.fail(f"{name}: {exc}", pytrace=False)
        yield server
    finally:
        server.stop()


def server_fixture(fixture_name: str, make: Callable[[Path], S], doc: str) -> Callable[..., Iterator[S]]:
    """A session-scoped fixture *fixture_name* running the server *make* builds."""

    def fixture(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S]:
        yield from run_server(make, tmp_path_factory, fixture_name.removesuffix("_server"))

    fixture.__doc__ = doc
    return pytest.fixture(scope="session", name=fixture_name)(fixture)


s3_server = server_fixture(
    "s3_server", lambda d: SeaweedS3Server(workdir=d), "SeaweedFS S3 gateway (real S3 semantics, access keys checked)."
)
moto_server = server_fixture(
    "moto_server",
    lambda d: MotoS3Server(workdir=d),
    "moto S3 (storage classes, RestoreObject) with IAM auth on; in memory: a restart empties it.",
)
azure_server = server_fixture(
    "azure_server", lambda d: AzuriteServer(workdir=d), "Azurite blob service, devstoreaccount1."
)
gcs_server = server_fixture("gcs_server", lambda d: FakeGcsServer(workdir=d), "fake-gcs-server (no credential checks).")
sftp_server = server_fixture("sftp_server", lambda d: SftpServer(workdir=d), "OpenSSH sshd, key login as this user.")
ftp_server = server_fixture("ftp_server", lambda d: FtpServer(workdir=d), "pyftpdlib, plain FTP, one user.")
ftps_server = server_fixture(
    "ftps_server", lambda d: FtpServer(workdir=d, tls=True), "pyftpdlib, explicit TLS (AUTH TLS), self-signed cert."
)
webdav_server = server_fixture("webdav_server", lambda d: WebdavServer(workdir=d), "WsgiDAV, basic auth, one user.")


LOG_OFFSETS = pytest.StashKey[dict[int, int]]()


def pytest_runtest_setup(item: pytest.Item) -> None:
    """Note where each running server's log stands when the test starts."""
    item.stash[LOG_OFFSETS] = {id(server): server.log_size() for server in STARTED}


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, None]:
    """On a failure, append what each server wrote to its log during the test (servers started by
    the test: the whole log) to the report."""
    outcome = yield
    report = outcome.get_result()
    if not report.failed:
        return
    offsets = item.stash.get(LOG_OFFSETS, {})
    for server in STARTED:
        text = server.log_tail(since=offsets.get(id(server), 0))
        if text:
            report.sections.append((f"{server.name} log ({server.log_path})", text))
