"""Session-scoped pytest fixtures starting each real test server once, and a report hook that adds
the log of every server a failed test used to its failure report."""

from __future__ import annotations

from collections.abc import Callable, Generator, Iterator
from pathlib import Path
from typing import TypeVar

import pytest

from tests.servers.base import ServerStartError, StoreServer
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


def run_server(make: Callable[[Path], S], tmp: pytest.TempPathFactory, name: str) -> Iterator[S]:
    """Start the server *make* builds in a fresh tmp dir, yield it, and always stop it."""
    server = make(tmp.mktemp(name, numbered=True))
    try:
        try:
            server.start()
        except (ServerStartError, FileNotFoundError) as exc:
            pytest.fail(f"{name}: {exc}", pytrace=False)
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedS3Server]:
    """SeaweedFS S3 gateway (real S3 semantics, access keys checked)."""
    yield from run_server(lambda d: SeaweedS3Server(workdir=d), tmp_path_factory, "seaweedfs")


@pytest.fixture(scope="session")
def moto_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoS3Server]:
    """moto S3 (storage classes, RestoreObject) with IAM auth on; in memory: a restart empties it."""
    yield from run_server(lambda d: MotoS3Server(workdir=d), tmp_path_factory, "moto")


@pytest.fixture(scope="session")
def azure_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AzuriteServer]:
    """Azurite blob service, account devstoreaccount1."""
    yield from run_server(lambda d: AzuriteServer(workdir=d), tmp_path_factory, "azurite")


@pytest.fixture(scope="session")
def gcs_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeGcsServer]:
    """fake-gcs-server (no credential checks)."""
    yield from run_server(lambda d: FakeGcsServer(workdir=d), tmp_path_factory, "fake-gcs")


@pytest.fixture(scope="session")
def sftp_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SftpServer]:
    """OpenSSH sshd, public-key login as the current user."""
    yield from run_server(lambda d: SftpServer(workdir=d), tmp_path_factory, "sshd")


@pytest.fixture(scope="session")
def ftp_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FtpServer]:
    """pyftpdlib, plain FTP, one user."""
    yield from run_server(lambda d: FtpServer(workdir=d), tmp_path_factory, "ftpd")


@pytest.fixture(scope="session")
def ftps_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FtpServer]:
    """pyftpdlib with explicit TLS (AUTH TLS) and a self-signed certificate."""
    yield from run_server(lambda d: FtpServer(workdir=d, tls=True), tmp_path_factory, "ftpsd")


@pytest.fixture(scope="session")
def webdav_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebdavServer]:
    """WsgiDAV, basic auth, one user."""
    yield from run_server(lambda d: WebdavServer(workdir=d), tmp_path_factory, "wsgidav")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, None]:
    """On a failed test, append the log tail of each server fixture it used to the report."""
    outcome = yield
    report = outcome.get_result()
    if not report.failed:
        return
    for value in getattr(item, "funcargs", {}).values():
        if isinstance(value, StoreServer):
            report.sections.append((f"{value.name} log ({value.log_path})", value.log_tail()))
