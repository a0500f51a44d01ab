"""Objects of a pool: the catalog, one backend per tier, and how a file's bytes become an
object (write-back upload with verification), how objects follow renames and attribute
changes (re-keys), and how deleted ones leave the backends (trash).

Every step that changes which object a key holds runs under the pool's object lock
(:mod:`pool.locks`), so uploads, re-keys, tier moves and trash deletion never undo each other,
within one process or across processes.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import xxhash

from .backends import Backend, StoredObject
from .catalog import Attrs, Catalog
from .config import PoolConfig
from .errors import NotFoundError, UsageError
from .locks import ObjectLock
from .tiers import TIER_ACCESS, Access

log = logging.getLogger(__name__)


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


class ObjectStore:
    """The catalog and backends of a pool, and the object operations that need no mount.

    Args:
        config: the pool's configuration (see :class:`~pool.config.PoolConfig`).

    Raises:
        ConfigError: a tier's backend cannot be built.
    """

    def __init__(self, config: PoolConfig) -> None:
        self.config = config
        self.catalog = Catalog(config.catalog_path, root_uid=os.getuid(), root_gid=os.getgid())
        self.backends: dict[str, Backend] = {}
        for tier, tc in config.tiers.items():
            latency = config.restore_latency_s if TIER_ACCESS[tier] is Access.RESTORE else 0.0
            self.backends[tier] = Backend(tier, tc.url, tc.options, restore_latency_s=latency, home=config.home)
        self.lock = ObjectLock(config.home)

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

    def _attrs(self, ino: int) -> dict[str, int]:
        a = self.catalog.get(ino)
        assert a is not None
        return {"mode": a.mode, "uid": a.uid, "gid": a.gid, "mtime_ns": a.mtime_ns}

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

    def upload_transfer(
        self, job: UploadJob, *, durable: bool = True, stop: Callable[[], bool] | None = None
    ) -> StoredObject:
        """Second step (any thread, no catalog use): copy the cache file to the temporary key
        and read it back to verify. Without *durable*, call :meth:`Backend.sync` on the tier
        before :meth:`upload_commit`. *stop*: see :meth:`Backend.upload_fd` (raises
        :class:`pool.backends.UploadCancelled`).

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
            stored = backend.upload_fd(fd, job.tmp_key, job.attrs, durable=durable, stop=stop)
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
                if (
                    cat.db.execute(
                        "SELECT 1 FROM objects WHERE tier = ? AND key = ? AND inode != ?", (job.tier, job.key, job.ino)
                    ).fetchone()
                    is not None
                ):
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
                    cat.update_object(
                        job.ino,
                        key=job.key,
                        size=stored.size,
                        xxh3_128=stored.xxh3_128,
                        etag=stored.etag,
                        upload_tmp_key=None,
                    )
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
            if (
                stored is None
                or obj is None
                or obj.state != "uploading"
                or not unchanged
                or key is None
                or obj.tier != job.tier
            ):
                if obj is not None and obj.state == "uploading":
                    cat.update_object(job.ino, state="dirty", upload_tmp_key=None)
                if stored is not None:
                    backend.delete(job.tmp_key)
                return False
            self._claim_key(job.tier, key, job.ino)
            backend.move(job.tmp_key, key)
            if obj.key is not None and obj.key != key:
                cat.add_trash(job.tier, obj.key, obj.xxh3_128)
            cat.update_object(
                job.ino,
                state="clean",
                key=key,
                size=stored.size,
                xxh3_128=stored.xxh3_128,
                etag=stored.etag,
                dirty_since_ns=None,
                upload_tmp_key=None,
            )
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
                for item_id, tier, key, _digest in items[i : i + batch]:
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
