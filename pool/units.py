"""Parsing and formatting of sizes and durations given on the command line or in config.

Sizes use binary multiples (``K`` = 1024 bytes, as rclone and dd do); durations accept
``ms, s, m, h, d, w, y`` (a year is 365 days).
"""

from __future__ import annotations

import re

from .errors import UsageError

_SIZE_UNITS = {"": 1, "B": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40, "P": 1 << 50}
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGTP]?)(?:I?B)?\s*$", re.IGNORECASE)
_DUR_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400, "y": 365 * 86400}
_DUR_RE = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w|y)", re.IGNORECASE)


def parse_size(text: str | int) -> int:
    """Parse ``"10G"``, ``"512M"``, ``"4096"`` or ``"1.5GiB"`` into bytes.

    Raises:
        UsageError: the text is not a size.
    """
    if isinstance(text, int):
        return text
    m = _SIZE_RE.match(text)
    if not m:
        raise UsageError(f"not a size: {text!r} (examples: 512M, 10G, 4096)")
    return int(float(m.group(1)) * _SIZE_UNITS[m.group(2).upper()])


def parse_duration(text: str | float | int) -> float:
    """Parse ``"5s"``, ``"1h30m"``, ``"1y"``, ``"250ms"`` or a bare number of seconds into seconds.

    Raises:
        UsageError: the text is not a duration.
    """
    if isinstance(text, (int, float)):
        return float(text)
    s = text.strip()
    try:
        return float(s)
    except ValueError:
        pass
    pos, total = 0, 0.0
    for m in _DUR_RE.finditer(s):
        if m.start() != pos:
            break
        total += float(m.group(1)) * _DUR_UNITS[m.group(2).lower()]
        pos = m.end()
    if pos != len(s) or not s:
        raise UsageError(f"not a duration: {text!r} (examples: 5s, 250ms, 30d, 1y)")
    return total


def format_size(n: int) -> str:
    """Format a byte count with a binary unit, e.g. ``1.5 GiB``."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"  # pragma: no cover
