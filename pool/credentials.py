"""Credentials of integrations: secrets never stored in plain text, masked in every output.

Where a secret lives, in order of preference:

1. **OS keyring** (the ``keyring`` library: Secret Service, macOS Keychain, Windows Credential
   Locker) when a real backend is available. The ``fail`` and ``null`` backends, which keyring
   selects on a headless machine with no secret service, count as "not available".
2. **Encrypted file** ``credentials.enc`` in the pool home (mode 0600): a JSON map
   ``{integration: {field: secret}}`` sealed with AES-256-GCM (NIST SP 800-38D) through the
   ``cryptography`` library; a fresh 96-bit nonce per write and the file's header as associated
   data. The 256-bit key is either random, in a separate file ``credentials.key`` (mode 0600), or,
   when ``$DARKSTORAGE_PASSPHRASE`` is set, derived from that passphrase with scrypt (RFC 7914,
   n=2**15, r=8, p=1) and a random 16-byte salt kept in the file header.
3. **Environment reference**: the configuration names a variable (``secret_key_env = "VAR"``,
   as the ``*_env`` keys of the storage-backend API) and the secret is read from the environment
   when the integration is opened; nothing is stored.

Threat model, plainly: the encrypted file with a key file protects secrets from being read out of
``config.toml``, backups of the config, logs, shell history of the config and screenshots; it does
NOT protect against someone who can read both files as this user (the key sits next to the data,
as with any unattended agent). The passphrase variant moves the key out of the filesystem, at the
cost of needing the passphrase in the agent's environment. The keyring is as strong as the OS
keyring it uses.

Secrets resolved in this process are also redacted from log records (:func:`redact`).
"""

from __future__ import annotations

import base64
import json
import logging
import os
import secrets
from pathlib import Path
from typing import Any

from .errors import AuthError, ConfigError

log = logging.getLogger(__name__)

KEYRING_SERVICE = "darkstorage"
FILE_NAME = "credentials.enc"
KEY_NAME = "credentials.key"
PASSPHRASE_ENV = "DARKSTORAGE_PASSPHRASE"
STORE_ENV = "DARKSTORAGE_CREDENTIALS"  #: force "file" (or "keyring") instead of auto-detection
_MAGIC_KEYFILE = b"DSC1K"  #: header of a file sealed with the key file
_MAGIC_PASSPHRASE = b"DSC1P"  #: header of a file sealed with a passphrase-derived key
_SALT_BYTES = 16
_NONCE_BYTES = 12

_known_secrets: set[str] = set()


def mask(value: str | None) -> str:
    """A secret as shown to users: ``****`` plus its last 4 characters when it is long enough
    (at least 12) for those not to give it away; ``****`` otherwise; ``""`` for no value."""
    if not value:
        return ""
    return "****" + value[-4:] if len(value) >= 12 else "****"


class _RedactFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if _known_secrets:
            msg = record.getMessage()
            red = redact(msg)
            if red != msg:
                record.msg, record.args = red, None
        return True


_FILTER = _RedactFilter()


def redact(text: str) -> str:
    """*text* with every secret resolved in this process replaced by its :func:`mask`."""
    for s in sorted(_known_secrets, key=len, reverse=True):
        text = text.replace(s, mask(s))
    return text


def remember_secret(value: str) -> None:
    """Note a secret in use so log records never carry it (installs the redaction filter on
    the root logger's handlers)."""
    if len(value) < 4:
        return
    _known_secrets.add(value)
    for h in logging.getLogger().handlers:
        if _FILTER not in h.filters:
            h.addFilter(_FILTER)


def keyring_available() -> bool:
    """True when the keyring library has a real backend (not ``fail``/``null``/chained-empty)."""
    if os.environ.get(STORE_ENV) == "file":
        return False
    try:
        import keyring
        from keyring.backends import chainer, fail, null
    except ImportError:
        return False
    kr = keyring.get_keyring()
    if isinstance(kr, fail.Keyring | null.Keyring):
        return False
    if isinstance(kr, chainer.ChainerBackend):
        return bool(kr.backends)
    return True


class CredentialStore:
    """Secrets of the integrations of one pool.

    Args:
        home: the pool home (holds the encrypted file and its key file).
        backend: ``"keyring"``, ``"file"`` or None to pick (keyring when available).
    """

    def __init__(self, home: Path, backend: str | None = None) -> None:
        self.home = home
        if backend is None:
            backend = "keyring" if keyring_available() else "file"
        if backend not in ("keyring", "file"):
            raise ConfigError(f"unknown credential store {backend!r} (keyring or file)")
        self.backend = backend

    @property
    def file_path(self) -> Path:
        return self.home / FILE_NAME

    @property
    def key_path(self) -> Path:
        return self.home / KEY_NAME

    def describe(self) -> str:
        """Where secrets are kept, for ``integrations show``."""
        if self.backend == "keyring":
            import keyring

            return f"OS keyring ({type(keyring.get_keyring()).__module__})"
        how = "passphrase (scrypt)" if os.environ.get(PASSPHRASE_ENV) else f"key file {KEY_NAME}"
        return f"encrypted file {FILE_NAME} (AES-256-GCM, {how})"

    # -- public API ------------------------------------------------------------------------------

    def get(self, integration: str, field: str) -> str | None:
        """The stored secret *field* of *integration*, or None."""
        if self.backend == "keyring":
            import keyring

            value = keyring.get_password(self._service(), f"{integration}/{field}")
        else:
            value = self._read_all().get(integration, {}).get(field)
        if value is not None:
            remember_secret(value)
        return value

    def set(self, integration: str, values: dict[str, str]) -> None:
        """Store (replace) secrets *values* (``{field: secret}``) of *integration*."""
        if not values:
            return
        if self.backend == "keyring":
            import keyring

            for field, value in values.items():
                keyring.set_password(self._service(), f"{integration}/{field}", value)
            return
        data = self._read_all()
        data.setdefault(integration, {}).update(values)
        self._write_all(data)

    def delete(self, integration: str, fields: list[str] | None = None) -> None:
        """Forget *fields* (default: every secret) of *integration*; missing ones are fine."""
        if self.backend == "keyring":
            import keyring
            import keyring.errors

            for field in fields or []:
                try:
                    keyring.delete_password(self._service(), f"{integration}/{field}")
                except keyring.errors.PasswordDeleteError:
                    pass
            return
        data = self._read_all()
        if integration not in data:
            return
        if fields is None:
            del data[integration]
        else:
            for f in fields:
                data[integration].pop(f, None)
        self._write_all(data)

    # -- keyring ---------------------------------------------------------------------------------

    def _service(self) -> str:
        return f"{KEYRING_SERVICE}:{self.home}"

    # -- encrypted file --------------------------------------------------------------------------

    def _key(self, salt: bytes | None) -> bytes:
        passphrase = os.environ.get(PASSPHRASE_ENV)
        if passphrase:
            from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

            assert salt is not None
            return Scrypt(salt=salt, length=32, n=2**15, r=8, p=1).derive(passphrase.encode())
        try:
            raw = self.key_path.read_bytes()
        except FileNotFoundError:
            if self.file_path.exists():
                raise AuthError(
                    f"{self.file_path} exists but its key file {self.key_path} is gone:"
                    f" the stored secrets cannot be read (set {PASSPHRASE_ENV} if it was"
                    " sealed with a passphrase, else add the integrations' secrets again)"
                ) from None
            self.home.mkdir(parents=True, exist_ok=True)
            key = secrets.token_bytes(32)
            fd = os.open(self.key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(base64.b64encode(key))
            return key
        key = base64.b64decode(raw)
        if len(key) != 32:
            raise ConfigError(f"{self.key_path}: not a 256-bit key")
        return key

    def _read_all(self) -> dict[str, dict[str, str]]:
        from cryptography.exceptions import InvalidTag
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        try:
            blob = self.file_path.read_bytes()
        except FileNotFoundError:
            return {}
        magic = blob[:5]
        if magic == _MAGIC_PASSPHRASE:
            if not os.environ.get(PASSPHRASE_ENV):
                raise AuthError(f"{self.file_path} is sealed with a passphrase: set {PASSPHRASE_ENV}")
            salt, rest = blob[5 : 5 + _SALT_BYTES], blob[5 + _SALT_BYTES :]
            header = blob[: 5 + _SALT_BYTES]
        elif magic == _MAGIC_KEYFILE:
            salt, rest, header = None, blob[5:], blob[:5]
            if os.environ.get(PASSPHRASE_ENV):
                # sealed with the key file: read it with that key (rewritten under the passphrase)
                saved = os.environ.pop(PASSPHRASE_ENV)
                try:
                    key = self._key(None)
                finally:
                    os.environ[PASSPHRASE_ENV] = saved
                return self._open(AESGCM(key), rest, header)
        else:
            raise ConfigError(f"{self.file_path}: not a darkstorage credentials file")
        try:
            return self._open(AESGCM(self._key(salt)), rest, header)
        except InvalidTag:
            raise AuthError(f"{self.file_path}: cannot decrypt (wrong key file or passphrase)") from None

    @staticmethod
    def _open(aead: Any, rest: bytes, header: bytes) -> dict[str, dict[str, str]]:
        from cryptography.exceptions import InvalidTag

        try:
            plain = aead.decrypt(rest[:_NONCE_BYTES], rest[_NONCE_BYTES:], header)
        except InvalidTag:
            raise AuthError("credentials file: cannot decrypt (wrong key file or passphrase)") from None
        data: dict[str, dict[str, str]] = json.loads(plain)
        return data

    def _write_all(self, data: dict[str, dict[str, str]]) -> None:
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        if os.environ.get(PASSPHRASE_ENV):
            salt: bytes | None = secrets.token_bytes(_SALT_BYTES)
            assert salt is not None
            header = _MAGIC_PASSPHRASE + salt
        else:
            salt, header = None, _MAGIC_KEYFILE
        nonce = secrets.token_bytes(_NONCE_BYTES)
        sealed = AESGCM(self._key(salt)).encrypt(nonce, json.dumps(data, sort_keys=True).encode(), header)
        self.home.mkdir(parents=True, exist_ok=True)
        tmp = self.file_path.with_name(FILE_NAME + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(header + nonce + sealed)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.file_path)


def resolve_env(var: str, what: str) -> str:
    """The value of environment variable *var* (an ``*_env`` reference for *what*).

    Raises:
        AuthError: the variable is not set or empty.
    """
    value = os.environ.get(var)
    if not value:
        raise AuthError(f"{what}: environment variable {var} is not set")
    remember_secret(value)
    return value
