"""The pool: opening and creating it, buckets, paths and placement, and recovery after a
crash. Object operations (write-back upload, re-keys, trash) live in :mod:`pool.objects`, tier
moves and restores in :mod:`pool.tiering`; :class:`Pool` has them all.
"""

from __future__ import annotations

import logging
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path

from .backends import StoredObject
from .catalog import ROOT, now_ns
from .config import PoolConfig, pool_home
from .errors import DarkstorageError, ExistsError, NotEmptyError, NotFoundError, UsageError
from .objects import UploadJob, key_component
from .tiering import RestoreState, Tiering
from .tiers import DEFAULT_TIER, check_tier

log = logging.getLogger(__name__)

_BUCKET_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,254}$")


@dataclass(slots=True)
class BucketInfo:
    name: str
    files: int
    bytes: int
    created_ns: int


class Pool(Tiering):
    """An open pool.

    Args:
        config: the pool's configuration (see :class:`PoolConfig`).

    Raises:
        ConfigError: a tier's backend cannot be built.
    """

    @classmethod
    def open(cls, home: Path | None = None) -> Pool:
        """Open the pool at *home* (default :func:`pool_home`).

        Raises:
            NotInitialisedError: no pool there yet.
        """
        return cls(PoolConfig.load(home))

    @classmethod
    def init(cls, home: Path | None = None) -> tuple[Pool, bool]:
        """Open the pool at *home*, creating the embedded default pool first if there is none.

        Returns:
            ``(pool, created)``.
        """
        home = home or pool_home()
        created = not (home / "config.toml").exists()
        if created:
            home.mkdir(parents=True, exist_ok=True)
            PoolConfig.embedded_default(home).save()
        pool = cls.open(home)
        pool.config.cache_dir.mkdir(parents=True, exist_ok=True)
        for b in pool.backends.values():
            b.ensure_root()
        return pool, created

    # -- buckets ------------------------------------------------------------------------------

    @staticmethod
    def check_bucket_name(name: str) -> str:
        if not _BUCKET_RE.match(name) or name in (".", ".."):
            raise UsageError(
                f"bad bucket name {name!r}: use letters, digits, '.', '_' and '-', starting with a letter or digit"
            )
        return name

    def create_bucket(self, name: str, *, uid: int | None = None, gid: int | None = None, mode: int = 0o755) -> int:
        """Create a bucket (a directory under the root). Returns its inode.

        Raises:
            UsageError: bad name. ExistsError: a bucket or entry of that name exists.
        """
        self.check_bucket_name(name)
        cat = self.catalog
        t = now_ns()
        with cat.tx():
            if cat.lookup(ROOT, name.encode()) is not None:
                raise ExistsError(f"bucket {name} already exists")
            a = cat.new_inode(
                stat.S_IFDIR | mode,
                os.getuid() if uid is None else uid,
                os.getgid() if gid is None else gid,
                t,
                nlink=2,
            )
            self.register_bucket_dir(name, a.id, t)
        return a.id

    def register_bucket_dir(self, name: str, ino: int, t: int) -> None:
        """Link directory *ino* under the root as bucket *name* (inside a transaction)."""
        cat = self.catalog
        cat.add_entry(ROOT, name.encode(), ino)
        cat.db.execute("INSERT INTO buckets (name, inode, created_ns) VALUES (?, ?, ?)", (name, ino, t))
        root = cat.get(ROOT)
        assert root is not None
        cat.update(ROOT, nlink=root.nlink + 1, mtime_ns=t, ctime_ns=t)

    def remove_bucket(self, name: str, *, force: bool = False) -> int:
        """Remove a bucket; with *force* also everything in it. Returns files removed.

        Raises:
            NotFoundError: no such bucket. NotEmptyError: not empty and not *force*.
            BusyError: files in it are still waiting for upload and not *force*.
        """
        cat = self.catalog
        ino = cat.bucket_inode(name)
        if ino is None:
            raise NotFoundError(f"no bucket {name}")
        if not cat.is_empty(ino) and not force:
            raise NotEmptyError(f"bucket {name} is not empty (use --force to remove it and its files)")
        removed = 0
        t = now_ns()
        with cat.tx():
            # depth-first removal of the whole subtree
            stack = [ino]
            order: list[int] = []
            while stack:
                d = stack.pop()
                order.append(d)
                for _, _, a in cat.list_dir(d, 0, 1 << 62):
                    if a.is_dir:
                        stack.append(a.id)
                    else:
                        order.append(a.id)
            for i in order:
                cat.drop_entries_of(i)
            seen = set()
            for i in order:
                if i in seen:
                    continue
                seen.add(i)
                node = cat.get(i)
                if node is None:
                    continue
                remaining = cat.db.execute("SELECT count(*) FROM dentries WHERE inode = ?", (i,)).fetchone()[0]
                if remaining and not node.is_dir:
                    cat.update(i, nlink=remaining, ctime_ns=t)  # hard link from another bucket
                    continue
                if cat.delete_inode(i) is not None:
                    removed += 1
                self._drop_cache_file(i)
            cat.db.execute("DELETE FROM buckets WHERE name = ?", (name,))
            cat.db.execute("DELETE FROM placement WHERE bucket = ?", (name,))
            root = cat.get(ROOT)
            assert root is not None
            cat.update(ROOT, nlink=root.nlink - 1, mtime_ns=t, ctime_ns=t)
        # delete the objects now, not at the next mount (whatever fails stays in the trash)
        try:
            while cat.trash_items(1):
                self.process_trash()
        except DarkstorageError as e:
            log.warning("bucket %s removed; some of its objects are left for later: %s", name, e)
        return removed

    def _drop_stray_cache_files(self) -> int:
        """Delete cache files named after no file in the catalog; returns how many."""
        try:
            names = os.listdir(self.config.cache_dir)
        except FileNotFoundError:
            return 0
        known = {r[0] for r in self.catalog.db.execute("SELECT inode FROM objects")}
        dropped = 0
        for name in names:
            if name.isdigit() and int(name) not in known:
                self._drop_cache_file(int(name))
                dropped += 1
        return dropped

    def _drop_cache_file(self, ino: int) -> None:
        try:
            os.unlink(self.cache_path(ino))
        except FileNotFoundError:
            pass

    def bucket_infos(self) -> list[BucketInfo]:
        out = []
        for name, ino, created in self.catalog.buckets():
            files = self.catalog.descendant_files(ino)
            total = 0
            if files:
                q = ",".join("?" * len(files))
                total = self.catalog.db.execute(
                    f"SELECT coalesce(sum(size), 0) FROM inodes WHERE id IN ({q})", files
                ).fetchone()[0]
            out.append(BucketInfo(name, len(files), total, created))
        return out

    # -- paths and keys -----------------------------------------------------------------------

    def placement_tier(self, parent: int, name: bytes) -> str:
        """Tier for a new file *name* in directory *parent*: the longest matching
        ``tiers set`` prefix of its bucket, else ``hot``."""
        if self.catalog.db.execute("SELECT 1 FROM placement LIMIT 1").fetchone() is None:
            return DEFAULT_TIER  # no rules anywhere: skip the path walk
        parts = self.catalog.path_of(parent)
        if not parts:
            return DEFAULT_TIER
        bucket = parts[0].decode("utf-8", "surrogateescape")
        rules = self.catalog.placements(bucket)
        if not rules:
            return DEFAULT_TIER
        rel = "/".join(p.decode("utf-8", "surrogateescape") for p in [*parts[1:], name])
        best, best_len = DEFAULT_TIER, -1
        for _, prefix, tier in rules:
            if (
                prefix == ""
                or rel == prefix.rstrip("/")
                or rel.startswith(prefix if prefix.endswith("/") else prefix + "/")
            ) and len(prefix) > best_len:
                best, best_len = tier, len(prefix)
        return best

    def set_default_tier(self, target: str, tier: str) -> tuple[str, str]:
        """``tiers set BUCKET[/PATH] --default TIER``. Returns ``(bucket, prefix)``."""
        check_tier(tier)
        self.backend(tier)
        bucket, _, prefix = target.strip("/").partition("/")
        if self.catalog.bucket_inode(bucket) is None:
            raise NotFoundError(f"no bucket {bucket}")
        if prefix and target.endswith("/"):
            prefix += "/"
        self.catalog.set_placement(bucket, prefix, tier)
        return bucket, prefix

    # -- recovery ------------------------------------------------------------------------------

    def recover(self) -> dict[str, int]:
        """Bring the pool back to a consistent state after a crash (run before mounting).

        * uploads cut off mid-way (``uploading``) become ``dirty`` again and their temporary
          objects are deleted;
        * dirty files take their size and mtime from the cache file, which holds every byte
          the filesystem acknowledged;
        * partial caches are dropped (their range maps were in memory only);
        * unlinked inodes are purged (their objects go to trash);
        * cache files of inodes the catalog does not know are deleted (a file created in a
          group of changes that was not committed yet; no byte of it was acknowledged, the
          write path commits first);
        * interrupted tier moves are rolled back (the temporary copy is deleted).

        Returns:
            Counts of what was repaired, by kind.
        """
        cat = self.catalog
        stats = {"uploads_resumed": 0, "orphans_purged": 0, "moves_rolled_back": 0, "partial_caches_dropped": 0}
        for ino, tier, tmp in cat.db.execute(
            "SELECT inode, tier, upload_tmp_key FROM objects WHERE upload_tmp_key IS NOT NULL"
        ).fetchall():
            if tier in self.backends:
                self.backends[tier].delete(tmp)
            cat.update_object(ino, upload_tmp_key=None)
        with cat.tx():
            stats["uploads_resumed"] = cat.db.execute(
                "UPDATE objects SET state = 'dirty' WHERE state = 'uploading'"
            ).rowcount
            for ino, key in cat.db.execute("SELECT inode, key FROM objects WHERE state = 'dirty'").fetchall():
                try:
                    st = os.stat(self.cache_path(ino))
                except FileNotFoundError:
                    a = cat.get(ino)
                    if key is not None or a is None or a.size != 0:  # else: created, never written
                        log.error("dirty file %d lost its cache file", ino)
                    continue
                cols = {"size": st.st_size}
                a = cat.get(ino)
                if a is not None and st.st_mtime_ns > a.ctime_ns:
                    # written after its attributes were last saved (writes keep them in memory
                    # until flush/fsync/close): the cache file's mtime is the last write's time
                    cols.update(mtime_ns=st.st_mtime_ns, ctime_ns=st.st_mtime_ns)
                cat.update(ino, **cols)
                cat.cache_touch(ino, True, st.st_blocks * 512, now_ns())
            for (ino,) in cat.db.execute("SELECT inode FROM cache WHERE complete = 0").fetchall():
                cat.cache_drop(ino)
                self._drop_cache_file(ino)
                stats["partial_caches_dropped"] += 1
            for ino in cat.orphans():
                cat.delete_inode(ino)
                self._drop_cache_file(ino)
                stats["orphans_purged"] += 1
            stats["stray_cache_files"] = self._drop_stray_cache_files()
            moves = cat.db.execute("SELECT inode, src_tier, dst_tier, tmp_key FROM tier_moves").fetchall()
        for ino, _src, dst, tmp in moves:
            with self.lock.held(), cat.tx():
                if dst in self.backends:
                    self.backends[dst].delete(tmp)
                    obj = cat.object(ino)
                    if obj is not None and obj.key and obj.tier != dst and not cat.key_referenced(dst, obj.key):
                        self.backends[dst].delete(obj.key)
                cat.db.execute("DELETE FROM tier_moves WHERE inode = ?", (ino,))
                stats["moves_rolled_back"] += 1
        self.process_trash()
        return stats


__all__ = ["Pool", "BucketInfo", "RestoreState", "StoredObject", "UploadJob", "key_component"]
