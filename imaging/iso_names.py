"""Names for the three directory trees of an ISO: ISO 9660 level 3, Joliet and UDF.

ISO 9660 (ECMA-119 7.5/7.6) allows only d-characters (``A-Z 0-9 _``); at interchange level 3 a file
identifier is at most 30 characters plus ``;1`` and a directory identifier at most 31. Joliet
(Microsoft's Joliet specification, 1995) keeps UCS-2 names of up to 64 characters without
``* / : ; ? \\``. Rock Ridge (IEEE P1282, RRIP 1.12) and UDF (OSTA UDF 2.60) keep the original
name, so only the first two need mangling. Mangled names are made unique inside their directory
with a ``_N`` (ISO 9660) or ``~N`` (Joliet) suffix; the order of siblings is the walk order, so the result is deterministic.
"""

from __future__ import annotations

import functools
import re

ISO_FILE_MAX = 30  # name + "." + extension, ECMA-119 7.5.2 at interchange level 2/3
ISO_DIR_MAX = 31  # ECMA-119 7.6.3
JOLIET_MAX = 64  # UCS-2 code units (and UTF-8 bytes, as pycdlib counts them)
_NOT_D_CHAR = re.compile(r"[^A-Z0-9_]")
_JOLIET_BAD = re.compile(r"[*/:;?\\\x00-\x1f]")


def _fit(stem: str, ext: str, limit: int) -> tuple[str, str]:
    ext = ext[: max(0, min(len(ext), limit - 2))]
    room = limit - (len(ext) + 1 if ext else 0)
    return stem[: max(1, room)], ext


class DirNames:
    """Allocates unique ISO 9660 and Joliet names among the children of one directory."""

    def __init__(self) -> None:
        self._iso: set[str] = set()
        self._joliet: set[str] = set()
        self._next: dict[tuple[str, str, bool], int] = {}
        self._jnext: dict[str, int] = {}

    def iso(self, name: str, *, is_dir: bool) -> str:
        """The ISO 9660 identifier for *name* (files get ``;1``), unique in this directory."""
        stem, ext, candidate = _iso_mangle(name, is_dir)
        if candidate in self._iso:
            limit = ISO_DIR_MAX if is_dir else ISO_FILE_MAX
            # numbers below the last one used for this stem are all taken (names are never
            # freed): go on from there, not from 1 (a thousand "libfoo.so.1.*" in one folder)
            key = (stem, ext, is_dir)
            n = self._next.get(key, 1)
            while candidate in self._iso:
                suffix = f"_{n}"  # "~" is no d-character
                room = limit - len(suffix) - (len(ext) + 1 if ext else 0)
                candidate = self._join(stem[: max(1, room)] + suffix, ext)
                n += 1
            self._next[key] = n
        self._iso.add(candidate)
        return candidate if is_dir else candidate + ";1"

    def joliet(self, name: str) -> str:
        """The Joliet name for *name*: bad characters replaced, at most 64 UCS-2 units, unique."""
        clean = _JOLIET_BAD.sub("_", name)
        if len(clean) > JOLIET_MAX // 4 and _ucs2_len(clean) > JOLIET_MAX:  # 4 UTF-8 bytes per char at most
            base, dot, ext = clean.rpartition(".")
            if not dot or len(ext) > 16:
                base, ext = clean, ""
            clean = _ucs2_cut(base, JOLIET_MAX - (len(ext) + 1 if ext else 0)) + ("." + ext if ext else "")
        candidate = clean
        n = self._jnext.get(clean, 1) if clean.casefold() in self._joliet else 1
        while candidate.casefold() in self._joliet:
            base, dot, ext = clean.rpartition(".")
            if not dot or not base:
                base, ext = clean, ""
            suffix = f"~{n}"
            room = JOLIET_MAX - len(suffix) - (len(ext) + 1 if ext else 0)
            candidate = _ucs2_cut(base, room) + suffix + ("." + ext if ext else "")
            n += 1
        if n > 1:
            self._jnext[clean] = n
        self._joliet.add(candidate.casefold())
        return candidate

    @staticmethod
    def _join(stem: str, ext: str) -> str:
        return f"{stem}.{ext}" if ext else stem


@functools.lru_cache(maxsize=1 << 16)
def _iso_mangle(name: str, is_dir: bool) -> tuple[str, str, str]:
    """(stem, extension, identifier without version) of *name* before uniqueness suffixes."""
    upper = name.upper()
    if is_dir:
        stem, ext = _NOT_D_CHAR.sub("_", upper.replace(".", "_")), ""
        stem = stem[:ISO_DIR_MAX] or "_"
    else:
        base, dot, extension = upper.rpartition(".")
        if not dot or not base:
            base, extension = upper, ""
        stem, ext = _fit(
            _NOT_D_CHAR.sub("_", base.replace(".", "_")) or "_", _NOT_D_CHAR.sub("_", extension), ISO_FILE_MAX
        )
    return stem, ext, DirNames._join(stem, ext)


def _ucs2_len(text: str) -> int:
    # pycdlib measures Joliet names in UTF-8 bytes (stricter than UCS-2 units for non-ASCII)
    return max(len(text.encode("utf-16-be")) // 2, len(text.encode("utf-8", "surrogateescape")))


def _ucs2_cut(text: str, units: int) -> str:
    out = []
    used = 0
    for ch in text:
        width = len(ch.encode("utf-8", "surrogateescape"))
        if used + width > units:
            break
        out.append(ch)
        used += width
    return "".join(out) or "_"


def is_utf8_name(name: str) -> bool:
    """Whether *name* (surrogateescape-decoded) is valid UTF-8, as Rock Ridge/UDF writers need."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
