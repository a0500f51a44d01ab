"""Connector kinds: what each external store needs (options, secrets) and how it becomes an
fsspec filesystem.

A connector kind is a :class:`Kind`: its options (saved in ``[integrations.NAME]`` of the pool
config), its secret fields (kept by :mod:`pool.credentials`, never in the config) and a builder
returning ``(filesystem, base path)``. Aliases (``wasabi``, ``ftps``, ``nfs``, ...) are kinds
with preset options. Stores the user's documents name that have no usable fsspec backend here
are listed in :data:`NOT_AVAILABLE` with the reason.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import fsspec

#: gcsfs probes for hierarchical-namespace buckets with a call that stalls ~60 s against
#: emulators and some proxies; turn the probe off before gcsfs is first imported.
os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")

DEFAULT_TIMEOUT_S = 10.0

Builder = Callable[[dict[str, Any], dict[str, str]], tuple[fsspec.AbstractFileSystem, str]]


@dataclass(frozen=True)
class Option:
    """One setting of a connector kind.

    ``name`` is the config key (``snake_case``); the CLI flag is ``--name-with-dashes``. A
    ``secret`` option goes to the credential store (or an ``<name>_env`` reference); a ``flag``
    is a boolean switch; ``choices`` limits the values.
    """

    name: str
    help: str
    secret: bool = False
    required: bool = False
    default: Any = None
    flag: bool = False
    choices: tuple[str, ...] | None = None
    type: type = str

    @property
    def flag_name(self) -> str:
        return "--" + self.name.replace("_", "-")


@dataclass(frozen=True)
class Kind:
    """A connector kind: ``name``, a one-line ``label``, its ``options``, the fsspec
    ``backend`` package it uses, its builder and an ``example`` command line."""

    name: str
    label: str
    backend: str
    options: tuple[Option, ...]
    build: Builder
    example: str
    preset: dict[str, Any] = field(default_factory=dict)  #: fixed options of an alias
    base: str | None = None  #: the kind an alias stands for

    @property
    def secret_fields(self) -> list[str]:
        return [o.name for o in self.options if o.secret]

    def option(self, name: str) -> Option | None:
        return next((o for o in self.options if o.name == name), None)


TIMEOUT = Option("timeout_s", "Connect timeout in seconds.", default=DEFAULT_TIMEOUT_S, type=float)

#: Stores named in the user's documents that have no connector, with the honest reason.
NOT_AVAILABLE: dict[str, str] = {
    "dropbox": "needs an OAuth app on dropbox.com; no Dropbox endpoint is reachable or testable here "
    "(dropboxdrivefs exists but cannot be verified, so it is not offered)",
    "onedrive": "needs Microsoft Graph OAuth; no maintained fsspec backend for OneDrive",
    "box": "needs an OAuth app on box.com, which cannot be reached or tested here",
    "hdfs": "fsspec's HDFS backend needs pyarrow with libhdfs and a Java Hadoop client; no Hadoop "
    "cluster to test against (mount HDFS through its NFS gateway and use `local` instead)",
    "ipfs": "ipfsspec is read-only (gateway fetches); a pool tier or sync target needs writes",
    "filecoin": "no fsspec backend; storage deals are not a file API",
    "arweave": "no fsspec backend; Arweave is write-once (no delete, no overwrite)",
    "sia": "no fsspec backend for renterd/Sia",
    "storj-native": "the native uplink library (access grants) has no Python fsspec backend: use "
    "`integrations add storj` (the Storj S3 gateway) with gateway credentials",
}


def kinds() -> dict[str, Kind]:
    """Every available connector kind and alias, by name."""
    from . import azure, basic, s3

    out: dict[str, Kind] = {}
    for mod in (s3, azure, basic):
        for k in mod.KINDS:
            out[k.name] = k
    return out


def kind(name: str) -> Kind:
    """The connector kind *name*.

    Raises:
        UnsupportedError: a store without a connector (:data:`NOT_AVAILABLE`).
        UsageError: an unknown name.
    """
    from ..errors import UnsupportedError, UsageError

    all_kinds = kinds()
    if name in all_kinds:
        return all_kinds[name]
    if name in NOT_AVAILABLE:
        raise UnsupportedError(f"{name} is not available: {NOT_AVAILABLE[name]}")
    raise UsageError(f"unknown integration kind {name!r} (see `darkstorage integrations list`)")
