"""Micro benchmark: plan + write the UDF metadata of a synthetic 54,500-entry tree (imaging.udf_write).

Run: ``.venv/bin/python bench/udf_bench.py [--entries N]``; prints seconds for plan and write
(the write goes to an in-memory sink, so the figure is serialisation only).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # bench/imaging.py shadows the package

from imaging.udf_write import BLOCK, UdfLayout, UdfNode, plan_udf, write_udf


def synthetic_tree(entries: int) -> UdfNode:
    """~10% directories, 100 entries per directory (many stay empty), files of 1-100 KiB, distinct times."""
    root = UdfNode("", "dir", mode=0o755)
    dirs = [root]
    made = 0
    block = 0
    t0 = 1_700_000_000 * 10**9
    while made < entries:
        parent = dirs[made // 100]  # 100 entries per directory; depth grows like log10
        i = made
        if i % 10 == 9:
            node = UdfNode(f"folder {i}", "dir", mode=0o755, uid=1000, gid=1000, mtime_ns=t0 + i * 997_000_123)
            dirs.append(node)
        else:
            size = 1024 * (1 + i % 100)
            node = UdfNode(
                f"file number {i} é.txt" if i % 7 else f"日本 {i}.txt",
                "file",
                mode=0o644,
                uid=1000,
                gid=1000,
                mtime_ns=t0 + i * 1_000_003_000,
                atime_ns=t0 + i * 1_000_003_000,
                ctime_ns=t0 + i * 1_000_009_000,
                size=size,
                data_block=block,
            )
            block += -(-size // BLOCK)
        parent.children.append(node)
        made += 1
    return root


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--entries", type=int, default=54_500)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--image", help="also write a UDF-only image (sparse file data) here, for udfinfo/7zz")
    args = parser.parse_args()
    root = synthetic_tree(args.entries)
    for _ in range(args.rounds):
        t0 = time.perf_counter()
        plan = plan_udf(root)
        t1 = time.perf_counter()
        meta_start = 300
        # file data after the metadata: shift the synthetic data blocks by the metadata size
        data_start = meta_start + plan.blocks
        stack = [root]
        while stack:
            n = stack.pop()
            if n.kind == "dir":
                stack.extend(n.children)
            elif n.data_block < data_start:
                n.data_block += data_start
        layout = UdfLayout(16, 32, 48, 64, 257, 10**8, meta_start, (256,))
        written = 0

        def sink(data: bytes | bytearray, offset: int) -> None:
            nonlocal written
            written += len(data)

        t2 = time.perf_counter()
        write_udf(plan, sink, layout, volume_id="BENCH", build_time_ns=0, seed=1)
        t3 = time.perf_counter()
        print(
            f"{args.entries} entries: plan {t1 - t0:.3f} s, write {t3 - t2:.3f} s, "
            f"total {t1 - t0 + t3 - t2:.3f} s; {plan.blocks} metadata blocks, {written / 2**20:.0f} MiB written"
        )

    if args.image:
        write_image(root, plan.blocks, args.image)


def write_image(root: UdfNode, meta_blocks: int, path: str) -> None:
    """A UDF-only image of the synthetic tree: data blocks hold zeros (a sparse file)."""
    last = 0
    stack = [root]
    while stack:
        n = stack.pop()
        if n.kind == "dir":
            stack.extend(n.children)
        else:
            last = max(last, n.data_block + -(-n.size // BLOCK))
    total = last + 1
    layout = UdfLayout(16, 32, 48, 64, 257, last - 257, 300, (256, total - 1))
    assert 300 + meta_blocks <= last
    with open(path, "wb") as f:
        f.truncate(total * BLOCK)
        fd = f.fileno()
        t0 = time.perf_counter()
        write_udf(
            plan_udf(root), lambda b, off: os.pwrite(fd, b, off), layout, volume_id="BENCH", build_time_ns=0, seed=1
        )
        print(f"image {path}: {total} blocks, plan + write to the file {time.perf_counter() - t0:.3f} s")


if __name__ == "__main__":
    main()
