from __future__ import annotations

import random

import pytest

from pool.errors import UsageError
from pool.units import format_size, parse_duration, parse_size
from vfs.ranges import RangeSet


def test_rangeset_merges_and_reports_missing() -> None:
    r = RangeSet()
    r.add(10, 20)
    r.add(30, 40)
    assert r.missing(0, 50) == [(0, 10), (20, 30), (40, 50)]
    r.add(20, 30)  # bridges both
    assert len(r) == 1
    assert r.covers(10, 40) and not r.covers(9, 40)
    r.truncate(25)
    assert r.missing(0, 40) == [(0, 10), (25, 40)]
    assert r.total() == 15


def test_rangeset_against_a_bitmap() -> None:
    rng = random.Random(7)
    r, bits = RangeSet(), [False] * 500
    for _ in range(300):
        s = rng.randrange(500)
        e = min(500, s + rng.randrange(1, 40))
        r.add(s, e)
        for i in range(s, e):
            bits[i] = True
        qs = rng.randrange(500)
        qe = min(500, qs + rng.randrange(1, 100))
        want = [i for i in range(qs, qe) if not bits[i]]
        got = [i for a, b in r.missing(qs, qe) for i in range(a, b)]
        assert got == want
    assert r.total() == sum(bits)


@pytest.mark.parametrize(
    ("text", "n"), [("4096", 4096), ("10G", 10 << 30), ("512M", 512 << 20), ("1.5GiB", 3 << 29), ("2k", 2048)]
)
def test_parse_size(text: str, n: int) -> None:
    assert parse_size(text) == n


@pytest.mark.parametrize(
    ("text", "s"), [("5s", 5), ("250ms", 0.25), ("1h30m", 5400), ("1y", 365 * 86400), ("2.5", 2.5)]
)
def test_parse_duration(text: str, s: float) -> None:
    assert parse_duration(text) == pytest.approx(s)


@pytest.mark.parametrize("bad", ["", "ten", "5 parsecs", "-1G"])
def test_bad_units(bad: str) -> None:
    with pytest.raises(UsageError):
        parse_size(bad)
    with pytest.raises(UsageError):
        parse_duration(bad + "x")


def test_format_size() -> None:
    assert format_size(512) == "512 B"
    assert format_size(3 << 30) == "3.0 GiB"
