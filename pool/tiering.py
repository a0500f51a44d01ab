"""Tier moves and restores: moving an object between tiers (copy, verify, commit, delete the
old copy) and restoring archive/offsite objects before they can be read."""

from __future__ import annotations

import os
from dataclasses import dataclass

from .backends import Backend
from .catalog import ObjectRow, now_ns
from .errors import BusyError, IntegrityError, NotFoundError, RestorePendingError, UsageError
from .objects import ObjectStore
from .tiers import TIER_ACCESS, TIERS, Access, check_tier

STORE_POLL_S = 1.0  #: how often a pending store restore is polled (HEAD) while a reader waits
STORE_READY_TRUST_S = 12 * 3600.0  #: how long a restore seen ready is believed without asking


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


class Tiering(ObjectStore):
    """Tier moves, restores and per-tier statistics (see :class:`~pool.objects.ObjectStore`)."""

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
                raise RestorePendingError(f"{self.key_of(ino)} is on {obj.tier}: restore started, {st} - retry later")
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
            cat.update_object(ino, tier=dst_tier, etag=stored.etag, restore_requested_ns=None, restore_ready_ns=None)
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
        """Start a restore of an archive/offsite object. Idempotent while pending.

        A tier on an integration whose objects sit in an archive class asks the store (S3
        RestoreObject, Azure rehydrate to Hot); local backends simulate the delay:
        ``restore_latency_s``, a tenth of it when *expedited*.
        """
        obj = self.catalog.object(ino)
        if obj is None:
            raise UsageError("only regular files can be restored")
        st = self.restore_state(ino)
        if st.state in ("pending", "ready", "cached", "not-needed"):
            return st
        backend = self.backend(obj.tier)
        if backend.store_restores and obj.key is not None:
            backend.request_restore(obj.key, expedited=expedited)
            self.catalog.update_object(ino, restore_requested_ns=now_ns(), restore_ready_ns=None)
            return self.restore_state(ino)
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
        backend = self.backend(obj.tier)
        if backend.store_restores and obj.key is not None:
            return self._store_restore_state(ino, backend, obj.key, obj.restore_ready_ns)
        if obj.restore_ready_ns is None:
            return RestoreState("none")
        left = (obj.restore_ready_ns - now_ns()) / 1e9
        return RestoreState("pending", left) if left > 0 else RestoreState("ready")

    def _store_restore_state(self, ino: int, backend: Backend, key: str, ready_ns: int | None) -> RestoreState:
        """Restore state from the store (HEAD); a restore seen ready is trusted for
        :data:`STORE_READY_TRUST_S` (S3 keeps a restored copy ``Days`` = 1 day by default)."""
        if ready_ns is not None and now_ns() - ready_ns < STORE_READY_TRUST_S * 1e9:
            return RestoreState("ready")
        status = backend.restore_status(key)
        if status.state in ("ready", "not-needed"):
            self.catalog.update_object(ino, restore_ready_ns=now_ns())
            return RestoreState("ready")
        if status.state == "pending":
            return RestoreState("pending", STORE_POLL_S)
        return RestoreState("none")

    def tier_stats(self, bucket: str | None = None) -> dict[str, tuple[int, int]]:
        """Files and bytes per tier: ``{tier: (files, bytes)}``, optionally for one bucket."""
        cat = self.catalog
        out = {t: (0, 0) for t in TIERS}
        if bucket is None:
            rows = cat.db.execute(
                "SELECT o.tier, count(*), coalesce(sum(i.size), 0) FROM objects o"
                " JOIN inodes i ON i.id = o.inode GROUP BY o.tier"
            ).fetchall()
        else:
            ino = cat.bucket_inode(bucket)
            if ino is None:
                raise NotFoundError(f"no bucket {bucket}")
            files = cat.descendant_files(ino)
            rows = []
            for chunk in range(0, len(files), 500):
                part = files[chunk : chunk + 500]
                q = ",".join("?" * len(part))
                rows += cat.db.execute(
                    f"SELECT o.tier, count(*), coalesce(sum(i.size), 0) FROM objects o"
                    f" JOIN inodes i ON i.id = o.inode WHERE o.inode IN ({q}) GROUP BY o.tier",
                    part,
                ).fetchall()
        for tier, n, size in rows:
            f0, b0 = out.get(tier, (0, 0))
            out[tier] = (f0 + n, b0 + size)
        return out
