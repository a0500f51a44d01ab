"""How the kernel's page cache holds a file: small 4 KiB pages or large folios.

Explains the warm sequential read row of ``bench/mount.py``: a warm read is served from the
page cache without reaching the FUSE server, and copying it out costs per folio, so a
filesystem whose page cache holds large folios (ext4 on recent kernels) reads warm data
several times faster than one that holds 4 KiB pages (FUSE here).

For each path: map up to ``--limit`` bytes read-only, touch every page (which reads it into
the page cache if it was not there), translate each page of the mapping to its page frame
through ``/proc/self/pagemap`` and read that frame's flags from ``/proc/kpageflags``
(bits 15 ``COMPOUND_HEAD`` and 16 ``COMPOUND_TAIL``; see the kernel's
Documentation/admin-guide/mm/pagemap.rst). Needs root: without ``CAP_SYS_ADMIN`` the
pagemap gives no frame numbers.

Run:
    .venv/bin/python bench/folios.py /some/ext4/file /mnt/darkstorage/b/file
"""

from __future__ import annotations

import argparse
import ctypes
import mmap
import os
import struct
import sys
from collections import Counter

PAGE = mmap.PAGESIZE
PRESENT = 1 << 63
PFN_MASK = (1 << 55) - 1
COMPOUND_HEAD = 1 << 15
COMPOUND_TAIL = 1 << 16


def census(path: str, limit: int) -> Counter[str]:
    """Count the pages of *path*'s first *limit* bytes by kind: ``small``, ``large_head``
    (first page of a large folio), ``large_tail`` (its other pages), ``absent``.

    Raises:
        OSError: the file cannot be opened or mapped, or the pagemap cannot be read.
    """
    fd = os.open(path, os.O_RDONLY)
    try:
        size = min(os.fstat(fd).st_size, limit) // PAGE * PAGE
        if size == 0:
            return Counter()
        # a private mapping: writable for ctypes to take its address, and reading it maps the
        # page cache's own pages (nothing is copied unless written)
        with mmap.mmap(fd, size, access=mmap.ACCESS_COPY) as m:
            anchor = ctypes.c_char.from_buffer(m)
            start = ctypes.addressof(anchor)
            del anchor
            view = memoryview(m)
            touched = 0
            for off in range(0, size, PAGE):
                touched += view[off]  # fault the page in
            counts: Counter[str] = Counter()
            with open("/proc/self/pagemap", "rb") as pm, open("/proc/kpageflags", "rb") as kf:
                pm.seek(start // PAGE * 8)
                entries = struct.unpack(f"{size // PAGE}Q", pm.read(size // PAGE * 8))
                for e in entries:
                    if not e & PRESENT or not e & PFN_MASK:
                        counts["absent"] += 1
                        continue
                    kf.seek((e & PFN_MASK) * 8)
                    (flags,) = struct.unpack("Q", kf.read(8))
                    if flags & COMPOUND_HEAD:
                        counts["large_head"] += 1
                    elif flags & COMPOUND_TAIL:
                        counts["large_tail"] += 1
                    else:
                        counts["small"] += 1
            view.release()
            return counts
    finally:
        os.close(fd)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("paths", nargs="+", help="files to inspect")
    ap.add_argument("--limit", type=int, default=256 << 20, help="bytes of each file to inspect (default 256 MiB)")
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("error: needs root (the pagemap hides frame numbers from other users)", file=sys.stderr)
        return 2
    for path in args.paths:
        try:
            c = census(path, args.limit)
        except OSError as e:
            print(f"error: {path}: {e.strerror or e}", file=sys.stderr)
            return 1
        pages = sum(c.values())
        in_large = c["large_head"] + c["large_tail"]
        print(
            f"{path}: {pages} pages, {c['small']} small, {c['large_head']} large folios holding "
            f"{in_large} pages ({100 * in_large / max(pages, 1):.0f}%), {c['absent']} absent"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
