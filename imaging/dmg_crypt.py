"""Apple's encrypted disk image container ("encrcdsa" version 2), written and read.

An encrypted ``.dmg`` made by ``hdiutil create -encryption AES-128|AES-256`` is an ordinary
image (here: our UDIF file) inside this container:

* a header at offset 0 (big-endian): ``"encrcdsa"``, version 2, the data cipher (AES-CBC,
  ``CSSM_ALGID_AES`` 0x80000001, 128 or 256 key bits, mode ``CSSM_ALGMODE_CBC_IV8`` 5), the IV
  key algorithm (HMAC-SHA1, ``CSSM_ALGID_SHA1HMAC`` 0x5B, 160 bits), a UUID, the bytes per
  encrypted block (4096 here), the plaintext length, the data offset and a table of key items;
* one password key item (type 1): PBKDF2-HMAC-SHA1 (``CSSM_ALGID_PKCS5_PBKDF2`` 0x67) of the
  password with a 20-byte salt gives a 24-byte 3DES-EDE key that decrypts (CBC, 8-byte IV,
  PKCS#7 padding) the key blob ``AES key | HMAC-SHA1 key (20 bytes) | "CKIE\\0"``;
* the data: block *n* (4096 bytes) is AES-CBC encrypted with IV = the first 16 bytes of
  HMAC-SHA1(HMAC key, *n* as a big-endian 32-bit number); the last block is zero-padded.

Sources (public descriptions, no Apple specification exists): the ``vfdecrypt`` tool shipped in
Debian's dmg2img package (Weinmann, Appelbaum, Fromme: "VileFault", 2006), Willem Hengeveld's
``readencrcdsa.py`` notes on the v2 header and key items, and the sparsebundlefs reader's
header structures. The password item sits at offset 0x2A8 and uses a 20-byte salt because
Debian's ``vfdecrypt`` reads it from there with that salt length (it ignores the item table);
see docs/dmg.md for what that tool can and cannot decrypt.

A ``.sparseimage`` is encrypted the same way (the whole ``sprs`` file inside); a sparse bundle
keeps this header in its ``token`` and its bands encrypted in place (:mod:`imaging.sparse`).

Both directions stream: :class:`EncryptedWriter` encrypts what is written to it block by block
(memory: one 1 MiB batch), :class:`Sealer` encrypts blocks at any position (the sparse
writers); :class:`EncryptedFile` decrypts only the blocks a read touches.
"""

from __future__ import annotations

import hmac
import os
import struct
import uuid as uuidlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
from cryptography.hazmat.primitives import padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.hashes import SHA1
from cryptography.hazmat.primitives.kdf.pbkdf2 import PBKDF2HMAC

from pool.errors import AuthError, ImageCorruptError, UsageError

from .udif_read import open_image

MAGIC = b"encrcdsa"
VERSION = 2
BLOCK_BYTES = 4096  #: plaintext bytes per AES-CBC block run ("bytes per block" in the header)
DATA_OFFSET = 4096  #: where the encrypted data starts
KEY_ITEM_OFFSET = 0x2A8  #: the password key item (where Debian's vfdecrypt expects it)
KEY_ITEM_PASSWORD = 1
SALT_BYTES = 20
KDF_ITERATIONS = 200_000  #: PBKDF2-HMAC-SHA1 rounds for new images (about 0.1 s here)
HMAC_KEY_BYTES = 20
KEYBLOB_TAG = b"CKIE\x00"

CSSM_ALGID_AES = 0x80000001
CSSM_ALGID_SHA1HMAC = 0x5B
CSSM_ALGID_PKCS5_PBKDF2 = 0x67
CSSM_ALGID_3DES_3KEY_EDE = 0x11
CSSM_PADDING_PKCS7 = 7
CSSM_ALGMODE_CBC_IV8 = 5
CSSM_ALGMODE_CBCPADIV8 = 6

#: ``--encrypt`` value → AES key bytes
CIPHERS = {"AES-128": 16, "AES-256": 32}

HEADER = struct.Struct(">8s7I16sIQQI")  # magic ... key item count (0x4C bytes)
KEY_ITEM = struct.Struct(">IQQ")  # type, offset, size
PASSWORD_ITEM = struct.Struct(">IIII32sI32sIIIII")  # kdf ... encrypted key blob size (0x68 bytes)
assert HEADER.size == 0x4C and KEY_ITEM.size == 0x14 and PASSWORD_ITEM.size == 0x68

_BATCH_BLOCKS = 256  # 1 MiB encrypted per batch


def is_encrypted(path: Path) -> bool:
    """True when *path* is a file starting with the ``encrcdsa`` signature."""
    try:
        with open(path, "rb") as f:
            return f.read(8) == MAGIC
    except (IsADirectoryError, FileNotFoundError, PermissionError):
        return False


@dataclass(frozen=True)
class Keys:
    """The keys of one image: the AES data key (16 or 32 bytes) and the 20-byte HMAC-SHA1 IV key."""

    aes: bytes
    hmac: bytes

    @classmethod
    def new(cls, cipher: str) -> Keys:
        """Fresh random keys for ``AES-128`` or ``AES-256``.

        Raises:
            UsageError: another cipher name.
        """
        if cipher not in CIPHERS:
            raise UsageError(f"unknown cipher {cipher!r} (AES-128 or AES-256)")
        return cls(os.urandom(CIPHERS[cipher]), os.urandom(HMAC_KEY_BYTES))


def _derive(password: str, salt: bytes, iterations: int) -> bytes:
    kdf = PBKDF2HMAC(algorithm=SHA1(), length=24, salt=salt, iterations=iterations)
    return kdf.derive(password.encode())


def wrap_keys(keys: Keys, password: str, *, iterations: int = KDF_ITERATIONS) -> bytes:
    """The password key item (``PASSWORD_ITEM`` then the encrypted key blob) for *keys*."""
    salt = os.urandom(SALT_BYTES)
    iv = os.urandom(8)
    padder = padding.PKCS7(64).padder()
    blob = padder.update(keys.aes + keys.hmac + KEYBLOB_TAG) + padder.finalize()
    enc = Cipher(TripleDES(_derive(password, salt, iterations)), modes.CBC(iv)).encryptor()
    wrapped = enc.update(blob) + enc.finalize()
    head = PASSWORD_ITEM.pack(
        CSSM_ALGID_PKCS5_PBKDF2,
        0,  # PRNG algorithm (unused)
        iterations,
        SALT_BYTES,
        salt.ljust(32, b"\0"),
        8,
        iv.ljust(32, b"\0"),
        192,
        CSSM_ALGID_3DES_3KEY_EDE,
        CSSM_PADDING_PKCS7,
        CSSM_ALGMODE_CBCPADIV8,
        len(wrapped),
    )
    return head + wrapped


def unwrap_keys(item: bytes, password: str, key_bytes: int) -> Keys | None:
    """The keys inside a password key item, or None when *password* does not open it.

    Raises:
        ImageCorruptError: the item is truncated or uses algorithms this reader does not know.
    """
    if len(item) < PASSWORD_ITEM.size:
        raise ImageCorruptError("encrypted image: password key item truncated")
    kdf, _prng, iterations, salt_len, salt, iv_len, iv, key_bits, alg, pad, mode, blob_len = PASSWORD_ITEM.unpack_from(
        item
    )
    if (kdf, alg, pad, mode, key_bits, iv_len) != (
        CSSM_ALGID_PKCS5_PBKDF2,
        CSSM_ALGID_3DES_3KEY_EDE,
        CSSM_PADDING_PKCS7,
        CSSM_ALGMODE_CBCPADIV8,
        192,
        8,
    ):
        raise ImageCorruptError("encrypted image: the password key item uses an unknown key wrapping")
    wrapped = item[PASSWORD_ITEM.size : PASSWORD_ITEM.size + blob_len]
    if len(wrapped) != blob_len or blob_len % 8 or not 0 < salt_len <= 32 or iterations == 0:
        raise ImageCorruptError("encrypted image: password key item damaged")
    dec = Cipher(TripleDES(_derive(password, salt[:salt_len], iterations)), modes.CBC(iv[:8])).decryptor()
    blob = dec.update(wrapped) + dec.finalize()
    try:
        unpadder = padding.PKCS7(64).unpadder()
        plain = unpadder.update(blob) + unpadder.finalize()
    except ValueError:
        return None
    if plain[-len(KEYBLOB_TAG) :] != KEYBLOB_TAG or len(plain) != key_bytes + HMAC_KEY_BYTES + len(KEYBLOB_TAG):
        return None
    return Keys(plain[:key_bytes], plain[key_bytes : key_bytes + HMAC_KEY_BYTES])


def _block_iv(hmac_key: bytes, n: int) -> bytes:
    return hmac.digest(hmac_key, struct.pack(">I", n), "sha1")[:16]


def crypt_blocks(keys: Keys, first: int, data: bytes | memoryview, *, encrypt: bool, block: int = BLOCK_BYTES) -> bytes:
    """En- or decrypt whole *block*-byte blocks of *data*, the first being block number *first*.

    Decrypting, a block stored as all zeros (a hole the writer left in free space, or a never
    written region) reads as zeros: no real ciphertext block is all zeros.
    """
    view = memoryview(data)
    aes = algorithms.AES(keys.aes)
    if encrypt:  # CBC encryption chains: one context per block (each has its own IV)
        out = bytearray(len(data))
        for i in range(0, len(data), block):
            c = Cipher(aes, modes.CBC(_block_iv(keys.hmac, first + i // block))).encryptor()
            out[i : i + block] = c.update(view[i : i + block])
        return bytes(out)
    # Decryption does not chain: one CBC pass over all blocks with the first block's IV, then
    # each later block's first 16 bytes, which came out XORed with the previous block's last
    # ciphertext, get that XOR replaced by the block's own IV.
    if len(data) % block:
        raise ValueError("decrypt whole blocks")
    out = bytearray(Cipher(aes, modes.CBC(_block_iv(keys.hmac, first))).decryptor().update(view))
    zero = bytes(block)
    for k, i in enumerate(range(0, len(data), block)):
        if view[i : i + block] == zero:
            out[i : i + block] = zero
        elif k:
            fix = int.from_bytes(view[i - 16 : i]) ^ int.from_bytes(_block_iv(keys.hmac, first + k))
            out[i : i + 16] = (int.from_bytes(out[i : i + 16]) ^ fix).to_bytes(16)
    return bytes(out)


class Sealer:
    """What a writer needs to encrypt a new image: fresh keys, the password key item, an id.

    Args:
        cipher: ``AES-128`` or ``AES-256``.
        password: wraps the keys (PBKDF2 + 3DES, see the module docstring).
        keys: the data keys (default: fresh random ones).
        image_id: 16 bytes for the header's UUID (default: random).
        iterations: PBKDF2 rounds.

    Raises:
        UsageError: an empty password or an unknown cipher.
    """

    def __init__(
        self,
        cipher: str | None,
        password: str,
        *,
        keys: Keys | None = None,
        image_id: bytes | None = None,
        iterations: int = KDF_ITERATIONS,
    ) -> None:
        if not password:
            raise UsageError("an empty password is not allowed")
        self.keys = keys or Keys.new(cipher or "")
        self.item = wrap_keys(self.keys, password, iterations=iterations)
        self.image_id = image_id or uuidlib.uuid4().bytes

    def encrypt(self, first: int, data: bytes | memoryview) -> bytes:
        """*data* (whole 4096-byte blocks, the first being block number *first*) encrypted."""
        return crypt_blocks(self.keys, first, data, encrypt=True)

    def header(self, plain_bytes: int, *, data_offset: int = DATA_OFFSET) -> bytes:
        """The ``DATA_OFFSET``-byte header region: the encrcdsa header for *plain_bytes* of data
        at *data_offset*, one password key item at ``KEY_ITEM_OFFSET``."""
        header = HEADER.pack(
            MAGIC,
            VERSION,
            16,
            CSSM_ALGMODE_CBC_IV8,
            CSSM_ALGID_AES,
            len(self.keys.aes) * 8,
            CSSM_ALGID_SHA1HMAC,
            HMAC_KEY_BYTES * 8,
            self.image_id,
            BLOCK_BYTES,
            plain_bytes,
            data_offset,
            1,
        ) + KEY_ITEM.pack(KEY_ITEM_PASSWORD, KEY_ITEM_OFFSET, len(self.item))
        region = bytearray(DATA_OFFSET)
        region[: len(header)] = header
        region[KEY_ITEM_OFFSET : KEY_ITEM_OFFSET + len(self.item)] = self.item
        return bytes(region)


@dataclass(frozen=True)
class Container:
    """What an encrcdsa header says, with the keys a password opened.

    Attributes:
        keys: the data keys. key_bits: 128 or 256. block_bytes: plaintext bytes per block.
        size_bytes: plaintext bytes (0 in a sparse bundle's ``token``). data_offset: where block
        0 is stored (in the same file; a sparse bundle's blocks are in its bands instead).
    """

    keys: Keys
    key_bits: int
    block_bytes: int
    size_bytes: int
    data_offset: int


def open_container(pread: Callable[[int, int], bytes], password: str, name: str) -> Container:
    """Read the encrcdsa header through *pread(size, offset)* and unwrap its keys with *password*.

    Raises:
        AuthError: the password opens no key item. ImageCorruptError: not an encrcdsa v2
        header, an unknown cipher, a block size this reader does not handle, or damage.
    """
    head = pread(1 << 16, 0)
    if len(head) < HEADER.size or head[:8] != MAGIC:
        raise ImageCorruptError(f"{name}: not an encrypted disk image (no encrcdsa header)")
    f = HEADER.unpack_from(head)
    version, _ivlen, mode, alg, key_bits, iv_alg, _iv_bits, _uuid, block, size, offset, n_items = f[1:]
    if version != VERSION:
        raise ImageCorruptError(f"{name}: encrcdsa version {version} is not read (only version 2)")
    if (mode, alg, iv_alg) != (CSSM_ALGMODE_CBC_IV8, CSSM_ALGID_AES, CSSM_ALGID_SHA1HMAC) or key_bits not in (128, 256):
        raise ImageCorruptError(f"{name}: unknown encryption (mode {mode}, algorithm {alg:#x}, {key_bits} bits)")
    if block not in (512, 1024, 2048, BLOCK_BYTES, 8192, 16384, 32768, 65536):
        raise ImageCorruptError(f"{name}: encrypted block size {block} is not read (a power of two, 512-65536)")
    tried = 0
    for i in range(n_items):
        at = HEADER.size + i * KEY_ITEM.size
        if at + KEY_ITEM.size > len(head):
            break
        kind, item_off, item_len = KEY_ITEM.unpack_from(head, at)
        if kind != KEY_ITEM_PASSWORD:
            continue
        tried += 1
        try:
            keys = unwrap_keys(pread(min(item_len, 1 << 16), item_off), password, key_bits // 8)
        except ImageCorruptError as e:
            raise ImageCorruptError(f"{name}: {str(e).removeprefix('encrypted image: ')}") from None
        if keys is not None:
            return Container(keys, key_bits, block, size, offset)
    if not tried:
        raise ImageCorruptError(f"{name}: no password key in the encrypted image")
    raise AuthError(f"wrong password for {name}")


class EncryptedWriter:
    """A write-only binary sink that encrypts into an open, seekable *out* file.

    Write the plaintext with :meth:`write`, then call :meth:`finish`, which pads the last block,
    writes the header at offset 0 and returns the plaintext length.

    Args:
        out: a file open for writing (``wb``), positioned at 0.
        keys: the data keys (:meth:`Keys.new`).
        password: wraps the keys (PBKDF2 + 3DES, see the module docstring).
        image_id: 16 bytes for the header's UUID (derived from the build for reproducible builds).
        iterations: PBKDF2 rounds.
    """

    def __init__(
        self,
        out: BinaryIO,
        keys: Keys,
        password: str,
        *,
        image_id: bytes | None = None,
        iterations: int = KDF_ITERATIONS,
    ) -> None:
        self.out = out
        self.seal = Sealer(None, password, keys=keys, image_id=image_id, iterations=iterations)
        self.buf = bytearray()
        self.block = 0
        self.plain_bytes = 0
        out.seek(DATA_OFFSET)

    def write(self, data: bytes | bytearray | memoryview) -> int:
        self.buf += data
        self.plain_bytes += len(data)
        batch = BLOCK_BYTES * _BATCH_BLOCKS
        if len(self.buf) >= batch:
            whole = len(self.buf) - len(self.buf) % BLOCK_BYTES
            self._flush(whole)
        return len(data)

    def _flush(self, n_bytes: int) -> None:
        self.out.write(self.seal.encrypt(self.block, memoryview(self.buf)[:n_bytes]))
        self.block += n_bytes // BLOCK_BYTES
        del self.buf[:n_bytes]

    def finish(self) -> int:
        """Encrypt what is left (zero-padded to a block), write the header; returns the plaintext bytes."""
        if self.buf:
            self.buf += bytes(-len(self.buf) % BLOCK_BYTES)
            self._flush(len(self.buf))
        self.out.seek(0)
        self.out.write(self.seal.header(self.plain_bytes))
        self.out.seek(0, os.SEEK_END)
        return self.plain_bytes


class EncryptedFile:
    """Random access to the plaintext of an encrypted image.

    Args:
        path: the ``.dmg``.
        password: the image's password.

    Attributes:
        size_bytes: plaintext bytes.
        key_bits: 128 or 256.

    Raises (from the constructor):
        NotFoundError: no such file. AuthError: the password opens no key item.
        ImageCorruptError: not an encrcdsa v2 file, or its header is damaged.
        UnsupportedError: a cipher other than AES-CBC with HMAC-SHA1 IVs.
    """

    def __init__(self, path: Path, password: str) -> None:
        self.path = Path(path)
        self.fd = open_image(self.path)
        try:
            self.keys = self._open(password)
        except BaseException:
            os.close(self.fd)
            raise

    def _open(self, password: str) -> Keys:
        c = open_container(lambda n, off: os.pread(self.fd, n, off), password, self.path.name)
        self.key_bits = c.key_bits
        self.block_bytes = c.block_bytes
        self.size_bytes = c.size_bytes
        self.data_offset = c.data_offset
        if c.data_offset + -(-c.size_bytes // c.block_bytes) * c.block_bytes > os.fstat(self.fd).st_size:
            raise ImageCorruptError(f"{self.path.name}: encrypted data is truncated")
        return c.keys

    def pread(self, size: int, offset: int) -> bytes:
        """Up to *size* plaintext bytes from *offset* (short at the end)."""
        size = max(0, min(size, self.size_bytes - offset))
        if size == 0:
            return b""
        block = self.block_bytes
        first = offset // block
        last = (offset + size - 1) // block
        n = (last - first + 1) * block
        raw = os.pread(self.fd, n, self.data_offset + first * block)
        if len(raw) != n:
            raise ImageCorruptError(f"{self.path.name}: encrypted data is truncated")
        plain = crypt_blocks(self.keys, first, raw, encrypt=False, block=block)
        skip = offset - first * block
        return plain[skip : skip + size]

    def close(self) -> None:
        os.close(self.fd)
