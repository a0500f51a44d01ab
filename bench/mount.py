"""Benchmark the darkstorage FUSE mount against native disk, bindfs and rclone mount.

All four targets sit over a local directory in one temp dir (same filesystem), and each is
measured in turn (set up, every row, torn down) so only one FUSE mount runs at a time:

* ``native``      - a plain directory;
* ``darkstorage`` - ``python -m agent mount`` with its own ``DARKSTORAGE_HOME`` (embedded
  default pool, bucket ``b``, product defaults unless ``--ds-args`` says otherwise);
* ``bindfs``      - ``bindfs -f SRC MNT``;
* ``rclone``      - ``rclone mount SRC MNT --vfs-cache-mode full --config /dev/null``.

Rows (wall clock via ``time.perf_counter``):

* sequential write of ``--size`` bytes in 1 MiB blocks, then fsync and close;
* sequential read of that file, cold (``sync``; ``echo 3 > /proc/sys/vm/drop_caches``; re-open);
* sequential read, warm (again, immediately);
* 20,000 ``pread`` of 4 KiB at random 4 KiB-aligned offsets (seeded, warm);
* create / stat / unlink of ``--files`` empty files in one directory (three rows);
* ``tar -xf`` of a tarball of the Python standard library (built once, outside timing,
  without ``__pycache__`` and ``site-packages``), then ``find DIR -type f | wc -l`` and ``du -s``.

The table shows times, MB/s (10^6 bytes) for the sequential rows, and ratios
``other_time / darkstorage_time``: above 1 darkstorage is faster, below 1 it is slower.
``--rounds N`` measures every target N times, round-robin (native, darkstorage, bindfs,
rclone, then again), and shows each row's median; ``--json`` keeps every round's times.
Before each target starts, the previous one's data is removed and flushed (``sync``, then a
wait until the kernel holds under 8 MiB of dirty or in-flight pages, and one quiet second),
so no target pays for the disk writes its predecessor left behind.
Dropping caches needs root; without it the "cold" row is really warm (a note says so).
Nothing is downloaded; a missing ``bindfs``/``rclone`` binary skips that target. Everything
(mounts, processes, temp dirs) is cleaned up on exit, Ctrl-C or errors.

Run:
    .venv/bin/python bench/mount.py --size 1G
    .venv/bin/python bench/mount.py --size 256M --files 2000 --only native,darkstorage --json out.json
    .venv/bin/python bench/mount.py --size 64M --only darkstorage,bindfs --rounds 3
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import random
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parent.parent
TARGETS = ("native", "darkstorage", "bindfs", "rclone")
PEERS = ("native", "bindfs", "rclone")
BLOCK = 1 << 20
RANDOM_READS = 20_000
SEED = 20240501
ROWS = {
    "seq_write": "",
    "seq_read_cold": "sequential read, cold",
    "seq_read_warm": "sequential read, warm",
    "rand_read_4k": f"{RANDOM_READS:,} random 4 KiB preads",
    "create": "",
    "stat": "",
    "unlink": "",
    "untar": "untar Python stdlib (tar -xf)",
    "find": "find -type f | wc -l",
    "du": "du -s",
}
SEQ_ROWS = ("seq_write", "seq_read_cold", "seq_read_warm")
console = Console(width=None if sys.stdout.isatty() else 200)  # piped output: don't squeeze the table to 80
notes: list[str] = []


def note(msg: str) -> None:
    notes.append(msg)
    console.print(f"[yellow]note:[/] {msg}")


def parse_size(text: str) -> int:
    """``1G``, ``256M``, ``512k`` or plain bytes (binary units)."""
    t = text.strip().upper().removesuffix("IB").removesuffix("B")
    mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}.get(t[-1:], 1)
    n = int(float(t[:-1] if mult > 1 else t) * mult)
    if n < BLOCK:
        raise argparse.ArgumentTypeError(f"size must be at least 1M, got {text!r}")
    return n - n % BLOCK


def settle(timeout_s: float = 60.0) -> None:
    """Flush what earlier targets left dirty and wait for the disk to go quiet: ``sync``,
    then until ``Dirty`` + ``Writeback`` in ``/proc/meminfo`` is under 8 MiB (at most
    *timeout_s*), then one more second."""
    os.sync()
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        kib = 0
        with contextlib.suppress(OSError):
            for line in Path("/proc/meminfo").read_text().splitlines():
                key, _, rest = line.partition(":")
                if key in ("Dirty", "Writeback"):
                    kib += int(rest.split()[0])
        if kib < 8 * 1024:
            break
        time.sleep(0.1)
    time.sleep(1.0)


def drop_caches() -> bool:
    os.sync()
    try:
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return True
    except OSError:
        return False


def mounts_under(path: Path) -> list[str]:
    prefix = str(path.resolve()) + "/"
    with open("/proc/self/mounts") as f:
        points = [line.split()[1].encode().decode("unicode_escape") for line in f]
    return [p for p in points if p.startswith(prefix)]


def safe_rmtree(path: Path) -> None:
    """Remove *path* unless something is still mounted inside it (never delete through a mount)."""
    left = mounts_under(path)
    if left:
        console.print(f"[red]not removing {path}: still mounted: {', '.join(left)}[/]")
        return
    shutil.rmtree(path, ignore_errors=True)


@contextlib.contextmanager
def no_sigint() -> Iterator[None]:
    """Let a cleanup step finish even if Ctrl-C is pressed again."""
    old = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, old)


def unmount(mnt: Path) -> None:
    if os.path.ismount(mnt):
        if subprocess.run(["fusermount3", "-u", str(mnt)], capture_output=True).returncode != 0:
            subprocess.run(["fusermount3", "-u", "-z", str(mnt)], capture_output=True)
    deadline = time.monotonic() + 10
    while os.path.ismount(mnt) and time.monotonic() < deadline:
        time.sleep(0.05)


def stop_process(name: str, proc: subprocess.Popen[bytes], mnt: Path, sigterm: bool, timeout: float) -> None:
    """Stop a mount process we started: SIGTERM (darkstorage) or fusermount3 -u; then SIGTERM/SIGKILL by pid."""
    with no_sigint():
        t0 = time.perf_counter()
        if proc.poll() is None and not sigterm:
            unmount(mnt)  # bindfs/rclone exit once unmounted; a busy mount was detached lazily
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(10)
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)  # darkstorage: upload dirty files, then unmount
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                note(f"{name}: mount process {proc.pid} did not stop within {timeout:.0f}s; killing it")
                proc.kill()
                proc.wait()
        unmount(mnt)
        console.print(f"[dim]{name}: stopped in {time.perf_counter() - t0:.1f}s (exit {proc.returncode})[/]")


def start_mount(
    name: str,
    cmd: list[str],
    mnt: Path,
    log: Path,
    stack: contextlib.ExitStack,
    sigterm: bool,
    timeout: float,
    env: dict[str, str] | None = None,
) -> None:
    mnt.mkdir(parents=True, exist_ok=True)
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=out, env=env, cwd=ROOT, start_new_session=True
        )  # our Ctrl-C must not reach it; we stop it in order
    stack.callback(stop_process, name, proc, mnt, sigterm, timeout)
    deadline = time.monotonic() + 60
    while not os.path.ismount(mnt):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{name} mount did not come up: {log.read_text(errors='replace')[-2000:]}")
        time.sleep(0.02)


def start_target(name: str, tdir: Path, stack: contextlib.ExitStack, args: argparse.Namespace) -> Path:
    """Set up target *name* under *tdir*; register its teardown on *stack*; return the directory to use."""
    if name == "native":
        (tdir / "data").mkdir()
        return tdir / "data"
    mnt, log = tdir / "mnt", tdir / "mount.log"
    if name == "darkstorage":
        env = {**os.environ, "DARKSTORAGE_HOME": str(tdir / "home")}
        for sub in (["init"], ["bucket", "create", "b"]):
            subprocess.run([sys.executable, "-m", "agent", *sub], env=env, cwd=ROOT, check=True, capture_output=True)
        cmd = [sys.executable, "-m", "agent", "mount", str(mnt), "--foreground", *shlex.split(args.ds_args)]
        start_mount(name, cmd, mnt, log, stack, True, args.stop_timeout, env)
        return mnt / "b"
    (tdir / "src").mkdir()
    if name == "bindfs":
        cmd = ["bindfs", "-f", str(tdir / "src"), str(mnt)]
    else:
        cmd = [
            "rclone",
            "mount",
            str(tdir / "src"),
            str(mnt),
            "--vfs-cache-mode",
            "full",
            "--config",
            "/dev/null",
            "--cache-dir",
            str(tdir / "rclone-cache"),
        ]
    start_mount(name, cmd, mnt, log, stack, False, args.stop_timeout)
    return mnt


def timed(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def seq_write(path: Path, size: int, pool: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        view, done = memoryview(pool), 0
        while done < size:
            off = done % len(pool)
            done += os.write(fd, view[off : off + BLOCK])
        os.fsync(fd)
    finally:
        os.close(fd)


def seq_read(path: Path, size: int) -> None:
    buf, total = bytearray(BLOCK), 0
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buf):
            total += n
    if total != size:
        raise RuntimeError(f"read {total} bytes, expected {size}")


def rand_read(path: Path, offsets: list[int]) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        for off in offsets:
            if len(os.pread(fd, 4096, off)) != 4096:
                raise RuntimeError(f"short read at {off}")
    finally:
        os.close(fd)


def create_files(names: list[str]) -> None:
    for n in names:
        os.close(os.open(n, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))


def remove_files(names: list[str]) -> None:
    for n in names:
        os.unlink(n)


def run_rows(
    name: str, root: Path, args: argparse.Namespace, tarball: Path, tar_files: int, res: dict[str, float | None]
) -> None:
    """Run every row on target *name* in directory *root*, filling *res* (seconds; None = failed)."""

    def row(key: str, fn: Callable[[], object], cold: bool = False) -> None:
        if cold and not drop_caches():
            note("cannot write /proc/sys/vm/drop_caches (not root?): cold reads are warm")
        try:
            res[key] = timed(fn)
            console.print(f"  {name:<12} {ROWS[key]:<34} {res[key]:9.3f} s")
        except Exception as e:  # a failing row is a finding, not a reason to stop
            res[key] = None
            why = f"{type(e).__name__}: {e}"
            stderr = getattr(e, "stderr", None)
            if stderr:  # a command's own first complaint says more than its exit status
                text = stderr.decode(errors="replace") if isinstance(stderr, bytes) else stderr
                why = text.strip().splitlines()[0]
            note(f"{name}: {ROWS[key]} failed: {why}")

    big, size = root / "bigfile", args.size
    pool = random.Random(SEED).randbytes(64 * BLOCK)
    rng = random.Random(SEED)
    offsets = [rng.randrange(size // 4096) * 4096 for _ in range(RANDOM_READS)]
    row("seq_write", lambda: seq_write(big, size, pool))
    row("seq_read_cold", lambda: seq_read(big, size), cold=True)
    row("seq_read_warm", lambda: seq_read(big, size))
    row("rand_read_4k", lambda: rand_read(big, offsets))
    with contextlib.suppress(OSError):
        big.unlink()
    fdir = root / "files"
    fdir.mkdir()
    names = [str(fdir / f"f{i:06d}") for i in range(args.files)]
    row("create", lambda: create_files(names))
    row("stat", lambda: [os.stat(n) for n in names])
    row("unlink", lambda: remove_files(names))
    with contextlib.suppress(OSError):
        fdir.rmdir()
    dest = root / "untar"
    dest.mkdir()
    row("untar", lambda: subprocess.run(["tar", "-xf", str(tarball), "-C", str(dest)], check=True, capture_output=True))
    out: dict[str, str] = {}

    def sh(key: str, cmd: str) -> None:
        out[key] = subprocess.run(cmd, shell=True, check=True, capture_output=True, text=True).stdout.strip()

    row("find", lambda: sh("find", f"find {shlex.quote(str(dest))} -type f | wc -l"))
    row("du", lambda: sh("du", f"du -s {shlex.quote(str(dest))}"))
    if out.get("find") and int(out["find"]) != tar_files:
        note(f"{name}: find counted {out['find']} files after untar, the tarball has {tar_files}")
    if out.get("du"):
        res["du_kib"] = float(out["du"].split()[0])


def build_tarball(base: Path) -> tuple[Path, int]:
    stdlib = sysconfig.get_paths()["stdlib"]
    tarball = base / "stdlib.tar"
    subprocess.run(
        ["tar", "-cf", str(tarball), "--exclude=__pycache__", "--exclude=site-packages", "-C", stdlib, "."],
        check=True,
        capture_output=True,
    )
    listing = subprocess.run(["tar", "-tvf", str(tarball)], check=True, capture_output=True, text=True).stdout
    files = sum(1 for line in listing.splitlines() if line.startswith("-"))
    console.print(f"tarball: {stdlib} -> {tarball.stat().st_size / 1e6:.0f} MB, {files} files")
    return tarball, files


def fmt_time(key: str, res: dict[str, float | None], size: int) -> str:
    if key not in res:
        return "-"  # not run (interrupted)
    t = res[key]
    if t is None:
        return "[red]failed[/]"
    s = f"{t:.3f} s" if t >= 0.01 else f"{t * 1e3:.3f} ms"
    return f"{s} ({size / t / 1e6:,.0f} MB/s)" if key in SEQ_ROWS and t > 0 else s


def fmt_ratio(other: float | None, ds: float | None) -> str:
    if not other or not ds:
        return "-"
    r = other / ds
    return f"[{'green' if r >= 1 else 'red'}]{r:.2f}x[/]"


def ratios(other: dict[str, float | None], ds: dict[str, float | None]) -> dict[str, float]:
    out: dict[str, float] = {}
    for key in ROWS:
        o, d = other.get(key), ds.get(key)
        if o and d:
            out[key] = o / d
    return out


def medians(rounds: list[dict[str, float | None]]) -> dict[str, float | None]:
    """Each row's median over the rounds that measured it; None if every round failed it."""
    out: dict[str, float | None] = {}
    for key in [*ROWS, "du_kib"]:
        seen = [r[key] for r in rounds if key in r]
        if seen:
            ok = [v for v in seen if v is not None]
            out[key] = statistics.median(ok) if ok else None
    return out


def report(
    results: dict[str, dict[str, float | None]],
    args: argparse.Namespace,
    rounds: dict[str, list[dict[str, float | None]]] | None = None,
) -> None:
    title = f"darkstorage mount benchmark ({args.size >> 20} MiB file, {args.files:,} files"
    if args.rounds > 1:
        title += f", median of {args.rounds} rounds"
    table = Table(title=title + ")")
    table.add_column("benchmark", no_wrap=True)
    for t in results:
        table.add_column(t, justify="right", no_wrap=True)
    peers = [p for p in PEERS if p in results] if "darkstorage" in results else []
    for p in peers:
        table.add_column(f"ds vs {p}", justify="right")
    for key, label in ROWS.items():
        cells = [fmt_time(key, results[t], args.size) for t in results]
        ratio_cells = [fmt_ratio(results[p].get(key), results["darkstorage"].get(key)) for p in peers]
        table.add_row(label, *cells, *ratio_cells)
    console.print()
    if peers:
        console.print(
            "Ratios are other_time / darkstorage_time (throughput-style): "
            "[green]>1 means darkstorage is faster[/], [red]<1 means darkstorage is slower[/]."
        )
    console.print(table)
    kib = {t: r.get("du_kib") for t, r in results.items() if r.get("du_kib") is not None}
    if kib:
        console.print("du -s of the untarred tree (KiB): " + ", ".join(f"{t}={v:.0f}" for t, v in kib.items()))
    if args.json:
        data = {
            "size_bytes": args.size,
            "files": args.files,
            "random_reads": RANDOM_READS,
            "seed": SEED,
            "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": sys.version.split()[0]},
            "rows": ROWS,
            "units": "seconds, except du_kib (KiB from du -s)",
            "results": results,
            "rounds": rounds or {},
            "notes": notes,
            "ratios_other_over_darkstorage": {p: ratios(results[p], results["darkstorage"]) for p in peers},
        }
        Path(args.json).write_text(json.dumps(data, indent=2) + "\n")
        console.print(f"wrote {args.json}")


def on_sigterm(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # same clean-up path as Ctrl-C


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--size", type=parse_size, default=parse_size("1G"), help="sequential file size (default 1G)")
    ap.add_argument("--files", type=int, default=10_000, help="files to create/stat/unlink (default 10000)")
    ap.add_argument("--only", default=",".join(TARGETS), help=f"comma-separated targets out of {','.join(TARGETS)}")
    ap.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    ap.add_argument("--tmpdir", default=None, help="where to make the temp dir (default: system temp dir)")
    ap.add_argument("--ds-args", default="", help="extra darkstorage mount flags, e.g. '--write-back 5s'")
    ap.add_argument("--stop-timeout", type=float, default=900, help="seconds to wait for a mount to stop")
    ap.add_argument("--rounds", type=int, default=1, help="measure every target this many times, round-robin")
    args = ap.parse_args(argv)
    if args.rounds < 1:
        ap.error("--rounds must be at least 1")
    ROWS["seq_write"] = f"sequential write {args.size / (1 << 20):g} MiB + fsync"
    for key, verb in (("create", "create"), ("stat", "stat"), ("unlink", "unlink")):
        ROWS[key] = f"{verb} {args.files:,} empty files"
    wanted = {t.strip() for t in args.only.split(",") if t.strip()}
    if bad := sorted(wanted - set(TARGETS)):
        ap.error(f"unknown target(s) {bad}; choose from {TARGETS}")
    chosen = [t for t in TARGETS if t in wanted]
    needs = {"bindfs": "bindfs", "rclone": "rclone", "darkstorage": "fusermount3"}
    for t in list(chosen):
        if t in needs and shutil.which(needs[t]) is None:
            note(f"skipping {t}: {needs[t]} not found")
            chosen.remove(t)
    if os.geteuid() != 0:
        note("not root: dropping the page cache will fail, cold reads will be warm")
    signal.signal(signal.SIGTERM, on_sigterm)
    rounds: dict[str, list[dict[str, float | None]]] = {}
    with contextlib.ExitStack() as outer:
        base = Path(tempfile.mkdtemp(prefix="darkstorage-bench-", dir=args.tmpdir))
        outer.callback(safe_rmtree, base)
        try:
            tarball, tar_files = build_tarball(base)
            for n in range(args.rounds):
                for name in chosen:
                    settle()
                    console.rule(name if args.rounds == 1 else f"{name}, round {n + 1} of {args.rounds}")
                    with contextlib.ExitStack() as stack:
                        tdir = base / name
                        tdir.mkdir()
                        stack.callback(safe_rmtree, tdir)
                        try:
                            root = start_target(name, tdir, stack, args)
                        except (RuntimeError, subprocess.CalledProcessError, OSError) as e:
                            note(f"skipping {name}: cannot set it up: {e}")
                            continue
                        res: dict[str, float | None] = {}  # filled row by row: an interrupted run still reports
                        rounds.setdefault(name, []).append(res)
                        run_rows(name, root, args, tarball, tar_files, res)
        except KeyboardInterrupt:
            console.print("[red]interrupted; cleaning up[/]")
            return 130
        finally:
            if rounds:
                report({name: medians(r) for name, r in rounds.items()}, args, rounds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
