"""Connectors with no storage classes: Google Cloud Storage (gcsfs), SFTP (sshfs over asyncssh),
FTP/FTPS (fsspec's ftplib backend), WebDAV (webdav4) and local or NFS-mounted folders."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import fsspec

from . import TIMEOUT, Kind, Option


def _timeout(opts: dict[str, Any]) -> float:
    return float(opts.get("timeout_s") or TIMEOUT.default)


def _join(*parts: Any) -> str:
    return "/".join(str(p).strip("/") for p in parts if p)


def build_gcs(opts: dict[str, Any], secrets: dict[str, str]) -> tuple[fsspec.AbstractFileSystem, str]:
    from gcsfs import GCSFileSystem

    token: Any
    if secrets.get("service_account_json"):
        token = json.loads(secrets["service_account_json"])
    elif opts.get("anonymous"):
        token = "anon"
    else:
        token = None  # application default credentials
    fs = GCSFileSystem(
        project=opts.get("project") or "",
        token=token,
        endpoint_url=opts.get("endpoint"),
        requests_timeout=_timeout(opts),
        retries=2,
        skip_instance_cache=True,
    )
    return fs, _join(opts.get("bucket"), opts.get("prefix"))


def build_sftp(opts: dict[str, Any], secrets: dict[str, str]) -> tuple[fsspec.AbstractFileSystem, str]:
    from sshfs import SSHFileSystem

    kw: dict[str, Any] = {
        "port": int(opts.get("port") or 22),
        "username": opts.get("username"),
        "timeout": _timeout(opts),
        "connect_timeout": _timeout(opts),
        "skip_instance_cache": True,
        "agent_path": None,
    }
    if opts.get("key_file"):
        kw["client_keys"] = [str(Path(opts["key_file"]).expanduser())]
        if secrets.get("key_passphrase"):
            kw["passphrase"] = secrets["key_passphrase"]
    else:
        kw["client_keys"] = []
    if secrets.get("password"):
        kw["password"] = secrets["password"]
    if opts.get("no_host_key_check"):
        kw["known_hosts"] = None
    elif opts.get("known_hosts"):
        kw["known_hosts"] = str(Path(opts["known_hosts"]).expanduser())
    fs = SSHFileSystem(opts["host"], **kw)
    return fs, "/" + _join(opts.get("path"))


def build_ftp(opts: dict[str, Any], secrets: dict[str, str]) -> tuple[fsspec.AbstractFileSystem, str]:
    from fsspec.implementations.ftp import FTPFileSystem

    fs = FTPFileSystem(
        opts["host"],
        port=int(opts.get("port") or 21),
        username=opts.get("username") or "anonymous",
        password=secrets.get("password") or "",
        tls=bool(opts.get("tls")),
        timeout=_timeout(opts),
        skip_instance_cache=True,
    )
    return fs, "/" + _join(opts.get("path"))


def build_webdav(opts: dict[str, Any], secrets: dict[str, str]) -> tuple[fsspec.AbstractFileSystem, str]:
    from webdav4.fsspec import WebdavFileSystem

    auth: Any = None
    if secrets.get("token"):
        import httpx

        class _Bearer(httpx.Auth):
            def auth_flow(self, request: httpx.Request) -> Any:
                request.headers["Authorization"] = f"Bearer {secrets['token']}"
                yield request

        auth = _Bearer()
    elif opts.get("username"):
        auth = (opts["username"], secrets.get("password") or "")
    fs = WebdavFileSystem(opts["url"], auth=auth, timeout=_timeout(opts), skip_instance_cache=True)
    return fs, _join(opts.get("path"))


def build_local(opts: dict[str, Any], secrets: dict[str, str]) -> tuple[fsspec.AbstractFileSystem, str]:
    from fsspec.implementations.local import LocalFileSystem

    root = Path(str(opts["path"])).expanduser().absolute()
    return LocalFileSystem(skip_instance_cache=True), str(root).rstrip("/") or "/"


_GCS = (
    Option("bucket", "Bucket name.", required=True),
    Option("prefix", "Object name prefix."),
    Option("project", "Project id."),
    Option("endpoint", "API endpoint (emulators); default the public API."),
    Option("anonymous", "Public buckets without credentials.", flag=True),
    Option("service_account_json", "Service-account key JSON (use --service-account-json-file).", secret=True),
    TIMEOUT,
)
_SFTP = (
    Option("host", "Server host name.", required=True),
    Option("port", "Port.", default=22, type=int),
    Option("username", "User name.", required=True),
    Option("path", "Remote folder."),
    Option("key_file", "Private key file."),
    Option("known_hosts", "known_hosts file to check the server key against (default ~/.ssh/known_hosts)."),
    Option("no_host_key_check", "Accept any server key (unsafe; test servers only).", flag=True),
    Option("password", "Password.", secret=True),
    Option("key_passphrase", "Passphrase of the private key.", secret=True),
    TIMEOUT,
)
_FTP = (
    Option("host", "Server host name.", required=True),
    Option("port", "Port.", default=21, type=int),
    Option("username", "User name (default anonymous)."),
    Option("path", "Remote folder."),
    Option("tls", "Explicit FTPS (AUTH TLS) for control and data.", flag=True),
    Option("password", "Password.", secret=True),
    TIMEOUT,
)
_WEBDAV = (
    Option("url", "Server URL, e.g. https://dav.example.com/remote.php/dav/files/me.", required=True),
    Option("path", "Folder below the URL."),
    Option("username", "User name (basic auth)."),
    Option("password", "Password.", secret=True),
    Option("token", "Bearer token (instead of user name and password).", secret=True),
    TIMEOUT,
)
_LOCAL = (Option("path", "Folder (a local disk or an NFS/SMB mount point).", required=True),)

KINDS = [
    Kind(
        "gcs",
        "Google Cloud Storage",
        "gcsfs",
        _GCS,
        build_gcs,
        "darkstorage integrations add gcs --name my-gcs --bucket b --service-account-json-file key.json",
    ),
    Kind(
        "sftp",
        "SFTP (SSH)",
        "sshfs",
        _SFTP,
        build_sftp,
        "darkstorage integrations add sftp --name nas --host nas.lan --username me --key-file ~/.ssh/id_ed25519 --path /backup",
    ),
    Kind(
        "ftp",
        "FTP / FTPS",
        "fsspec.ftp",
        _FTP,
        build_ftp,
        "darkstorage integrations add ftp --name old-ftp --host ftp.example.com --username me --password ... --tls",
    ),
    Kind(
        "ftps",
        "FTPS (explicit TLS)",
        "fsspec.ftp",
        _FTP,
        build_ftp,
        "darkstorage integrations add ftps --name secure-ftp --host ftp.example.com --username me --password ...",
        preset={"tls": True},
        base="ftp",
    ),
    Kind(
        "webdav",
        "WebDAV (Nextcloud, ownCloud, Apache, ...)",
        "webdav4",
        _WEBDAV,
        build_webdav,
        "darkstorage integrations add webdav --name cloud --url https://dav.example.com/dav --username me --password ...",
    ),
    Kind(
        "local",
        "Local folder",
        "fsspec.local",
        _LOCAL,
        build_local,
        "darkstorage integrations add local --name usb --path /media/usb/backup",
    ),
    Kind(
        "nfs",
        "NFS/SMB mount point (a local path)",
        "fsspec.local",
        _LOCAL,
        build_local,
        "darkstorage integrations add nfs --name nas --path /mnt/nas/backup",
        base="local",
    ),
]
