"""File-protocol test servers over a temporary folder: OpenSSH sshd (SFTP), pyftpdlib (FTP, FTPS)
and WsgiDAV (WebDAV)."""

from __future__ import annotations

import datetime
import getpass
import ipaddress
import os
import shutil
import socket
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import NameOID

from tests.servers.base import CONNECT_TIMEOUT_S, READ_TIMEOUT_S, StoreServer, free_ports, http_status

HERE = Path(__file__).resolve().parent
SSHD_PATHS = ("/usr/sbin/sshd", "/usr/local/sbin/sshd")


def banner(host: str, port: int, prefix: bytes) -> bool:
    """True if a TCP connection to *host*:*port* greets with a line starting with *prefix*."""
    with socket.create_connection((host, port), timeout=1) as s:
        s.settimeout(2)
        return s.recv(256).startswith(prefix)


def write_ssh_key(path: Path) -> str:
    """Write a new Ed25519 private key at *path* (OpenSSH format, mode 0600); return its public line."""
    key = ed25519.Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
    )
    path.write_bytes(pem)
    path.chmod(0o600)
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    line = public.decode() + " darkstorage-test\n"
    path.with_suffix(".pub").write_text(line)
    return line


def write_self_signed(cert_path: Path, key_path: Path, host: str) -> None:
    """A self-signed TLS certificate for *host* (an IP address), valid for a day, and its EC key."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(host))]), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    key_path.chmod(0o600)


@dataclass(eq=False)
class FolderServer(StoreServer):
    """A server exporting the local folder ``workdir/files``; roots are made there directly."""

    @property
    def files(self) -> Path:
        """The exported folder on local disk."""
        return self.workdir / "files"

    def prepare(self) -> None:
        self.port = self.port or free_ports(1)[0]
        self.files.mkdir(parents=True, exist_ok=True)

    def local_path(self, root: str) -> Path:
        """Where the server's path *root* lives on local disk."""
        return self.files / root.lstrip("/")

    def make_root(self, name: str) -> str:
        (self.files / name).mkdir()
        return f"/{name}"


@dataclass(eq=False)
class SftpServer(FolderServer):
    """OpenSSH ``sshd`` on a loopback port with a temporary host key, logging in the current user
    by public key (``client_key``; ``wrong_key`` is a key sshd does not know).

    Password login is not offered: it would need a password set on a system account. Paths are
    absolute local paths (no chroot), so a root is ``str(files / name)``.
    """

    name: ClassVar[str] = "sshd"
    protocol: ClassVar[str] = "sftp"
    secret: str = ""
    wrong_secret: str = ""

    def __post_init__(self) -> None:
        self.user = getpass.getuser()

    @property
    def client_key(self) -> Path:
        """The private key whose public half is in authorized_keys."""
        return self.workdir / "client_ed25519"

    @property
    def wrong_key(self) -> Path:
        """A private key sshd does not accept."""
        return self.workdir / "wrong_ed25519"

    def prepare(self) -> None:
        super().prepare()
        write_ssh_key(self.workdir / "host_ed25519")
        (self.workdir / "authorized_keys").write_text(write_ssh_key(self.client_key))
        write_ssh_key(self.wrong_key)
        w = self.workdir
        (w / "sshd_config").write_text(
            f"Port {self.port}\n"
            f"ListenAddress {self.host}\n"
            f"HostKey {w / 'host_ed25519'}\n"
            f"PidFile {w / 'sshd.pid'}\n"
            f"AuthorizedKeysFile {w / 'authorized_keys'}\n"
            "PubkeyAuthentication yes\n"
            "PasswordAuthentication no\n"
            "KbdInteractiveAuthentication no\n"
            "UsePAM no\n"
            "PermitRootLogin prohibit-password\n"  # this private sshd only: tests run as root in CI
            "StrictModes no\n"
            "MaxStartups 100:30:200\n"
            "MaxSessions 100\n"
            "LoginGraceTime 20\n"
            "Subsystem sftp internal-sftp\n"
            "LogLevel VERBOSE\n"
        )
        if os.geteuid() == 0:  # the privilege-separation directory Debian's unit creates at boot
            os.makedirs("/run/sshd", mode=0o755, exist_ok=True)

    def command(self) -> Sequence[str]:
        sshd = next((p for p in SSHD_PATHS if os.access(p, os.X_OK)), None) or shutil.which("sshd")
        if sshd is None:
            raise FileNotFoundError("sshd is missing: apt-get install openssh-server")
        return [sshd, "-D", "-e", "-f", str(self.workdir / "sshd_config")]

    def ready(self) -> bool:
        return banner(self.host, self.port, b"SSH-2.0-")

    def fsspec_kwargs(self, *, wrong: bool = False) -> dict[str, Any]:
        return {
            "host": self.host,
            "port": self.port,
            "username": self.user,
            "client_keys": [str(self.wrong_key if wrong else self.client_key)],
            "known_hosts": None,
            "agent_path": None,
            "password": None,
            "connect_timeout": CONNECT_TIMEOUT_S,
            "login_timeout": CONNECT_TIMEOUT_S,
        }

    def make_root(self, name: str) -> str:
        (self.files / name).mkdir()
        return str(self.files / name)

    def local_path(self, root: str) -> Path:
        return Path(root)


@dataclass(eq=False)
class FtpServer(FolderServer):
    """pyftpdlib with one user over ``files``; ``tls=True`` makes it FTPS (explicit AUTH TLS, required
    on the control and data channels) with a self-signed certificate (``cert_path``). Paths start at
    the FTP root: a root is ``/name``."""

    name: ClassVar[str] = "ftpd"
    protocol: ClassVar[str] = "ftp"
    tls: bool = False

    @property
    def cert_path(self) -> Path:
        return self.workdir / "cert.pem"

    def prepare(self) -> None:
        super().prepare()
        if self.tls:
            write_self_signed(self.cert_path, self.workdir / "key.pem", self.host)

    def command(self) -> Sequence[str]:
        argv = [sys.executable, str(HERE / "ftpd_main.py"), self.host, str(self.port), str(self.files)]
        argv += [self.user, self.secret]
        if self.tls:
            argv += [str(self.cert_path), str(self.workdir / "key.pem")]
        return argv

    def ready(self) -> bool:
        return banner(self.host, self.port, b"220")

    def fsspec_kwargs(self, *, wrong: bool = False) -> dict[str, Any]:
        kw: dict[str, Any] = {
            "host": self.host,
            "port": self.port,
            "username": self.user,
            "password": self.wrong_secret if wrong else self.secret,
            "timeout": READ_TIMEOUT_S,
        }
        if self.tls:
            kw["tls"] = True
        return kw


@dataclass(eq=False)
class WebdavServer(FolderServer):
    """WsgiDAV on cheroot with one basic-auth user over ``files``; webdav4 paths are relative to
    ``endpoint``, so a root is ``name``."""

    name: ClassVar[str] = "wsgidav"
    protocol: ClassVar[str] = "webdav"

    @property
    def endpoint(self) -> str:
        return f"http://{self.host}:{self.port}"

    def command(self) -> Sequence[str]:
        return [
            sys.executable,
            str(HERE / "davd_main.py"),
            self.host,
            str(self.port),
            str(self.files),
            self.user,
            self.secret,
        ]

    def ready(self) -> bool:
        return http_status(f"{self.endpoint}/") == 401

    def fsspec_kwargs(self, *, wrong: bool = False) -> dict[str, Any]:
        return {
            "base_url": self.endpoint,
            "auth": (self.user, self.wrong_secret if wrong else self.secret),
            "timeout": READ_TIMEOUT_S,
        }

    def make_root(self, name: str) -> str:
        (self.files / name).mkdir()
        return name
