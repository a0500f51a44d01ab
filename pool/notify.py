"""Notification hooks for transfers: a command and/or a webhook URL, run when a transfer fails
and when one above a size threshold finishes.

Configured in the pool's ``config.toml``::

    [notify]
    command = "notify-send darkstorage"       # run with the event as JSON on stdin
    webhook_url = "https://hooks.example.com/darkstorage"   # POSTed the same JSON
    size_threshold_bytes = 1073741824       # also notify on successful transfers this big
    timeout_s = 10

The event is a JSON object: ``event`` (``transfer.failed`` or ``transfer.large``), ``source``,
``destination``, ``bytes``, ``status``, ``error``, ``attempts``, ``duration_ns``,
``finished_ns``. The command also gets ``DARKSTORAGE_EVENT``, ``DARKSTORAGE_SOURCE``,
``DARKSTORAGE_DESTINATION`` and ``DARKSTORAGE_STATUS`` in its environment; it is split like a
shell word list (``shlex``) and run without a shell. A hook that fails is logged and never
fails the transfer.
"""

from __future__ import annotations

import json
import logging
import os
import shlex
import subprocess
import tomllib
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .config import CONFIG_NAME, pool_home
from .errors import ConfigError
from .transferlog import TransferRecord

log = logging.getLogger(__name__)


@dataclass
class NotifyConfig:
    """The ``[notify]`` section: ``command``, ``webhook_url``, ``size_threshold_bytes``
    (None: notify on failures only), ``timeout_s`` for each hook."""

    command: str | None = None
    webhook_url: str | None = None
    size_threshold_bytes: int | None = None
    timeout_s: float = 10.0

    @property
    def enabled(self) -> bool:
        return bool(self.command or self.webhook_url)

    @classmethod
    def load(cls, home: Path | None = None) -> NotifyConfig:
        """Read ``[notify]`` from the pool's ``config.toml`` (empty config when absent).

        Raises:
            ConfigError: the section has bad values.
        """
        path = (home or pool_home()) / CONFIG_NAME
        try:
            raw = tomllib.loads(path.read_text()).get("notify", {})
        except FileNotFoundError:
            return cls()
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"{path}: {e}") from None
        try:
            threshold = raw.get("size_threshold_bytes")
            url = raw.get("webhook_url")
            if url is not None and not str(url).startswith(("http://", "https://")):
                raise ValueError(f"webhook_url must be an http(s) URL, not {url!r}")
            return cls(
                command=raw.get("command") or None,
                webhook_url=str(url) if url else None,
                size_threshold_bytes=int(threshold) if threshold is not None else None,
                timeout_s=float(raw.get("timeout_s", 10.0)),
            )
        except (TypeError, ValueError) as e:
            raise ConfigError(f"{path}: [notify]: {e}") from None


def event_for(rec: TransferRecord, config: NotifyConfig) -> str | None:
    """The event a finished transfer raises under *config*, or None."""
    if rec.status == "failed":
        return "transfer.failed"
    if rec.status == "ok" and config.size_threshold_bytes is not None and rec.bytes >= config.size_threshold_bytes:
        return "transfer.large"
    return None


def notify(rec: TransferRecord, config: NotifyConfig) -> str | None:
    """Run the hooks for a finished transfer if it raises an event. Returns the event sent."""
    if not config.enabled:
        return None
    event = event_for(rec, config)
    if event is None:
        return None
    payload: dict[str, Any] = {
        "event": event,
        "source": rec.source,
        "destination": rec.destination,
        "bytes": rec.bytes,
        "status": rec.status,
        "error": rec.error,
        "attempts": rec.attempts,
        "duration_ns": rec.duration_ns,
        "finished_ns": rec.finished_ns,
    }
    body = json.dumps(payload).encode()
    if config.command:
        env = {
            **os.environ,
            "DARKSTORAGE_EVENT": event,
            "DARKSTORAGE_SOURCE": rec.source,
            "DARKSTORAGE_DESTINATION": rec.destination,
            "DARKSTORAGE_STATUS": rec.status,
        }
        try:
            res = subprocess.run(
                shlex.split(config.command),
                input=body,
                env=env,
                capture_output=True,
                timeout=config.timeout_s,
                check=False,
            )
            if res.returncode != 0:
                log.warning("notify command exited %d: %s", res.returncode, res.stderr.decode(errors="replace")[:200])
        except (OSError, ValueError, subprocess.TimeoutExpired) as e:
            log.warning("notify command failed: %s", e)
    if config.webhook_url:
        req = urllib.request.Request(
            config.webhook_url,
            data=body,
            method="POST",
            headers={"Content-Type": "application/json", "User-Agent": "darkstorage"},
        )
        try:
            with urllib.request.urlopen(req, timeout=config.timeout_s) as resp:
                resp.read()
        except (urllib.error.URLError, OSError, ValueError) as e:
            log.warning("notify webhook %s failed: %s", config.webhook_url, e)
    return event
