"""One conformance suite for every connector: the same checks against each real server on
loopback (SeaweedFS and moto S3, Azurite, fake-gcs-server, sshd, pyftpdlib plain and TLS,
WsgiDAV) and a local folder.

Each concrete class names its server fixture and says how ``integrations add`` reaches it.
Checks: add/test/remove through the CLI; put/list/get/delete with unicode and spaces in names;
a few-MB object; the pool's Backend over the integration (temporary key, verify, move, ranged
read, POSIX attributes as object metadata where the store keeps them); a wrong key gives exit
15 (AUTH) with one line, not a hang.
"""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path
from typing import Any, ClassVar

import pytest

from pool.backends import Backend
from pool.errors import AuthError, ExitCode
from pool.hashing import new_hasher
from pool.integrations import add_integration, open_integration
from tests.conftest import cli

ATTRS = {"mode": 0o100640, "uid": 1234, "gid": 5678, "mtime_ns": 1_700_000_000_123_456_789}


def _xxh(data: bytes) -> str:
    h = new_hasher()
    h.update(data)
    return h.hexdigest()


class ConnectorContract:
    """The checks; a subclass sets ``fixture`` and implements :meth:`add_args`."""

    fixture: ClassVar[str] = ""
    keeps_metadata: ClassVar[bool] = False
    checks_credentials: ClassVar[bool] = True

    @pytest.fixture
    def server(self, request: pytest.FixtureRequest) -> Any:
        return request.getfixturevalue(self.fixture) if self.fixture else None

    @pytest.fixture
    def root(self, server: Any, tmp_path: Path) -> str:
        return server.fresh_root()

    def add_args(self, server: Any, root: str, *, wrong: bool = False) -> list[str]:
        raise NotImplementedError

    def _add(self, home: Path, server: Any, root: str, name: str = "it", *, wrong: bool = False) -> str:
        cli("integrations", "add", *self.add_args(server, root, wrong=wrong), "--name", name, home=home)
        return name

    # -- the checks -------------------------------------------------------------------------------

    def test_add_test_remove_via_cli(self, home: Path, server: Any, root: str) -> None:
        name = self._add(home, server, root)
        shown = json.loads(cli("integrations", "show", name, "--json", home=home).stdout)
        secret = getattr(server, "secret", None)
        if secret:
            assert secret not in json.dumps(shown)
        res = cli("integrations", "test", name, "--json", home=home, timeout=120)
        report = json.loads(res.stdout)
        assert report["ok"], report
        assert [s["step"] for s in report["steps"]] == ["connect", "put", "list", "get + verify", "delete"]
        human = cli("integrations", "test", name, home=home, timeout=120).stdout
        assert "matches" in human and f"integration {name} works" in human
        cli("integrations", "remove", name, home=home)
        assert name not in cli("integrations", "list", "--configured", "--json", home=home).stdout

    def test_put_list_get_delete(self, home: Path, server: Any, root: str) -> None:
        name = self._add(home, server, root)
        fs, base = open_integration(name, home=home)
        names = ["plain.txt", "with space/and more spaces.bin", "ünïcödé/日本語 ファイル.txt", "big/three-mb.bin"]
        payloads = {
            n: secrets.token_bytes(3 * 1024 * 1024 + 17 if n.startswith("big/") else 1000 + i)
            for i, n in enumerate(names)
        }
        for n, data in payloads.items():
            path = f"{base}/{n}"
            fs.makedirs(fs._parent(path), exist_ok=True)
            fs.pipe_file(path, data)
        fs.invalidate_cache()
        found = sorted(p[len(base) + 1 :] if p.startswith(base) else p for p in fs.find(base))
        found = [p.lstrip("/") for p in found]
        assert sorted(names) == sorted(found)
        for n, data in payloads.items():
            assert _xxh(bytes(fs.cat_file(f"{base}/{n}"))) == _xxh(data), n
        for n in names:
            fs.rm_file(f"{base}/{n}")
        fs.invalidate_cache()
        assert [p for p in fs.find(base) if not p.endswith("/")] == []

    def test_backend_over_integration(self, home: Path, server: Any, root: str, tmp_path: Path) -> None:
        name = self._add(home, server, root)
        backend = Backend("cold", f"integration:{name}/tier space/cold", home=home)
        backend.ensure_root()
        data = secrets.token_bytes(2 * 1024 * 1024 + 3)
        src = tmp_path / "src.bin"
        src.write_bytes(data)
        key = "bucket/dir ü/file é.bin"
        tmp = backend.tmp_key(key)
        fd = os.open(src, os.O_RDONLY)
        try:
            stored = backend.upload_fd(fd, tmp, ATTRS)
        finally:
            os.close(fd)
        assert stored.size == len(data) and stored.xxh3_128 == _xxh(data)
        backend.verify(tmp, stored)
        backend.move(tmp, key)
        assert backend.exists(key) and not backend.exists(tmp)
        assert backend.read_range(key, 1000, 50) == data[1000:1050]
        assert backend.hash_object(key).xxh3_128 == stored.xxh3_128
        if self.keeps_metadata:
            assert backend.get_attrs(key) == ATTRS
            changed = {**ATTRS, "mode": 0o100600, "mtime_ns": ATTRS["mtime_ns"] + 1}
            backend.set_attrs(key, changed)
            assert backend.get_attrs(key) == changed
        else:
            assert backend.get_attrs(key) is None  # the catalog keeps them; the store cannot
        backend.delete(key)
        assert not backend.exists(key)

    def test_wrong_key_is_a_clear_auth_error(self, home: Path, server: Any, root: str) -> None:
        if not self.checks_credentials:
            pytest.skip("this server accepts any credentials")
        name = self._add(home, server, root, "bad", wrong=True)
        res = cli("integrations", "test", name, home=home, check=False, timeout=60)
        assert res.returncode == ExitCode.AUTH, res.stderr
        assert "credentials rejected" in res.stderr and "Traceback" not in res.stderr
        with pytest.raises(AuthError):  # sshd and ftp refuse at connect time, the others on a request
            Backend("warm", f"integration:{name}/x", home=home).exists("nothing")


class TestLocal(ConnectorContract):
    checks_credentials = False

    @pytest.fixture
    def root(self, server: Any, tmp_path: Path) -> str:
        return str(tmp_path / "local store")

    def add_args(self, server: Any, root: str, *, wrong: bool = False) -> list[str]:
        return ["local", "--path", root]


def s3_args(server: Any, root: str, *, wrong: bool = False, secret: list[str] | None = None) -> list[str]:
    """``integrations add s3`` arguments for an S3 test server; *secret* replaces the
    ``--secret-key VALUE`` pair (e.g. with ``--secret-key-env VAR``)."""
    value = server.wrong_secret if wrong else server.secret
    return ["s3", "--bucket", root, "--endpoint", server.endpoint, "--region", server.region, "--path-style",
            "--access-key", server.user, *(secret or ["--secret-key", value])]  # fmt: skip


@pytest.mark.server
class TestSeaweedS3(ConnectorContract):
    fixture = "s3_server"
    keeps_metadata = True

    def add_args(self, server: Any, root: str, *, wrong: bool = False) -> list[str]:
        return s3_args(server, root, wrong=wrong)


@pytest.mark.server
class TestMotoS3(TestSeaweedS3):
    fixture = "moto_server"


@pytest.mark.server
class TestAzurite(ConnectorContract):
    fixture = "azure_server"
    keeps_metadata = True

    def add_args(self, server: Any, root: str, *, wrong: bool = False) -> list[str]:
        return [
            "azure",
            "--container",
            root,
            "--account-name",
            server.user,
            "--endpoint",
            server.endpoint,
            "--account-key",
            server.wrong_secret if wrong else server.secret,
        ]


@pytest.mark.server
class TestFakeGcs(ConnectorContract):
    fixture = "gcs_server"
    checks_credentials = False

    def add_args(self, server: Any, root: str, *, wrong: bool = False) -> list[str]:
        return ["gcs", "--bucket", root, "--endpoint", server.endpoint, "--project", server.user, "--anonymous"]


@pytest.mark.server
class TestSftp(ConnectorContract):
    fixture = "sftp_server"

    def add_args(self, server: Any, root: str, *, wrong: bool = False) -> list[str]:
        return [
            "sftp",
            "--host",
            server.host,
            "--port",
            str(server.port),
            "--username",
            server.user,
            "--key-file",
            str(server.wrong_key if wrong else server.client_key),
            "--no-host-key-check",
            "--path",
            root,
        ]


@pytest.mark.server
class TestFtp(ConnectorContract):
    fixture = "ftp_server"
    kind: ClassVar[str] = "ftp"

    def add_args(self, server: Any, root: str, *, wrong: bool = False) -> list[str]:
        return [
            self.kind,
            "--host",
            server.host,
            "--port",
            str(server.port),
            "--username",
            server.user,
            "--password",
            server.wrong_secret if wrong else server.secret,
            "--path",
            root,
        ]


@pytest.mark.server
class TestFtps(TestFtp):
    fixture = "ftps_server"
    kind = "ftps"


@pytest.mark.server
class TestWebdav(ConnectorContract):
    fixture = "webdav_server"

    def add_args(self, server: Any, root: str, *, wrong: bool = False) -> list[str]:
        return [
            "webdav",
            "--url",
            server.endpoint,
            "--username",
            server.user,
            "--password",
            server.wrong_secret if wrong else server.secret,
            "--path",
            root,
        ]


def test_add_via_api_rejects_secret_as_option(home: Path) -> None:
    from pool.errors import UsageError

    with pytest.raises(UsageError):
        add_integration("s3", "x", {"bucket": "b", "secret_key": "oops"}, {}, {}, home=home)


def _closed_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])  # closed again: nothing listens there


@pytest.mark.parametrize("kind", ["s3", "sftp", "ftp", "webdav", "azure"])
def test_unreachable_store_exits_10(home: Path, kind: str) -> None:
    port = _closed_port()
    args = {
        "s3": ["--bucket", "b", "--endpoint", f"http://127.0.0.1:{port}", "--access-key", "k", "--secret-key", "s"],
        "sftp": ["--host", "127.0.0.1", "--port", str(port), "--username", "u", "--password", "p"],
        "ftp": ["--host", "127.0.0.1", "--port", str(port)],
        "webdav": ["--url", f"http://127.0.0.1:{port}/dav"],
        "azure": [
            "--container",
            "c",
            "--account-name",
            "devstoreaccount1",
            "--account-key",
            "a2V5",
            "--endpoint",
            f"http://127.0.0.1:{port}/devstoreaccount1",
            "--timeout-s",
            "2",
        ],
    }[kind]
    cli("integrations", "add", kind, "--name", "gone", *args, home=home)
    res = cli("integrations", "test", "gone", home=home, check=False, timeout=90)
    assert res.returncode == ExitCode.BACKEND, res.stderr
    assert "integration gone" in res.stderr and "Traceback" not in res.stderr


@pytest.mark.server
def test_storage_backend_api_on_s3(s3_server: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The storage-backend document's S3 configuration (``*_env`` credentials) on SeaweedFS."""
    from pool.storage_backend import get_storage_backend

    bucket = s3_server.fresh_root()
    monkeypatch.setenv("BRONZE_S3_ENDPOINT", s3_server.endpoint)
    monkeypatch.setenv("BRONZE_S3_ACCESS_KEY", s3_server.user)
    monkeypatch.setenv("BRONZE_S3_SECRET_KEY", s3_server.secret)
    storage = get_storage_backend(
        {
            "platform": {
                "bronze": {"s3_bucket": bucket, "s3_prefix": "bronze"},
                "s3_connection": {
                    "endpoint_url_env": "BRONZE_S3_ENDPOINT",
                    "access_key_env": "BRONZE_S3_ACCESS_KEY",
                    "secret_key_env": "BRONZE_S3_SECRET_KEY",
                    "region": s3_server.region,
                    "path_style": True,
                },
            }
        }
    )
    src = tmp_path / "users.parquet"
    src.write_bytes(secrets.token_bytes(70_000))
    assert storage.upload_file(str(src), "system=api/table=users/users.parquet")
    assert storage.list_files("system=api/table=users/") == ["system=api/table=users/users.parquet"]
    storage.download_file("system=api/table=users/users.parquet", str(tmp_path / "back.parquet"))
    assert (tmp_path / "back.parquet").read_bytes() == src.read_bytes()
    assert s3_server.boto3_client().head_object(Bucket=bucket, Key="bronze/system=api/table=users/users.parquet")
    assert storage.delete_file("system=api/table=users/users.parquet")
    assert storage.list_files("") == []
