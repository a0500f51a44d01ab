"""After an image is written: gzip it, encrypt it (age), split it into numbered chunks.

Each step streams through a 1 MiB buffer, so memory stays flat whatever the image size.

* gzip: RFC 1952 through :mod:`gzip`, header mtime = the build time, no file name (reproducible).
* age: the age v1 format (age-encryption.org/v1, C2SP age spec) with a scrypt passphrase
  recipient, written by our streaming writer because pyrage's passphrase API takes the whole
  plaintext in memory; the cryptography library supplies scrypt, HKDF-SHA-256, HMAC-SHA-256 and
  ChaCha20-Poly1305. ``age -d`` (Debian) and pyrage decrypt it.
* split: ``NAME.001``, ``NAME.002``, ... of ``chunk_bytes`` each (the last may be shorter);
  ``cat NAME.0* > NAME`` rejoins them. Split-only uses ``copy_file_range``.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import hmac
import os
from pathlib import Path
from typing import Any, BinaryIO, Protocol, cast

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from .common import write_sidecar
from .iso_write import copy_range

_READ_BYTES = 1 << 20
AGE_CHUNK = 64 * 1024
AGE_SCRYPT_LOG_N = 18  # age's default work factor


class _Sink(Protocol):
    def write(self, data: bytes, /) -> int: ...


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode().rstrip("=")


def _hkdf(key: bytes, salt: bytes, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=salt, info=info).derive(key)


class AgeWriter:
    """Encrypts what is written into the age v1 format with a passphrase (scrypt recipient).

    Args:
        out: where the ciphertext goes.
        passphrase: the passphrase (UTF-8).
        log_n: scrypt work factor (log2 N).
    """

    def __init__(self, out: _Sink, passphrase: str, *, log_n: int = AGE_SCRYPT_LOG_N) -> None:
        self.out = out
        file_key = os.urandom(16)
        salt = os.urandom(16)
        wrap_key = Scrypt(salt=b"age-encryption.org/v1/scrypt" + salt, length=32, n=1 << log_n, r=8, p=1).derive(
            passphrase.encode()
        )
        body = ChaCha20Poly1305(wrap_key).encrypt(bytes(12), file_key, None)
        header = f"age-encryption.org/v1\n-> scrypt {_b64(salt)} {log_n}\n{_b64(body)}\n---".encode()
        mac = hmac.new(_hkdf(file_key, b"", b"header"), header, hashlib.sha256).digest()
        nonce = os.urandom(16)
        out.write(header + b" " + _b64(mac).encode() + b"\n" + nonce)
        self._aead = ChaCha20Poly1305(_hkdf(file_key, nonce, b"payload"))
        self._counter = 0
        self._buf = bytearray()

    def _seal(self, chunk: bytes, last: bool) -> None:
        nonce = self._counter.to_bytes(11, "big") + (b"\x01" if last else b"\x00")
        self.out.write(self._aead.encrypt(nonce, chunk, None))
        self._counter += 1

    def write(self, data: bytes) -> int:
        self._buf += data
        # keep at least one full chunk back: the last chunk carries the "last" flag
        while len(self._buf) > AGE_CHUNK:
            self._seal(bytes(self._buf[:AGE_CHUNK]), False)
            del self._buf[:AGE_CHUNK]
        return len(data)

    def close(self) -> None:
        """Seal the final chunk (STREAM's last-chunk flag)."""
        self._seal(bytes(self._buf), True)
        self._buf.clear()


class SplitWriter:
    """Writes a stream into ``<base>.001``, ``<base>.002``, ... of *chunk_bytes* each."""

    def __init__(self, base: Path, chunk_bytes: int) -> None:
        self.base = base
        self.chunk_bytes = chunk_bytes
        self.paths: list[Path] = []
        self._f: BinaryIO | None = None
        self._left = 0

    def _next(self) -> BinaryIO:
        if self._f is not None:
            self._f.close()
        path = self.base.with_name(f"{self.base.name}.{len(self.paths) + 1:03d}")
        self.paths.append(path)
        self._f = open(path, "wb")
        self._left = self.chunk_bytes
        return self._f

    def write(self, data: bytes) -> int:
        view = memoryview(data)
        while view:
            f = self._f if self._f is not None and self._left > 0 else self._next()
            n = min(self._left, len(view))
            f.write(view[:n])
            self._left -= n
            view = view[n:]
        return len(data)

    def close(self) -> None:
        if self._f is None:
            self._next()
        assert self._f is not None
        self._f.close()


def split_file(src: Path, base: Path, chunk_bytes: int) -> list[Path]:
    """Split *src* into numbered chunks next to *base* with in-kernel copies; returns their paths."""
    size = src.stat().st_size
    paths: list[Path] = []
    with open(src, "rb", buffering=0) as f:
        for i, start in enumerate(range(0, max(size, 1), chunk_bytes)):
            path = base.with_name(f"{base.name}.{i + 1:03d}")
            with open(path, "wb", buffering=0) as out:
                copy_range(f.fileno(), out.fileno(), 0, min(chunk_bytes, size - start), src_offset=start)
            paths.append(path)
    return paths


def post_process(
    image: Path,
    output: Path,
    *,
    gzip_level: int | None = None,
    passphrase: str | None = None,
    split_bytes: int | None = None,
    mtime_s: float = 0.0,
) -> list[Path]:
    """Turn the written *image* into the final file(s) named after *output*; removes *image*.

    Args:
        image: the plain ISO just written.
        output: the user's ``--output``; ``.gz`` / ``.age`` are appended for the steps taken and
            ``.001``... for split chunks.
        gzip_level: 1..9 to gzip, None not to.
        passphrase: encrypt with age when given.
        split_bytes: chunk size to split into, None not to split.
        mtime_s: gzip header mtime (the build time, for reproducible output).

    Returns:
        The files written, each with its ``.sha256`` sidecar.
    """
    final = output
    if gzip_level is not None:
        final = final.with_name(final.name + ".gz")
    if passphrase is not None:
        final = final.with_name(final.name + ".age")
    if gzip_level is None and passphrase is None:
        if split_bytes is None:
            return [image]
        paths = split_file(image, final, split_bytes)
    else:
        sink: SplitWriter | BinaryIO
        part = final.with_name(final.name + ".part")
        sink = SplitWriter(final, split_bytes) if split_bytes else open(part, "wb")
        chain: list[_Sink] = [sink]
        age = AgeWriter(sink, passphrase) if passphrase is not None else None
        if age is not None:
            chain.append(age)
        gz = (
            gzip.GzipFile(
                filename="", mode="wb", fileobj=cast(Any, chain[-1]), compresslevel=gzip_level, mtime=int(mtime_s)
            )
            if gzip_level is not None
            else None
        )
        head: _Sink = gz if gz is not None else chain[-1]
        with open(image, "rb", buffering=0) as src:
            buf = bytearray(_READ_BYTES)
            while n := src.readinto(buf):
                head.write(bytes(buf[:n]) if gz is None else memoryview(buf)[:n])  # type: ignore[arg-type]
        if gz is not None:
            gz.close()
        if age is not None:
            age.close()
        sink.close()
        if isinstance(sink, SplitWriter):
            paths = sink.paths
        else:
            os.replace(part, final)
            paths = [final]
    for p in paths:
        write_sidecar(p)
    image.unlink()
    sidecar = image.with_name(image.name + ".sha256")
    sidecar.unlink(missing_ok=True)
    return paths
