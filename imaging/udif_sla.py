"""The software licence agreement (SLA) macOS shows before it mounts a UDIF image.

The agreement lives in the image's resource fork, which a flattened UDIF image keeps in its XML
property list next to ``blkx`` (``resource-fork`` → type → list of ``{Attributes, Data, ID,
Name}``). The resources are those of Apple's SLA SDK ("SLAResources"), as dmgbuild
(``licensing.py``) and dmg-license (``makeLicensePlist.ts``) write them and ``hdiutil udifrez``
stores them:

- ``LPic`` 5000: default language ID (int16), count of mappings (uint16), then per language:
  system language ID (0 = English), resource ID minus 5000, 2-byte-language flag.
- ``STR#`` 5000: the dialog's strings: count (6) then Pascal strings: the language's name,
  "Agree", "Disagree", "Print", "Save...", and the explanation line (English text from the SDK).
- ``TEXT`` 5000: the licence in Mac OS Roman (the Mac's classic encoding for English), or, when
  the text has characters Mac OS Roman lacks, ``RTF `` 5000: the text as RTF with ``\\uN``
  escapes for every non-ASCII character (both forms are what dmgbuild and dmg-license write).

Only an English agreement is written (one language). Nothing here is covered by the UDIF
checksums (they cover the data fork and the sectors): the property list is read back and
compared by :func:`license_from_resources`.
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any

from pool.errors import NotFoundError, UsageError

RESOURCE_ID = 5000
LANGUAGE_ENGLISH = 0  #: the classic Mac OS language code (langEnglish)
BUTTONS_ENGLISH = (
    "English",
    "Agree",
    "Disagree",
    "Print",
    "Save...",
    'If you agree with the terms of this license, press "Agree" to install the software.  '
    'If you do not agree, press "Disagree".',
)
MAX_LICENSE_BYTES = 1 << 20  #: larger text is refused (a licence, not a payload)


def read_license(path: Path) -> str:
    """The licence text in the UTF-8 file at *path* (line ends as they are).

    Raises:
        NotFoundError: no such file. UsageError: not UTF-8 text, empty, or over 1 MiB.
    """
    try:
        raw = Path(path).read_bytes()
    except FileNotFoundError:
        raise NotFoundError(f"--license {path}: no such file") from None
    except OSError as e:
        raise UsageError(f"--license {path}: {e.strerror}") from None
    if len(raw) > MAX_LICENSE_BYTES:
        raise UsageError(f"--license {path}: over 1 MiB (a licence text is expected)")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise UsageError(f"--license {path}: not UTF-8 text") from None
    if not text.strip():
        raise UsageError(f"--license {path}: the file is empty")
    return text


def _pascal(text: str) -> bytes:
    data = text.encode("mac_roman")
    if len(data) > 255:
        raise ValueError(f"string over 255 bytes: {text[:20]!r}...")
    return bytes([len(data)]) + data


def _rtf(text: str) -> bytes:
    out = [r"{\rtf1\ansi\ansicpg1252\uc0 "]
    for ch in text.replace("\r\n", "\n"):
        code = ord(ch)
        if ch in "\\{}":
            out.append("\\" + ch)
        elif ch == "\n":
            out.append("\\par\n")
        elif code < 128:
            out.append(ch)
        else:
            for unit in struct.unpack(f">{len(ch.encode('utf-16-be')) // 2}h", ch.encode("utf-16-be")):
                out.append(f"\\u{unit} ")  # RTF \uN takes a signed 16-bit value
    out.append("}")
    return "".join(out).encode("ascii")


def license_resources(text: str) -> dict[str, list[dict[str, Any]]]:
    """The ``resource-fork`` entries (``LPic``, ``STR#``, ``TEXT`` or ``RTF ``) of an English
    licence agreement holding *text*."""
    try:
        body_type, body = "TEXT", text.encode("mac_roman")
    except UnicodeEncodeError:
        body_type, body = "RTF ", _rtf(text)
    lpic = struct.pack(">hHhhh", LANGUAGE_ENGLISH, 1, LANGUAGE_ENGLISH, 0, 0)
    strs = struct.pack(">H", len(BUTTONS_ENGLISH)) + b"".join(_pascal(s) for s in BUTTONS_ENGLISH)

    def res(data: bytes, name: str) -> dict[str, Any]:
        return {"Attributes": "0x0000", "Data": data, "ID": str(RESOURCE_ID), "Name": name}

    return {
        "LPic": [res(lpic, "")],
        "STR#": [res(strs, "English")],
        body_type: [res(body, "English SLA")],
    }


def license_from_resources(resources: dict[str, Any]) -> str | None:
    """The licence text held by a ``resource-fork`` dict (None when it has no ``LPic``).

    Reads the default language's ``TEXT`` (Mac OS Roman) or ``RTF `` resource (returned as the
    RTF source); when its ID is absent, the first one present.
    """
    lpic = resources.get("LPic")
    if not lpic:
        return None
    try:
        data = bytes(lpic[0]["Data"])
        default, count = struct.unpack_from(">hH", data)
        res_id = RESOURCE_ID
        for i in range(count):
            lang, offset, _two = struct.unpack_from(">hhh", data, 4 + 6 * i)
            if lang == default:
                res_id = RESOURCE_ID + offset
                break
    except (KeyError, IndexError, TypeError, struct.error):
        return ""
    for kind, codec in (("TEXT", "mac_roman"), ("RTF ", "latin-1")):
        entries = resources.get(kind) or []
        chosen = next((e for e in entries if str(e.get("ID")) == str(res_id)), entries[0] if entries else None)
        if chosen is not None:
            return bytes(chosen.get("Data", b"")).decode(codec, errors="replace")
    return ""
