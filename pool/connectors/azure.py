"""Azure Blob Storage and ADLS Gen2 through adlfs; access tiers and rehydration through
azure-storage-blob (``Set Blob Tier``: an Archive blob is rehydrated by setting it to Hot or
Cool; ``x-ms-archive-status: rehydrate-pending-to-*`` while that runs).

ADLS Gen2 accounts (hierarchical namespace) are served through their Blob endpoint, which
Azure keeps multi-protocol, so the one connector covers both (``adls`` is an alias).
"""

from __future__ import annotations

from typing import Any

import fsspec

from . import TIMEOUT, Kind, Option
from .ops import ATTRS_META, RestoreStatus, StoreOps, decode_attrs, encode_attrs

ACCESS_TIERS = ("Hot", "Cool", "Cold", "Archive")


def connection_string(opts: dict[str, Any], secrets: dict[str, str]) -> str | None:
    """The connection string of an azure integration: the stored one, else one built from the
    account, its key or SAS token and the endpoint (default the public cloud's); None for
    anonymous access."""
    if secrets.get("connection_string"):
        return secrets["connection_string"]
    account = opts.get("account_name")
    if not account:
        return None
    ep = str(opts.get("endpoint") or f"https://{account}.blob.core.windows.net").rstrip("/")
    scheme = ep.split("://", 1)[0] if "://" in ep else "https"
    if secrets.get("account_key"):
        return (
            f"DefaultEndpointsProtocol={scheme};AccountName={account};"
            f"AccountKey={secrets['account_key']};BlobEndpoint={ep};"
        )
    if secrets.get("sas_token"):
        return f"BlobEndpoint={ep};SharedAccessSignature={secrets['sas_token'].lstrip('?')};"
    return None


def _client_kwargs(opts: dict[str, Any], aio: bool) -> dict[str, Any]:
    """Timeouts and a short retry policy: azure-storage-blob's default (15 s initial back-off,
    x3 per retry) keeps an unreachable endpoint busy for over a minute."""
    if aio:
        from azure.storage.blob.aio import ExponentialRetry as AioRetry

        retry: Any = AioRetry(initial_backoff=1, increment_base=2, retry_total=2, random_jitter_range=1)
    else:
        from azure.storage.blob import ExponentialRetry

        retry = ExponentialRetry(initial_backoff=1, increment_base=2, retry_total=2, random_jitter_range=1)
    timeout = int(float(opts.get("timeout_s") or TIMEOUT.default))
    return {"retry_policy": retry, "connection_timeout": timeout}


def build(opts: dict[str, Any], secrets: dict[str, str]) -> tuple[fsspec.AbstractFileSystem, str]:
    from adlfs import AzureBlobFileSystem
    from azure.storage.blob.aio import BlobServiceClient as AioBlobServiceClient

    timeout = int(float(opts.get("timeout_s") or TIMEOUT.default))
    cs = connection_string(opts, secrets)
    if cs:
        fs = AzureBlobFileSystem(connection_string=cs, connection_timeout=timeout, skip_instance_cache=True)
        # adlfs has no way to pass a retry policy: give it a client built with one
        fs.service_client = AioBlobServiceClient.from_connection_string(cs, **_client_kwargs(opts, aio=True))
    else:
        fs = AzureBlobFileSystem(
            account_name=opts.get("account_name"), connection_timeout=timeout, skip_instance_cache=True
        )
    base = "/".join(p.strip("/") for p in (opts.get("container"), opts.get("prefix")) if p)
    return fs, base


class AzureOps(StoreOps):
    """Blob metadata (``darkstorage-attrs``; Azure metadata names must be C# identifiers, so
    ``darkstorage_attrs``), access tiers and rehydration."""

    storage_classes = ACCESS_TIERS
    archive_classes = ("Archive",)

    def __init__(
        self,
        fs: fsspec.AbstractFileSystem,
        storage_class: str | None = None,
        *,
        opts: dict[str, Any] | None = None,
        secrets: dict[str, str] | None = None,
    ) -> None:
        super().__init__(fs, storage_class)
        from azure.storage.blob import BlobServiceClient

        opts, secrets = opts or {}, secrets or {}
        cs = connection_string(opts, secrets)
        if cs:
            self.service = BlobServiceClient.from_connection_string(cs, **_client_kwargs(opts, aio=False))
        else:
            self.service = BlobServiceClient(
                f"https://{opts.get('account_name')}.blob.core.windows.net", **_client_kwargs(opts, aio=False)
            )

    _META = ATTRS_META.replace("-", "_")

    def _blob(self, path: str) -> Any:
        container, _, name = path.partition("/")
        return self.service.get_blob_client(container, name)

    def write_kwargs(self, attrs: dict[str, int] | None) -> dict[str, Any]:
        return {"metadata": {self._META: encode_attrs(attrs)}} if attrs is not None else {}

    def move(self, src: str, dst: str) -> None:
        self.fs.mv(src, dst)
        if self.storage_class:
            self._blob(dst).set_standard_blob_tier(self.storage_class)

    def set_attrs(self, path: str, attrs: dict[str, int]) -> bool:
        blob = self._blob(path)
        meta = dict(blob.get_blob_properties().metadata or {})
        meta[self._META] = encode_attrs(attrs)
        blob.set_blob_metadata(meta)  # metadata can change even on an archived blob
        return True

    def get_attrs(self, path: str) -> dict[str, int] | None:
        meta = self._blob(path).get_blob_properties().metadata or {}
        return decode_attrs(meta.get(self._META))

    def storage_class_of(self, path: str) -> str | None:
        tier = self._blob(path).get_blob_properties().blob_tier
        return str(tier) if tier else None

    def request_restore(self, path: str, *, days: int = 1, expedited: bool = False) -> None:
        # rehydrate to Hot (the blob then stays Hot until the tier is set again)
        self._blob(path).set_standard_blob_tier("Hot", rehydrate_priority="High" if expedited else "Standard")

    def restore_status(self, path: str) -> RestoreStatus:
        props = self._blob(path).get_blob_properties()
        status = props.archive_status or ""
        if status.startswith("rehydrate-pending"):
            return RestoreStatus("pending", status)
        if props.blob_tier == "Archive":
            return RestoreStatus("none")
        return RestoreStatus("ready" if self.restores else "not-needed")


_OPTIONS = (
    Option("account_name", "Storage account name."),
    Option("container", "Container name.", required=True),
    Option("prefix", "Path prefix inside the container."),
    Option("endpoint", "Blob endpoint URL (Azurite, sovereign clouds); default the public cloud."),
    Option("access_tier", "Default access tier for writes.", choices=ACCESS_TIERS),
    Option("account_key", "Account key.", secret=True),
    Option("connection_string", "Connection string (instead of account name + key).", secret=True),
    Option("sas_token", "Shared access signature token.", secret=True),
    TIMEOUT,
)

_EXAMPLE = "darkstorage integrations add {} --name my-azure --account-name acct --container backups --account-key KEY"

KINDS = [
    Kind("azure", "Azure Blob Storage / ADLS Gen2", "adlfs", _OPTIONS, build, _EXAMPLE.format("azure")),
    Kind(
        "adls",
        "Azure Data Lake Storage Gen2 (Blob endpoint)",
        "adlfs",
        _OPTIONS,
        build,
        _EXAMPLE.format("adls"),
        base="azure",
    ),
]
