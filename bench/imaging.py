"""Imaging benchmarks: print ratio tables against native tools.

Run: ``.venv/bin/python bench/imaging.py [--dmg-mib 1024]``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def _copy_usr_subset(dest: Path, limit_bytes: int) -> int:
    """Copy regular files from /usr until *limit_bytes*; return the bytes copied."""
    total = 0
    for dirpath, _dirs, names in os.walk("/usr"):
        for n in sorted(names):
            src = Path(dirpath) / n
            if src.is_symlink() or not src.is_file():
                continue
            try:
                size = src.stat().st_size
                target = dest / src.relative_to("/usr")
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(src, target)
            except OSError:
                continue
            total += size
            if total >= limit_bytes:
                return total
    return total


def bench_dmg(mib: int = 1024) -> None:
    """UDZO build of a ~*mib* MiB real tree vs single-thread ``gzip -6`` over the same bytes."""
    from imaging.dmg import build_dmg
    from imaging.hfsplus import HfsOptions

    with tempfile.TemporaryDirectory(prefix="bench-dmg-") as tmp:
        root = Path(tmp) / "tree"
        size = _copy_usr_subset(root, mib << 20)
        tar = Path(tmp) / "tree.tar"
        subprocess.run(["tar", "-cf", str(tar), "-C", str(root), "."], check=True)
        t0 = time.perf_counter()
        subprocess.run(f"gzip -6 -c {tar} > /dev/null", shell=True, check=True)
        gzip_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        res = build_dmg(root, Path(tmp) / "x.dmg", fmt="UDZO", opts=HfsOptions(volume_name="bench"))
        dmg_s = time.perf_counter() - t0
        print(f"DMG UDZO, {size / 2**20:.0f} MiB tree, {os.cpu_count()} cores (shared machine: noisy)")
        print(f"{'tool':<28}{'seconds':>10}{'MiB/s':>10}{'size MiB':>10}")
        print(f"{'gzip -6 (1 thread, tar)':<28}{gzip_s:>10.2f}{size / 2**20 / gzip_s:>10.1f}{'':>10}")
        print(
            f"{'darkstorage bucket2dmg':<28}{dmg_s:>10.2f}{size / 2**20 / dmg_s:>10.1f}"
            f"{res.udif.file_bytes / 2**20:>10.1f}"
        )
        print(f"speed-up vs single-thread gzip -6: {gzip_s / dmg_s:.2f}x (goal >= 1.7x on 2 cores)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--dmg-mib", type=int, default=1024, help="size of the tree for the DMG bench")
    args = ap.parse_args()
    bench_dmg(args.dmg_mib)
    iso = globals().get("bench_iso")
    if callable(iso):
        iso()


if __name__ == "__main__":
    main()
