"""``bucket2dmg`` options for what macOS shows: ``--icon``, ``--background``, ``--window-size``,
``--icon-size``, ``--license``; and ``--compress``, the seed's name for the UDIF ``--format``s."""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
from click.core import ParameterSource

from pool.errors import UsageError

COMPRESS_FORMATS = ("UDZO", "UDBZ", "ULFO", "ULMO", "UDRO")


@dataclass
class MacLayout:
    """The checked options: ``finder`` (an :class:`imaging.dmg_finder.FinderLayout` or None)
    and ``license_text`` (None: no licence agreement)."""

    finder: Any = None
    license_text: str | None = None


def mac_layout_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """Adds the options; *f* receives one :class:`MacLayout` named ``layout`` and ``fmt`` set
    from ``--compress`` when given (``--format`` with another value is a usage error)."""

    @functools.wraps(f)
    def wrapper(
        *args: Any,
        icon: Path | None,
        background: Path | None,
        window_size: str | None,
        icon_size: int | None,
        license_file: Path | None,
        compress: str | None,
        **kw: Any,
    ) -> Any:
        from imaging.dmg_finder import FinderLayout
        from imaging.udif_sla import read_license

        if compress is not None:
            fmt_given = click.get_current_context().get_parameter_source("fmt") == ParameterSource.COMMANDLINE
            if fmt_given and kw.get("fmt") != compress:
                raise UsageError(f"--compress {compress} and --format {kw.get('fmt')} disagree: give one")
            kw["fmt"] = compress
        layout = MacLayout(
            finder=FinderLayout.from_files(icon, background, window_size, icon_size) or None,
            license_text=read_license(license_file) if license_file is not None else None,
        )
        return f(*args, layout=layout, **kw)

    file_type = click.Path(path_type=Path, dir_okay=False)
    for opt in (
        click.option(
            "--compress",
            type=click.Choice(COMPRESS_FORMATS),
            default=None,
            help="Same as --format for the UDIF formats (UDZO zlib, UDBZ bzip2, ULFO LZFSE, ULMO LZMA, UDRO none).",
        ),
        click.option(
            "--license",
            "license_file",
            type=file_type,
            default=None,
            help="UTF-8 text file: the licence agreement macOS shows before mounting (UDIF formats).",
        ),
        click.option("--icon-size", type=int, default=None, help="Icon size in the window, 16-512 points (128)."),
        click.option("--window-size", metavar="WxH", default=None, help="Finder window size (default: the picture's)."),
        click.option(
            "--background",
            type=file_type,
            default=None,
            help="PNG, TIFF or JPEG shown behind the icons when the volume's window opens (HFS+).",
        ),
        click.option("--icon", type=file_type, default=None, help="Volume icon (.icns), shown by Finder (HFS+)."),
    ):
        wrapper = opt(wrapper)
    return wrapper


def new_mount_folder(image: Path, where: Path | None = None) -> Path:
    """Create and return a new folder to mount *image* on when ``dmg mount`` got no mount point:
    ``<where>/<stem>`` (the current folder by default; ``photos`` for ``photos.dmg``), or
    ``<stem>-2``, ``<stem>-3``, ... when that name is taken.

    Raises:
        UsageError: no free name (after 99 tries) or the folder cannot be created.
    """
    base = (where or Path.cwd()).absolute()
    stem = image.name.rsplit(".", 1)[0] if "." in image.name.lstrip(".") else image.name
    for n in range(1, 100):
        candidate = base / (stem if n == 1 else f"{stem}-{n}")
        try:
            candidate.mkdir()
        except FileExistsError:
            continue
        except OSError as e:
            raise UsageError(f"cannot create a mount point folder {candidate}: {e.strerror}") from None
        return candidate
    raise UsageError(f"no free folder name for {stem} in {base}: give a mount point")
