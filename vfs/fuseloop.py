"""Running pyfuse3's request loop on asyncio with uvloop.

pyfuse3 runs its loop on trio, or on asyncio once ``pyfuse3.asyncio.enable()`` has switched
its module-level loop functions (process-wide state). trio's scheduler is plain Python,
uvloop's is C: a trivial pyfuse3 filesystem answering ``stat`` used about half the CPU per
request on uvloop, and a stat took 99-117 µs instead of 135-173 µs (``README.md``,
"Benchmarks"). Both FUSE
servers (the pool mount and the image views) run through :func:`run`; their code uses anyio's
API, which also runs under trio (the unit tests call the handlers that way).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar, TypeVarTuple

import anyio
import pyfuse3
import pyfuse3.asyncio

T = TypeVar("T")
Ts = TypeVarTuple("Ts")


def run(main: Callable[[*Ts], Awaitable[T]], *args: *Ts) -> T:
    """Run ``main(*args)`` on a fresh uvloop event loop with pyfuse3 in asyncio mode, after
    ``pyfuse3.init``; pyfuse3 is switched back to trio mode on the way out."""
    pyfuse3.asyncio.enable()
    try:
        return anyio.run(main, *args, backend="asyncio", backend_options={"use_uvloop": True})
    finally:
        pyfuse3.asyncio.disable()
