"""What Finder shows when a DMG's HFS+ volume opens: a custom volume icon and a window with a
background picture, written into the volume as macOS itself keeps them.

- Volume icon: the icon file ``.VolumeIcon.icns`` in the volume root (marked invisible) and the
  root folder's Finder flag kHasCustomIcon (0x0400) in its ``DInfo.frFlags`` (Inside Macintosh:
  Macintosh Toolbox Essentials, ch. 7 "Finder Interface"; TN1150 "Finder Info"). This is what
  ``SetFile -a C`` on the mounted volume does in dmgbuild and create-dmg.
- Window: the picture copied to ``.background/<name>`` (folder marked invisible) and a
  ``.DS_Store`` in the root holding the Finder window settings for the root folder, as dmgbuild
  writes them with the ``ds_store`` library: ``bwsp`` (window bounds, no toolbar/sidebar),
  ``icvp`` (icon view: icon size, ``backgroundType`` 2 and ``backgroundImageAlias``), ``icvl``
  (icon view) and ``vSrn``. The alias (``mac_alias``: a version 2 Alias Manager record) points at
  the picture in *this* volume: the volume's name and creation date, file system ``H+``, the
  picture's CNID and its folder's CNID as the HFS+ writer assigns them. dmgbuild makes the same
  record on a Mac with ``Alias.for_file`` on the mounted image; here it is built from the
  planned volume, so no Mac is needed.

``.icns`` files are checked for their header (``icns`` then the file's length, big-endian);
pictures for a PNG, TIFF or JPEG signature. Their pixel size (read from the PNG ``IHDR``, the
JPEG ``SOFn`` marker or the TIFF first IFD) is the default window size.
"""

from __future__ import annotations

import datetime
import io
import logging
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pool.errors import NotFoundError, UsageError

from .hfsplus_format import FINDER_HAS_CUSTOM_ICON, FINDER_IS_INVISIBLE, ExtraEntry

log = logging.getLogger(__name__)

ICON_NAME = ".VolumeIcon.icns"
BACKGROUND_FOLDER = ".background"
DS_STORE = ".DS_Store"
DEFAULT_WINDOW = (640, 480)
DEFAULT_ICON_SIZE = 128  #: points (Finder's icon view allows 16-512)
WINDOW_ORIGIN = (200, 120)  #: where the window opens on screen (points from the top left)
_MAC_EPOCH = datetime.datetime(1904, 1, 1, tzinfo=datetime.UTC)


def read_icns(path: Path) -> bytes:
    """The bytes of the Apple icon file at *path*, checked for its ``icns`` header.

    Raises:
        NotFoundError: no such file. UsageError: not an ``.icns`` file (the first 4 bytes are
            not ``icns`` or the next 4, big-endian, are not the file's length).
    """
    data = _read(path, "--icon")
    if len(data) < 8 or data[:4] != b"icns" or struct.unpack_from(">I", data, 4)[0] != len(data):
        raise UsageError(f"--icon {path}: not an Apple icon file (.icns: 'icns' then the file's length)")
    return data


def _read(path: Path, option: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        raise NotFoundError(f"{option} {path}: no such file") from None
    except OSError as e:
        raise UsageError(f"{option} {path}: {e.strerror}") from None


def picture_kind(data: bytes) -> str | None:
    """``"png"``, ``"tiff"``, ``"jpeg"`` by signature, or None."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if data[:4] in (b"II*\x00", b"MM\x00*"):
        return "tiff"
    if data.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    return None


def picture_size(data: bytes) -> tuple[int, int] | None:
    """The (width, height) in pixels of a PNG, JPEG or TIFF picture, None when not found."""
    try:
        kind = picture_kind(data)
        if kind == "png" and data[12:16] == b"IHDR":
            w, h = struct.unpack_from(">II", data, 16)
            return int(w), int(h)
        if kind == "jpeg":
            return _jpeg_size(data)
        if kind == "tiff":
            return _tiff_size(data)
    except struct.error:
        pass
    return None


def _jpeg_size(data: bytes) -> tuple[int, int] | None:
    pos = 2
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        (seg,) = struct.unpack_from(">H", data, pos + 2)
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):  # SOFn
            h, w = struct.unpack_from(">HH", data, pos + 5)
            return int(w), int(h)
        pos += 2 + seg
    return None


def _tiff_size(data: bytes) -> tuple[int, int] | None:
    e = "<" if data[:2] == b"II" else ">"
    (ifd,) = struct.unpack_from(e + "I", data, 4)
    (n,) = struct.unpack_from(e + "H", data, ifd)
    found: dict[int, int] = {}
    for i in range(n):
        tag, typ, _count = struct.unpack_from(e + "HHI", data, ifd + 2 + 12 * i)
        if tag in (256, 257):  # ImageWidth, ImageLength (SHORT or LONG)
            fmt = e + ("H" if typ == 3 else "I")
            found[tag] = struct.unpack_from(fmt, data, ifd + 2 + 12 * i + 8)[0]
    if 256 in found and 257 in found:
        return found[256], found[257]
    return None


def parse_window_size(text: str) -> tuple[int, int]:
    """``"640x480"`` → (640, 480).

    Raises:
        UsageError: not ``WxH`` with both between 100 and 10000.
    """
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise UsageError(f"--window-size {text!r}: give WIDTHxHEIGHT, e.g. 640x480") from None
    if not (100 <= w <= 10000 and 100 <= h <= 10000):
        raise UsageError(f"--window-size {text!r}: width and height must be 100-10000")
    return w, h


@dataclass
class FinderLayout:
    """What the volume's Finder window and icon look like.

    Attributes:
        icon: the ``.icns`` bytes of the volume icon (None: the standard disk icon).
        background: the picture's bytes and its name in ``.background/`` (None: no picture).
        window: the window's content size in points (width, height); None: the picture's
            pixel size, else 640x480.
        icon_size: icon size in points in the window (16-512).
    """

    icon: bytes | None = None
    background: tuple[bytes, str] | None = None
    window: tuple[int, int] | None = None
    icon_size: int | None = None

    @classmethod
    def from_files(
        cls,
        icon: Path | None = None,
        background: Path | None = None,
        window: str | None = None,
        icon_size: int | None = None,
    ) -> FinderLayout:
        """Read and check ``--icon``, ``--background``, ``--window-size``, ``--icon-size``.

        Raises:
            NotFoundError: a file is missing. UsageError: a file is not an ``.icns`` / a PNG,
                TIFF or JPEG picture, or a size is out of range.
        """
        out = cls(icon=read_icns(icon) if icon is not None else None)
        if background is not None:
            data = _read(background, "--background")
            if picture_kind(data) is None:
                raise UsageError(f"--background {background}: not a PNG, TIFF or JPEG picture")
            out.background = (data, Path(background).name)
        if (window is not None or icon_size is not None) and background is None:
            raise UsageError("--window-size and --icon-size go with --background")
        out.window = parse_window_size(window) if window is not None else None
        if icon_size is not None and not 16 <= icon_size <= 512:
            raise UsageError(f"--icon-size {icon_size}: Finder shows icons of 16 to 512 points")
        out.icon_size = icon_size
        return out

    def __bool__(self) -> bool:
        return self.icon is not None or self.background is not None

    @property
    def reserved_names(self) -> list[str]:
        """Root-relative paths these settings create (a source entry there is left out)."""
        names = [ICON_NAME] if self.icon is not None else []
        if self.background is not None:
            names += [BACKGROUND_FOLDER, DS_STORE]
        return names

    def extras(self, volume_name: str) -> tuple[list[ExtraEntry], int]:
        """The generated volume entries and the root folder's Finder flags."""
        out: list[ExtraEntry] = []
        root_flags = 0
        if self.icon is not None:
            out.append(ExtraEntry(ICON_NAME, self.icon, FINDER_IS_INVISIBLE))
            root_flags |= FINDER_HAS_CUSTOM_ICON
        if self.background is not None:
            data, name = self.background
            rel = f"{BACKGROUND_FOLDER}/{name}"
            out.append(ExtraEntry(BACKGROUND_FOLDER, None, FINDER_IS_INVISIBLE))
            out.append(ExtraEntry(rel, data))
            out.append(ExtraEntry(DS_STORE, lambda plan: self._ds_store(plan, volume_name, rel)))
        return out, root_flags

    def window_size(self) -> tuple[int, int]:
        if self.window is not None:
            return self.window
        size = picture_size(self.background[0]) if self.background else None
        if size is None or not all(100 <= v <= 10000 for v in size):
            return DEFAULT_WINDOW
        return size

    def _ds_store(self, plan: Any, volume_name: str, rel: str) -> bytes:
        """The ``.DS_Store`` of the root folder (window, icon view, background alias)."""
        from ds_store import DSStore

        w, h = self.window_size()
        x, y = WINDOW_ORIGIN
        bwsp = {
            "WindowBounds": f"{{{{{x}, {y}}}, {{{w}, {h}}}}}",
            "ShowStatusBar": False,
            "ShowToolbar": False,
            "ShowSidebar": False,
            "ShowPathbar": False,
            "ShowTabView": False,
            "ContainerShowSidebar": False,
            "PreviewPaneVisibility": False,
            "SidebarWidth": 0,
        }
        icvp = {
            "viewOptionsVersion": 1,
            "backgroundType": 2,
            "backgroundImageAlias": background_alias(plan, volume_name, rel),
            "backgroundColorRed": 1.0,
            "backgroundColorGreen": 1.0,
            "backgroundColorBlue": 1.0,
            "gridOffsetX": 0.0,
            "gridOffsetY": 0.0,
            "gridSpacing": 100.0,
            "arrangeBy": "none",
            "showIconPreview": False,
            "showItemInfo": False,
            "labelOnBottom": True,
            "textSize": 16.0,
            "iconSize": float(self.icon_size or DEFAULT_ICON_SIZE),
            "scrollPositionX": 0.0,
            "scrollPositionY": 0.0,
        }
        buf = io.BytesIO()
        store = DSStore.open(buf, "w+")
        store["."]["vSrn"] = ("long", 1)
        store["."]["bwsp"] = bwsp
        store["."]["icvp"] = icvp
        store["."]["icvl"] = ("type", b"icnv")
        store.flush()
        return buf.getvalue()


def hfs_datetime(hfs_seconds: int) -> datetime.datetime:
    """An HFS+ date (seconds since 1904-01-01 GMT) as an aware datetime."""
    return _MAC_EPOCH + datetime.timedelta(seconds=hfs_seconds)


def background_alias(plan: Any, volume_name: str, rel: str) -> bytes:
    """A version 2 alias record (Alias Manager) of the file at *rel* in the planned volume.

    Args:
        plan: the planned HFS+ volume (:class:`~imaging.hfsplus.HfsPlusWriter`: ``planned(rel)``
            gives CNIDs and creation dates, ``volume_date`` the volume's creation date).
        volume_name: the volume's name.
        rel: the target's path from the volume root (one folder deep or more).

    Records what ``mac_alias.Alias.for_file`` records on a Mac: target kind, name, CNID, its
    folder's CNID and name, creation date; volume name, creation date, ``H+``, fixed disk; the
    CNID path of the folders between root and target, the Carbon path (``Volume:folder:file``),
    the POSIX path from the volume root and the volume's mount point (``/Volumes/<name>``).
    """
    from mac_alias import ALIAS_FIXED_DISK, ALIAS_KIND_FILE, Alias, TargetInfo, VolumeInfo

    target = plan.planned(rel)
    parts = rel.split("/")
    folders = ["/".join(parts[: i + 1]) for i in range(len(parts) - 1)]
    alias = Alias()
    alias.target = TargetInfo(
        ALIAS_KIND_FILE,
        target.name,
        target.parent_cnid,
        target.cnid,
        hfs_datetime(target.create_date),
        bytes(4),
        bytes(4),
    )
    alias.volume = VolumeInfo(volume_name, hfs_datetime(plan.volume_date), b"H+", ALIAS_FIXED_DISK, 0, bytes(2))
    alias.target.folder_name = parts[-2] if len(parts) > 1 else volume_name
    alias.target.cnid_path = [plan.planned(f).cnid for f in folders]
    alias.target.carbon_path = ":".join(n.replace(":", "/") for n in [volume_name, *parts])
    alias.target.posix_path = "/" + rel
    alias.volume.posix_path = f"/Volumes/{volume_name}"
    return bytes(alias.to_bytes())


def finder_summary(volume: Any) -> dict[str, Any]:
    """What an HFS+ volume holds for Finder: ``custom_icon`` (the root's kHasCustomIcon flag and
    a ``.VolumeIcon.icns``), and from the root's ``.DS_Store`` (when readable) ``window``
    (``bwsp`` WindowBounds), ``icon_size`` and ``background`` (the alias target's path and
    CNIDs, as recorded).

    Args:
        volume: an :class:`imaging.hfsplus_read.HfsVolume`.
    """
    import os

    from .hfsplus_format import CNID_ROOT_FOLDER

    root = volume.entries[CNID_ROOT_FOLDER]
    names = {os.fsdecode(n): c for n, c in volume.children.get(CNID_ROOT_FOLDER, [])}
    out: dict[str, Any] = {
        "custom_icon": bool(root.finder_flags & FINDER_HAS_CUSTOM_ICON) and ICON_NAME in names,
        "window": None,
        "icon_size": None,
        "background": None,
    }
    ds = names.get(DS_STORE)
    if ds is None:
        return out
    try:
        from ds_store import DSStore
        from mac_alias import Alias

        e = volume.entries[ds]
        store = DSStore.open(io.BytesIO(volume.read(e.cnid - 1, 0, e.size)), "r")
        settings = {(x.filename, x.code): x.value for x in store}
        bwsp = settings.get((".", b"bwsp")) or {}
        icvp = settings.get((".", b"icvp")) or {}
        out["window"] = bwsp.get("WindowBounds")
        out["icon_size"] = icvp.get("iconSize")
        if icvp.get("backgroundType") == 2 and icvp.get("backgroundImageAlias"):
            alias = Alias.from_bytes(icvp["backgroundImageAlias"])
            out["background"] = {
                "path": alias.target.posix_path,
                "cnid": alias.target.cnid,
                "folder_cnid": alias.target.folder_cnid,
                "volume": alias.volume.name,
            }
    except Exception as err:  # a .DS_Store the libraries cannot parse: say so, do not fail
        log.info("root .DS_Store unreadable: %s", err)
    return out
