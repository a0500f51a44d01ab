"""Running a mount: recovery, the FUSE session, the write-back service, clean shutdown.

One process serves one mount of one pool (a pool may be mounted once at a time: the mount
holds ``flock(2)`` on ``<home>/mount.lock``). A JSON record in ``<home>/run/`` tells other
commands where the pool is mounted and by which process; it is removed at exit and ignored
when its process is gone.

Shutdown (Ctrl-C, SIGTERM, ``darkstorage umount`` or a plain ``fusermount3 -u``): every dirty
file is uploaded first, then the filesystem is unmounted; the record's ``dirty_left`` says
how many files could not be uploaded (they stay dirty in the cache and upload at the next
mount).
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import signal
import sqlite3
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import anyio
import anyio.abc
import pyfuse3

from pool.errors import BusyError, MountError, PermissionDeniedError
from pool.pool import Pool

from . import fuseloop
from .operations import Operations
from .writeback import WriteBack

log = logging.getLogger(__name__)


@dataclass
class MountOptions:
    """Options of one mount: sizes in bytes, times in seconds."""

    mountpoint: Path
    cache_max_bytes: int
    write_back_s: float
    read_only: bool = False
    allow_other: bool = False
    attr_timeout_s: float = 10.0
    entry_timeout_s: float = 10.0
    transfers: int = 2
    debug: bool = False


def read_record(pool: Pool) -> dict[str, object] | None:
    """The running mount's record, or None if the pool is not mounted."""
    try:
        rec = json.loads((pool.config.run_dir / "mount.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    pid = int(rec.get("pid", 0))
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, PermissionError):
        return None
    return dict(rec)


def _write_record(pool: Pool, data: dict[str, object]) -> None:
    run = pool.config.run_dir
    run.mkdir(parents=True, exist_ok=True)
    tmp = run / "mount.json.tmp"
    tmp.write_text(json.dumps(data))
    os.replace(tmp, run / "mount.json")


def _mount_type(mp: Path) -> str | None:
    """The filesystem type the mount table lists at *mp*, or None."""
    with open("/proc/self/mounts") as f:
        for line in f:
            fields = line.split()
            if fields[1].replace("\\040", " ") == str(mp):
                return fields[2]
    return None


def _clear_dead_mount(mp: Path) -> None:
    """A darkstorage mount left at *mp* by a process that died (kill -9, crash) answers every
    access with ENOTCONN; detach it so the pool can be mounted there again. Called only when
    no live mount of this pool is recorded."""
    if _mount_type(mp) != "fuse.darkstorage":
        return
    log.info("detaching the dead mount left at %s", mp)
    subprocess.run(["fusermount3", "-u", "-z", str(mp)], capture_output=True)


def notify_mount(pool: Pool) -> None:
    """Tell a running mount of *pool* (if any) that buckets changed outside it (SIGUSR1), so
    the kernel forgets what it cached about them."""
    rec = read_record(pool)
    if rec is not None:
        try:
            os.kill(int(str(rec["pid"])), signal.SIGUSR1)
        except (ProcessLookupError, PermissionError):
            pass


def _allow_other_possible() -> bool:
    if os.getuid() == 0:
        return True
    try:
        return any(line.strip() == "user_allow_other" for line in open("/etc/fuse.conf"))
    except OSError:
        return False


def serve(pool: Pool, opts: MountOptions) -> int:
    """Mount *pool* at ``opts.mountpoint`` and serve until unmounted or signalled.

    Returns:
        The number of files left dirty at exit (0 when everything was uploaded).

    Raises:
        BusyError: the pool is already mounted.
        MountError: the mountpoint is unusable or FUSE refused.
        PermissionDeniedError: /dev/fuse cannot be opened.
    """
    mp = opts.mountpoint
    if read_record(pool) is None:
        _clear_dead_mount(mp)
    try:
        if not mp.is_dir():
            raise MountError(f"mountpoint {mp} is not a directory")
    except OSError as e:
        raise MountError(f"mountpoint {mp}: {e.strerror}") from None
    if os.path.ismount(mp):
        raise BusyError(f"{mp} is already a mount point")
    if not os.access("/dev/fuse", os.R_OK | os.W_OK):
        raise PermissionDeniedError("cannot open /dev/fuse: is fuse3 installed and are you allowed to use it?")
    lock_fd = os.open(pool.config.home / "mount.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(lock_fd)
        rec = read_record(pool)
        where = rec.get("mountpoint") if rec else "another process"
        raise BusyError(f"this pool is already mounted ({where})") from None
    try:
        stats = pool.recover()
        if any(stats.values()):
            log.info("recovered after an unclean stop: %s", stats)
        pool.catalog.defer_checkpoints()
        ops = Operations(
            pool,
            cache_max_bytes=opts.cache_max_bytes,
            read_only=opts.read_only,
            attr_timeout_s=opts.attr_timeout_s,
            entry_timeout_s=opts.entry_timeout_s,
        )
        options = set(pyfuse3.default_options)
        options |= {"fsname=darkstorage", "subtype=darkstorage"}
        if opts.read_only:
            options.add("ro")
        if opts.allow_other and _allow_other_possible():
            options.add("allow_other")
        if opts.debug:
            options.add("debug")
        try:
            pyfuse3.init(ops, str(mp), options)
        except RuntimeError as e:
            raise MountError(f"cannot mount at {mp}: {e}") from None
        record = {
            "pid": os.getpid(),
            "mountpoint": str(mp.absolute()),
            "read_only": opts.read_only,
            "cache_max_bytes": opts.cache_max_bytes,
            "write_back_s": opts.write_back_s,
            "started_ns": time.time_ns(),
            "state": "mounted",
        }
        _write_record(pool, record)
        dirty_left = -1
        try:
            dirty_left = fuseloop.run(_main, ops, opts)
        finally:
            try:
                pyfuse3.close(unmount=True)
            except Exception as e:  # already unmounted from outside
                log.debug("close: %s", e)
            record.update(state="stopped", dirty_left=dirty_left)
            _write_record(pool, record)
            try:
                (pool.config.run_dir / "mount.json").unlink()
            except FileNotFoundError:
                pass
            _write_result(pool, dirty_left)
        return dirty_left
    finally:
        fcntl.flock(lock_fd, fcntl.LOCK_UN)
        os.close(lock_fd)


READAHEAD_KB = 1024


def _tune_readahead(mp: Path) -> None:
    """Raise the kernel's readahead for this mount to 1 MiB (the kernel offers FUSE 128 KiB),
    so sequential reads arrive as 1 MiB requests. Needs root; skipped quietly otherwise."""
    # not os.stat(mp): that would be a request to this very process, which is not serving yet
    dev = None
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            if fields[4].replace("\\040", " ") == str(mp):
                dev = fields[2]
    if dev is None:
        return
    knob = Path(f"/sys/class/bdi/{dev}/read_ahead_kb")
    try:
        knob.write_text(f"{READAHEAD_KB}\n")
    except OSError as e:
        log.debug("cannot raise readahead (%s): %s", knob, e)


def _write_result(pool: Pool, dirty_left: int) -> None:
    (pool.config.run_dir / "last-stop.json").write_text(json.dumps({"dirty_left": dirty_left}))


GROUP_COMMIT_S = 0.005  #: how long metadata changes may wait for their commit


class GroupCommitter:
    """Commits the catalog's open group of metadata changes :data:`GROUP_COMMIT_S` after it
    opened (see :meth:`pool.catalog.Catalog.enable_group_commit`): requests arriving in that
    window share one commit instead of paying one each."""

    def __init__(self, ops: Operations) -> None:
        self.cat = ops.cat
        self._opened = anyio.Event()
        self.cat.enable_group_commit(self._wake)
        ops.pool.lock.before_acquire = self.cat.commit_group

    def _wake(self) -> None:
        self._opened.set()

    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while True:
            await self._opened.wait()
            self._opened = anyio.Event()
            await anyio.sleep(GROUP_COMMIT_S)
            try:
                self.cat.commit_group()
            except sqlite3.Error:
                log.exception("committing the catalog failed; retrying")
                self._opened.set()


async def _main(ops: Operations, opts: MountOptions) -> int:
    # Request handling gives up the GIL at every /dev/fuse read; with background threads busy
    # in Python (uploads, chores) the default 5 ms switch interval would make each request
    # wait that long to get it back.
    sys.setswitchinterval(0.0005)
    wb = WriteBack(ops, opts.write_back_s, opts.transfers)
    committer = GroupCommitter(ops)
    async with anyio.create_task_group() as nursery:
        await nursery.start(committer.run)
        await nursery.start(wb.run)

        async def on_signals() -> None:
            with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM, signal.SIGUSR1) as signals:
                async for sig in signals:
                    if sig == signal.SIGUSR1:  # the catalog changed outside the mount
                        if ops.initialised:
                            ops.refresh_root()
                        continue
                    log.info("signal %s: flushing and unmounting", sig)
                    await wb.flush_all()  # still serving: uploads first, then detach
                    pyfuse3.terminate()
                    return

        async def after_init() -> None:
            # the kernel sets the mount's readahead when it gets the INIT reply: tune after that
            while not ops.initialised:
                await anyio.sleep(0.01)
            await anyio.sleep(0.05)
            _tune_readahead(opts.mountpoint)

        nursery.start_soon(on_signals)
        nursery.start_soon(after_init)
        await pyfuse3.main(min_tasks=4, max_tasks=64)
        nursery.cancel_scope.cancel()
    # the kernel is detached or detaching: release what it held, then upload what is dirty
    for fh in list(ops.handles):
        try:
            await ops.release(fh)
        except Exception:
            log.exception("releasing handle %d", fh)
    ops.purge()
    ops.save_atimes()
    ops.cat.commit_group()
    left = await wb.flush_all()
    await wb.close()
    if left:
        log.warning("%d file(s) still dirty; they upload at the next mount", left)
    return left
