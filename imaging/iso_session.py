"""Multi-session append: add a session to an existing image with xorriso (Debian package).

pycdlib cannot write a second session, so ``bucket2iso --multi-session --append`` runs
``xorriso -dev IMAGE -update_r SRC / -commit``: xorriso loads the newest tree, writes only the
files that are new or changed after the end of the existing data, and a new volume descriptor set
that points at the merged tree; unchanged files keep their old extents, so the older session's
data stays in place and readable. xorriso does not write UDF, so images meant for appending are
built without a UDF tree (``--multi-session``), and appending to an image with UDF is refused.
``SOURCE_DATE_EPOCH`` is passed on for reproducible volume dates.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
from pathlib import Path

from pool.errors import ImageCorruptError, NotFoundError, UnsupportedError

from .common import write_sidecar
from .iso_read import IsoReader

log = logging.getLogger(__name__)


def xorriso_path() -> str:
    """The xorriso executable.

    Raises:
        UnsupportedError: xorriso is not installed.
    """
    exe = shutil.which("xorriso")
    if exe is None:
        raise UnsupportedError("multi-session needs xorriso (Debian: apt-get install xorriso)")
    return exe


def append_session(
    image: Path,
    source: Path,
    *,
    volume_name: str,
    joliet: bool = True,
    source_date_epoch: int | None = None,
    normalize: bool = False,
) -> str:
    """Append a session holding *source* to *image*; rewrites the sidecar and returns its digest.

    With *normalize*, every entry of the new session's tree gets ``mkisofs -r`` owners and modes
    (xorriso ``-find / -exec mkisofs_r``), as :func:`imaging.common.normalized` does for new images.

    Raises:
        NotFoundError: *image* does not exist.
        UnsupportedError: *image* has a UDF tree, or xorriso is missing.
        ImageCorruptError: xorriso failed (its last message is in the error).
    """
    if not image.is_file():
        raise NotFoundError(f"no image to append to: {image} (build it first with --multi-session)")
    with IsoReader(image) as reader:
        if reader.iso.has_udf():
            raise UnsupportedError(
                f"{image.name} has a UDF tree, which xorriso cannot extend: "
                "build images for appending with --multi-session"
            )
    env = dict(os.environ)
    if source_date_epoch is not None:
        env["SOURCE_DATE_EPOCH"] = str(source_date_epoch)
    cmd = [
        xorriso_path(),
        "-abort_on",
        "FAILURE",
        "-dev",
        str(image),
        "-rockridge",
        "on",
        "-joliet",
        "on" if joliet else "off",
        "-volid",
        volume_name[:32],
        "-update_r",
        str(source),
        "/",
        *(["-find", "/", "-exec", "mkisofs_r", "--"] if normalize else []),
        "-commit",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["xorriso failed"])[-1]
        raise ImageCorruptError(f"appending a session to {image.name} failed: {last}")
    log.info("xorriso: %s", proc.stderr.strip().splitlines()[-1:] if proc.stderr else "")
    return write_sidecar(image)
