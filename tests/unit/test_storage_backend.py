"""The storage-backend API (seed 002): selection by ``storage_backend``, ``*_env`` references,
the local backend's round trip, and a third-party backend registered through a real entry point
(a dist-info folder with entry_points.txt on sys.path) with no factory edit."""

from __future__ import annotations

import importlib
import importlib.metadata
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from pool.errors import AuthError, ConfigError, NotFoundError, UnsupportedError
from pool.storage_backend import (
    ENTRY_POINT_GROUP,
    LocalStorage,
    S3Storage,
    StorageBackend,
    available_backends,
    get_storage_backend,
)


def test_builtins_are_registered_as_entry_points() -> None:
    have = available_backends()
    for name in ("s3", "azure", "gcs", "local", "integration"):
        assert name in have


def test_local_round_trip(tmp_path: Path) -> None:
    src = tmp_path / "in.parquet"
    src.write_bytes(b"PAR1" + bytes(range(256)) * 10)
    cfg = {"platform": {"bronze": {"storage_backend": "local", "local_path": str(tmp_path / "bronze")}}}
    storage = get_storage_backend(cfg)
    assert isinstance(storage, LocalStorage) and storage.get_backend_type() == "local"
    assert storage.upload_file(str(src), "system=api/table=users/file one.parquet")
    storage.upload_file(str(src), "system=api/table=orders/ü.parquet")
    assert storage.list_files("system=api/table=users/") == ["system=api/table=users/file one.parquet"]
    assert len(storage.list_files("")) == 2
    out = tmp_path / "dl" / "x.parquet"
    assert storage.download_file("system=api/table=users/file one.parquet", str(out))
    assert out.read_bytes() == src.read_bytes()
    assert storage.delete_file("system=api/table=users/file one.parquet")
    assert storage.list_files("system=api/table=users/") == []
    with pytest.raises(NotFoundError):
        storage.delete_file("system=api/table=users/file one.parquet")
    with pytest.raises(ConfigError):
        storage.upload_file(str(src), "../escape")


def test_default_is_s3_with_env_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = {
        "bronze": {"s3_bucket": "analytics-bronze", "s3_prefix": "bronze"},
        "s3_connection": {
            "endpoint_url_env": "BRONZE_S3_ENDPOINT",
            "access_key_env": "BRONZE_S3_ACCESS_KEY",
            "secret_key_env": "BRONZE_S3_SECRET_KEY",
        },
    }
    monkeypatch.setenv("BRONZE_S3_ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setenv("BRONZE_S3_ACCESS_KEY", "access-key-id")
    monkeypatch.delenv("BRONZE_S3_SECRET_KEY", raising=False)
    with pytest.raises(AuthError, match="BRONZE_S3_SECRET_KEY"):
        get_storage_backend(cfg)
    monkeypatch.setenv("BRONZE_S3_SECRET_KEY", "the-secret-key-value")
    storage = get_storage_backend(cfg)
    assert isinstance(storage, S3Storage) and storage.get_backend_type() == "s3"
    assert storage.base == "analytics-bronze/bronze"
    assert storage.fs.key == "access-key-id" and storage.fs.secret == "the-secret-key-value"
    assert storage.fs.client_kwargs["region_name"]


def test_missing_required_key() -> None:
    with pytest.raises(ConfigError, match="s3_bucket"):
        get_storage_backend({"bronze": {"storage_backend": "s3"}})


def test_unknown_backend() -> None:
    with pytest.raises(UnsupportedError, match="no storage backend 'nope'"):
        get_storage_backend({"bronze": {"storage_backend": "nope"}})


PLUGIN = """
from pool.storage_backend import StorageBackend

class MemoryStorage(StorageBackend):
    def __init__(self, config):
        self.files = {}
        self.label = config["bronze"]["memory_label"]
    def upload_file(self, local_path, remote_path):
        self.files[remote_path] = open(local_path, "rb").read()
        return True
    def download_file(self, remote_path, local_path):
        open(local_path, "wb").write(self.files[remote_path])
        return True
    def list_files(self, prefix):
        return sorted(k for k in self.files if k.startswith(prefix))
    def delete_file(self, remote_path):
        del self.files[remote_path]
        return True
    def get_backend_type(self):
        return "memory"
"""


@pytest.fixture
def third_party(tmp_path: Path) -> Iterator[Path]:
    """An installed-looking third-party distribution: a module and a dist-info folder whose
    entry_points.txt registers ``memory`` in the group, put on sys.path."""
    site = tmp_path / "site"
    (site / "acme_storage").mkdir(parents=True)
    (site / "acme_storage" / "__init__.py").write_text(PLUGIN)
    info = site / "acme_storage-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: acme-storage\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(f"[{ENTRY_POINT_GROUP}]\nmemory = acme_storage:MemoryStorage\n")
    sys.path.insert(0, str(site))
    importlib.invalidate_caches()
    try:
        yield site
    finally:
        sys.path.remove(str(site))
        sys.modules.pop("acme_storage", None)
        importlib.invalidate_caches()


def test_third_party_backend_through_entry_point(third_party: Path, tmp_path: Path) -> None:
    assert "memory" in {ep.name for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)}
    storage = get_storage_backend({"bronze": {"storage_backend": "memory", "memory_label": "x"}})
    assert isinstance(storage, StorageBackend) and storage.get_backend_type() == "memory"
    f = tmp_path / "a.txt"
    f.write_text("hello")
    storage.upload_file(str(f), "p/a.txt")
    assert storage.list_files("p/") == ["p/a.txt"]


def test_entry_point_that_is_not_a_backend(third_party: Path) -> None:
    ep = third_party / "acme_storage-1.0.dist-info" / "entry_points.txt"
    ep.write_text(ep.read_text() + "broken = acme_storage:PLUGIN_MISSING\n")
    importlib.invalidate_caches()
    with pytest.raises(UnsupportedError, match="cannot be loaded"):
        get_storage_backend({"bronze": {"storage_backend": "broken"}})
