"""The wait layer under pyfuse3's workers (vfs/fuseloop.py), driven with a pipe on uvloop.

pyfuse3 reads as soon as a wait returns and treats EAGAIN as fatal, so the properties that
matter are: one worker let through per readable request, every worker let through once the
descriptor reports an error or hang-up, and ClosedResourceError for all on notify_closing.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Coroutine
from typing import Any

import pyfuse3.asyncio
import uvloop

from vfs import fuseloop


def _run(fn: Callable[[], Coroutine[Any, Any, None]]) -> None:
    try:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(fn())
    finally:
        fuseloop._waits.clear()


async def _settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


def _workers(r: int, n: int, through: list[int]) -> list[asyncio.Task[None]]:
    async def worker(i: int) -> None:
        await fuseloop._wait_readable(r)
        through.append(i)
        os.read(r, 1)  # like pyfuse3: read at once, before anything else runs

    return [asyncio.create_task(worker(i)) for i in range(n)]


def test_one_worker_per_request_in_arrival_order(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(fuseloop, "SPIN_NS", 0)
    r, w = os.pipe()
    os.set_blocking(r, False)

    async def main() -> None:
        through: list[int] = []
        tasks = _workers(r, 4, through)
        await _settle()
        assert through == []
        waits = fuseloop._waits[r]
        waits._readable()  # an event whose request a spinning worker took: the queue keeps its watch
        assert waits.registered and len(waits.waiters) == 4
        os.write(w, b"x")
        await _settle()
        assert through == [0]
        os.write(w, b"yz")
        await _settle()
        assert through == [0, 1, 2]
        os.close(w)  # hang-up: everyone left is let through, and reads end of file
        await asyncio.wait_for(asyncio.gather(*tasks), 5)
        assert through == [0, 1, 2, 3]

    try:
        _run(main)
    finally:
        os.close(r)


def test_a_request_already_waiting_is_taken_without_the_event_loop(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(fuseloop, "_spin_ns", lambda: 50_000)  # spinning is off on one CPU
    r, w = os.pipe()
    os.set_blocking(r, False)

    async def main() -> None:
        os.write(w, b"x")
        await fuseloop._wait_readable(r)  # the spin sees it: no reader registered, no sleep
        assert not fuseloop._waits[r].registered
        assert os.read(r, 1) == b"x"

    try:
        _run(main)
    finally:
        os.close(r)
        os.close(w)


def test_notify_closing_raises_in_every_waiting_worker(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(fuseloop, "SPIN_NS", 0)
    r, w = os.pipe()

    async def main() -> None:
        tasks = [asyncio.create_task(fuseloop._wait_readable(r)) for _ in range(3)]
        await _settle()
        fuseloop._notify_closing(r)
        results = await asyncio.gather(*tasks, return_exceptions=True)
        assert all(isinstance(e, pyfuse3.asyncio.ClosedResourceError) for e in results)

    try:
        _run(main)
    finally:
        os.close(r)
        os.close(w)


def test_layer_offers_every_name_pyfuse3_asyncio_does() -> None:
    layer = fuseloop._layer()
    public = {k for k in vars(pyfuse3.asyncio) if not k.startswith("_")}
    assert public <= set(vars(layer))
    assert layer.lowlevel is layer and layer.from_thread is layer  # type: ignore[attr-defined]
    assert layer.wait_readable is fuseloop._wait_readable  # type: ignore[attr-defined]
