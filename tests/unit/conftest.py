"""Unit fixtures: a fresh embedded pool with bucket ``b`` and the filesystem handlers over it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from pool.pool import Pool
from vfs.operations import Operations


@pytest.fixture
def pool(tmp_path: Path) -> Iterator[Pool]:
    p, _ = Pool.init(tmp_path / "home")
    p.create_bucket("b")
    yield p
    p.close()


@pytest.fixture
def ops(pool: Pool) -> Operations:
    return Operations(pool, cache_max_bytes=1 << 30)
