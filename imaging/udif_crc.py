"""CRC-32 arithmetic for UDIF checksums: combine per-chunk CRCs and extend over zero runs.

UDIF records CRC-32s of whole streams (the data fork, each partition's sectors) while the
writer computes one CRC per chunk in its compression workers. Joining them uses the method of
zlib's ``crc32_combine`` (``crc32.c`` since zlib 1.2.12: ``multmodp`` and ``x2nmodp``): a
CRC register is a polynomial over GF(2) in reflected bit order, appending *n* bytes to a message
multiplies its register by x^(8n) modulo the CRC-32 polynomial, so
``crc(A + B) = crc(A) * x^(8 len(B)) + crc(B)``. Python's :mod:`zlib` does not expose it.
"""

from __future__ import annotations

import functools

_POLY = 0xEDB88320  #: the CRC-32 polynomial (IEEE 802.3), reflected
_ONE = 1 << 31  #: the polynomial 1 in reflected order


def _multmodp(a: int, b: int) -> int:
    """a * b modulo the CRC-32 polynomial (both reflected 32-bit polynomials)."""
    m = _ONE
    p = 0
    while True:
        if a & m:
            p ^= b
            if not a & (m - 1):
                return p
        m >>= 1
        b = (b >> 1) ^ _POLY if b & 1 else b >> 1


def _x2n_table() -> list[int]:
    table = [0] * 32
    p = _ONE >> 1  # x^1
    table[0] = p
    for n in range(1, 32):
        p = _multmodp(p, p)
        table[n] = p
    return table


_X2N = _x2n_table()  #: x^(2^n) modulo the polynomial, n = 0..31


@functools.lru_cache(maxsize=64)
def _shift(n_bytes: int) -> int:
    """x^(8 * n_bytes) modulo the polynomial."""
    p = _ONE
    k = 3
    while n_bytes:
        if n_bytes & 1:
            p = _multmodp(_X2N[k & 31], p)
        n_bytes >>= 1
        k += 1
    return p


def crc32_combine(crc1: int, crc2: int, len2_bytes: int) -> int:
    """The CRC-32 of A + B from ``crc1 = crc32(A)``, ``crc2 = crc32(B)`` and ``len(B)`` in bytes
    (what ``zlib.crc32(B, crc1)`` returns, without B)."""
    if not len2_bytes:
        return crc1
    return _multmodp(_shift(len2_bytes), crc1) ^ crc2


def zero_crc32(n_bytes: int, crc: int = 0) -> int:
    """``zlib.crc32(bytes(n_bytes), crc)`` without the bytes: *crc* extended over zero bytes.

    The register (complemented CRC) is multiplied by x^(8n) and complemented back.
    """
    if not n_bytes:
        return crc
    return _multmodp(_shift(n_bytes), crc ^ 0xFFFFFFFF) ^ 0xFFFFFFFF
