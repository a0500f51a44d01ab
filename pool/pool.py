"""The pool: configuration, catalog and one backend per tier, and the operations on objects
that do not depend on a mount (buckets, placement, write-back upload, tier moves, restores,
recovery after a crash).
"""

from __future__ import annotations

import logging
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path

import xxhash

from .backends import Backend, StoredObject
from .catalog import ROOT, Attrs, Catalog, ObjectRow, now_ns
from .config import PoolConfig, pool_home
from .errors import (
    BusyError,
    DarkstorageError,
    ExistsError,
    NotEmptyError,
    NotFoundError,
    RestorePendingError,
    UsageError,
)
from .locks import ObjectLock
from .tiers import DEFAULT_TIER, TIER_ACCESS, TIERS, Access, check_tier

log = logging.getLogger(__name__)

_BUCKET_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,254}$")


@dataclass(slots=True)
class BucketInfo:
    name: str
    files: int
    bytes: int
    created_ns: int


@dataclass(slots=True)
class UploadJob:
    """A write-back upload in progress: the file, its tier, final and temporary keys, and
    the POSIX attributes recorded with the object."""

    ino: int
    tier: str
    key: str
    tmp_key: str
    attrs: dict[str, int]
    empty_ok: bool = False  #: never uploaded and empty: a missing cache file means no bytes
    placed: bool = False  #: :meth:`Pool.upload_place` already put the object at ``key``


@dataclass(slots=True)
class RestoreState:
    """Restore status of one object: ``state`` is ``none``, ``not-needed``, ``pending``,
    ``ready`` or ``cached``; ``ready_in_s`` is seconds left while pending."""

    state: str
    ready_in_s: float = 0.0

    def __str__(self) -> str:
        if self.state == "pending":
            return f"pending ({self.ready_in_s:.1f}s left)"
        return self.state


def key_component(name: bytes) -> str:
    """The object-key form of one path component.

    UTF-8 names are used as they are (plain keys). Names that are not valid UTF-8 (legal on
    Linux, not storable as object keys) become their ``backslashreplace`` text plus ``~`` and
    the XXH3-64 of the raw bytes, kept within 255 bytes, so distinct names never share a key.
    """
    try:
        return name.decode("utf-8")
    except UnicodeDecodeError:
        digest = xxhash.xxh3_64_hexdigest(name)
        text = name.decode("utf-8", "backslashreplace")[: 255 - 1 - len(digest)]
        return f"{text}~{digest}"


class Pool:
    """An open pool.

    Args:
        config: the pool's configuration (see :class:`PoolConfig`).

    Raises:
        ConfigError: a tier's backend cannot be built.
    """

    def __init__(self, config: PoolConfig) -> None:
        self.config = config
        self.catalog = Catalog(config.catalog_path, root_uid=os.getuid(), root_gid=os.getgid())
        self.backends: dict[str, Backend] = {}
        for tier, tc in config.tiers.items():
            latency = config.restore_latency_s if TIER_ACCESS[tier] is Access.RESTORE else 0.0
            self.backends[tier] = Backend(tier, tc.url, tc.options, restore_latency_s=latency)
        self.lock = ObjectLock(config.home)

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

    def close(self) -> None:
        self.catalog.close()
        self.lock.close()

    def backend(self, tier: str) -> Backend:
        try:
            return self.backends[tier]
        except KeyError:
            raise UsageError(f"tier {tier} has no backend configured") from None

    def cache_path(self, ino: int) -> Path:
        return self.config.cache_dir / str(ino)

    # -- buckets ------------------------------------------------------------------------------

    @staticmethod
    def check_bucket_name(name: str) -> str:
        if not _BUCKET_RE.match(name) or name in (".", ".."):
            raise UsageError(
                f"bad bucket name {name!r}: use letters, digits, '.', '_' and '-', starting"
                " with a letter or digit"
            )
        return name

    def create_bucket(self, name: str, *, uid: int | None = None, gid: int | None = None,
                      mode: int = 0o755) -> int:
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
            a = cat.new_inode(stat.S_IFDIR | mode, os.getuid() if uid is None else uid,
                              os.getgid() if gid is None else gid, t, nlink=2)
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
                cat.db.execute("DELETE FROM dentries WHERE parent = ? OR inode = ?", (i, i))
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

    def resolve(self, path: str) -> tuple[int, Attrs]:
        """Resolve ``bucket/dir/file`` (leading/trailing slashes ignored) to ``(inode, attrs)``.

        Raises:
            NotFoundError: nothing there.
        """
        parts = [p.encode() for p in path.strip("/").split("/") if p]
        if not parts:
            raise UsageError("give a bucket or a path inside one, e.g. photos/2024/")
        ino = self.catalog.resolve(parts)
        a = self.catalog.get(ino) if ino is not None else None
        if ino is None or a is None:
            raise NotFoundError(f"no such file or bucket: {path}")
        return ino, a

    def key_of(self, ino: int) -> str | None:
        """The plain object key ``<bucket>/<path>`` for a file's current name."""
        parts = self.catalog.path_of(ino)
        if not parts or len(parts) < 2:
            return None
        return "/".join(key_component(p) for p in parts)

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
            if (prefix == "" or rel == prefix.rstrip("/") or rel.startswith(prefix if prefix.endswith("/") else prefix + "/")) and len(prefix) > best_len:
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

    # -- object key claims ----------------------------------------------------------------------

    def _claim_key(self, tier: str, key: str, owner: int) -> None:
        """Make ``(tier, key)`` free for *owner*: an object of another inode stored there (its
        file was renamed and not yet re-keyed) moves aside to a temporary key first.
        Call under :attr:`lock` and inside a catalog transaction."""
        cat = self.catalog
        row = cat.db.execute(
            "SELECT inode FROM objects WHERE tier = ? AND key = ? AND inode != ?", (tier, key, owner)
        ).fetchone()
        if row is None:
            return
        other = row[0]
        backend = self.backend(tier)
        aside = backend.tmp_key(key)
        backend.move(key, aside)
        cat.update_object(other, key=aside)
        cat.add_rekeys([other])

    # -- write-back upload --------------------------------------------------------------------

    def upload_begin(self, ino: int) -> UploadJob | None:
        """First step of a write-back upload: pick the key, record the temporary key and mark
        the file ``uploading``.

        Returns None when there is nothing to upload (clean, gone or unlinked).
        """
        cat = self.catalog
        obj = cat.object(ino)
        a = cat.get(ino)
        if obj is None or a is None or obj.state == "clean":
            return None
        key = self.key_of(ino)
        if key is None:
            return None
        backend = self.backend(obj.tier)
        tmp = backend.tmp_key(key)
        cat.update_object(ino, state="uploading", upload_tmp_key=tmp)
        attrs = {"mode": a.mode, "uid": a.uid, "gid": a.gid, "mtime_ns": a.mtime_ns}
        return UploadJob(ino, obj.tier, key, tmp, attrs, empty_ok=obj.key is None and a.size == 0)

    def upload_transfer(self, job: UploadJob, *, durable: bool = True) -> StoredObject:
        """Second step (any thread, no catalog use): copy the cache file to the temporary key
        and read it back to verify. Without *durable*, call :meth:`Backend.sync` on the tier
        before :meth:`upload_commit`.

        Raises:
            BackendError, IntegrityError: the copy failed; the temporary key is removed.
            FileNotFoundError: the cache file of a non-empty dirty file is gone.
        """
        backend = self.backend(job.tier)
        try:
            fd = os.open(self.cache_path(job.ino), os.O_RDONLY)
        except FileNotFoundError:
            if not job.empty_ok:
                raise
            fd = os.open(os.devnull, os.O_RDONLY)  # created and never written: empty object
        try:
            stored = backend.upload_fd(fd, job.tmp_key, job.attrs, durable=durable)
            backend.verify(job.tmp_key, stored)
            return stored
        except BaseException:
            backend.delete(job.tmp_key)
            raise
        finally:
            os.close(fd)

    def upload_place(self, placed: list[tuple[UploadJob, StoredObject]]) -> None:
        """Optional transfer-thread step for a batch: move each verified object to its final
        key and record it (key, size, hash; the previous key goes to trash). The file stays
        ``uploading``; :meth:`upload_commit` decides whether it is clean. A job is skipped,
        and left to the commit, when another file's object still occupies its key.

        The object lock is held throughout, so no trash deletion or key claim interleaves;
        the renames happen outside any catalog transaction and the records go in one short
        transaction, so the filesystem's own commits barely wait. Call it on a
        :class:`Pool` owned by the calling thread (its catalog connection).
        """
        cat = self.catalog
        with self.lock.held():
            moved = []
            for job, stored in placed:
                obj = cat.object(job.ino)
                if obj is None or obj.tier != job.tier or obj.state != "uploading":
                    continue
                if cat.db.execute("SELECT 1 FROM objects WHERE tier = ? AND key = ? AND inode != ?",
                                  (job.tier, job.key, job.ino)).fetchone() is not None:
                    continue
                self.backend(job.tier).move(job.tmp_key, job.key)
                moved.append((job, stored))
            with cat.tx():
                for job, stored in moved:
                    obj = cat.object(job.ino)
                    if obj is None:  # purged meanwhile: nothing refers to what was just placed
                        cat.add_trash(job.tier, job.key, stored.xxh3_128)
                        continue
                    if obj.key is not None and obj.key != job.key:
                        cat.add_trash(job.tier, obj.key, obj.xxh3_128)
                    cat.update_object(job.ino, key=job.key, size=stored.size, xxh3_128=stored.xxh3_128,
                                      etag=stored.etag, upload_tmp_key=None)
        for job, _ in moved:
            job.placed = True

    def upload_commit(self, job: UploadJob, stored: StoredObject | None, unchanged: bool) -> bool:
        """Last step: if the file did not change meanwhile (*unchanged*), mark it clean (moving
        the temporary object into place first unless :meth:`upload_place` did), in one step
        under the object lock; otherwise (or when *stored* is None: the transfer failed) it
        stays dirty.

        Returns:
            True if the file is clean now.
        """
        cat = self.catalog
        backend = self.backend(job.tier)
        with self.lock.held(), cat.tx():
            obj = cat.object(job.ino)
            if job.placed:  # the bytes are at job.key and the catalog says so
                if obj is None or obj.state != "uploading":
                    return False
                if not unchanged:
                    cat.update_object(job.ino, state="dirty")
                    return False
                cat.update_object(job.ino, state="clean", dirty_since_ns=None)
                if self.key_of(job.ino) != job.key:
                    cat.add_rekeys([job.ino])  # renamed during the upload
                else:
                    cat.drop_rekey(job.ino)
                return True
            key = self.key_of(job.ino)
            if (stored is None or obj is None or obj.state != "uploading" or not unchanged
                    or key is None or obj.tier != job.tier):
                if obj is not None and obj.state == "uploading":
                    cat.update_object(job.ino, state="dirty", upload_tmp_key=None)
                if stored is not None:
                    backend.delete(job.tmp_key)
                return False
            self._claim_key(job.tier, key, job.ino)
            backend.move(job.tmp_key, key)
            if obj.key is not None and obj.key != key:
                cat.add_trash(job.tier, obj.key, obj.xxh3_128)
            cat.update_object(job.ino, state="clean", key=key, size=stored.size, xxh3_128=stored.xxh3_128,
                              etag=stored.etag, dirty_since_ns=None, upload_tmp_key=None)
            cat.drop_rekey(job.ino)
        return True

    def upload_now(self, ino: int) -> bool:
        """Upload one dirty file synchronously (no mount running). Returns True if clean."""
        job = self.upload_begin(ino)
        if job is None:
            obj = self.catalog.object(ino)
            return obj is not None and obj.state == "clean"
        try:
            stored = self.upload_transfer(job)
        except BaseException:
            self.upload_commit(job, None, False)
            raise
        return self.upload_commit(job, stored, True)

    # -- background chores ------------------------------------------------------------------------

    def process_trash(self, limit: int = 256, batch: int = 32) -> int:
        """Delete trashed objects no longer referenced. Returns how many were deleted.

        Backend deletes run under the object lock (every change of an object's key holds it
        too) but outside any catalog transaction, so the filesystem's own commits never wait
        on backend I/O.
        """
        done = 0
        items = self.catalog.trash_items(limit)
        dropped: list[int] = []
        for i in range(0, len(items), batch):
            with self.lock.held():  # released between chunks so uploads can commit
                for item_id, tier, key, _digest in items[i:i + batch]:
                    if tier in self.backends and not self.catalog.key_referenced(tier, key):
                        self.backends[tier].delete(key)
                        done += 1
                    dropped.append(item_id)
        if dropped:  # one write transaction per pass: the filesystem's commits seldom wait
            with self.catalog.tx():
                for item_id in dropped:
                    self.catalog.drop_trash(item_id)
        return done

    def process_rekeys(self, limit: int = 256) -> int:
        """Bring clean objects in line with their file: move renamed files' objects to their
        new key and record current POSIX attributes (mode, uid, gid, mtime) with the object.
        Returns moves made."""
        cat = self.catalog
        done = 0
        for ino in cat.rekey_items(limit):
            with self.lock.held(), cat.tx():
                obj = cat.object(ino)
                key = self.key_of(ino)
                if obj is None or obj.key is None or key is None or obj.state != "clean":
                    cat.drop_rekey(ino)
                    continue
                backend = self.backend(obj.tier)
                if obj.key != key:
                    self._claim_key(obj.tier, key, ino)
                    backend.move(obj.key, key)
                    cat.update_object(ino, key=key)
                    done += 1
                backend.set_attrs(key, self._attrs(ino))
                cat.drop_rekey(ino)
        return done

    # -- tier moves ----------------------------------------------------------------------------

    def move_to_tier(self, ino: int, dst_tier: str) -> bool:
        """Move a clean file's object to *dst_tier*: copy, verify the hash, commit the catalog,
        then delete the old copy. A crash at any step leaves exactly one referenced copy;
        leftovers are removed by :meth:`recover`.

        Returns:
            False if the file already was on *dst_tier*.

        Raises:
            BusyError: the file has changes not uploaded yet.
            RestorePendingError: the source is an archive object not restored yet.
            IntegrityError: the copy does not hash like the source.
        """
        check_tier(dst_tier)
        cat = self.catalog
        obj = cat.object(ino)
        if obj is None:
            raise UsageError("only regular files have a tier")
        if obj.tier == dst_tier:
            return False
        if obj.state != "clean" or obj.key is None or obj.xxh3_128 is None:
            raise BusyError("file has changes waiting for upload; try again after write-back")
        src, dst = self.backend(obj.tier), self.backend(dst_tier)
        cached = cat.cache_entry(ino)
        from_cache = cached is not None and cached[0]
        if TIER_ACCESS[obj.tier] is Access.RESTORE and not from_cache:
            st = self.restore_state(ino)
            if st.state != "ready":
                self.request_restore(ino)
                raise RestorePendingError(
                    f"{self.key_of(ino)} is on {obj.tier}: restore started, {st} - retry later"
                )
        tmp = dst.tmp_key(obj.key)
        with cat.tx():
            cat.db.execute(
                "INSERT OR REPLACE INTO tier_moves (inode, src_tier, dst_tier, tmp_key) VALUES (?, ?, ?, ?)",
                (ino, obj.tier, dst_tier, tmp),
            )
        try:
            if from_cache:
                fd = os.open(self.cache_path(ino), os.O_RDONLY)
            else:
                fd = self._spool(src, obj)
            try:
                stored = dst.upload_fd(fd, tmp, self._attrs(ino))
            finally:
                os.close(fd)
            if stored.xxh3_128 != obj.xxh3_128:
                from .errors import IntegrityError

                raise IntegrityError(f"{obj.key}: copy from {obj.tier} does not match its hash")
            dst.verify(tmp, stored)
        except BaseException:
            dst.delete(tmp)
            with cat.tx():
                cat.db.execute("DELETE FROM tier_moves WHERE inode = ?", (ino,))
            raise
        with self.lock.held(), cat.tx():
            self._claim_key(dst_tier, obj.key, ino)
            dst.move(tmp, obj.key)
            cat.update_object(ino, tier=dst_tier, etag=stored.etag, restore_requested_ns=None,
                              restore_ready_ns=None)
            cat.add_trash(obj.tier, obj.key, obj.xxh3_128)
            cat.db.execute("DELETE FROM tier_moves WHERE inode = ?", (ino,))
        self.process_trash()
        return True

    def _spool(self, backend: Backend, obj: ObjectRow) -> int:
        """An fd to read a whole object from: the file itself when local, else a temp copy."""
        assert obj.key is not None
        p = backend.local_path(obj.key)
        if p is not None:
            return os.open(p, os.O_RDONLY)
        import tempfile

        fd, name = tempfile.mkstemp(dir=self.config.cache_dir, prefix=".spool-")
        os.unlink(name)
        backend.download_to_fd(obj.key, fd)
        return fd

    def _attrs(self, ino: int) -> dict[str, int]:
        a = self.catalog.get(ino)
        assert a is not None
        return {"mode": a.mode, "uid": a.uid, "gid": a.gid, "mtime_ns": a.mtime_ns}

    def assign(self, path: str, tier: str, *, recursive: bool = False) -> list[tuple[str, str]]:
        """``tiers assign PATH --tier T``: move a file, or with *recursive* every file below a
        directory. Returns ``(key, outcome)`` per file; outcome is ``moved``, ``already``,
        or an error message (other files still move)."""
        check_tier(tier)
        self.backend(tier)
        ino, a = self.resolve(path)
        if a.is_dir:
            if not recursive:
                raise UsageError(f"{path} is a directory: add --recursive")
            files = self.catalog.descendant_files(ino)
        else:
            files = [ino]
        out = []
        for f in files:
            key = self.key_of(f) or str(f)
            try:
                out.append((key, "moved" if self.move_to_tier(f, tier) else "already"))
            except (BusyError, RestorePendingError) as e:
                out.append((key, str(e)))
        return out

    # -- restores ------------------------------------------------------------------------------

    def request_restore(self, ino: int, *, expedited: bool = False) -> RestoreState:
        """Start a restore of an archive/offsite object (local backends simulate the delay:
        ``restore_latency_s``, a tenth of it when *expedited*). Idempotent while pending."""
        obj = self.catalog.object(ino)
        if obj is None:
            raise UsageError("only regular files can be restored")
        st = self.restore_state(ino)
        if st.state in ("pending", "ready", "cached", "not-needed"):
            return st
        latency = self.backend(obj.tier).restore_latency_s * (0.1 if expedited else 1.0)
        t = now_ns()
        self.catalog.update_object(ino, restore_requested_ns=t, restore_ready_ns=t + int(latency * 1e9))
        return self.restore_state(ino)

    def restore_state(self, ino: int) -> RestoreState:
        obj = self.catalog.object(ino)
        if obj is None or TIER_ACCESS[obj.tier] is not Access.RESTORE or obj.state != "clean":
            return RestoreState("not-needed")
        cached = self.catalog.cache_entry(ino)
        if cached is not None and cached[0]:
            return RestoreState("cached")
        if obj.restore_ready_ns is None:
            return RestoreState("none")
        left = (obj.restore_ready_ns - now_ns()) / 1e9
        return RestoreState("pending", left) if left > 0 else RestoreState("ready")

    # -- recovery ------------------------------------------------------------------------------

    def recover(self) -> dict[str, int]:
        """Bring the pool back to a consistent state after a crash (run before mounting).

        * uploads cut off mid-way (``uploading``) become ``dirty`` again and their temporary
          objects are deleted;
        * dirty files take their size and mtime from the cache file, which holds every byte
          the filesystem acknowledged;
        * partial caches are dropped (their range maps were in memory only);
        * unlinked inodes are purged (their objects go to trash);
        * interrupted tier moves are rolled back (the temporary copy is deleted).

        Returns:
            Counts of what was repaired, by kind.
        """
        cat = self.catalog
        stats = {"uploads_resumed": 0, "orphans_purged": 0, "moves_rolled_back": 0, "partial_caches_dropped": 0}
        for ino, tier, tmp in cat.db.execute(
                "SELECT inode, tier, upload_tmp_key FROM objects WHERE upload_tmp_key IS NOT NULL").fetchall():
            if tier in self.backends:
                self.backends[tier].delete(tmp)
            cat.update_object(ino, upload_tmp_key=None)
        with cat.tx():
            stats["uploads_resumed"] = cat.db.execute(
                "UPDATE objects SET state = 'dirty' WHERE state = 'uploading'").rowcount
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

    def tier_stats(self, bucket: str | None = None) -> dict[str, tuple[int, int]]:
        """Files and bytes per tier: ``{tier: (files, bytes)}``, optionally for one bucket."""
        cat = self.catalog
        out = {t: (0, 0) for t in TIERS}
        if bucket is None:
            rows = cat.db.execute(
                "SELECT o.tier, count(*), coalesce(sum(i.size), 0) FROM objects o"
                " JOIN inodes i ON i.id = o.inode GROUP BY o.tier").fetchall()
        else:
            ino = cat.bucket_inode(bucket)
            if ino is None:
                raise NotFoundError(f"no bucket {bucket}")
            files = cat.descendant_files(ino)
            rows = []
            for chunk in range(0, len(files), 500):
                part = files[chunk:chunk + 500]
                q = ",".join("?" * len(part))
                rows += cat.db.execute(
                    f"SELECT o.tier, count(*), coalesce(sum(i.size), 0) FROM objects o"
                    f" JOIN inodes i ON i.id = o.inode WHERE o.inode IN ({q}) GROUP BY o.tier", part).fetchall()
        for tier, n, size in rows:
            f0, b0 = out.get(tier, (0, 0))
            out[tier] = (f0 + n, b0 + size)
        return out



__all__ = ["Pool", "BucketInfo", "RestoreState", "StoredObject", "ExistsError"]
