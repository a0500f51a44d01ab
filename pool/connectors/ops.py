"""Store operations fsspec has no common API for: POSIX attributes as object metadata, storage
classes / access tiers, and archive restores. :class:`StoreOps` is the plain default (none of
them); :mod:`pool.connectors.s3` and :mod:`pool.connectors.azure` implement them."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import fsspec

ATTRS_META = "darkstorage-attrs"  #: metadata key holding ``{"mode", "uid", "gid", "mtime_ns"}`` as JSON


def encode_attrs(attrs: dict[str, int]) -> str:
    return json.dumps(attrs, sort_keys=True, separators=(",", ":"))


def decode_attrs(text: str | None) -> dict[str, int] | None:
    if not text:
        return None
    try:
        raw = json.loads(text)
        return {k: int(raw[k]) for k in ("mode", "uid", "gid", "mtime_ns")}
    except (ValueError, KeyError, TypeError):
        return None


@dataclass(slots=True)
class RestoreStatus:
    """What the store says about an object's restore: ``state`` is ``not-needed`` (readable
    now, not in an archive class), ``none`` (archived, no restore asked), ``pending`` or
    ``ready`` (a restored copy is readable)."""

    state: str
    detail: str = ""


class StoreOps:
    """Default store operations: nothing beyond fsspec.

    Args:
        fs: the integration's filesystem.
        storage_class: the class / access tier objects of this tier are stored in, or None.
    """

    #: storage-class names this store understands (empty: no classes)
    storage_classes: tuple[str, ...] = ()
    #: classes whose objects must be restored before reading
    archive_classes: tuple[str, ...] = ()

    def __init__(self, fs: fsspec.AbstractFileSystem, storage_class: str | None = None) -> None:
        self.fs = fs
        self.storage_class = storage_class

    @property
    def restores(self) -> bool:
        """True when objects of this tier need a store restore before reading."""
        return self.storage_class in self.archive_classes

    def write_kwargs(self, attrs: dict[str, int] | None) -> dict[str, Any]:
        """Extra keyword arguments for ``fs.open(path, "wb", ...)`` carrying *attrs*."""
        return {}

    def move(self, src: str, dst: str) -> None:
        """Move an object into place, leaving it in :attr:`storage_class`."""
        self.fs.mv(src, dst)

    def set_attrs(self, path: str, attrs: dict[str, int]) -> bool:
        """Record *attrs* with an existing object. Returns False where the store can't."""
        return False

    def get_attrs(self, path: str) -> dict[str, int] | None:
        """POSIX attributes recorded with the object, or None."""
        return None

    def storage_class_of(self, path: str) -> str | None:
        """The object's current storage class / access tier (None where the store has none)."""
        return None

    def request_restore(self, path: str, *, days: int = 1, expedited: bool = False) -> None:
        """Ask the store to make an archived object readable."""

    def restore_status(self, path: str) -> RestoreStatus:
        return RestoreStatus("not-needed")
