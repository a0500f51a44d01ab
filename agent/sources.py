"""Where image commands read from and how they serve read-only views of images.

A source is a folder (``./photos``, ``/srv/data``, ``~/x``), a bucket name (``photos``) or a
bucket path (``photos/2024``). Buckets are read through the pool's mounted view: the running
mount when there is one, else a temporary read-only mount for the duration of the command.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pool.errors import MountError, NotFoundError

from .console import console

log = logging.getLogger(__name__)

_MOUNT_WAIT_S = 60.0


def _looks_like_folder(spec: str) -> bool:
    return spec.startswith(("/", "./", "../", "~")) or spec in (".", "..")


@contextmanager
def _temporary_pool_mount() -> Iterator[Path]:
    """Mount the pool read-only at a temporary folder; unmount on exit."""
    tmp = Path(tempfile.mkdtemp(prefix="darkstorage-view-"))
    cmd = [sys.executable, "-m", "agent", "mount", str(tmp), "--foreground", "--read-only"]
    logfile = tmp.with_name(tmp.name + ".log")
    with open(logfile, "wb") as out:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=out, start_new_session=True)
    try:
        deadline = time.monotonic() + _MOUNT_WAIT_S
        while not os.path.ismount(tmp):
            if proc.poll() is not None:
                raise MountError(f"cannot mount the pool to read it: {_last_line(logfile, 'mount exited')}")
            if time.monotonic() > deadline:
                raise MountError("the pool's temporary read-only mount did not come up")
            time.sleep(0.02)
        yield tmp
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                subprocess.run(["fusermount3", "-u", "-z", str(tmp)], capture_output=True)
        try:
            tmp.rmdir()
            logfile.unlink()
        except OSError:
            log.warning("could not remove %s", tmp)


def _last_line(logfile: Path, default: str) -> str:
    lines = logfile.read_text(errors="replace").strip().splitlines()
    return lines[-1] if lines else default


@contextmanager
def source_tree(spec: str) -> Iterator[Path]:
    """The folder to read for source *spec*, valid inside the ``with`` block.

    Raises:
        NotFoundError: neither a folder nor a bucket (path) of the pool.
        MountError: the pool could not be mounted to read a bucket.
    """
    path = Path(spec).expanduser()
    if _looks_like_folder(spec) or path.is_dir():
        if not path.is_dir():
            raise NotFoundError(f"no such folder: {spec}")
        yield path
        return
    from pool.errors import NotInitialisedError
    from pool.pool import Pool
    from vfs.mount import read_record

    bucket, _, sub = spec.strip("/").partition("/")
    try:
        pool = Pool.open()
    except NotInitialisedError:
        raise NotFoundError(f"no such folder or bucket: {spec}") from None
    try:
        names = {b.name for b in pool.bucket_infos()}
        rec = read_record(pool)
    finally:
        pool.close()
    if bucket not in names:
        raise NotFoundError(f"no such folder or bucket: {spec}")

    def inside(root: Path) -> Path:
        target = root / bucket / sub if sub else root / bucket
        if not target.is_dir():
            raise NotFoundError(f"no such folder in bucket {bucket}: {sub}")
        return target

    if rec is not None:
        yield inside(Path(str(rec["mountpoint"])))
        return
    with _temporary_pool_mount() as root:
        yield inside(root)


def run_image_mount(
    view_factory: Callable[[Path], Any],
    image: Path,
    mountpoint: Path,
    *,
    foreground: bool,
    fsname: str,
    allow_other: bool = False,
    argv: list[str] | None = None,
) -> None:
    """The CLI side of ``iso mount`` / ``dmg mount``.

    In the foreground: open the image with *view_factory* and serve it until unmounted. In the
    background (the default): start ``darkstorage ARGV --foreground`` detached and return once
    the view is mounted.

    Args:
        view_factory: opens *image* and returns an object with the ``vfs.imagefs.ImageView``
            methods.
        argv: the command line (after ``darkstorage``) that serves this mount in the foreground.

    Raises:
        NotFoundError: the image or mountpoint is missing.
        MountError: the view could not be mounted.
    """
    if not image.exists():  # a file, or a .sparsebundle folder
        raise NotFoundError(f"no such image: {image}")
    if not mountpoint.is_dir():
        raise NotFoundError(f"no such mountpoint folder: {mountpoint}")
    if foreground:
        from vfs.imagefs import serve_image

        view = view_factory(image)
        console.print(f"{image.name} mounted read-only at {mountpoint} (Ctrl-C to unmount)")
        serve_image(view, mountpoint, fsname=fsname, allow_other=allow_other)
        return
    # open it once here so a bad image fails in this process with a one-line error
    view_factory(image)
    assert argv is not None
    logfile = Path(tempfile.gettempdir()) / f"darkstorage-image-mount-{os.getpid()}.log"
    with open(logfile, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "agent", *argv, "--foreground"],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=out,
            start_new_session=True,
        )
    deadline = time.monotonic() + _MOUNT_WAIT_S
    while not os.path.ismount(mountpoint):
        if proc.poll() is not None:
            raise MountError(_last_line(logfile, f"mounting {image.name} failed"))
        if time.monotonic() > deadline:
            proc.terminate()
            raise MountError(f"mounting {image.name} did not finish within {_MOUNT_WAIT_S:.0f}s")
        time.sleep(0.02)
    console.print(
        f"{image.name} mounted read-only at {mountpoint} (pid {proc.pid}, log {logfile}; "
        f"`darkstorage umount {mountpoint}` or `fusermount3 -u {mountpoint}` to detach)"
    )
