"""Copying files between locations (local folders, pool buckets, integrations): one file
(:func:`copy_file`) or a whole folder in parallel (:func:`copy_tree`).

Every copy:

* reads the source once, hashing it (XXH3-128) and, when checksums are on, reads the written
  copy back and compares (plus the store's own MD5 ETag for S3 where it is one);
* writes to a temporary name and renames where the store renames in place (local, SFTP, FTP,
  WebDAV); object stores get the final key directly (a put is atomic there);
* keeps mode and mtime where the destination can (see :mod:`pool.fsattrs`);
* retries transient errors with exponential backoff and full jitter (tenacity), never
  authentication, permission or not-found errors (:func:`pool.resilience.is_transient`);
* honours the circuit breaker and the bandwidth limit of each side's integration;
* resumes: S3 multipart uploads continue with the missing parts (:mod:`pool.multipart`); a
  download into a local folder continues its kept partial file with a ranged read;
* is recorded in the transfer log (:mod:`pool.transferlog`) and may notify
  (:mod:`pool.notify`).
"""

from __future__ import annotations

import logging
import os
import secrets
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from typing import Any

import tenacity
import xxhash

from .errors import AuthError, DarkstorageError, IntegrityError, NotFoundError, TransferError, UsageError
from .fsattrs import FileAttrs, apply_attrs, fs_kind, renames_cheaply, s3_metadata, source_attrs, write_kwargs
from .hashing import CHUNK_BYTES, hash_stream, new_hasher
from .locations import Location, mask_secrets
from .multipart import multipart_upload
from .notify import NotifyConfig, notify
from .resilience import CircuitBreaker, bandwidth_bucket, circuit_breaker, is_auth_error, is_transient
from .tempnames import PARTIAL_MARK, TMP_MARK
from .transferlog import TransferLog, TransferRecord

log = logging.getLogger(__name__)

LOCAL_LIMIT_KEY = "*"
"""Bandwidth-limit key of transfers with no integration on either side."""

Progress = Callable[[int], None]


@dataclass
class TransferOptions:
    """How transfers run.

    Attributes:
        transfers: parallel workers for :func:`copy_tree`.
        bwlimit_bytes_per_s: bandwidth limit shared by every transfer of one integration
            (transfers between local folders and the pool share one limit); None: unlimited.
        retries: retries after the first attempt, for transient errors only.
        checksum: read the written copy back and compare its XXH3-128 with the source's.
        part_size_bytes: S3 multipart part size.
        multipart_threshold_bytes: files larger than this go to S3 as resumable multipart uploads.
        backoff_initial_s, backoff_max_s: exponential backoff bounds (full jitter on top).
        breaker_threshold: consecutive failed attempts that open an integration's circuit.
        breaker_cooldown_s: how long an open circuit refuses before one probe goes through.
        notify: hooks for failures and large transfers (None: none).
    """

    transfers: int = 4
    bwlimit_bytes_per_s: int | None = None
    retries: int = 5
    checksum: bool = True
    part_size_bytes: int = 8 << 20
    multipart_threshold_bytes: int = 16 << 20
    backoff_initial_s: float = 0.5
    backoff_max_s: float = 20.0
    breaker_threshold: int = 5
    breaker_cooldown_s: float = 30.0
    notify: NotifyConfig | None = field(default=None)


@dataclass
class _Attempt:
    """What one copy learned across its attempts."""

    resumed_bytes: int = 0
    parts_sent: int = 0
    size: int = 0
    digest: str | None = None
    #: temporary names a failed attempt could not remove (its connection was gone)
    leftovers: list[str] = field(default_factory=list)


def _display(loc: Location, rel: str) -> str:
    rel = rel.strip("/")
    base = loc.display.rstrip("/")
    return mask_secrets(f"{base}/{rel}" if rel else base)


def _one_line(e: BaseException) -> str:
    text = str(e) or type(e).__name__
    if isinstance(e, OSError) and not isinstance(e, DarkstorageError) and e.filename and str(e.filename) not in text:
        text = f"{text}: {e.filename}"
    return mask_secrets(" ".join(text.split()))[:500]


def _parent(fs: Any, path: str) -> str:
    return str(fs._parent(path))


def _throttle(src: Location, dst: Location, options: TransferOptions) -> tuple[Callable[[int], None], int]:
    """A ``take(nbytes)`` that waits on the bandwidth limit of both sides, and a chunk size."""
    keys = {k for k in (src.limiter_key, dst.limiter_key) if k} or {LOCAL_LIMIT_KEY}
    buckets = [b for k in sorted(keys) if (b := bandwidth_bucket(k, options.bwlimit_bytes_per_s)) is not None]
    if not buckets:
        return (lambda n: None), CHUNK_BYTES

    def take(n: int) -> None:
        for b in buckets:
            b.take(n)

    return take, min(b.chunk_bytes for b in buckets)


def _breakers(src: Location, dst: Location, options: TransferOptions, tlog: TransferLog | None) -> list[CircuitBreaker]:
    save = (lambda name, st: tlog.save_breaker(name, st.state, st.failures, st.opened_ns)) if tlog else None
    names = sorted({k for k in (src.integration, dst.integration) if k})
    return [
        circuit_breaker(n, threshold=options.breaker_threshold, cooldown_s=options.breaker_cooldown_s, on_change=save)
        for n in names
    ]


def _read_back(dst: Location, path: str) -> tuple[str, int]:
    with dst.fs.open(path, "rb") as f:
        return hash_stream(f)


def _check(what: str, got: tuple[str, int], want: tuple[str, int]) -> None:
    if got != want:
        raise IntegrityError(
            f"{what}: copy reads back as {got[1]} bytes/{got[0]}, source was {want[1]} bytes/{want[0]}"
        )


def _copy_stream(
    src: Location,
    src_path: str,
    dst: Location,
    dst_path: str,
    size: int,
    attrs: FileAttrs,
    source_id: str,
    options: TransferOptions,
    state: _Attempt,
    progress: Progress | None,
) -> None:
    """Stream the file; a local destination keeps a partial file to resume from."""
    take, chunk = _throttle(src, dst, options)
    fs = dst.fs
    kind = fs_kind(fs)
    head, _, name = dst_path.rpartition("/")
    resumable = kind == "local"
    if resumable:
        tag = xxhash.xxh3_64_hexdigest(source_id.encode())
        target = f"{head}/.{name}{PARTIAL_MARK}{tag}"
    elif renames_cheaply(fs):
        target = f"{head}/.{name}{TMP_MARK}{secrets.token_hex(6)}"
    else:
        target = dst_path
    if head and kind != "s3":
        fs.makedirs(head, exist_ok=True)
    h = new_hasher()
    done = 0
    if resumable and os.path.exists(target):
        done = os.path.getsize(target)
        if done > size:
            os.unlink(target)
            done = 0
        elif done:
            with open(target, "rb") as f:
                _hash_prefix(f, h, done)
            state.resumed_bytes += done
            log.info("resuming %s at byte %d", dst_path, done)
            if progress is not None:
                progress(done)
    try:
        if size == 0 and kind == "s3":  # s3fs writes an empty object without its metadata
            fs.pipe_file(target, b"", **write_kwargs(fs, attrs))
        else:
            done = _stream(
                src, src_path, fs, target, done, write_kwargs(fs, attrs), take, chunk, h, progress, fsync=resumable
            )
        if done != size:
            raise IntegrityError(
                f"{dst_path}: read {done} bytes from a {size}-byte source (it changed during the copy)"
            )
        state.digest, state.size = h.hexdigest(), done
        if options.checksum:
            _check(dst_path, _read_back(dst, target), (state.digest, done))
        if target != dst_path:
            fs.mv(target, dst_path)
    except IntegrityError:
        _discard(fs, target, dst_path, state)
        raise
    except BaseException:
        if not resumable:
            _discard(fs, target, dst_path, state)
        raise


def _stream(
    src: Location,
    src_path: str,
    fs: Any,
    target: str,
    done: int,
    kwargs: dict[str, Any],
    take: Callable[[int], None],
    chunk: int,
    h: Any,
    progress: Progress | None,
    *,
    fsync: bool,
) -> int:
    """Copy the source from byte *done* on to *target* (appending when *done* > 0), hashing
    into *h*. Returns the bytes now in *target*."""
    with src.fs.open(src_path, "rb", block_size=CHUNK_BYTES) as fin:  # ranged reads of 1 MiB
        if done:
            fin.seek(done)
        mode = "ab" if done else "wb"
        with fs.open(target, mode, **(kwargs if mode == "wb" else {})) as fout:
            while data := fin.read(chunk):
                take(len(data))
                h.update(data)
                fout.write(data)
                done += len(data)
                if progress is not None:
                    progress(len(data))
            if fsync:
                fout.flush()
                os.fsync(fout.fileno())
    return done


def _hash_prefix(f: Any, h: Any, n: int) -> tuple[str, int]:
    left = n
    while left > 0 and (data := f.read(min(CHUNK_BYTES, left))):
        h.update(data)
        left -= len(data)
    return h.hexdigest(), n - left


def _discard(fs: Any, target: str, final: str, state: _Attempt) -> None:
    """Remove the temporary *target*; when that fails too (the connection dropped), remember
    it so a later attempt, on a fresh connection, removes it."""
    if target == final:
        return
    try:
        fs.rm_file(target)
    except FileNotFoundError:
        pass
    except Exception as e:
        log.debug("cannot remove %s now: %s", target, e)
        state.leftovers.append(target)


def _remove_leftovers(fs: Any, state: _Attempt) -> None:
    for target in list(state.leftovers):
        try:
            fs.rm_file(target)
        except FileNotFoundError:
            pass
        except Exception as e:
            log.warning("could not remove the temporary %s: %s", target, _one_line(e))
            continue
        state.leftovers.remove(target)


def _copy_multipart(
    src: Location,
    src_path: str,
    dst: Location,
    dst_path: str,
    size: int,
    attrs: FileAttrs,
    source_id: str,
    options: TransferOptions,
    state: _Attempt,
    tlog: TransferLog | None,
    progress: Progress | None,
) -> None:
    take, _ = _throttle(src, dst, options)
    with src.fs.open(src_path, "rb") as fin:
        res = multipart_upload(
            fin,
            dst.fs,
            dst_path,
            size=size,
            source_id=source_id,
            part_size_bytes=options.part_size_bytes,
            metadata=s3_metadata(attrs),
            tlog=tlog,
            take=take,
            progress=progress,
            counters=state,
        )
    state.digest, state.size = res.xxh3_128, res.size
    if options.checksum:
        _check(dst_path, _read_back(dst, dst_path), (res.xxh3_128, res.size))


def _copy_once(
    src: Location,
    src_path: str,
    dst: Location,
    dst_path: str,
    options: TransferOptions,
    state: _Attempt,
    tlog: TransferLog | None,
    progress: Progress | None,
) -> None:
    info = src.fs.info(src_path)
    if info.get("type") != "file":
        raise UsageError(f"{src_path} is not a regular file")
    size = int(info.get("size") or 0)
    state.size = size
    attrs = source_attrs(src.fs, src_path, info)
    source_id = f"{src_path}|{size}|{attrs.mtime_ns}|{info.get('ETag') or info.get('etag') or ''}"
    if fs_kind(dst.fs) == "s3" and size > options.multipart_threshold_bytes:
        _copy_multipart(src, src_path, dst, dst_path, size, attrs, source_id, options, state, tlog, progress)
    else:
        _copy_stream(src, src_path, dst, dst_path, size, attrs, source_id, options, state, progress)
    try:
        apply_attrs(dst.fs, dst_path, attrs)
    except OSError as e:
        log.warning("%s: could not keep mode/mtime: %s", dst_path, e)


def copy_file(
    src: Location,
    src_rel: str,
    dst: Location,
    dst_rel: str,
    *,
    options: TransferOptions | None = None,
    log: TransferLog | None = None,
    progress: Progress | None = None,
) -> TransferRecord:
    """Copy one file ``src/src_rel`` to ``dst/dst_rel``. Thread-safe.

    Args:
        src, dst: the locations; *src_rel*, *dst_rel* ``/``-separated paths below their roots
            (``""`` is the root itself, for a location that names a file).
        options: see :class:`TransferOptions` (default one).
        log: the transfer log to record the attempt in (and keep resume state); None: none.
        progress: called with each number of bytes moved (resumed bytes included at once).

    Returns:
        The finished :class:`~pool.transferlog.TransferRecord` (``status == "ok"``).

    Raises:
        TransferError: the copy failed after its retries, or at once for a non-transient
            error (missing source, permission, open circuit); the message says why.
        AuthError: the store rejected the credentials.
    """
    opts = options or TransferOptions()
    tlog = log
    src_path, dst_path = src.path(src_rel), dst.path(dst_rel)
    what_src, what_dst = _display(src, src_rel), _display(dst, dst_rel)
    rec = tlog.start(what_src, what_dst) if tlog is not None else TransferRecord(0, what_src, what_dst)
    breakers = _breakers(src, dst, opts, tlog)
    state = _Attempt()
    stale: list[tuple[Location, Any]] = []  # sides whose filesystem failed with a transient error
    retrying = tenacity.Retrying(
        stop=tenacity.stop_after_attempt(opts.retries + 1),
        wait=tenacity.wait_random_exponential(multiplier=opts.backoff_initial_s, max=opts.backoff_max_s),
        retry=tenacity.retry_if_exception(is_transient),
        reraise=True,
        before_sleep=lambda rs: _log_retry(what_src, rs),
    )
    error: BaseException | None = None
    try:
        for attempt in retrying:
            with attempt:
                rec.attempts = attempt.retry_state.attempt_number
                for b in breakers:
                    b.before()
                used = (src.fs, dst.fs)
                try:
                    while stale:  # a connection dropped last time: this attempt gets a new one
                        loc, failed = stale[-1]
                        loc.reconnect(failed)
                        stale.pop()
                    _remove_leftovers(dst.fs, state)
                    _copy_once(src, src_path, dst, dst_path, opts, state, tlog, progress)
                except Exception as e:
                    if is_transient(e):
                        for b in breakers:
                            b.failure()
                        if not stale and not _is_integrity(e):
                            stale = [(loc, fs) for loc, fs in ((src, used[0]), (dst, used[1])) if loc.reopen]
                    raise
                for b in breakers:
                    b.success()
    except Exception as e:
        error = e
    rec.bytes, rec.resumed_bytes, rec.parts_sent = state.size, state.resumed_bytes, state.parts_sent
    if error is None:
        rec.status, rec.xxh3_128 = "ok", state.digest
    else:
        rec.status, rec.error = "failed", _one_line(error)
    if tlog is not None:
        tlog.finish(rec)
    if opts.notify is not None:
        notify(rec, opts.notify)
    if error is not None:
        message = f"{what_src} -> {what_dst}: {rec.error}" + (
            f" (after {rec.attempts} attempts)" if rec.attempts > 1 else ""
        )
        if is_auth_error(error):
            raise AuthError(message) from None
        raise TransferError(message) from None
    return rec


def _is_integrity(e: BaseException) -> bool:
    while e is not None:
        if isinstance(e, IntegrityError):
            return True
        e = e.__cause__ or e.__context__  # type: ignore[assignment]
    return False


def _log_retry(what: str, rs: tenacity.RetryCallState) -> None:
    exc = rs.outcome.exception() if rs.outcome is not None else None
    wait = rs.next_action.sleep if rs.next_action is not None else 0.0
    log.warning(
        "%s: attempt %d failed (%s); retrying in %.1fs", what, rs.attempt_number, _one_line(exc) if exc else "?", wait
    )


# -- folders ---------------------------------------------------------------------------------------


@dataclass
class TreeResult:
    """What :func:`copy_tree` did: the records of copied files and the failures
    (``(relative path, one-line error)``)."""

    records: list[TransferRecord] = field(default_factory=list)
    failures: list[tuple[str, str]] = field(default_factory=list)

    @property
    def bytes(self) -> int:
        return sum(r.bytes for r in self.records)


def plan_tree(src: Location, dst: Location) -> list[tuple[str, str, int]]:
    """The files :func:`copy_tree` copies: ``(source rel, destination rel, size bytes)``.

    A source that is a file copies into the destination folder under its own name (as
    ``rclone copy`` does); a folder copies its contents, recursively.

    Raises:
        NotFoundError: the source does not exist. TransferError: it cannot be listed.
    """
    try:
        info = src.fs.info(src.root)
    except FileNotFoundError:
        raise NotFoundError(f"{src.display}: no such file or folder") from None
    except OSError as e:
        if is_auth_error(e):
            raise AuthError(f"{src.display}: {_one_line(e)}") from None
        raise TransferError(f"{src.display}: {_one_line(e)}") from None
    if info.get("type") == "file":
        name = src.root.rstrip("/").rpartition("/")[2]
        return [("", name, int(info.get("size") or 0))]
    out = []
    root = src.fs._strip_protocol(src.root).rstrip("/")
    for path, entry in sorted(src.fs.find(src.root, detail=True).items()):
        if entry.get("type") != "file":
            continue
        rel = src.fs._strip_protocol(path)[len(root) :].lstrip("/")
        if TMP_MARK in rel or PARTIAL_MARK in rel:
            continue
        out.append((rel, rel, int(entry.get("size") or 0)))
    return out


def copy_tree(
    src: Location,
    dst: Location,
    *,
    options: TransferOptions | None = None,
    log: TransferLog | None = None,
    progress: Progress | None = None,
    plan: list[tuple[str, str, int]] | None = None,
) -> list[TransferRecord]:
    """Copy a file or a folder (recursively, keeping mtimes and modes) from *src* into *dst*
    with ``options.transfers`` parallel workers. Every file is tried; failures are collected.

    Args:
        plan: the files to copy as :func:`plan_tree` returns them (computed when None).

    Returns:
        The records of the files copied.

    Raises:
        TransferError: one or more files failed (the message counts them and names the
            first); the others were copied. AuthError: credentials rejected.
    """
    result = copy_tree_result(src, dst, options=options, log=log, progress=progress, plan=plan)
    if result.failures:
        rel, err = result.failures[0]
        raise TransferError(
            f"{len(result.failures)} of {len(result.failures) + len(result.records)} file(s) failed;"
            f" first: {err} (see `darkstorage transfers --failed`)"
        )
    return result.records


def copy_tree_result(
    src: Location,
    dst: Location,
    *,
    options: TransferOptions | None = None,
    log: TransferLog | None = None,
    progress: Progress | None = None,
    plan: list[tuple[str, str, int]] | None = None,
) -> TreeResult:
    """:func:`copy_tree` without raising for failed files: returns a :class:`TreeResult`.

    Raises:
        AuthError: the credentials were rejected (the remaining files are not tried).
    """
    opts = options or TransferOptions()
    files = plan if plan is not None else plan_tree(src, dst)
    result = TreeResult()
    lock = threading.Lock()
    auth: list[AuthError] = []

    def one(src_rel: str, dst_rel: str) -> None:
        if auth:
            return
        try:
            rec = copy_file(src, src_rel, dst, dst_rel, options=opts, log=log, progress=progress)
        except AuthError as e:
            auth.append(e)
            return
        except DarkstorageError as e:
            with lock:
                result.failures.append((dst_rel, str(e)))
            return
        with lock:
            result.records.append(rec)

    with ThreadPoolExecutor(max_workers=max(1, opts.transfers), thread_name_prefix="transfer") as ex:
        futures = [ex.submit(one, s, d) for s, d, _ in files]
        for f in as_completed(futures):
            f.result()
    if auth:
        raise auth[0]
    result.failures.sort()
    return result
