"""sync.workers: the forked worker processes of large local copy phases (run_forked)."""

from __future__ import annotations

import errno
import os
import threading
from pathlib import Path
from typing import Any

import pytest

from pool.errors import DarkstorageError
from sync.workers import FORK_MIN_ITEMS, Outcome, can_fork, run_forked

PARENT = os.getpid()


def collect(items: list[int], work: Any, workers: int = 2) -> dict[int, Outcome[int, Any]]:
    got: dict[int, Outcome[int, Any]] = {}

    def done(o: Outcome[int, Any]) -> None:
        assert os.getpid() == PARENT  # outcomes are handled by the caller's process
        assert o.item not in got
        got[o.item] = o

    run_forked(items, work, done, workers=workers, size_of=lambda i: i)
    return got


def gone(pids: set[int]) -> bool:
    """Every worker in *pids* has exited and been reaped (a zombie still answers signal 0)."""
    for pid in pids:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            continue
        return False
    return True


def noting_pid(tmp: Path, work: Any) -> Any:
    """*work*, also leaving a file named after the worker's pid in *tmp*."""

    def wrapped(i: int) -> Any:
        (tmp / str(os.getpid())).touch()
        return work(i)

    return wrapped


def pids_in(tmp: Path) -> set[int]:
    return {int(p.name) for p in tmp.iterdir()}


def test_every_item_runs_once_in_a_worker_process() -> None:
    items = list(range(500))
    got = collect(items, lambda i: (i * i, os.getpid()))
    assert sorted(got) == items
    values = {i: o.value for i, o in got.items() if o.error is None and o.value is not None}
    assert all(values[i][0] == i * i for i in items)
    pids = {v[1] for v in values.values()}
    assert len(pids) == 2 and PARENT not in pids
    assert gone(pids)


def test_errors_come_back_as_outcomes() -> None:
    def work(i: int) -> int:
        if i % 7 == 0:
            raise FileNotFoundError(errno.ENOENT, "gone", f"/x/{i}")
        if i % 11 == 0:
            raise DarkstorageError(f"bad {i}")
        return i

    got = collect(list(range(300)), work)
    assert len(got) == 300
    for i, o in got.items():
        if i % 7 == 0:
            assert isinstance(o.error, FileNotFoundError) and o.error.filename == f"/x/{i}" and o.value is None
        elif i % 11 == 0:
            assert isinstance(o.error, DarkstorageError) and str(o.error) == f"bad {i}"
        else:
            assert o.error is None and o.value == i


def test_a_bug_in_a_worker_is_raised_and_stops_the_others(tmp_path: Path) -> None:
    def work(i: int) -> int:
        if i == 3:
            raise ValueError("a bug")
        return i

    with pytest.raises(ValueError, match="a bug"):
        collect(list(range(20000)), noting_pid(tmp_path, work))
    assert len(pids_in(tmp_path)) == 2 and gone(pids_in(tmp_path))


def test_an_error_in_done_kills_the_workers_and_propagates(tmp_path: Path) -> None:
    seen = []

    def done(o: Outcome[int, Any]) -> None:
        seen.append(o.item)
        if len(seen) == 10:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_forked(list(range(50000)), noting_pid(tmp_path, lambda i: i), done, workers=2, size_of=lambda i: 0)
    assert len(seen) == 10 and gone(pids_in(tmp_path))


def test_items_of_a_worker_that_died_are_reported_as_failed() -> None:
    def work(i: int) -> int:
        if i == 100:
            os._exit(3)  # the worker dealt item 100 dies without a word
        return i

    got = collect(list(range(400)), work)
    assert sorted(got) == list(range(400))
    failed = [i for i, o in got.items() if o.error is not None]
    assert 100 in failed and all(i % 2 == 0 for i in failed)  # only the dead worker's share
    assert all("ended early" in str(got[i].error) for i in failed)
    assert all(got[i].value == i for i in got if i not in failed)


def test_can_fork_only_for_large_phases_in_a_single_thread() -> None:
    assert can_fork(FORK_MIN_ITEMS, 2) == (threading.active_count() == 1)  # earlier tests may leave fsspec's threads
    assert not can_fork(FORK_MIN_ITEMS - 1, 2) and not can_fork(FORK_MIN_ITEMS, 1)
    stop = threading.Event()
    t = threading.Thread(target=stop.wait)
    t.start()
    try:
        assert not can_fork(FORK_MIN_ITEMS, 2)
    finally:
        stop.set()
        t.join()
