"""Tier names and what reading from each tier involves.

Tiers are ordered by cost, most expensive (fastest) first, as in the field:
``hot`` (local SSD), ``warm`` (local HDD / object store standard class), ``cold``
(infrequent-access classes: read by streaming ranges into the hot cache), ``archive``
(Glacier-like: a restore must finish before the first byte can be read) and ``offsite``
(disaster-recovery copies, also restore-first).
"""

from __future__ import annotations

import enum

TIERS: tuple[str, ...] = ("hot", "warm", "cold", "archive", "offsite")
DEFAULT_TIER = "hot"


class Access(enum.Enum):
    """How the filesystem reads an object on a tier."""

    DIRECT = "direct"  #: read in place when the backend is local, else paged in
    PAGED = "paged"  #: streamed range by range into the hot cache (page-in)
    RESTORE = "restore"  #: restored first (minutes to hours), then read from the cache


TIER_ACCESS: dict[str, Access] = {
    "hot": Access.DIRECT,
    "warm": Access.DIRECT,
    "cold": Access.PAGED,
    "archive": Access.RESTORE,
    "offsite": Access.RESTORE,
}


def check_tier(name: str) -> str:
    """Return *name* if it is a tier, else raise :class:`~pool.errors.UsageError`."""
    from .errors import UsageError

    if name not in TIERS:
        raise UsageError(f"unknown tier {name!r}: choose one of {', '.join(TIERS)}")
    return name
