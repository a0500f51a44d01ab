"""Running an image job: build into a staging folder, verify, then rename into place.

A run of job *J* writing ``DIR/NAME.iso`` builds with ``--output DIR/.J.job-part/NAME.iso``
(the same filesystem, so the final rename is atomic), verifies what it wrote (``iso verify`` /
``dmg verify``; the SHA-256 sidecar of a gzip, age or split ISO), and only then renames each file
and its sidecar into ``DIR``. A build that fails or is killed leaves the previous image in place;
its staging folder is removed by the next run. Incremental DMG jobs write a new file per run and
add it to the chain only once verified (:mod:`imaging.dmg_incremental`), so they build in place.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import json
import logging
import os
import re
import shutil
from pathlib import Path
from typing import Any

import click

from pool.errors import DarkstorageError, ImageCorruptError

from .jobs import Job, JobStore, job_lock

log = logging.getLogger(__name__)

STAGE_SUFFIX = ".job-part"


def _command(name: str) -> click.Command:
    from .cli import LAZY_COMMANDS

    module, _, attr = LAZY_COMMANDS[name].partition(":")
    command: click.Command = getattr(importlib.import_module(module), attr)
    return command


def _invoke(command: str, argv: list[str]) -> None:
    """Run ``darkstorage COMMAND ARGV`` in this process; our errors propagate as exceptions."""
    _command(command).main(args=argv, prog_name=f"darkstorage {command}", standalone_mode=False)


def _with_output(argv: list[str], output: Path) -> list[str]:
    out = list(argv)
    i = out.index("--output")
    out[i + 1] = str(output)
    return out


def _password_args(argv: list[str]) -> list[str]:
    """The ``--password-env VAR`` / ``--password-file FILE`` pair of *argv*, if any."""
    for opt in ("--password-env", "--password-file"):
        if opt in argv:
            i = argv.index(opt)
            return [opt, argv[i + 1]]
    return []


def _verify(job: Job, images: list[Path]) -> None:
    """Check each image the build wrote; raises ImageCorruptError naming the first problem."""
    from imaging.common import check_sidecar

    for image in images:
        if job.command == "bucket2dmg":
            _invoke("dmg", ["verify", str(image), *_password_args(job.argv)])
        elif image.suffix == ".iso":
            _invoke("iso", ["verify", str(image)])
        elif check_sidecar(image) is False:  # .iso.gz, .iso.age, .iso.001...: the digest of the bytes
            raise ImageCorruptError(f"{image.name}: its SHA-256 does not match the sidecar")


def _install(src: Path, dest: Path) -> None:
    """Rename *src* over *dest* (a ``.sparsebundle`` folder replaces the old one as a whole)."""
    if src.is_dir() and dest.is_dir():
        aside = dest.with_name(f".{dest.name}.old-{os.getpid()}")
        os.replace(dest, aside)
        os.replace(src, dest)
        shutil.rmtree(aside, ignore_errors=True)
    else:
        os.replace(src, dest)


def _drop_stale_chunks(folder: Path, installed: list[Path]) -> None:
    """Split chunks of an earlier run beyond this run's last one (``NAME.iso.007`` when this run
    made six) would make a wrong image if joined: remove them."""
    keep = {p.name for p in installed}
    bases = {re.sub(r"\.\d{3}$", "", p.name) for p in installed if re.search(r"\.\d{3}$", p.name)}
    for base in bases:
        for p in folder.iterdir():
            m = re.fullmatch(re.escape(base) + r"\.\d{3}(\.sha256)?", p.name)
            if m and p.name.removesuffix(".sha256") not in keep:
                p.unlink(missing_ok=True)


def _build(job: Job) -> list[Path]:
    """Build, verify and install job *job*'s image(s); the files installed."""
    from imaging.common import sidecar_path

    out = Path(job.output)
    if job.incremental:
        from imaging.dmg_incremental import Chain, chain_path

        _invoke(job.command, job.argv)
        chain = Chain.load(chain_path(out))
        image = chain.image_path(chain.images[-1])
        return [image, chain.path]
    stage = out.parent / f".{job.name}{STAGE_SUFFIX}"
    shutil.rmtree(stage, ignore_errors=True)  # left by a killed run (we hold the job's lock)
    stage.mkdir(parents=True)
    try:
        _invoke(job.command, _with_output(job.argv, stage / out.name))
        made = sorted(p for p in stage.iterdir() if not p.name.startswith("."))
        images = [p for p in made if not p.name.endswith(".sha256")]
        if not images:
            raise DarkstorageError(f"image job {job.name}: the build wrote nothing")
        _verify(job, images)
        installed: list[Path] = []
        for image in images:
            dest = out.parent / image.name
            _install(image, dest)
            if sidecar_path(image).exists():
                os.replace(sidecar_path(image), sidecar_path(dest))
            installed.append(dest)
        _drop_stale_chunks(out.parent, installed)
        return installed
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def run_job(home: Path, name: str, *, as_json: bool = False) -> dict[str, Any]:
    """Run image job *name* of pool home *home* now and record the outcome.

    Args:
        as_json: keep the build's own output off stdout (its JSON report is returned as
            ``build``) so the caller can print one JSON document.

    Returns:
        ``{"job", "result": "ok", "files": [...], "build": {...} or None}``.

    Raises:
        NotFoundError: no such job; BusyError: it is running elsewhere; and whatever the build or
        the verification raises (the previous image is then untouched).
    """
    with JobStore(home) as store:
        job = store.get(name)
        lock = store.lock_path(name)
    with job_lock(lock, name):
        build: dict[str, Any] | None = None
        try:
            if as_json:
                buf = io.StringIO()
                job.argv.append("--json")
                with contextlib.redirect_stdout(buf):
                    files = _build(job)
                with contextlib.suppress(ValueError):
                    build = json.JSONDecoder().raw_decode(buf.getvalue().lstrip())[0]
            else:
                files = _build(job)
        except BaseException as e:
            reason = str(e) if isinstance(e, DarkstorageError | click.ClickException) else f"{type(e).__name__}: {e}"
            with JobStore(home) as store:
                store.record_run(name, "failed", reason or type(e).__name__)
            log.warning("image job %s failed: %s", name, reason)
            raise
        with JobStore(home) as store:
            store.record_run(name, "ok", "wrote " + ", ".join(p.name for p in files), [str(p) for p in files])
    log.info("image job %s: wrote %s", name, ", ".join(str(p) for p in files))
    return {"job": name, "result": "ok", "files": [str(p) for p in files], "build": build}
