"""Options of a sync pair (saved as JSON in the registry) and their parsing."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from pool.errors import UsageError

POLICIES = ("newest", "oldest", "larger", "smaller", "path1", "path2", "keep-both")
DIRECTIONS = ("two-way", "one-way")
DEFAULT_MAX_DELETE = "50%"
_MAX_DELETE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(%?)\s*$")


@dataclass
class SyncOptions:
    """How a pair syncs.

    Attributes:
        direction: ``"two-way"`` or ``"one-way"`` (path1 → path2).
        conflict_resolution: one of :data:`POLICIES`.
        conflict_copies: keep the losing version of a conflict as a conflict copy.
        checksum: compare XXH3-128 of every file, not only size + mtime.
        max_delete: ``"N"`` files or ``"P%"`` of a side's files at the last sync.
        force: run even when a safety check would abort.
        excludes: gitignore-syntax exclude rules.
        filter_from: files of gitignore-syntax rules.
        modify_window_ns: mtimes closer than this are equal (on top of each store's precision).
        transfers: parallel transfers.
        bwlimit_bytes_per_s: bandwidth limit of the transfers, None = unlimited.
    """

    direction: str = "two-way"
    conflict_resolution: str = "newest"
    conflict_copies: bool = True
    checksum: bool = False
    max_delete: str = DEFAULT_MAX_DELETE
    force: bool = False
    excludes: list[str] = field(default_factory=list)
    filter_from: list[str] = field(default_factory=list)
    modify_window_ns: int = 0
    transfers: int = 4
    bwlimit_bytes_per_s: int | None = None

    def __post_init__(self) -> None:
        if self.direction not in DIRECTIONS:
            raise UsageError(f"direction must be one of {', '.join(DIRECTIONS)}")
        if self.conflict_resolution not in POLICIES:
            raise UsageError(f"--conflict-resolution must be one of {', '.join(POLICIES)}")
        parse_max_delete(self.max_delete)
        if self.transfers < 1:
            raise UsageError("--transfers must be at least 1")

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> SyncOptions:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in raw.items() if k in names})


def parse_max_delete(text: str) -> tuple[float, bool]:
    """``"25"`` → ``(25, False)`` (files), ``"10%"`` → ``(10, True)`` (percent of a side).

    Raises:
        UsageError: not a count or a percentage.
    """
    m = _MAX_DELETE_RE.match(str(text))
    if not m:
        raise UsageError(f"--max-delete takes a file count or a percentage (e.g. 100 or 25%), not {text!r}")
    value, pct = float(m.group(1)), bool(m.group(2))
    if pct and value > 100:
        raise UsageError("--max-delete percentage must be at most 100%")
    return value, pct


def delete_limit(text: str, files_before: int) -> int:
    """How many deletes on a side that held *files_before* files are allowed by *text*."""
    value, pct = parse_max_delete(text)
    return int(files_before * value / 100) if pct else int(value)
