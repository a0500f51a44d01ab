"""What keeps transfers well behaved against a remote store: which errors are worth a retry,
a bandwidth limit shared by every transfer of one integration (token bucket), and a circuit
breaker per integration.

The token bucket is the classic traffic-shaping algorithm (RFC 2697 describes its use for
metering): tokens (bytes) accrue at the rate up to a burst size and a transfer takes tokens
for every chunk it moves, waiting when there are not enough. The circuit breaker follows the
pattern as described by Nygard (Release It!, 2007): *closed* counts consecutive failures and
*opens* at a threshold; an open breaker refuses work until a cool-down has passed, then lets
one *half-open* probe through, which closes it on success or opens it again on failure.
"""

from __future__ import annotations

import errno
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from .errors import AuthError, BackendError, DarkstorageError, IntegrityError, NotFoundError, TransferError

log = logging.getLogger(__name__)

_TRANSIENT_ERRNOS = {
    errno.ECONNRESET,
    errno.ECONNREFUSED,
    errno.ECONNABORTED,
    errno.ETIMEDOUT,
    errno.EPIPE,
    errno.ENETUNREACH,
    errno.ENETDOWN,
    errno.EHOSTUNREACH,
    errno.EHOSTDOWN,
    errno.EAGAIN,
    errno.EBUSY,
}
_TRANSIENT_NAMES = (
    # botocore / aiobotocore, aiohttp, asyncssh, paramiko, requests/urllib3, httpx: connection
    # level failures and timeouts, by class name so no client library needs importing here
    "EndpointConnectionError",
    "ConnectionLost",  # asyncssh: the SSH connection dropped
    "SFTPNoConnection",  # asyncssh: a request on a dropped SFTP session
    "SFTPConnectionLost",
    "ConnectionClosedError",
    "ReadTimeoutError",
    "ConnectTimeoutError",
    "ResponseStreamingError",
    "IncompleteReadError",
    "ClientConnectorError",
    "ServerDisconnectedError",
    "ClientPayloadError",
    "ServerTimeoutError",
    "ClientOSError",
    "ConnectionLost",
    "DisconnectError",
    "SSHException",
    "ProtocolError",
    "ChunkedEncodingError",
    "RemoteProtocolError",
    "ReadError",
    "WriteError",
    "ConnectError",
    "PoolTimeout",
    "TimeoutException",
    "ChannelOpenError",
)
_THROTTLE_CODES = {
    "Throttling",
    "ThrottlingException",
    "SlowDown",
    "RequestTimeout",
    "RequestTimeTooSkewed",
    "InternalError",
    "ServiceUnavailable",
    "RequestLimitExceeded",
    "TooManyRequests",
    "OperationAborted",
    "ServerBusy",
    "OperationTimedOut",
}
_AUTH_CODES = {
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "AccessDenied",
    "ExpiredToken",
    "InvalidToken",
    "AuthorizationHeaderMalformed",
    "AuthenticationFailed",
    "InvalidClientTokenId",
    "AuthorizationFailure",
}


class CircuitOpenError(TransferError):
    """The integration's circuit breaker is open: transfers to it fail fast for a while."""


def _chain(exc: BaseException) -> list[BaseException]:
    out: list[BaseException] = []
    cur: BaseException | None = exc
    while cur is not None and cur not in out and len(out) < 10:
        out.append(cur)
        cur = cur.__cause__ or cur.__context__
    return out


def _http_status(exc: BaseException) -> tuple[int | None, str | None]:
    """``(HTTP status, error code)`` of a botocore ClientError or an aiohttp response error."""
    resp = getattr(exc, "response", None)
    if isinstance(resp, dict):
        code = resp.get("Error", {}).get("Code")
        status = resp.get("ResponseMetadata", {}).get("HTTPStatusCode")
        return (int(status) if status else None), (str(code) if code else None)
    status = getattr(exc, "status", None) or getattr(exc, "status_code", None)
    return (status if isinstance(status, int) else None), None


def is_auth_error(exc: BaseException) -> bool:
    """True when the store rejected the credentials (never retried)."""
    for e in _chain(exc):
        if isinstance(e, AuthError):
            return True
        status, code = _http_status(e)
        if code in _AUTH_CODES or status == 401:
            return True
        if type(e).__name__ in ("PermissionDenied", "NoCredentialsError", "PartialCredentialsError"):
            return True
    return False


def is_transient(exc: BaseException) -> bool:
    """Whether a failed attempt is worth retrying.

    Transient: connection resets/refusals/aborts, timeouts, HTTP 5xx, 408 and 429, throttling
    codes (``SlowDown``, ``Throttling``...), a verification mismatch (the copy is redone).
    Not transient: authentication and permission errors, not-found, bad input, a full disk,
    an open circuit breaker, a pending archive restore.
    """
    chain = _chain(exc)
    for e in chain:
        if isinstance(e, CircuitOpenError | NotFoundError | AuthError):
            return False
        if isinstance(
            e,
            FileNotFoundError | PermissionError | IsADirectoryError | NotADirectoryError | FileExistsError | ValueError,
        ):
            return False
        status, code = _http_status(e)
        if code in _AUTH_CODES or status in (400, 401, 403, 404, 405, 409, 412, 416):
            return False
    if is_auth_error(exc):
        return False
    for e in chain:
        if isinstance(e, IntegrityError):
            return True
        if isinstance(e, DarkstorageError) and not isinstance(e, BackendError):
            return False
        if isinstance(e, ConnectionError | TimeoutError):
            return True
        if isinstance(e, OSError) and e.errno in _TRANSIENT_ERRNOS:
            return True
        status, code = _http_status(e)
        if code in _THROTTLE_CODES or (status is not None and (status >= 500 or status in (408, 429))):
            return True
        if type(e).__name__ in _TRANSIENT_NAMES:
            return True
    return False


class TokenBucket:
    """A bandwidth limit: at most *rate_bytes_per_s* on average, bursts up to *burst_bytes*.

    Thread-safe; every transfer of one integration shares one bucket.
    """

    def __init__(
        self,
        rate_bytes_per_s: int,
        burst_bytes: int | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if rate_bytes_per_s <= 0:
            raise ValueError("rate must be positive")
        self.rate = float(rate_bytes_per_s)
        self.burst = float(burst_bytes or max(rate_bytes_per_s // 4, 16 << 10))
        self._tokens = self.burst
        self._clock, self._sleep = clock, sleep
        self._last = clock()
        self._lock = threading.Lock()

    def take(self, n: int) -> None:
        """Take *n* bytes' worth of tokens, sleeping until they have accrued."""
        while n > 0:
            step = min(float(n), self.burst)
            with self._lock:
                now = self._clock()
                self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
                self._last = now
                self._tokens -= step  # may go negative: later takers wait for the debt
                wait = -self._tokens / self.rate if self._tokens < 0 else 0.0
            if wait > 0:
                self._sleep(wait)
            n -= int(step)

    @property
    def chunk_bytes(self) -> int:
        """A good chunk size for transfers under this limit (about 1/8 s of traffic)."""
        return max(4096, min(1 << 20, int(self.rate / 8)))


_buckets: dict[str, TokenBucket] = {}
_buckets_lock = threading.Lock()


def bandwidth_bucket(key: str, rate_bytes_per_s: int | None) -> TokenBucket | None:
    """The process-wide token bucket for *key* (an integration name, or ``"*"`` for transfers
    between local folders and the pool), created or re-rated to *rate_bytes_per_s*; None when
    there is no limit."""
    if not rate_bytes_per_s:
        return None
    with _buckets_lock:
        b = _buckets.get(key)
        if b is None or b.rate != rate_bytes_per_s:
            b = _buckets[key] = TokenBucket(rate_bytes_per_s)
        return b


@dataclass
class BreakerState:
    """A breaker's visible state: ``state`` (closed, open, half-open), consecutive
    ``failures``, ``opened_ns`` (wall clock when it last opened)."""

    state: str = "closed"
    failures: int = 0
    opened_ns: int | None = None


class CircuitBreaker:
    """Circuit breaker of one integration.

    Args:
        name: the integration.
        threshold: consecutive failed attempts that open it.
        cooldown_s: how long it stays open before a half-open probe.
        on_change: called with ``(name, BreakerState)`` whenever the state changes (the
            transfer log persists it so ``darkstorage transfers`` shows it).
    """

    def __init__(
        self,
        name: str,
        threshold: int = 5,
        cooldown_s: float = 30.0,
        on_change: Callable[[str, BreakerState], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name, self.threshold, self.cooldown_s = name, threshold, cooldown_s
        self.on_change = on_change
        self._clock = clock
        self._lock = threading.Lock()
        self._opened_at = 0.0
        self._probing = False
        self.status = BreakerState()

    def _set(self, state: str, failures: int, opened: bool = False) -> None:
        changed = state != self.status.state
        self.status.state, self.status.failures = state, failures
        if opened:
            self._opened_at = self._clock()
            self.status.opened_ns = time.time_ns()
        if changed:
            log.warning("integration %s: circuit %s", self.name, state)
        if self.on_change is not None:
            self.on_change(self.name, BreakerState(self.status.state, self.status.failures, self.status.opened_ns))

    def before(self) -> None:
        """Call before an attempt.

        Raises:
            CircuitOpenError: the breaker is open (or another thread is probing).
        """
        with self._lock:
            st = self.status.state
            if st == "closed":
                return
            left = self._opened_at + self.cooldown_s - self._clock()
            if st == "open" and left <= 0 and not self._probing:
                self._probing = True
                self._set("half-open", self.status.failures)
                return
            raise CircuitOpenError(
                f"integration {self.name}: circuit open after {self.status.failures} failed attempts;"
                f" next try in {max(left, 0):.0f}s"
            )

    def success(self) -> None:
        with self._lock:
            self._probing = False
            if self.status.state != "closed" or self.status.failures:
                self._set("closed", 0)

    def failure(self) -> None:
        """Record a failed attempt (transient errors only: a missing file says nothing about the store)."""
        with self._lock:
            n = self.status.failures + 1
            if self.status.state == "half-open" or n >= self.threshold:
                self._probing = False
                self._set("open", n, opened=True)
            else:
                self.status.failures = n


_breakers: dict[str, CircuitBreaker] = {}
_breakers_lock = threading.Lock()


def circuit_breaker(
    name: str, *, threshold: int, cooldown_s: float, on_change: Callable[[str, BreakerState], None] | None = None
) -> CircuitBreaker:
    """The process-wide breaker of integration *name* (created on first use)."""
    with _breakers_lock:
        b = _breakers.get(name)
        if b is None:
            b = _breakers[name] = CircuitBreaker(name, threshold, cooldown_s, on_change)
        else:
            b.threshold, b.cooldown_s = threshold, cooldown_s
            if on_change is not None:
                b.on_change = on_change
        return b


def reset_breakers() -> None:
    """Forget every breaker (tests; a new process starts closed anyway)."""
    with _breakers_lock:
        _breakers.clear()
