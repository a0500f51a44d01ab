"""Resumable S3 multipart uploads (CreateMultipartUpload, UploadPart, ListParts,
CompleteMultipartUpload: https://docs.aws.amazon.com/AmazonS3/latest/userguide/mpuoverview.html).

The upload id and every completed part (number, ETag, size, MD5) go into the transfer log as
they finish, so an upload cut off by a dropped connection or a killed process continues with
the parts still missing: the kept parts are checked against the store's own ListParts and
against the MD5 of the source's bytes (a changed source starts over).

Integrity: the XXH3-128 of every source byte is computed on the way, and the object's ETag is
compared with the multipart ETag rule S3 documents: the MD5 of the concatenated binary part
MD5s, ``-`` and the part count.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import fsspec
from fsspec.asyn import sync

from .errors import IntegrityError
from .hashing import new_hasher
from .transferlog import Part, TransferLog

log = logging.getLogger(__name__)

MIN_PART_BYTES = 5 << 20
"""S3's smallest part (all but the last); SeaweedFS and MinIO accept smaller ones, which the
tests use to get many parts out of a few MB."""


@dataclass
class MultipartResult:
    """``size`` and ``xxh3_128`` of the bytes read, ``etag`` of the object, how many parts were
    sent now (``parts_sent``) and how many bytes earlier attempts had sent (``resumed_bytes``)."""

    size: int
    xxh3_128: str
    etag: str
    parts_sent: int
    resumed_bytes: int


def _call(fs: fsspec.AbstractFileSystem, method: str, **kw: Any) -> Any:
    return sync(fs.loop, fs._call_s3, method, **kw)  # type: ignore[attr-defined]


def multipart_etag(md5s: list[str]) -> str:
    """The ETag S3 gives a multipart object whose parts have the hex MD5s *md5s*."""
    return hashlib.md5(b"".join(bytes.fromhex(m) for m in md5s)).hexdigest() + f"-{len(md5s)}"


def _server_parts(fs: fsspec.AbstractFileSystem, bucket: str, key: str, upload_id: str) -> dict[int, str] | None:
    """``{part number: ETag}`` the store holds for the upload, or None if it does not know it."""
    out: dict[int, str] = {}
    marker = 0
    while True:
        try:
            resp = _call(fs, "list_parts", Bucket=bucket, Key=key, UploadId=upload_id, PartNumberMarker=marker)
        except (FileNotFoundError, OSError) as e:
            if isinstance(e, FileNotFoundError) or "NoSuchUpload" in repr(e) or "NoSuchUpload" in repr(e.__cause__):
                return None
            raise
        for p in resp.get("Parts", []):
            out[int(p["PartNumber"])] = str(p["ETag"])
        if not resp.get("IsTruncated"):
            return out
        marker = int(resp.get("NextPartNumberMarker", 0))


def multipart_upload(
    src: Any,
    fs: fsspec.AbstractFileSystem,
    path: str,
    *,
    size: int,
    source_id: str,
    part_size_bytes: int,
    metadata: dict[str, str],
    tlog: TransferLog | None,
    take: Callable[[int], None],
    progress: Callable[[int], None] | None = None,
    counters: Any = None,
) -> MultipartResult:
    """Upload the open source file *src* (read sequentially from 0) to S3 *path* in parts,
    continuing an upload the transfer log kept for *path* from the same *source_id*.

    *counters*, when given, has ``parts_sent`` and ``resumed_bytes`` attributes that are
    increased as each part is sent or found already stored (so a failed attempt still counts).

    Raises:
        IntegrityError: the completed object's ETag is not the one its parts give.
        OSError and client errors: from the store (the upload stays resumable).
    """
    bucket, key, _ = fs.split_path(path)  # type: ignore[attr-defined]
    upload_id: str | None = None
    done: dict[int, Part] = {}
    kept = tlog.multipart(path) if tlog is not None else None
    if kept is not None and tlog is not None:
        kept_source, kept_id, kept_part = kept
        server = (
            _server_parts(fs, bucket, key, kept_id)
            if kept_source == source_id and kept_part == part_size_bytes
            else None
        )
        if server is not None:
            upload_id = kept_id
            done = {n: p for n, p in tlog.multipart_parts(kept_id).items() if server.get(n) == p.etag}
            log.info("resuming upload of %s: %d part(s) already stored", path, len(done))
        else:
            try:
                _call(fs, "abort_multipart_upload", Bucket=bucket, Key=key, UploadId=kept_id)
            except OSError as e:
                log.debug("abort of stale upload %s failed: %s", kept_id, e)
            tlog.multipart_end(path)
    if upload_id is None:
        kw: dict[str, Any] = {"Metadata": metadata} if metadata else {}
        upload_id = str(_call(fs, "create_multipart_upload", Bucket=bucket, Key=key, **kw)["UploadId"])
        if tlog is not None:
            tlog.multipart_begin(path, source_id, upload_id, part_size_bytes)
    h = new_hasher()
    md5s: list[str] = []
    etags: list[dict[str, Any]] = []
    sent = resumed = total = 0
    number = 0
    while True:
        data = src.read(part_size_bytes)
        if not data and number > 0:
            break
        number += 1
        h.update(data)
        total += len(data)
        md5 = hashlib.md5(data).hexdigest()
        md5s.append(md5)
        prior = done.get(number)
        if prior is not None and prior.md5 == md5 and prior.size_bytes == len(data):
            resumed += len(data)
            if counters is not None:
                counters.resumed_bytes += len(data)
            etags.append({"PartNumber": number, "ETag": prior.etag})
            if progress is not None:
                progress(len(data))
        else:
            take(len(data))
            resp = _call(fs, "upload_part", Bucket=bucket, Key=key, UploadId=upload_id, PartNumber=number, Body=data)
            etag = str(resp["ETag"])
            if tlog is not None:
                tlog.multipart_part_done(upload_id, Part(number, etag, len(data), md5))
            etags.append({"PartNumber": number, "ETag": etag})
            sent += 1
            if counters is not None:
                counters.parts_sent += 1
            if progress is not None:
                progress(len(data))
        if len(data) < part_size_bytes:
            break
    if total != size:
        raise IntegrityError(f"{path}: read {total} bytes from a {size}-byte source (it changed during the copy)")
    resp = _call(
        fs, "complete_multipart_upload", Bucket=bucket, Key=key, UploadId=upload_id, MultipartUpload={"Parts": etags}
    )
    if tlog is not None:
        tlog.multipart_end(path)
    etag = str(resp.get("ETag", "")).strip('"')
    expected = multipart_etag(md5s)
    if etag and "-" in etag and etag != expected:
        raise IntegrityError(f"{path}: the store's ETag {etag} is not {expected} (the parts' MD5s)")
    fs.invalidate_cache(path)
    return MultipartResult(total, h.hexdigest(), etag, sent, resumed)
