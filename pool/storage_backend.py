"""The storage-backend Python API (the user's storage-backend document): a small
:class:`StorageBackend` interface and :func:`get_storage_backend` choosing one by the
``storage_backend`` key of a platform config, so pipelines can embed darkstorage's connectors.

Backends register through the ``darkstorage.storage_backends`` entry-point group (built-ins
included, see ``pyproject.toml``): a third-party package adds one with::

    [project.entry-points."darkstorage.storage_backends"]
    my_storage = "my_pkg.storage:MyStorage"   # a StorageBackend subclass taking (config)

Config shape (the document's keys; ``*_env`` names an environment variable holding the value)::

    {"bronze": {"storage_backend": "s3",            # default "s3"
                "s3_bucket": "analytics-bronze", "s3_prefix": "bronze",
                "azure_storage_account": "acct", "azure_container": "bronze", "azure_prefix": "p",
                "gcs_bucket": "b", "gcs_prefix": "p",
                "local_path": "/data/bronze",
                "integration": "my-aws-backup", "integration_prefix": "p"},
     "s3_connection": {"endpoint_url[_env]": ..., "access_key[_env]": ..., "secret_key[_env]": ...,
                       "region[_env]": ...},
     "azure_connection": {"connection_string[_env]": ..., "account_key[_env]": ..., "sas_token[_env]": ...},
     "gcs_connection": {"token_file[_env]": ..., "endpoint_url[_env]": ..., "project": ...}}

A config holding ``platform: {...}`` is accepted too. ``s3_enabled`` / ``storage_enabled`` are
not switches here: a backend is built whenever it is asked for.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import fsspec

from .credentials import resolve_env
from .errors import BackendError, ConfigError, DarkstorageError, NotFoundError, UnsupportedError

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "darkstorage.storage_backends"


class StorageBackend(ABC):
    """A remote store as the storage-backend document defines it. Paths are relative to the
    backend's configured bucket/container + prefix (or folder).

    The methods return True on success and raise a :class:`~pool.errors.DarkstorageError`
    (``AuthError``, ``BackendError``, ``NotFoundError``) on failure, rather than returning
    False, so a failure can't pass unnoticed.
    """

    @abstractmethod
    def upload_file(self, local_path: str, remote_path: str) -> bool:
        """Upload local file *local_path* to *remote_path*."""

    @abstractmethod
    def download_file(self, remote_path: str, local_path: str) -> bool:
        """Download *remote_path* to local file *local_path* (parent folders created)."""

    @abstractmethod
    def list_files(self, prefix: str) -> list[str]:
        """Paths (relative, sorted) of every file whose path starts with *prefix*."""

    @abstractmethod
    def delete_file(self, remote_path: str) -> bool:
        """Delete *remote_path*; a missing file raises NotFoundError."""

    @abstractmethod
    def get_backend_type(self) -> str:
        """The backend's identifier (its ``storage_backend`` name)."""


def _platform(config: dict[str, Any]) -> dict[str, Any]:
    if "bronze" not in config and isinstance(config.get("platform"), dict):
        return dict(config["platform"])
    return config


def setting(section: dict[str, Any], key: str, *, required: bool = False, what: str = "") -> str | None:
    """``section[key]``, or the environment variable named by ``section[key + "_env"]``.

    Raises:
        ConfigError: *required* and neither is given. AuthError: the variable is unset.
    """
    if section.get(key):
        return str(section[key])
    var = section.get(f"{key}_env")
    if var:
        return resolve_env(str(var), f"{what or 'storage backend'} {key}")
    if required:
        raise ConfigError(f"{what or 'storage backend'}: {key} (or {key}_env) is required")
    return None


class FsspecStorage(StorageBackend):
    """A :class:`StorageBackend` over an fsspec filesystem and a base path (the built-ins)."""

    backend_type = "fsspec"

    def __init__(self, fs: fsspec.AbstractFileSystem, base: str) -> None:
        self.fs = fs
        self.base = base.rstrip("/")

    def _path(self, remote_path: str) -> str:
        rel = remote_path.lstrip("/")
        if any(p == ".." for p in rel.split("/")):
            raise ConfigError(f"remote path {remote_path!r} leaves the backend's base")
        return f"{self.base}/{rel}" if self.base else rel

    def _call(self, what: str, fn: Any, *args: Any) -> Any:
        from .integrations import store_error

        try:
            return fn(*args)
        except FileNotFoundError:
            raise NotFoundError(f"{self.get_backend_type()}: {what}: not found") from None
        except DarkstorageError:
            raise
        except Exception as e:
            raise store_error(e, f"{self.get_backend_type()}: {what}") from None

    def upload_file(self, local_path: str, remote_path: str) -> bool:
        path = self._path(remote_path)
        self._call(
            f"upload {remote_path}",
            lambda: (self.fs.makedirs(self.fs._parent(path), exist_ok=True), self.fs.put_file(local_path, path)),
        )
        return True

    def download_file(self, remote_path: str, local_path: str) -> bool:
        Path(local_path).parent.mkdir(parents=True, exist_ok=True)
        self._call(f"download {remote_path}", self.fs.get_file, self._path(remote_path), local_path)
        return True

    def list_files(self, prefix: str) -> list[str]:
        root = self.base
        head, _, _ = prefix.lstrip("/").rpartition("/")
        start = self._path(head) if head else root
        self.fs.invalidate_cache()
        try:
            found = self._call(f"list {prefix}", lambda: self.fs.find(start or "/", detail=True))
        except NotFoundError:
            return []
        strip = len(self.fs._strip_protocol(root).rstrip("/")) + 1 if root else 0
        rels = [str(p)[strip:] for p, info in found.items() if info.get("type") != "directory"]
        return sorted(r for r in rels if r and r.startswith(prefix.lstrip("/")))

    def delete_file(self, remote_path: str) -> bool:
        path = self._path(remote_path)
        if not self._call(f"delete {remote_path}", self.fs.exists, path):
            raise NotFoundError(f"{self.get_backend_type()}: delete {remote_path}: not found")
        self._call(f"delete {remote_path}", self.fs.rm_file, path)
        return True

    def get_backend_type(self) -> str:
        return self.backend_type


class S3Storage(FsspecStorage):
    """``storage_backend: s3`` (AWS, MinIO, any S3-compatible store) through s3fs."""

    backend_type = "s3"

    def __init__(self, config: dict[str, Any]) -> None:
        from .connectors.s3 import build

        bronze, conn = config.get("bronze", {}), config.get("s3_connection", {})
        what = "s3 storage backend"
        opts = {
            "bucket": setting(bronze, "s3_bucket", required=True, what=what),
            "prefix": setting(bronze, "s3_prefix", what=what),
            "endpoint": setting(conn, "endpoint_url", what=what),
            "region": setting(conn, "region", what=what),
            "path_style": bool(conn.get("path_style", False)),
            "preset": "custom" if conn.get("endpoint_url") or conn.get("endpoint_url_env") else "aws",
        }
        secrets = {
            k: v
            for k in ("access_key", "secret_key", "session_token")
            if (v := setting(conn, k, what=what)) is not None
        }
        super().__init__(*build(opts, secrets))


class AzureStorage(FsspecStorage):
    """``storage_backend: azure`` (Blob Storage or ADLS Gen2) through adlfs."""

    backend_type = "azure"

    def __init__(self, config: dict[str, Any]) -> None:
        from .connectors.azure import build

        bronze, conn = config.get("bronze", {}), config.get("azure_connection", {})
        what = "azure storage backend"
        opts = {
            "account_name": setting(bronze, "azure_storage_account", what=what),
            "container": setting(bronze, "azure_container", required=True, what=what),
            "prefix": setting(bronze, "azure_prefix", what=what),
            "endpoint": setting(conn, "endpoint_url", what=what),
        }
        secrets = {
            k: v
            for k in ("connection_string", "account_key", "sas_token")
            if (v := setting(conn, k, what=what)) is not None
        }
        if not secrets.get("connection_string") and not opts["account_name"]:
            raise ConfigError(f"{what}: azure_storage_account or a connection_string is required")
        super().__init__(*build(opts, secrets))


class GCSStorage(FsspecStorage):
    """``storage_backend: gcs`` through gcsfs."""

    backend_type = "gcs"

    def __init__(self, config: dict[str, Any]) -> None:
        from .connectors.basic import build_gcs

        bronze, conn = config.get("bronze", {}), config.get("gcs_connection", {})
        what = "gcs storage backend"
        secrets = {}
        token_file = setting(conn, "token_file", what=what)
        if token_file:
            secrets["service_account_json"] = Path(token_file).read_text()
        opts = {
            "bucket": setting(bronze, "gcs_bucket", required=True, what=what),
            "prefix": setting(bronze, "gcs_prefix", what=what),
            "endpoint": setting(conn, "endpoint_url", what=what),
            "project": conn.get("project"),
            "anonymous": bool(conn.get("anonymous", False)),
        }
        super().__init__(*build_gcs(opts, secrets))


class LocalStorage(FsspecStorage):
    """``storage_backend: local``: a folder (``local_path``), created if missing."""

    backend_type = "local"

    def __init__(self, config: dict[str, Any]) -> None:
        from fsspec.implementations.local import LocalFileSystem

        path = setting(config.get("bronze", {}), "local_path", required=True, what="local storage backend")
        assert path is not None
        root = Path(path).expanduser().absolute()
        root.mkdir(parents=True, exist_ok=True)
        super().__init__(LocalFileSystem(skip_instance_cache=True), str(root))


class IntegrationStorage(FsspecStorage):
    """``storage_backend: integration``: a configured darkstorage integration
    (``bronze.integration``, optional ``bronze.integration_prefix``), credentials from its store."""

    backend_type = "integration"

    def __init__(self, config: dict[str, Any]) -> None:
        from .integrations import open_integration

        bronze = config.get("bronze", {})
        name = setting(bronze, "integration", required=True, what="integration storage backend")
        assert name is not None
        home = config.get("darkstorage_home")
        fs, base = open_integration(name, home=Path(home) if home else None)
        prefix = (bronze.get("integration_prefix") or "").strip("/")
        super().__init__(fs, f"{base}/{prefix}" if prefix else base)


def available_backends() -> dict[str, str]:
    """Registered backends: ``{name: "module:Class"}`` from the entry-point group."""
    return {ep.name: ep.value for ep in entry_points(group=ENTRY_POINT_GROUP)}


def get_storage_backend(config: dict[str, Any]) -> StorageBackend:
    """The backend ``config["bronze"]["storage_backend"]`` names (default ``"s3"``), built from
    *config* (see the module docstring for its shape).

    Raises:
        UnsupportedError: no backend of that name is registered.
        ConfigError: a required key is missing. AuthError: an ``*_env`` variable is unset.
    """
    platform = _platform(config)
    name = str(platform.get("bronze", {}).get("storage_backend") or "s3")
    eps = [ep for ep in entry_points(group=ENTRY_POINT_GROUP) if ep.name == name]
    if not eps:
        have = ", ".join(sorted(available_backends())) or "none: is darkstorage installed?"
        raise UnsupportedError(f"no storage backend {name!r} registered (registered: {have})")
    try:
        cls = eps[0].load()
    except Exception as e:
        raise UnsupportedError(f"storage backend {name!r} ({eps[0].value}) cannot be loaded: {e}") from None
    if not (isinstance(cls, type) and issubclass(cls, StorageBackend)):
        raise UnsupportedError(f"storage backend {name!r} ({eps[0].value}) is not a StorageBackend")
    try:
        factory: Any = cls  # a subclass taking the config, as the entry point promises
        backend: StorageBackend = factory(platform)
    except DarkstorageError:
        raise
    except (KeyError, TypeError, ValueError, OSError) as e:
        raise BackendError(f"storage backend {name!r}: {e}") from None
    log.debug("storage backend %s: %s", name, type(backend).__name__)
    return backend


__all__ = [
    "StorageBackend",
    "FsspecStorage",
    "get_storage_backend",
    "available_backends",
    "ENTRY_POINT_GROUP",
    "S3Storage",
    "AzureStorage",
    "GCSStorage",
    "LocalStorage",
    "IntegrationStorage",
]
