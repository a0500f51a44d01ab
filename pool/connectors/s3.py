"""S3-compatible stores through s3fs: AWS, MinIO, Backblaze B2, Wasabi, DigitalOcean Spaces and
the Storj S3 gateway (one connector, endpoint presets), storage classes and Glacier restores.

Restore follows the S3 API reference: ``RestoreObject`` starts it, ``HeadObject`` answers with
the ``x-amz-restore`` header (``ongoing-request="true"`` while pending,
``ongoing-request="false", expiry-date="..."`` once the restored copy is readable).
"""

from __future__ import annotations

import logging
from typing import Any

import fsspec

from . import TIMEOUT, Kind, Option
from .ops import ATTRS_META, RestoreStatus, StoreOps, decode_attrs, encode_attrs

log = logging.getLogger(__name__)

#: endpoint templates of the presets (``{region}`` filled in); None: AWS's own resolution
PRESETS: dict[str, tuple[str | None, str]] = {
    "aws": (None, "us-east-1"),
    "minio": ("", "us-east-1"),  # --endpoint required
    "backblaze-b2": ("https://s3.{region}.backblazeb2.com", "us-west-004"),
    "wasabi": ("https://s3.{region}.wasabisys.com", "us-east-1"),
    "digitalocean-spaces": ("https://{region}.digitaloceanspaces.com", "nyc3"),
    "storj": ("https://gateway.storjshare.io", "us-1"),
    "custom": ("", "us-east-1"),
}

STORAGE_CLASSES = (
    "STANDARD",
    "STANDARD_IA",
    "ONEZONE_IA",
    "INTELLIGENT_TIERING",
    "GLACIER_IR",
    "GLACIER",
    "DEEP_ARCHIVE",
    "REDUCED_REDUNDANCY",
)
ARCHIVE_CLASSES = ("GLACIER", "DEEP_ARCHIVE")


def endpoint_for(opts: dict[str, Any]) -> str | None:
    """The endpoint URL of an s3 integration: ``endpoint`` if set, else the preset's."""
    if opts.get("endpoint"):
        ep = str(opts["endpoint"])
        return ep if "://" in ep else "https://" + ep
    template, default_region = PRESETS.get(str(opts.get("preset") or "aws"), PRESETS["custom"])
    if template is None:
        return None
    return template.format(region=opts.get("region") or default_region) or None


def build(opts: dict[str, Any], secrets: dict[str, str]) -> tuple[fsspec.AbstractFileSystem, str]:
    from s3fs import S3FileSystem

    preset = str(opts.get("preset") or "aws")
    endpoint = endpoint_for(opts)
    if endpoint is None and preset not in ("aws",):
        from ..errors import ConfigError

        raise ConfigError(f"s3 preset {preset} needs --endpoint")
    timeout = float(opts.get("timeout_s") or TIMEOUT.default)
    region = opts.get("region") or PRESETS.get(preset, PRESETS["custom"])[1]
    config: dict[str, Any] = {
        "connect_timeout": timeout,
        "read_timeout": max(60.0, timeout),
        "retries": {"max_attempts": 2, "mode": "standard"},
    }
    if opts.get("path_style"):
        config["s3"] = {"addressing_style": "path"}
    anon = not secrets.get("access_key")
    fs = S3FileSystem(
        key=secrets.get("access_key"),
        secret=secrets.get("secret_key"),
        token=secrets.get("session_token"),
        anon=anon,
        endpoint_url=endpoint,
        client_kwargs={"region_name": region},
        config_kwargs=config,
        skip_instance_cache=True,
    )
    base = "/".join(p.strip("/") for p in (opts.get("bucket"), opts.get("prefix")) if p)
    return fs, base


class S3Ops(StoreOps):
    """S3 object metadata (``x-amz-meta-darkstorage-attrs``), storage classes and restores."""

    storage_classes = STORAGE_CLASSES
    archive_classes = ARCHIVE_CLASSES

    def _split(self, path: str) -> tuple[str, str]:
        bucket, _, key = path.partition("/")
        return bucket, key

    def write_kwargs(self, attrs: dict[str, int] | None) -> dict[str, Any]:
        # written in STANDARD first: the copy into place sets the class, so a temporary object
        # can be read back for verification even on an archive tier
        return {"Metadata": {ATTRS_META: encode_attrs(attrs)}} if attrs is not None else {}

    def _copy(self, src: str, dst: str, **extra: Any) -> None:
        sb, sk = self._split(src)
        db, dk = self._split(dst)
        kw: dict[str, Any] = {"Bucket": db, "Key": dk, "CopySource": {"Bucket": sb, "Key": sk}}
        if self.storage_class:
            kw["StorageClass"] = self.storage_class
        kw.update(extra)
        try:
            self.fs.call_s3("copy_object", **kw)
        finally:
            self.fs.invalidate_cache(dst)

    def move(self, src: str, dst: str) -> None:
        size = self.fs.info(src)["size"]
        if size > 5 * 1024**3:  # CopyObject's limit: let s3fs copy by parts
            self.fs.mv(src, dst)
        else:
            self._copy(src, dst)
            self.fs.rm_file(src)

    def set_attrs(self, path: str, attrs: dict[str, int]) -> bool:
        head = self._head(path)
        cls = head.get("StorageClass")
        if cls in ARCHIVE_CLASSES:
            return False  # copying an archived object in place needs a restore first
        extra: dict[str, Any] = {
            "Metadata": {**head.get("Metadata", {}), ATTRS_META: encode_attrs(attrs)},
            "MetadataDirective": "REPLACE",
        }
        if cls and not self.storage_class:
            extra["StorageClass"] = cls
        self._copy(path, path, **extra)
        return True

    def _head(self, path: str) -> dict[str, Any]:
        bucket, key = self._split(path)
        out: dict[str, Any] = self.fs.call_s3("head_object", Bucket=bucket, Key=key)
        return out

    def get_attrs(self, path: str) -> dict[str, int] | None:
        return decode_attrs(self._head(path).get("Metadata", {}).get(ATTRS_META))

    def storage_class_of(self, path: str) -> str | None:
        return str(self._head(path).get("StorageClass") or "STANDARD")

    def request_restore(self, path: str, *, days: int = 1, expedited: bool = False) -> None:
        bucket, key = self._split(path)
        tier = "Expedited" if expedited and self.storage_class != "DEEP_ARCHIVE" else "Standard"
        try:
            self.fs.call_s3(
                "restore_object",
                Bucket=bucket,
                Key=key,
                RestoreRequest={"Days": days, "GlacierJobParameters": {"Tier": tier}},
            )
        except OSError as e:
            # RestoreAlreadyInProgress (409) is not an error for an idempotent request
            if "RestoreAlreadyInProgress" not in str(e) and "409" not in str(e):
                raise

    def restore_status(self, path: str) -> RestoreStatus:
        head = self._head(path)
        if head.get("StorageClass") not in ARCHIVE_CLASSES:
            return RestoreStatus("not-needed")
        restore = head.get("Restore")
        if not restore:
            return RestoreStatus("none")
        if 'ongoing-request="true"' in restore:
            return RestoreStatus("pending", restore)
        return RestoreStatus("ready", restore)


_S3_OPTIONS = (
    Option("bucket", "Bucket name.", required=True),
    Option("prefix", "Key prefix inside the bucket."),
    Option("preset", "Endpoint preset.", default="aws", choices=tuple(PRESETS)),
    Option("endpoint", "Endpoint URL (MinIO, SeaweedFS, any S3-compatible store)."),
    Option("region", "Region (preset default if omitted)."),
    Option("path_style", "Path-style addressing (most self-hosted stores).", flag=True),
    Option("storage_class", "Default storage class for writes.", choices=STORAGE_CLASSES),
    Option("access_key", "Access key id.", secret=True),
    Option("secret_key", "Secret access key.", secret=True),
    Option("session_token", "Session token (temporary credentials).", secret=True),
    TIMEOUT,
)


def _alias(name: str, label: str) -> Kind:
    return Kind(
        name,
        label,
        "s3fs",
        _S3_OPTIONS,
        build,
        f"darkstorage integrations add {name} --name my-{name} --bucket b --access-key KEY --secret-key SECRET",
        preset={"preset": name},
        base="s3",
    )


KINDS = [
    Kind(
        "s3",
        "S3-compatible object storage (presets: " + ", ".join(p for p in PRESETS if p != "custom") + ")",
        "s3fs",
        _S3_OPTIONS,
        build,
        "darkstorage integrations add s3 --name my-aws-backup --bucket backups --region us-east-1 "
        "--access-key AKIA... --secret-key ...",
    ),
    _alias("aws", "Amazon S3"),
    _alias("minio", "MinIO (needs --endpoint)"),
    _alias("backblaze-b2", "Backblaze B2 (S3 API)"),
    _alias("wasabi", "Wasabi"),
    _alias("digitalocean-spaces", "DigitalOcean Spaces"),
    _alias("storj", "Storj DCS through its S3 gateway"),
]
