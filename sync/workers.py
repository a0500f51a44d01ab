"""The workers of the executor's parallel phases: threads, or processes for local copies.

Thousands of small files make per-file overhead the cost of a run, so there is no future per
file: the workers take the next item from one shared list (big ones first, so the longest
transfers start early) and put each outcome on a queue; the calling thread takes outcomes off the
queue as they come and commits each one at once (:func:`run_parallel`).

Copies between two local folders are a dozen short system calls per small file. CPython threads
hand the interpreter lock back and forth around each of them, and on two CPUs four copying
threads then spend more time in that hand-over (futex calls, context switches) than copying:
measured on 100,000 small files, 4 threads took 39-41 s and 74-78 CPU-s of system time, 2 forked
processes 21.5 s and 44 CPU-s, one thread alone 39 s. So a large phase of local copies runs in
forked worker processes instead (:func:`run_forked`), which share nothing but a pipe each back
to the caller; the caller still commits every outcome itself.
"""

from __future__ import annotations

import os
import pickle
import queue
import select
import signal
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, Generic, TypeVar

from pool.errors import AuthError, DarkstorageError

BIG_BYTES = 4 << 20  #: items at least this big start first
FORK_MIN_ITEMS = 256  #: fewer items than this run on threads (forking costs a few ms)
_BATCH_ITEMS = 64  #: a worker process sends its outcomes at least every this many items ...
_BATCH_S = 0.02  #: ... or this many seconds

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


def can_fork(n_items: int, workers: int) -> bool:
    """Whether :func:`run_forked` may run *n_items* on *workers* processes here: a system with
    ``fork``, at least 2 workers and :data:`FORK_MIN_ITEMS` items, and a caller running a single
    thread (a child of a threaded process could inherit a lock some other thread held)."""
    return hasattr(os, "fork") and workers >= 2 and n_items >= FORK_MIN_ITEMS and threading.active_count() == 1


def close_inherited_fds(keep: Sequence[int]) -> None:
    """In a forked child: close every descriptor but the standard streams and *keep*. (An
    inherited descriptor of the caller's run lock, an ``flock``, would keep the lock held if the
    caller were killed.)"""
    lo = 3
    for fd in sorted(keep):
        os.closerange(lo, fd)
        lo = fd + 1
    os.closerange(lo, os.sysconf("SC_OPEN_MAX"))


def _portable(e: BaseException) -> BaseException:
    """*e* if it survives pickling, else a :class:`DarkstorageError` (or, for a bug, a
    ``RuntimeError``) with its text."""
    try:
        pickle.loads(pickle.dumps(e))
        return e
    except Exception:  # noqa: BLE001 - any failure to travel means: send the text
        text = f"{type(e).__name__}: {e}"
        return DarkstorageError(text) if isinstance(e, (OSError, DarkstorageError)) else RuntimeError(text)


def _child(items: Sequence[T], first: int, step: int, work: Callable[[T], R], out: int, parent: int) -> None:
    """A worker process: run *work* on *items* (global indexes ``first + step * j``) and send
    ``[(index, kind, value or error)]`` batches (kind 0 value, 1 error, 2 fatal: stop)."""
    batch: list[tuple[int, int, Any]] = []
    sent_at = time.monotonic()

    def send() -> None:
        nonlocal sent_at
        data = pickle.dumps(batch, pickle.HIGHEST_PROTOCOL)
        view = memoryview(len(data).to_bytes(8, "little") + data)
        while view:
            view = view[os.write(out, view) :]
        batch.clear()
        sent_at = time.monotonic()

    for j, it in enumerate(items):
        if os.getppid() != parent:  # the caller is gone: stop copying for nobody
            return
        i = first + step * j
        try:
            batch.append((i, 0, work(it)))
        except (OSError, DarkstorageError) as e:
            if isinstance(e, AuthError):
                batch.append((i, 2, _portable(e)))
                send()
                return
            batch.append((i, 1, _portable(e)))
        except BaseException as e:  # noqa: BLE001 - a bug: the caller raises it
            batch.append((i, 2, _portable(e)))
            send()
            return
        if len(batch) >= _BATCH_ITEMS or time.monotonic() - sent_at >= _BATCH_S:
            send()
    if batch:
        send()


def run_forked(
    items: Sequence[T],
    work: Callable[[T], R],
    done: Callable[[Outcome[T, R]], None],
    *,
    workers: int,
    size_of: Callable[[T], int],
) -> None:
    """:func:`run_parallel` on *workers* forked processes (see the module docstring; check
    :func:`can_fork` first). The items, in :func:`work_order`, are dealt out in turn; each
    worker sends its outcomes (pickled: values and errors must pickle) in batches through a
    pipe, and ``done`` sees every one in the calling process, as with threads.

    Workers ignore ``SIGINT``: when ``done`` raises (a Ctrl-C included), the workers are killed,
    the items they had not reported are left as they are (a copy goes to a temporary name and
    is renamed into place, so a killed one leaves no partial file under the real name), and the
    error propagates. An item of a worker that ended without reporting it gets a
    :class:`pool.errors.DarkstorageError` outcome. A fatal error in a worker (``AuthError`` or
    a bug) stops the others and is raised here.
    """
    order = work_order(items, size_of)
    n = min(workers, len(order))
    if n == 0:
        return
    parent = os.getpid()
    pipes: dict[int, int] = {}  # read end -> child pid
    reported: dict[int, set[int]] = {}  # child pid -> indexes reported
    try:
        for k in range(n):
            r, w = os.pipe()
            pid = os.fork()
            if pid == 0:  # pragma: no cover - the child (coverage does not follow it)
                try:
                    signal.signal(signal.SIGINT, signal.SIG_IGN)
                    close_inherited_fds([w])
                    _child(order[k::n], k, n, work, w, parent)
                finally:
                    os._exit(0)
            os.close(w)
            pipes[r] = pid
            reported[pid] = set()
        fatal = _collect(pipes, reported, order, done)
    except BaseException:
        for pid in reported:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        raise
    finally:
        for r in pipes:
            os.close(r)
        statuses = {pid: os.waitpid(pid, 0)[1] for pid in reported}
    if fatal is not None:
        raise fatal
    for k, pid in enumerate(reported):
        missing = [i for i in range(k, len(order), n) if i not in reported[pid]]
        if missing:
            why = DarkstorageError(f"the copy worker process ended early (wait status {statuses[pid]})")
            for i in missing:
                done(Outcome(order[i], None, why))


def _collect(
    pipes: dict[int, int], reported: dict[int, set[int]], order: Sequence[T], done: Callable[[Outcome[T, R]], None]
) -> BaseException | None:
    """Read the workers' batches until every pipe is closed; hand each outcome to ``done``.
    Returns a worker's fatal error (after killing the others), or None."""
    bufs = {r: bytearray() for r in pipes}
    live = set(pipes)
    fatal: BaseException | None = None
    while live:
        ready, _, _ = select.select(list(live), [], [])
        for r in ready:
            chunk = os.read(r, 1 << 16)
            if not chunk:
                live.discard(r)
                continue
            buf = bufs[r]
            buf += chunk
            while len(buf) >= 8:
                size = int.from_bytes(buf[:8], "little")
                if len(buf) < 8 + size:
                    break
                batch = pickle.loads(buf[8 : 8 + size])
                del buf[: 8 + size]
                for i, kind, payload in batch:
                    reported[pipes[r]].add(i)
                    if kind == 2:
                        fatal = fatal or payload
                        for pid in reported:
                            try:
                                os.kill(pid, signal.SIGKILL)
                            except OSError:
                                pass
                    elif fatal is None:
                        done(Outcome(order[i], payload if kind == 0 else None, payload if kind == 1 else None))
    return fatal
