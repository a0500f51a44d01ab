"""Running pyfuse3's request loop on asyncio with uvloop.

pyfuse3 runs its loop on trio, or on asyncio once ``pyfuse3.asyncio.enable()`` has switched
its module-level ``trio`` name to that module (process-wide state). trio's scheduler is plain
Python, uvloop's is C: a trivial pyfuse3 filesystem answering ``stat`` used about half the CPU
per request on uvloop, and a stat took 99-117 µs instead of 135-173 µs (``README.md``,
"Benchmarks"). Both FUSE servers (the pool mount and the image views) run through :func:`run`;
their code uses anyio's API, which also runs under trio (the unit tests call the handlers that
way).

pyfuse3's workers take turns on the ``/dev/fuse`` descriptor: each takes a lock, waits until
the descriptor is readable, drops the lock and reads one request. ``pyfuse3.asyncio`` adds
and removes an epoll reader for every wait, and every request hands the lock from one worker
to the next, so a request costs three more system calls and two task switches than the read
and the reply. :class:`_Waits` keeps one reader registered while workers are waiting and wakes
exactly one of them per readable event, which makes the lock unnecessary; the layer handed to
pyfuse3 is ``pyfuse3.asyncio`` with that wait, a lock that never blocks, and the matching
``notify_closing``. The names pyfuse3 takes from its loop layer are those of
``pyfuse3.asyncio`` (pyfuse3 3.x).
"""

from __future__ import annotations

import asyncio
import collections
import os
import select
import time
import types
from collections.abc import Awaitable, Callable
from typing import TypeVar, TypeVarTuple

import anyio
import pyfuse3
import pyfuse3.asyncio

T = TypeVar("T")
Ts = TypeVarTuple("Ts")

SPIN_NS = 50_000
"""How long (ns) a FUSE worker polls for the next request before it sleeps (see :class:`_Waits`)."""


class _Waits:
    """Workers waiting for one descriptor to become readable.

    pyfuse3 reads right after its wait returns and treats ``EAGAIN`` as fatal, so exactly
    one worker may be let through per request. Queued workers are woken one per readable
    event, oldest first; the epoll reader stays registered while any are queued, and an
    event with nobody to wake unregisters it (epoll here is level-triggered).

    A worker that comes back while no one is woken but not yet reading first polls the
    descriptor for up to *spin_ns* before it queues (events reach the queue only when the
    loop polls, never during a spin). A client issuing requests back to back (``find``,
    ``tar``, ``rm -r``) sends the next one within tens of microseconds, and catching it
    awake saves the sleep and wake-up of the server's thread. The price is up to *spin_ns*
    of one core after each request; an idle mount does not spin.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, fd: int, spin_ns: int) -> None:
        self.loop, self.spin_ns = loop, spin_ns
        self.waiters: collections.deque[asyncio.Future[None]] = collections.deque()
        self.woken = 0  # let through, not yet returned to pyfuse3 (which then reads)
        self.registered = False
        # The loop watches an epoll set holding the descriptor rather than the descriptor
        # itself: an aborted connection reports EPOLLERR, on which libuv drops the watch
        # without calling back, and every queued worker has to be let through to see it.
        self.ep = select.epoll()
        self.ep.register(fd, select.EPOLLIN)

    def _state(self) -> int:
        """0 (nothing to read), 1 (a request) or 2 (the connection is gone)."""
        events = self.ep.poll(0)
        if not events:
            return 0
        return 2 if events[0][1] & (select.EPOLLERR | select.EPOLLHUP) else 1

    def _let_through(self, everyone: bool) -> bool:
        let = False
        waiters = self.waiters
        while waiters:
            f = waiters.popleft()
            if not f.done():
                self.woken += 1
                f.set_result(None)
                let = True
                if not everyone:
                    break
        return let

    def _readable(self) -> None:
        if self.woken:  # the worker let through has not read yet; it runs before the next poll
            return
        state = self._state()
        if not state:  # a spinning worker took it meanwhile: keep watching for the queue
            return
        if self._let_through(everyone=state == 2):
            return
        # nobody queued: stop watching until someone queues, or epoll would report it each pass
        self.loop.remove_reader(self.ep.fileno())
        self.registered = False

    def _spin(self) -> bool:
        end = time.perf_counter_ns() + self.spin_ns
        while not (state := self._state()):
            if time.perf_counter_ns() > end:
                return False
        if state == 2:
            self._let_through(everyone=True)
        return True

    async def wait(self) -> None:
        if self.spin_ns and not self.woken and self._spin():
            return
        f = self.loop.create_future()
        self.waiters.append(f)
        if not self.registered:
            self.loop.add_reader(self.ep.fileno(), self._readable)
            self.registered = True
        try:
            await f
        except BaseException:
            if f.done() and not f.cancelled() and f.exception() is None:
                self.woken -= 1  # let through but not reading: pass the turn on
                self._readable()
            raise
        self.woken -= 1

    def close(self) -> None:
        while self.waiters:
            f = self.waiters.popleft()
            if not f.done():
                f.set_exception(pyfuse3.asyncio.ClosedResourceError())
        if self.registered:
            self.loop.remove_reader(self.ep.fileno())
            self.registered = False
        self.ep.close()


_waits: dict[int, _Waits] = {}


def _spin_ns() -> int:
    """How long a worker polls before it sleeps: none on a single CPU, where spinning
    would only keep the client from running."""
    return SPIN_NS if len(os.sched_getaffinity(0)) > 1 else 0


async def _wait_readable(fd: int) -> None:
    w = _waits.get(fd)
    if w is None:
        w = _waits[fd] = _Waits(asyncio.get_running_loop(), fd, _spin_ns())
    await w.wait()


def _notify_closing(fd: int) -> None:
    w = _waits.pop(fd, None)
    if w is not None:
        w.close()


class _FreeLock:
    """Stands in for the lock pyfuse3 holds around its wait: :class:`_Waits` already wakes
    one worker per request."""

    async def __aenter__(self) -> None:
        return None

    async def __aexit__(self, *exc: object) -> None:
        return None


def _layer() -> types.ModuleType:
    layer = types.ModuleType("darkstorage_pyfuse3_loop")
    layer.__dict__.update(
        {k: v for k, v in vars(pyfuse3.asyncio).items() if not k.startswith("__")},
        wait_readable=_wait_readable,
        notify_closing=_notify_closing,
        Lock=_FreeLock,
    )
    layer.lowlevel = layer  # type: ignore[attr-defined]
    layer.from_thread = layer  # type: ignore[attr-defined]
    return layer


def run(main: Callable[[*Ts], Awaitable[T]], *args: *Ts) -> T:
    """Run ``main(*args)`` on a fresh uvloop event loop with pyfuse3 in asyncio mode, after
    ``pyfuse3.init``; pyfuse3 is switched back to trio mode on the way out."""
    pyfuse3.asyncio.enable()
    pyfuse3.trio = _layer()  # type: ignore[attr-defined]
    try:
        return anyio.run(main, *args, backend="asyncio", backend_options={"use_uvloop": True})
    finally:
        for w in _waits.values():
            w.close()
        _waits.clear()
        pyfuse3.asyncio.disable()
