"""Pieces every image format shares: source-tree walking, digest sidecars, safe extraction paths.

The sidecar is the ``sha256sum`` format (``<64 hex>  <file name>\\n``), so
``sha256sum -c backup.iso.sha256`` checks an image with no darkstorage installed.
"""

from __future__ import annotations

import hashlib
import logging
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from pool.errors import NotFoundError, UnsafePathError, UsageError
from pool.units import format_size

log = logging.getLogger(__name__)

_CHUNK_BYTES = 1 << 20


#: ``--checksum`` names → (hashlib name, sidecar suffix, hex digits); the sidecars are in the GNU
#: coreutils format (``sha256sum``, ``sha512sum``, ``sha1sum``, ``md5sum``, ``b2sum`` output)
SIDECAR_ALGORITHMS = {
    "SHA256": ("sha256", ".sha256", 64),
    "SHA512": ("sha512", ".sha512", 128),
    "SHA1": ("sha1", ".sha1", 40),
    "MD5": ("md5", ".md5", 32),
    "BLAKE2B": ("blake2b", ".b2", 128),
}


def checksum_name(algorithm: str) -> str:
    """*algorithm* as a key of :data:`SIDECAR_ALGORITHMS` (``sha-512`` → ``SHA512``).

    Raises:
        UsageError: not one of them.
    """
    name = algorithm.upper().replace("-", "").replace("_", "")
    if name not in SIDECAR_ALGORITHMS:
        raise UsageError(f"unsupported checksum {algorithm!r} (supported: {', '.join(SIDECAR_ALGORITHMS)})")
    return name


def file_digest(path: Path, algorithm: str = "SHA256", *, progress: Callable[[int], None] | None = None) -> str:
    """The digest of the file at *path* as lowercase hex: SHA-256 (FIPS 180-4) by default, or
    another of :data:`SIDECAR_ALGORITHMS`.

    Reads 1 MiB at a time, so memory stays flat. *progress* is called with the number of bytes
    read after each chunk.

    Raises:
        NotFoundError: *path* does not exist.
        UsageError: an unsupported *algorithm*.
    """
    h = hashlib.new(SIDECAR_ALGORITHMS[checksum_name(algorithm)][0])
    try:
        f = open(path, "rb", buffering=0)
    except FileNotFoundError:
        raise NotFoundError(f"no such file: {path}") from None
    with f:
        buf = bytearray(_CHUNK_BYTES)
        view = memoryview(buf)
        while n := f.readinto(buf):
            h.update(view[:n])
            if progress is not None:
                progress(n)
    return h.hexdigest()


def sha256_file(path: Path, *, progress: Callable[[int], None] | None = None) -> str:
    """:func:`file_digest` with SHA-256 (64 lowercase hex digits)."""
    return file_digest(path, progress=progress)


def sidecar_path(image: Path, algorithm: str = "SHA256") -> Path:
    """Where the sidecar of *image* lives: ``<image>.sha256`` (``.sha512``, ``.sha1``, ``.md5``,
    ``.b2`` for the other algorithms)."""
    return image.with_name(image.name + SIDECAR_ALGORITHMS[checksum_name(algorithm)][1])


def write_sidecar(image: Path, digest: str | None = None) -> str:
    """Write ``<image>.sha256`` in ``sha256sum`` format and return the hex digest.

    Args:
        image: the image file.
        digest: its SHA-256 if the caller already computed it while writing; else it is read.
    """
    digest = digest or sha256_file(image)
    tmp = sidecar_path(image).with_suffix(".tmp")
    tmp.write_text(f"{digest}  {image.name}\n")
    os.replace(tmp, sidecar_path(image))
    return digest


def read_sidecar(image: Path, algorithm: str = "SHA256") -> str | None:
    """The digest recorded in *image*'s sidecar of *algorithm*, or None when there is none.

    Raises:
        UsageError: the sidecar exists but is not in the coreutils format of that algorithm.
    """
    name = checksum_name(algorithm)
    path = sidecar_path(image, name)
    try:
        text = path.read_text().strip()
    except FileNotFoundError:
        return None
    digest = text.split()[0] if text else ""
    width = SIDECAR_ALGORITHMS[name][2]
    if len(digest) != width or any(c not in "0123456789abcdef" for c in digest.lower()):
        tool = {"BLAKE2B": "b2sum"}.get(name, f"{name.lower()}sum")
        raise UsageError(f"{path} is not a {tool} file")
    return digest.lower()


def check_sidecar(
    image: Path, *, algorithm: str = "SHA256", progress: Callable[[int], None] | None = None
) -> bool | None:
    """Compare *image* with its sidecar of *algorithm*: None when there is no such sidecar,
    else whether they match."""
    expected = read_sidecar(image, algorithm)
    if expected is None:
        return None
    return file_digest(image, algorithm, progress=progress) == expected


def safe_join(output: Path, member: str) -> Path:
    """The path where archive member *member* lands under folder *output*.

    Refuses members that would land outside *output*: absolute names, ``..`` components, and
    paths that go through a symlink (already inside *output*) pointing elsewhere.

    Args:
        output: the extraction folder (need not exist yet).
        member: the member's path inside the image, ``/``-separated.

    Raises:
        UnsafePathError: the member would escape *output*.
    """
    if member.startswith("/") or member.startswith("\\"):
        raise UnsafePathError(f"refusing absolute path in image: {member!r}")
    parts = [p for p in member.replace("\\", "/").split("/") if p not in ("", ".")]
    if any(p == ".." for p in parts):
        raise UnsafePathError(f"refusing path with '..' in image: {member!r}")
    if not parts:
        raise UnsafePathError(f"refusing empty path in image: {member!r}")
    base = output.resolve()
    target = base.joinpath(*parts)
    # every existing ancestor must resolve inside the output (a symlink placed by an earlier
    # member must not redirect later ones); the member itself may be a symlink we replace
    probe = base
    for part in parts[:-1]:
        probe = probe / part
        if probe.is_symlink() or probe.exists():
            real = probe.resolve()
            if real != base and base not in real.parents:
                raise UnsafePathError(f"refusing path through a symlink leaving the output: {member!r}")
    return target


@dataclass(frozen=True)
class TreeEntry:
    """One node of a source tree, with the ``lstat`` facts image writers need.

    Attributes:
        rel: ``/``-separated path relative to the root (``""`` for the root); undecodable bytes
            are kept with ``surrogateescape`` (``os.fsencode(rel)`` gives them back).
        kind: ``"dir"``, ``"file"`` or ``"symlink"``.
        mode: ``st_mode`` (file type and permission bits).
        size: bytes of data (0 for directories; the target length for symlinks).
        mtime_ns, atime_ns, ctime_ns: timestamps in ns since the Unix epoch.
        nlink, ino, dev: link count and identity, to find hard links.
        target: the symlink's target, ``""`` otherwise.
        path: absolute path to read the data from (a ``str``: a ``Path`` per entry would cost a
            tree walk more than its ``lstat`` calls).
    """

    rel: str
    kind: str
    mode: int
    uid: int
    gid: int
    size: int
    mtime_ns: int
    atime_ns: int
    ctime_ns: int
    nlink: int
    ino: int
    dev: int
    target: str
    path: str

    @property
    def name(self) -> str:
        """The last path component (``""`` for the root)."""
        return self.rel.rsplit("/", 1)[-1]

    @property
    def depth(self) -> int:
        """0 for the root, 1 for its children, ..."""
        return 0 if not self.rel else self.rel.count("/") + 1


@dataclass
class SourceTree:
    """A walked source tree: entries in a deterministic order, parents before children.

    Attributes:
        root: the folder that was walked.
        entries: every directory, regular file and symlink, root first, siblings sorted by
            their name's bytes.
        skipped: ``rel`` paths of what images cannot hold (devices, FIFOs, sockets) or could
            not be read; each was logged.
        total_bytes: sum of the regular files' sizes.
    """

    root: Path
    entries: list[TreeEntry] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    total_bytes: int = 0

    def xattrs(self, entry: TreeEntry) -> dict[str, bytes]:
        """The extended attributes of *entry* (symlinks' own, not followed); {} where unsupported."""
        try:
            names = os.listxattr(entry.path, follow_symlinks=False)
        except OSError:
            return {}
        out: dict[str, bytes] = {}
        for n in sorted(names):
            try:
                out[n] = os.getxattr(entry.path, n, follow_symlinks=False)
            except OSError:
                continue
        return out


PERMISSIONS = ("preserve", "normalize")
_ALL_X = stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH
_ALL_R = stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH


def normalized(entry: TreeEntry) -> TreeEntry:
    """*entry* with the owner and permissions ``mkisofs -r`` (and ``xorriso -find -exec mkisofs_r``) give.

    uid/gid 0; write, set-uid, set-gid and sticky bits cleared; read for everyone; execute for
    everyone on directories and on files with any execute bit. So files become 0444 or 0555,
    directories 0555; symlinks keep their (ignored) 0777. The file type bits are kept.
    """
    mode = stat.S_IMODE(entry.mode)
    if entry.kind != "symlink":
        mode = _ALL_R | (_ALL_X if entry.kind == "dir" or mode & _ALL_X else 0)
    return replace(entry, mode=stat.S_IFMT(entry.mode) | mode, uid=0, gid=0)


def apply_permissions(tree: SourceTree, policy: str) -> SourceTree:
    """*tree* with the owners and modes image writers should record under *policy*.

    Args:
        tree: a walked tree.
        policy: ``"preserve"`` (the source's modes, uid and gid, as walked) or ``"normalize"``
            (:func:`normalized` for every entry, like ``mkisofs -r``).

    Returns:
        *tree* itself for ``preserve``, else a new tree (same order, paths and sizes).

    Raises:
        UsageError: unknown *policy*.
    """
    if policy not in PERMISSIONS:
        raise UsageError(f"unknown permissions policy {policy!r} (use {' or '.join(PERMISSIONS)})")
    if policy == "preserve":
        return tree
    return replace(tree, entries=[normalized(e) for e in tree.entries], skipped=list(tree.skipped))


def check_max_file_size(tree: SourceTree, limit: int | None) -> None:
    """Refuse *tree* when a regular file is larger than *limit* bytes (None: no limit).

    Raises:
        UsageError: names the first such file in tree order, its size, and how many more there are.
    """
    if limit is None:
        return
    over = [e for e in tree.entries if e.kind == "file" and e.size > limit]
    if over:

        def size(n: int) -> str:
            return format_size(n) if n < 1024 else f"{format_size(n)} ({n} bytes)"

        more = f" (+{len(over) - 1} more)" if len(over) > 1 else ""
        raise UsageError(f"{over[0].rel} is {size(over[0].size)}, over --max-file-size {size(limit)}{more}")


def _entry(path: str, rel: str, st: os.stat_result) -> TreeEntry | None:
    if stat.S_ISDIR(st.st_mode):
        kind, size, target = "dir", 0, ""
    elif stat.S_ISREG(st.st_mode):
        kind, size, target = "file", st.st_size, ""
    elif stat.S_ISLNK(st.st_mode):
        target = os.readlink(path)
        kind, size = "symlink", len(os.fsencode(target))
    else:
        return None
    return TreeEntry(
        rel=rel,
        kind=kind,
        mode=st.st_mode,
        uid=st.st_uid,
        gid=st.st_gid,
        size=size,
        mtime_ns=st.st_mtime_ns,
        atime_ns=st.st_atime_ns,
        ctime_ns=st.st_ctime_ns,
        nlink=st.st_nlink,
        ino=st.st_ino,
        dev=st.st_dev,
        target=target,
        path=path,
    )


def walk_tree(root: Path) -> SourceTree:
    """Walk the folder *root* without following symlinks.

    Returns a :class:`SourceTree` whose order depends only on the names (siblings sorted by
    their bytes), so two walks of the same tree give the same entries in the same order.

    Raises:
        NotFoundError: *root* is missing or not a directory.
    """
    root = Path(root)
    try:
        st = os.lstat(root)
    except FileNotFoundError:
        raise NotFoundError(f"no such folder: {root}") from None
    if not stat.S_ISDIR(st.st_mode):
        raise NotFoundError(f"not a folder: {root}")
    tree = SourceTree(root=root.absolute())
    first = _entry(str(tree.root), "", st)
    assert first is not None
    tree.entries.append(first)
    stack: list[tuple[str, str]] = [(str(tree.root), "")]
    while stack:
        folder, rel = stack.pop()
        try:
            with os.scandir(folder) as it:
                children = sorted(it, key=lambda d: os.fsencode(d.name))
        except OSError as e:
            log.warning("cannot list %s: %s", folder, e.strerror)
            tree.skipped.append(rel)
            continue
        subdirs: list[tuple[str, str]] = []
        for d in children:
            crel = f"{rel}/{d.name}" if rel else d.name
            try:
                cst = d.stat(follow_symlinks=False)
            except OSError as e:
                log.warning("cannot stat %s: %s", d.path, e.strerror)
                tree.skipped.append(crel)
                continue
            entry = _entry(d.path, crel, cst)
            if entry is None:
                log.warning("skipping %s: images hold no device nodes, FIFOs or sockets", d.path)
                tree.skipped.append(crel)
                continue
            tree.entries.append(entry)
            if entry.kind == "file":
                tree.total_bytes += entry.size
            elif entry.kind == "dir":
                subdirs.append((d.path, crel))
        # depth-first, in name order: push in reverse so the first name is walked first
        stack.extend(reversed(subdirs))
    return tree
