"""The one place where our exceptions become errnos for the kernel.

Handlers raise ``pyfuse3.FUSEError`` only; anything else escaping a handler is converted here
(by :func:`guard`), logged if unexpected, and returned as ``EIO``.
"""

from __future__ import annotations

import errno
import functools
import logging
from collections.abc import Callable, Coroutine
from typing import Any, ParamSpec, TypeVar  # noqa: I001

import pyfuse3

from pool.errors import DarkstorageError

log = logging.getLogger(__name__)

P = ParamSpec("P")
R = TypeVar("R")


DATA_HANDLERS = frozenset({"read", "write", "flush", "fsync", "release"})


def guard(fn: Callable[P, Coroutine[Any, Any, R]]) -> Callable[P, Coroutine[Any, Any, R]]:
    """Wrap a handler (a method of an object with a ``requests`` counter) so that only
    ``FUSEError`` leaves it, and count it if it is a metadata request (not in
    :data:`DATA_HANDLERS`)."""

    counts = fn.__name__ not in DATA_HANDLERS

    @functools.wraps(fn)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        if counts:  # metadata activity meter: the write-back service backs off while it is high
            args[0].requests += 1  # type: ignore[attr-defined]
        try:
            return await fn(*args, **kwargs)
        except pyfuse3.FUSEError:
            raise
        except DarkstorageError as e:
            log.warning("%s: %s", fn.__name__, e)
            raise pyfuse3.FUSEError(e.errno) from None
        except OSError as e:
            log.warning("%s: %s", fn.__name__, e)
            raise pyfuse3.FUSEError(e.errno or errno.EIO) from None
        except Exception:
            log.exception("unexpected error in %s", fn.__name__)
            raise pyfuse3.FUSEError(errno.EIO) from None

    return wrapper
