"""A set of byte ranges: which parts of a sparse cache file hold fetched data."""

from __future__ import annotations

import bisect


class RangeSet:
    """Disjoint, sorted half-open byte ranges ``[start, end)``; adjacent ranges merge."""

    __slots__ = ("_starts", "_ends")

    def __init__(self) -> None:
        self._starts: list[int] = []
        self._ends: list[int] = []

    def __len__(self) -> int:
        return len(self._starts)

    def add(self, start: int, end: int) -> None:
        if end <= start:
            return
        i = bisect.bisect_left(self._ends, start)  # first range ending at/after start
        j = bisect.bisect_right(self._starts, end)  # ranges starting after end are untouched
        if i < j:
            start = min(start, self._starts[i])
            end = max(end, self._ends[j - 1])
        self._starts[i:j] = [start]
        self._ends[i:j] = [end]

    def missing(self, start: int, end: int) -> list[tuple[int, int]]:
        """Sub-ranges of ``[start, end)`` not in the set, in order."""
        out = []
        pos = start
        i = bisect.bisect_right(self._ends, start)
        while pos < end and i < len(self._starts):
            s, e = self._starts[i], self._ends[i]
            if s >= end:
                break
            if s > pos:
                out.append((pos, s))
            pos = max(pos, e)
            i += 1
        if pos < end:
            out.append((pos, end))
        return out

    def covers(self, start: int, end: int) -> bool:
        return not self.missing(start, end)

    def truncate(self, size: int) -> None:
        """Forget everything at or past *size*."""
        while self._starts and self._starts[-1] >= size:
            self._starts.pop()
            self._ends.pop()
        if self._ends and self._ends[-1] > size:
            self._ends[-1] = size

    def total(self) -> int:
        return sum(e - s for s, e in zip(self._starts, self._ends, strict=True))
