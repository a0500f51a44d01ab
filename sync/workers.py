"""The worker threads of the executor's parallel phases.

Thousands of small files make per-file overhead the cost of a run, so there is no future per
file: the workers take the next item from one shared list (big ones first, so the longest
transfers start early) and put each outcome on a queue; the calling thread takes outcomes off the
queue as they come and commits each one at once (:func:`run_parallel`).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

from pool.errors import AuthError, DarkstorageError

BIG_BYTES = 4 << 20  #: items at least this big start first

T = TypeVar("T")
R = TypeVar("R")


class Outcome(Generic[T, R]):
    """One item's result from a worker: *value*, or the *error* it raised."""

    __slots__ = ("item", "value", "error")

    def __init__(self, item: T, value: R | None, error: BaseException | None) -> None:
        self.item, self.value, self.error = item, value, error


def work_order(items: Sequence[T], size_of: Callable[[T], int]) -> list[T]:
    """*items* big ones (:data:`BIG_BYTES` or more) first, then the others in plan order."""
    big = [it for it in items if size_of(it) >= BIG_BYTES]
    if not big:
        return list(items)
    return big + [it for it in items if size_of(it) < BIG_BYTES]


def run_parallel(
    items: Sequence[T],
    work: Callable[[T], R],
    done: Callable[[Outcome[T, R]], None],
    *,
    workers: int,
    size_of: Callable[[T], int],
) -> None:
    """Run ``work(item)`` on *workers* threads and hand every outcome to ``done`` in the calling
    thread as soon as it is there.

    ``OSError`` and :class:`pool.errors.DarkstorageError` from *work* are handed over as the
    outcome's error. After an :class:`pool.errors.AuthError` (nothing more can work) or any
    other exception (a bug), no new item starts and the error is raised here once the running
    ones finished.
    """
    if not items:
        return
    todo = iter(work_order(items, size_of))
    take = threading.Lock()
    outcomes: queue.SimpleQueue[Outcome[T, R] | None] = queue.SimpleQueue()
    stop = threading.Event()
    fatal: list[BaseException] = []

    def worker() -> None:
        try:
            while not stop.is_set():
                with take:
                    it = next(todo, None)
                if it is None:
                    return
                try:
                    outcomes.put(Outcome(it, work(it), None))
                except (OSError, DarkstorageError) as e:
                    if isinstance(e, AuthError):
                        raise
                    outcomes.put(Outcome(it, None, e))
        except BaseException as e:
            fatal.append(e)
            stop.set()
        finally:
            outcomes.put(None)  # this worker is done

    threads = [threading.Thread(target=worker, name=f"sync-{i}", daemon=True) for i in range(min(workers, len(items)))]
    for t in threads:
        t.start()
    try:
        running = len(threads)
        while running:
            o = outcomes.get()
            if o is None:
                running -= 1
            else:
                done(o)
    finally:
        stop.set()  # after an error here, the workers stop at their next item
        for t in threads:
            t.join()
    if fatal:
        raise fatal[0]
