"""Incremental DMG chains: a full image, then images holding only what changed.

``bucket2dmg SOURCE --output DIR/NAME.dmg --incremental`` writes, beside ``NAME.dmg``:

* ``NAME-YYYYmmdd-HHMMSS-full.dmg`` on the first run (UTC time of the run), then
  ``NAME-YYYYmmdd-HHMMSS-incr.dmg`` on each later run: the files and symlinks that are new or
  changed since the previous image of the chain, every folder (folders are cheap and keep empty
  ones), and the manifest :data:`MANIFEST_NAME` at the volume root (JSON: ``kind``, ``base`` =
  the previous image's SHA-256, ``deleted`` = paths gone since then, kind changes included);
  each image has its ``.sha256`` sidecar like any other;
* ``NAME.chain.json``: the chain, in order (:class:`Chain`; JSON ``{"version": 1, "stem",
  "images": [{"file", "kind", "sha256", "created_utc", "files", "bytes", "deleted"}]}``);
* ``NAME.chain.state.json``: what the source looked like when the last image was made (per path:
  kind, size, mtime_ns, mode, symlink target, xxh3-128 of "racy" files), the base of the next diff.

A file counts as changed when its kind, size, mode, mtime or symlink target differ from the state.
When all of those match but the file was modified within :data:`RACY_NS` of the previous scan
(the "racy clean" case of git's index: a write in the same mtime tick after the scan leaves
size and mtime unchanged), its content hash decides. A chain image enters the chain file only
after it is complete and verified (sidecar and UDIF checksums), so a failed or killed run leaves
the chain as it was; the next run diffs against the same state again.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import xxhash

from pool.errors import ImageCorruptError, NotFoundError

from .common import SourceTree, TreeEntry, check_sidecar, sha256_file, walk_tree

log = logging.getLogger(__name__)

MANIFEST_NAME = ".darkstorage-increment.json"  #: the manifest at the root of every chain image
CHAIN_SUFFIX = ".chain.json"
STATE_SUFFIX = ".chain.state.json"
RACY_NS = 2_000_000_000  #: files modified this close to a scan get a content hash (FAT has 2 s mtimes)
IMAGE_RE = re.compile(r"^(?P<stem>.+)-(?P<ts>\d{8}-\d{6})-(?P<kind>full|incr)(?P<ext>\.[^.]+)$")
_HASH_BYTES = 1 << 20


@dataclass
class ChainImage:
    """One image of a chain: its file name (beside the chain file), ``full`` or ``incr``, its
    SHA-256, when it was made (``YYYY-mm-ddTHH:MM:SSZ``), files and bytes it holds, paths deleted."""

    file: str
    kind: str
    sha256: str
    created_utc: str
    files: int = 0
    bytes: int = 0
    deleted: int = 0


@dataclass
class Chain:
    """A chain file (``NAME.chain.json``) and its images in order (the first is ``full``)."""

    path: Path
    stem: str
    images: list[ChainImage] = field(default_factory=list)

    @classmethod
    def load(cls, path: Path) -> Chain:
        """Read chain file *path*.

        Raises:
            NotFoundError: no such file; ImageCorruptError: not a chain file.
        """
        try:
            data = json.loads(Path(path).read_text())
            images = [ChainImage(**i) for i in data["images"]]
            stem = str(data["stem"])
        except FileNotFoundError:
            raise NotFoundError(f"no such chain file: {path}") from None
        except (ValueError, KeyError, TypeError) as e:
            raise ImageCorruptError(f"{Path(path).name} is not a darkstorage chain file ({e})") from None
        if not images or images[0].kind != "full":
            raise ImageCorruptError(f"{Path(path).name}: a chain starts with a full image")
        return cls(Path(path), stem, images)

    def save(self) -> None:
        """Write the chain file atomically (temporary file, fsync, rename)."""
        data = {"version": 1, "stem": self.stem, "images": [dataclasses.asdict(i) for i in self.images]}
        _write_json(self.path, data)

    def image_path(self, image: ChainImage) -> Path:
        return self.path.with_name(image.file)


def chain_path(output: Path) -> Path:
    """The chain file of ``--output`` *output*: ``NAME.chain.json`` beside ``NAME.dmg``."""
    return output.with_name(output.stem + CHAIN_SUFFIX)


def state_path(output: Path) -> Path:
    return output.with_name(output.stem + STATE_SUFFIX)


def _write_json(path: Path, data: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w") as f:
        json.dump(data, f, indent=1, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def content_hash(path: str | Path) -> str:
    """xxh3-128 of the file at *path* (hex), read 1 MiB at a time."""
    h = xxhash.xxh3_128()
    with open(path, "rb") as f:
        while chunk := f.read(_HASH_BYTES):
            h.update(chunk)
    return h.hexdigest()


@dataclass
class Diff:
    """What changed between the state and the tree: paths (``rel``) of new or changed files and
    symlinks, paths deleted (or whose kind changed), and the new state."""

    changed: list[str]
    deleted: list[str]
    state: dict[str, list[Any]]


def _state_of(e: TreeEntry, digest: str | None) -> list[Any]:
    return [e.kind, e.size, e.mtime_ns, e.mode, e.target, digest]


def diff_tree(tree: SourceTree, old: dict[str, list[Any]] | None, scan_ns: int) -> Diff:
    """Compare *tree* with the state *old* (None: everything is new).

    Args:
        tree: the source as walked now.
        old: ``rel -> [kind, size, mtime_ns, mode, target, xxh3-128 or None]`` from the last image.
        scan_ns: when the walk started (ns since the epoch): files modified within
            :data:`RACY_NS` of it get their content hash recorded for the next diff.
    """
    changed: list[str] = []
    state: dict[str, list[Any]] = {}
    seen: set[str] = set()
    for e in tree.entries[1:]:
        seen.add(e.rel)
        prev = None if old is None else old.get(e.rel)
        racy = e.kind == "file" and e.mtime_ns >= scan_ns - RACY_NS
        digest: str | None = None
        if e.kind == "dir":
            pass
        elif prev is None or prev[0] != e.kind or prev[1:5] != [e.size, e.mtime_ns, e.mode, e.target]:
            changed.append(e.rel)
        elif prev[5] is not None:  # racy when last scanned: only the content can tell
            digest = content_hash(e.path)
            if digest != prev[5]:
                log.debug("%s: same size and mtime, new content", e.rel)
                changed.append(e.rel)
        if racy and digest is None:
            digest = content_hash(e.path)
        state[e.rel] = _state_of(e, digest if racy else None)  # settled files: size + mtime suffice
    deleted: list[str] = []
    for rel, prev in (old or {}).items():
        if rel not in seen or state[rel][0] != prev[0]:
            deleted.append(rel)
    # a deleted folder takes its contents with it: list only the topmost
    deleted.sort()
    top: list[str] = []
    for rel in deleted:
        if not top or not rel.startswith(top[-1] + "/"):
            top.append(rel)
    return Diff(changed, top, state)


def _subset(tree: SourceTree, changed: list[str], manifest: TreeEntry) -> SourceTree:
    """The root, every folder, the changed entries and *manifest* (right after the root)."""
    wanted = set(changed)
    entries = [tree.entries[0], manifest]
    entries += [e for e in tree.entries[1:] if e.kind == "dir" or e.rel in wanted]
    total = sum(e.size for e in entries if e.kind == "file")
    return dataclasses.replace(tree, entries=entries, total_bytes=total)


def _manifest_entry(path: Path, now_ns: int) -> TreeEntry:
    st = os.lstat(path)
    return TreeEntry(rel=MANIFEST_NAME, kind="file", mode=0o100644, uid=os.getuid(), gid=os.getgid(),
                     size=st.st_size, mtime_ns=now_ns, atime_ns=now_ns, ctime_ns=now_ns, nlink=1,
                     ino=st.st_ino, dev=st.st_dev, target="", path=str(path))  # fmt: skip


@dataclass
class ChainResult:
    """What :func:`build_chain_image` made: the new image, its chain entry, the chain file."""

    image: Path
    entry: ChainImage
    chain: Path
    changed: list[str]
    deleted: list[str]
    build: Any


def _load_state(output: Path, chain: Chain | None) -> dict[str, list[Any]] | None:
    if chain is None:
        return None
    try:
        data = json.loads(state_path(output).read_text())
        if data.get("image") != chain.images[-1].sha256:
            log.warning("%s does not match the chain's last image: starting a new chain", state_path(output).name)
            return None
        return dict(data["entries"])
    except (FileNotFoundError, ValueError, KeyError, TypeError):
        log.warning("no usable %s: starting a new chain with a full image", state_path(output).name)
        return None


def _image_name(output: Path, kind: str, now_s: float) -> Path:
    ext = output.suffix or ".dmg"
    while True:
        ts = time.strftime("%Y%m%d-%H%M%S", time.gmtime(now_s))
        path = output.with_name(f"{output.stem}-{ts}-{kind}{ext}")
        if not path.exists():
            return path
        now_s += 1  # two runs in one second: the next free name, order is kept


def build_chain_image(
    source: Path,
    output: Path,
    *,
    build: Callable[[SourceTree, Path], Any],
    verify: Callable[[Path], list[str]],
) -> ChainResult:
    """Add one image to the chain of *output*: a full image when there is no chain yet (or its
    state is missing), else an incremental one.

    Args:
        source: the folder to image.
        output: the user's ``--output``; images, chain and state go beside it.
        build: writes the image of a tree to a path (and its sidecar) and returns the build
            result (with ``sha256``); e.g. :func:`imaging.dmg.build_dmg` with the user's options.
        verify: problems found in a written image ([] when sound).

    Raises:
        ImageCorruptError: the new image failed verification (it is removed; the chain is unchanged);
        and whatever *build* raises.
    """
    output = Path(output).absolute()
    output.parent.mkdir(parents=True, exist_ok=True)
    cpath = chain_path(output)
    chain: Chain | None = Chain.load(cpath) if cpath.exists() else None
    if chain is not None and any(not chain.image_path(i).exists() for i in chain.images):
        missing = next(i.file for i in chain.images if not chain.image_path(i).exists())
        log.warning("%s: %s is missing, starting a new chain with a full image", cpath.name, missing)
        chain = None
    old = _load_state(output, chain)
    if old is None:
        chain = None
    scan_ns = time.time_ns()
    tree = walk_tree(source)
    clash = next((e for e in tree.entries[1:] if e.rel == MANIFEST_NAME), None)
    if clash is not None:
        log.warning("skipping %s: the name is reserved for the chain manifest", clash.path)
        tree.entries.remove(clash)
        tree.skipped.append(clash.rel)
    diff = diff_tree(tree, old, scan_ns)
    kind = "full" if chain is None else "incr"
    base = None if chain is None else chain.images[-1].sha256
    image = _image_name(output, kind, scan_ns / 1e9)
    manifest = {"version": 1, "kind": kind, "base": base, "deleted": diff.deleted}
    with tempfile.TemporaryDirectory(prefix=".dmg-chain-", dir=output.parent) as staging:
        mpath = Path(staging) / MANIFEST_NAME
        mpath.write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
        subset = _subset(tree, diff.changed, _manifest_entry(mpath, scan_ns))
        try:
            res = build(subset, image)
            problems = verify(image)
        except BaseException:
            _remove_image(image)
            raise
    if problems:
        _remove_image(image)
        raise ImageCorruptError(f"{image.name} failed verification: {problems[0]}")
    digest = getattr(res, "sha256", None) or sha256_file(image)
    entry = ChainImage(
        file=image.name,
        kind=kind,
        sha256=digest,
        created_utc=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(scan_ns / 1e9)),
        files=len(diff.changed),
        bytes=sum(e.size for e in subset.entries if e.kind == "file" and e.rel != MANIFEST_NAME),
        deleted=len(diff.deleted),
    )
    if chain is None:
        chain = Chain(cpath, output.stem)
    chain.images.append(entry)
    # the state first: a state naming an image the chain lacks is ignored (a new full chain starts),
    # while a chain naming an image whose state is lost would do the same; either way nothing is wrong
    _write_json(state_path(output), {"version": 1, "image": digest, "scanned_ns": scan_ns, "entries": diff.state})
    chain.save()
    log.info("%s: %s image with %d changed, %d deleted", cpath.name, kind, len(diff.changed), len(diff.deleted))
    return ChainResult(image, entry, cpath, diff.changed, diff.deleted, res)


def _remove_image(image: Path) -> None:
    image.unlink(missing_ok=True)
    image.with_name(image.name + ".sha256").unlink(missing_ok=True)


def resolve_chain(path: Path) -> tuple[Chain, int]:
    """The chain to replay for ``dmg restore PATH`` and how many of its images to apply.

    *path* is a chain file (all images), or an image of a chain (``NAME-...-full|incr.ext``
    beside ``NAME.chain.json``: the chain up to and including it, a point-in-time restore), or a
    standalone image (a chain of one).

    Raises:
        NotFoundError: no such file, or an image the chain does not list.
    """
    path = Path(path)
    if not path.exists():
        raise NotFoundError(f"no such chain file or image: {path}")
    if path.name.endswith(CHAIN_SUFFIX):
        chain = Chain.load(path)
        return chain, len(chain.images)
    m = IMAGE_RE.match(path.name)
    if m is not None and path.with_name(m["stem"] + CHAIN_SUFFIX).exists():
        chain = Chain.load(path.with_name(m["stem"] + CHAIN_SUFFIX))
        for i, img in enumerate(chain.images):
            if img.file == path.name:
                return chain, i + 1
        raise NotFoundError(f"{path.name} is not listed in {chain.path.name}")
    digest = sha256_file(path)
    return Chain(path.with_name(path.stem + CHAIN_SUFFIX), path.stem, [ChainImage(path.name, "full", digest, "")]), 1


def check_chain_image(chain: Chain, image: ChainImage) -> list[str]:
    """Problems with *image*'s file against the chain: missing, SHA-256 differs, sidecar differs."""
    path = chain.image_path(image)
    if not path.is_file():
        return [f"{image.file} is missing"]
    if sha256_file(path) != image.sha256:
        return [f"{image.file}: its SHA-256 differs from the one {chain.path.name} records"]
    if check_sidecar(path) is False:
        return [f"{image.file}.sha256 does not match the image"]
    return []


def read_manifest(data: bytes, name: str) -> dict[str, Any]:
    """Parse a chain image's manifest (*data*); *name* is the image's for the error message.

    Raises:
        ImageCorruptError: not a manifest.
    """
    try:
        m = json.loads(data)
        if m.get("kind") not in ("full", "incr") or not isinstance(m.get("deleted"), list):
            raise ValueError("no kind or deleted list")
        return dict(m)
    except ValueError as e:
        raise ImageCorruptError(f"{name}: the chain manifest is unreadable ({e})") from None


__all__ = [
    "CHAIN_SUFFIX",
    "MANIFEST_NAME",
    "Chain",
    "ChainImage",
    "ChainResult",
    "build_chain_image",
    "chain_path",
    "check_chain_image",
    "diff_tree",
    "read_manifest",
    "resolve_chain",
]
