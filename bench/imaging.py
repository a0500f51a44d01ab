"""Imaging benchmarks: print ratio tables against native tools.

Run: ``.venv/bin/python bench/imaging.py [--dmg-mib 1024] [--iso-mib 1024 --iso-big-gib 4 --iso-repeat 3] [--only iso]``.
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
    """UDZO build of a ~*mib* MiB real tree vs single-thread ``gzip -6`` over the same bytes.

    Prints wall seconds and CPU seconds (user + system, all threads): on a shared machine the
    wall ratio shows contention too, the CPU figures show the real cost.
    """
    import resource

    from imaging.dmg import build_dmg
    from imaging.hfsplus import HfsOptions

    def cpu_s(who: int) -> float:
        r = resource.getrusage(who)
        return r.ru_utime + r.ru_stime

    with tempfile.TemporaryDirectory(prefix="bench-dmg-") as tmp:
        root = Path(tmp) / "tree"
        size = _copy_usr_subset(root, mib << 20)
        tar = Path(tmp) / "tree.tar"
        subprocess.run(["tar", "-cf", str(tar), "-C", str(root), "."], check=True)
        load_before = os.getloadavg()[0]
        c0 = cpu_s(resource.RUSAGE_CHILDREN)
        t0 = time.perf_counter()
        with open(tar, "rb") as src:
            subprocess.run(["gzip", "-6", "-c"], stdin=src, stdout=subprocess.DEVNULL, check=True)
        gzip_s = time.perf_counter() - t0
        gzip_cpu = cpu_s(resource.RUSAGE_CHILDREN) - c0
        c0 = cpu_s(resource.RUSAGE_SELF)
        t0 = time.perf_counter()
        res = build_dmg(root, Path(tmp) / "x.dmg", fmt="UDZO", opts=HfsOptions(volume_name="bench"))
        dmg_s = time.perf_counter() - t0
        dmg_cpu = cpu_s(resource.RUSAGE_SELF) - c0
        assert res.udif is not None  # a DMG build always writes its UDIF image
        print(
            f"DMG UDZO, {size / 2**20:.0f} MiB tree, {os.cpu_count()} cores, load average"
            f" {load_before:.1f} -> {os.getloadavg()[0]:.1f} (shared machine: wall times are noisy)"
        )
        print(f"{'tool':<28}{'seconds':>10}{'CPU s':>10}{'MiB/s':>10}{'size MiB':>10}")
        print(f"{'gzip -6 (1 thread, tar)':<28}{gzip_s:>10.2f}{gzip_cpu:>10.2f}{size / 2**20 / gzip_s:>10.1f}{'':>10}")
        print(
            f"{'darkstorage bucket2dmg':<28}{dmg_s:>10.2f}{dmg_cpu:>10.2f}{size / 2**20 / dmg_s:>10.1f}"
            f"{res.udif.file_bytes / 2**20:>10.1f}"
        )
        print(f"speed-up vs single-thread gzip -6: {gzip_s / dmg_s:.2f}x wall (goal >= 1.7x on 2 cores)")
        print(f"CPU seconds vs gzip -6: {dmg_cpu / gzip_cpu:.2f}x")


def _cpu_s(who: int) -> float:
    import resource

    r = resource.getrusage(who)
    return r.ru_utime + r.ru_stime


def _time_iso(tree: Path, out: Path) -> tuple[float, float, float, float, float]:
    """Wall and CPU seconds (user + system, all threads) for ``xorriso -as mkisofs -R -J`` and for
    darkstorage (RR+Joliet+UDF, sidecar, manifest), and the wall seconds of ``sha256sum`` over
    xorriso's image (what a sidecar costs it): (xorriso wall, ours wall, xorriso CPU, ours CPU,
    sha256sum wall)."""
    import gc
    import resource

    from imaging.common import walk_tree
    from imaging.iso_build import IsoOptions, build_layout
    from imaging.iso_write import write_image

    c0 = _cpu_s(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    subprocess.run(
        ["xorriso", "-as", "mkisofs", "-quiet", "-iso-level", "3", "-R", "-J", "-o", str(out), str(tree)], check=True
    )
    xorriso_s = time.perf_counter() - t0
    xorriso_cpu = _cpu_s(resource.RUSAGE_CHILDREN) - c0
    t0 = time.perf_counter()
    subprocess.run(["sha256sum", str(out)], check=True, capture_output=True)
    sha_s = time.perf_counter() - t0
    out.unlink()
    gc.collect()  # the previous run's layout is garbage: its collection is no part of this build
    c0 = _cpu_s(resource.RUSAGE_SELF)
    t0 = time.perf_counter()
    write_image(build_layout(walk_tree(tree), IsoOptions()), out)
    ours_s = time.perf_counter() - t0
    ours_cpu = _cpu_s(resource.RUSAGE_SELF) - c0
    out.unlink()
    out.with_name(out.name + ".sha256").unlink()
    return xorriso_s, ours_s, xorriso_cpu, ours_cpu, sha_s


def bench_iso(mib: int = 1024, big_gib: int = 4, repeat: int = 1) -> None:
    """ISO of a ~*mib* MiB real tree and of one *big_gib* GiB file: darkstorage vs xorriso (-iso-level 3 -R -J).

    Each case runs *repeat* times (xorriso then darkstorage, in turn); the medians are printed.
    """
    import statistics

    with tempfile.TemporaryDirectory(prefix="bench-iso-") as tmp:
        root = Path(tmp) / "tree"
        size = _copy_usr_subset(root, mib << 20)
        files = sum(len(n) for _, _, n in os.walk(root))
        big = Path(tmp) / "big"
        big.mkdir()
        subprocess.run(
            ["dd", "if=/dev/urandom", f"of={big / 'big.bin'}", "bs=16M", f"count={big_gib * 64}", "status=none"],
            check=True,
        )
        print(f"ISO build, {os.cpu_count()} cores (shared machine: noisy); darkstorage writes RR+Joliet+UDF,")
        print("the SHA-256 sidecar and the per-file manifest; xorriso -as mkisofs -R -J writes neither UDF nor digests")
        print(f"median of {repeat} run(s) each; CPU = user + system seconds, all threads")
        print(
            f"{'case':<32}{'xorriso s':>10}{'ours s':>8}{'ratio':>7}{'xorriso CPU':>12}{'ours CPU':>10}{'ratio':>7}"
            f"{'load avg':>16}"
        )
        for label, tree in (
            (f"tree {size / 2**20:.0f} MiB, {files} files", root),
            (f"one {big_gib} GiB file", big),
        ):
            load0 = os.getloadavg()[0]
            runs = [_time_iso(tree, Path(tmp) / "out.iso") for _ in range(repeat)]
            xw, ow, xc, oc, sw = (statistics.median(r[i] for r in runs) for i in range(5))
            load = f"{load0:.1f} -> {os.getloadavg()[0]:.1f}"
            print(f"{label:<32}{xw:>10.2f}{ow:>8.2f}{xw / ow:>7.2f}{xc:>12.2f}{oc:>10.2f}{xc / oc:>7.2f}{load:>16}")
            print(f"{'':<32}  xorriso + sha256sum of its image: {xw + sw:.2f} s (ratio {(xw + sw) / ow:.2f})")
            if repeat > 1:
                print(f"{'':<32}  runs (xorriso/ours s): " + ", ".join(f"{r[0]:.1f}/{r[1]:.1f}" for r in runs))
        print("ratio = xorriso / darkstorage (goal >= 1.0 on wall seconds)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--dmg-mib", type=int, default=1024, help="size of the tree for the DMG bench")
    ap.add_argument("--iso-mib", type=int, default=1024, help="size of the tree for the ISO bench")
    ap.add_argument("--iso-big-gib", type=int, default=4, help="size of the single file for the ISO bench")
    ap.add_argument("--iso-repeat", type=int, default=3, help="runs per ISO case (medians are printed)")
    ap.add_argument("--only", choices=["dmg", "iso"], default=None, help="run one bench only")
    args = ap.parse_args()
    if args.only in (None, "dmg"):
        bench_dmg(args.dmg_mib)
    if args.only in (None, "iso"):
        bench_iso(args.iso_mib, args.iso_big_gib, args.iso_repeat)


if __name__ == "__main__":
    main()
