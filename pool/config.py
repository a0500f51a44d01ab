"""Pool configuration: where the pool lives and which backend serves each tier.

The pool home is ``$DARKSTORAGE_HOME`` if set, else the user data directory given by
platformdirs (``~/.local/share/darkstorage`` on Linux). It holds ``config.toml``,
``catalog.db`` (the catalog), ``cache/`` (the local page-in and write-back cache) and, for the
embedded default pool, ``tiers/<tier>/`` (one local directory per tier).

``config.toml`` shape::

    [pool]
    restore_latency_s = 3.0     # simulated restore time of local archive/offsite tiers
    restore_wait_s = 10.0       # how long open() waits for a restore before EAGAIN
    [cache]
    max_size_bytes = 10737418240
    [mount]
    write_back_s = 5.0
    [tiers.hot]
    url = "file:///home/me/.local/share/darkstorage/tiers/hot"
    options = {}                # passed to the fsspec filesystem constructor
    [tiers.cold]
    url = "integration:my-aws-backup/cold"   # a folder of a configured integration
    options = {storage_class = "STANDARD_IA"}  # tier options for integration URLs
    [integrations.my-aws-backup]   # see pool/integrations.py; never holds a secret
    kind = "s3"
    bucket = "backups"
    region = "us-east-1"
    secret_key_env = "AWS_SECRET"  # optional *_env reference instead of a stored secret
    revision = 3                   # bumped by every update: running mounts reconnect
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ConfigError, NotInitialisedError
from .tiers import TIERS

CONFIG_NAME = "config.toml"
_OWN_SECTIONS = ("pool", "cache", "mount", "tiers", "integrations")
DEFAULT_CACHE_MAX_BYTES = 10 << 30
DEFAULT_WRITE_BACK_S = 5.0
DEFAULT_RESTORE_LATENCY_S = 3.0
DEFAULT_RESTORE_WAIT_S = 10.0


def pool_home() -> Path:
    """The directory holding this user's pool (``$DARKSTORAGE_HOME`` overrides)."""
    env = os.environ.get("DARKSTORAGE_HOME")
    if env:
        return Path(env).expanduser().absolute()
    import platformdirs  # here: a command run with $DARKSTORAGE_HOME set need not import it

    return Path(platformdirs.user_data_dir("darkstorage", appauthor=False))


@dataclass
class TierConfig:
    """One tier's backend: an fsspec URL (``file:///srv/warm``, ``s3://bucket/prefix``) and options."""

    url: str
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class PoolConfig:
    """The parsed ``config.toml`` of one pool."""

    home: Path
    tiers: dict[str, TierConfig]
    cache_max_bytes: int = DEFAULT_CACHE_MAX_BYTES
    write_back_s: float = DEFAULT_WRITE_BACK_S
    restore_latency_s: float = DEFAULT_RESTORE_LATENCY_S
    restore_wait_s: float = DEFAULT_RESTORE_WAIT_S
    #: ``[integrations.NAME]`` tables as written (kind, options, ``*_env`` references, revision)
    integrations: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: sections this module does not interpret (``[notify]``, ...), written back unchanged
    other_sections: dict[str, Any] = field(default_factory=dict)

    @property
    def catalog_path(self) -> Path:
        return self.home / "catalog.db"

    @property
    def cache_dir(self) -> Path:
        return self.home / "cache"

    @property
    def run_dir(self) -> Path:
        """Runtime state of running mounts (one JSON file per mount)."""
        return self.home / "run"

    @classmethod
    def embedded_default(cls, home: Path) -> PoolConfig:
        """The pool used with no configuration: one local directory per tier under *home*."""
        tiers = {t: TierConfig(url=(home / "tiers" / t).as_uri()) for t in TIERS}
        return cls(home=home, tiers=tiers)

    @classmethod
    def load(cls, home: Path | None = None) -> PoolConfig:
        """Read ``config.toml`` from *home* (default :func:`pool_home`).

        Raises:
            NotInitialisedError: there is no pool at *home* yet.
            ConfigError: the file is not valid TOML or has bad values.
        """
        import tomllib  # here: commands that never read the configuration (a local sync) skip it

        home = home or pool_home()
        path = home / CONFIG_NAME
        try:
            raw = tomllib.loads(path.read_text())
        except FileNotFoundError:
            raise NotInitialisedError(f"no pool at {home}: run `darkstorage init` first") from None
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"{path}: {e}") from None
        try:
            tiers = {}
            for name, t in raw.get("tiers", {}).items():
                if name not in TIERS:
                    raise ConfigError(f"{path}: unknown tier {name!r} (tiers: {', '.join(TIERS)})")
                tiers[name] = TierConfig(url=str(t["url"]), options=dict(t.get("options", {})))
            if "hot" not in tiers:
                raise ConfigError(f"{path}: the hot tier needs a backend")
            pool, cache, mount = raw.get("pool", {}), raw.get("cache", {}), raw.get("mount", {})
            return cls(
                home=home,
                tiers=tiers,
                cache_max_bytes=int(cache.get("max_size_bytes", DEFAULT_CACHE_MAX_BYTES)),
                write_back_s=float(mount.get("write_back_s", DEFAULT_WRITE_BACK_S)),
                restore_latency_s=float(pool.get("restore_latency_s", DEFAULT_RESTORE_LATENCY_S)),
                restore_wait_s=float(pool.get("restore_wait_s", DEFAULT_RESTORE_WAIT_S)),
                integrations={str(n): dict(v) for n, v in raw.get("integrations", {}).items()},
                other_sections={k: v for k, v in raw.items() if k not in _OWN_SECTIONS},
            )
        except (KeyError, TypeError, ValueError) as e:
            raise ConfigError(f"{path}: bad value: {e}") from None

    def save(self) -> None:
        """Write ``config.toml`` atomically (temp file + rename)."""
        raw = {
            "pool": {"restore_latency_s": self.restore_latency_s, "restore_wait_s": self.restore_wait_s},
            "cache": {"max_size_bytes": self.cache_max_bytes},
            "mount": {"write_back_s": self.write_back_s},
            "tiers": {n: {"url": t.url, "options": t.options} for n, t in self.tiers.items()},
        }
        if self.integrations:
            raw["integrations"] = self.integrations
        for key, value in self.other_sections.items():
            raw.setdefault(key, value)
        self.home.mkdir(parents=True, exist_ok=True)
        tmp = self.home / (CONFIG_NAME + ".tmp")
        import tomli_w  # only commands that change the configuration write it

        tmp.write_text(tomli_w.dumps(raw))
        os.replace(tmp, self.home / CONFIG_NAME)
