"""Benchmark darkstorage two-way sync against rclone bisync and unison, local folder <-> local folder.

For each tree size (``--files``, default 10,000 and 100,000 small files) one seeded tree is made
once: small files of ``--min-size``..``--max-size`` bytes (default 1-8 KiB) in nested folders
(about 25 files per folder, up to 5 levels, source-tree-like names), plus ``--large-count``
large files of ``--large-size`` (default 3 x 64 MiB). Every tool then gets its own fresh copy
(``cp -a``, outside timing) as side A and an empty folder as side B, and runs these rows:

* ``first``   - first sync, B empty (everything is copied A -> B);
* ``rescan``  - the same sync again, nothing changed;
* ``change``  - after 1% of the small files were modified on A, 0.1% deleted on B and 0.1% new
  files made (half on A, half on B); the same paths and bytes for every tool.

Tools (each run as the user would run it, as a separate process, timed wall clock):

* ``darkstorage`` - the ``darkstorage`` command installed beside this Python (``python -m agent``
  where there is none): ``darkstorage sync A --with B --bidirectional`` with its own
  ``DARKSTORAGE_HOME``; the first run is the same command;
* ``rclone``      - ``rclone bisync A B --workdir W --config /dev/null``; its first run needs
  ``--resync`` (rclone refuses to run without listings from an earlier run);
* ``unison``      - ``unison A B -batch -auto -times`` with ``UNISON`` set to a fresh folder per
  tool and tree, so no archive or profile leaks between runs.

After every row both sides are checked against the expected tree: the same relative paths and
XXH3-128 of every file's content on A and on B, and mtimes of A and B within 1 s of each other.
A tool that leaves a difference gets its time marked ``(differs)`` and a note, so nobody wins
by doing less. The page cache is flushed (``sync``) before each timed run; ``--drop-caches``
also drops it (root only). ``--repeat N`` runs every tool's three rows N times on fresh copies,
the tools taking turns (a shared machine's load then falls on all of them alike); the table
shows each row's fastest run with the CPU seconds (user + system, children included) it used.
Ratios are ``other_time / darkstorage_time`` of those fastest runs: above 1 darkstorage is
faster. A missing ``rclone``/``unison`` binary skips that tool. Nothing is downloaded.

darkstorage's Python modules are byte-compiled before the runs (``compileall``, untimed), as
an installed package is (pip compiles at install time): with ``PYTHONDONTWRITEBYTECODE`` set,
a source checkout would otherwise compile its modules again in every timed run.

Run:
    .venv/bin/python bench/sync.py
    .venv/bin/python bench/sync.py --files 1000 --large-count 1 --large-size 8M --only darkstorage,unison
    .venv/bin/python bench/sync.py --files 10000,30000 --repeat 3 --json sync.json
"""

from __future__ import annotations

import argparse
import compileall
import json
import os
import platform
import random
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import xxhash
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parent.parent
TOOLS = ("darkstorage", "rclone", "unison")
PEERS = ("rclone", "unison")
SEED = 20240611
ROWS = {"first": "first sync (B empty)", "rescan": "no-change rescan", "change": "1% changed"}
FILES_PER_DIR = 25
MAX_DEPTH = 5
WORDS = ("src", "docs", "lib", "tests", "assets", "img", "data", "notes", "build", "config", "reports", "2023",
         "2024", "archive", "drafts", "photos", "music", "invoices", "projects", "alpha", "beta", "web", "api",
         "utils", "models", "scripts", "old", "shared", "team", "misc")  # fmt: skip
EXTS = (".txt", ".md", ".py", ".json", ".csv", ".html", ".css", ".js", ".yaml", ".log", ".xml", ".ini")
console = Console(width=None if sys.stdout.isatty() else 200)  # piped output: don't squeeze the table to 80
notes: list[str] = []


def note(msg: str) -> None:
    notes.append(msg)
    console.print(f"[yellow]note:[/] {msg}", soft_wrap=True)


def parse_size(text: str) -> int:
    """``64M``, ``4K``, ``1G`` or plain bytes (binary units)."""
    t = text.strip().upper().removesuffix("IB").removesuffix("B")
    mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(t[-1:], 1)
    try:
        n = int(float(t[:-1] if mult > 1 else t) * mult)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (examples: 4K, 64M)") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"size must be at least 1 byte, got {text!r}")
    return n


def parse_counts(text: str) -> list[int]:
    try:
        counts = [int(x.replace("_", "")) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a comma-separated list of file counts: {text!r}") from None
    if not counts or min(counts) < 100:
        raise argparse.ArgumentTypeError("file counts must be at least 100")
    return counts


def digest(data: bytes) -> str:
    return xxhash.xxh3_128_hexdigest(data)


def write_file(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)


@dataclass
class Tree:
    """A generated tree: ``expected`` maps rel path -> XXH3-128 hex of its content."""

    small: list[str]
    large: list[str]
    expected: dict[str, str] = field(default_factory=dict)


@dataclass
class Changes:
    """The ``change`` row's edits, applied identically for every tool."""

    modify_a: dict[str, bytes]
    delete_b: list[str]
    new_a: dict[str, bytes]
    new_b: dict[str, bytes]

    def expected(self, before: dict[str, str]) -> dict[str, str]:
        out = dict(before)
        for rel, data in (*self.modify_a.items(), *self.new_a.items(), *self.new_b.items()):
            out[rel] = digest(data)
        for rel in self.delete_b:
            del out[rel]
        return out


def make_dirs(rng: random.Random, count: int) -> list[str]:
    """*count* nested folder paths (parents listed before children)."""
    dirs: list[str] = []
    taken: set[str] = set()
    while len(dirs) < count:
        parents = [d for d in dirs[-200:] if d.count("/") < MAX_DEPTH - 1]
        parent = rng.choice(parents) if parents and rng.random() < 0.7 else ""
        name = f"{rng.choice(WORDS)}-{rng.randrange(1000):03d}" if rng.random() < 0.5 else rng.choice(WORDS)
        path = f"{parent}/{name}" if parent else name
        if path not in taken:
            taken.add(path)
            dirs.append(path)
    return dirs


def small_size(rng: random.Random, lo: int, hi: int) -> int:
    return min(hi, max(lo, int(rng.lognormvariate(0, 0.6) * (lo + hi) / 2.5)))


def build_tree(dest: Path, n_files: int, args: argparse.Namespace) -> Tree:
    """Write the seeded tree for *n_files* under *dest* (untimed)."""
    rng = random.Random(SEED + n_files)
    dirs = make_dirs(rng, max(1, n_files // FILES_PER_DIR))
    for d in dirs:
        (dest / d).mkdir(parents=True, exist_ok=True)
    tree = Tree(small=[], large=[])
    names: set[str] = set()
    for i in range(n_files):
        rel = f"{rng.choice(dirs)}/{rng.choice(WORDS)}_{i:06d}{rng.choice(EXTS)}"
        data = rng.randbytes(small_size(rng, args.min_size, args.max_size))
        write_file(dest / rel, data)
        tree.small.append(rel)
        tree.expected[rel] = digest(data)
        names.add(rel)
    for i in range(args.large_count):
        rel = f"{dirs[i % len(dirs)]}/large_{i}.bin"
        data = rng.randbytes(args.large_size)
        write_file(dest / rel, data)
        tree.large.append(rel)
        tree.expected[rel] = digest(data)
    return tree


def plan_changes(tree: Tree, args: argparse.Namespace) -> Changes:
    """1% of small files modified on A, 0.1% deleted on B, 0.1% new (half on A, half on B)."""
    rng = random.Random(SEED * 7 + len(tree.small))
    n = len(tree.small)
    picked = rng.sample(tree.small, max(1, n // 100) + max(1, n // 1000))
    modify, delete = picked[: max(1, n // 100)], picked[max(1, n // 100) :]
    new_count = max(2, n // 1000)
    dirs = sorted({rel.rsplit("/", 1)[0] for rel in tree.small})
    new = {f"{rng.choice(dirs)}/new_{i:05d}{rng.choice(EXTS)}": rng.randbytes(small_size(rng, args.min_size,
                                                                                           args.max_size))
           for i in range(new_count)}  # fmt: skip
    items = list(new.items())
    return Changes(
        modify_a={rel: rng.randbytes(small_size(rng, args.min_size, args.max_size)) for rel in modify},
        delete_b=delete,
        new_a=dict(items[: new_count // 2]),
        new_b=dict(items[new_count // 2 :]),
    )


def apply_changes(ch: Changes, a: Path, b: Path) -> None:
    for rel, data in (*ch.modify_a.items(), *ch.new_a.items()):
        write_file(a / rel, data)
    for rel, data in ch.new_b.items():
        write_file(b / rel, data)
    for rel in ch.delete_b:
        (b / rel).unlink()


def manifest(root: Path) -> dict[str, tuple[str, int]]:
    """rel -> (XXH3-128 hex, mtime in ns) of every regular file and symlink under *root*."""
    paths: list[str] = []
    for dirpath, _dirs, files in os.walk(root):
        rel_dir = os.path.relpath(dirpath, root)
        paths.extend(f if rel_dir == "." else f"{rel_dir}/{f}" for f in files)

    def one(rel: str) -> tuple[str, tuple[str, int]]:
        p = root / rel
        st = p.lstat()
        if p.is_symlink():
            return rel, ("link:" + os.readlink(p), st.st_mtime_ns)
        h = xxhash.xxh3_128()
        with open(p, "rb") as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
        return rel, (h.hexdigest(), st.st_mtime_ns)

    with ThreadPoolExecutor(max_workers=4) as ex:
        return dict(ex.map(one, paths))


def verify(a: Path, b: Path, expected: dict[str, str]) -> list[str]:
    """Differences between A, B and the expected tree (empty when all three agree)."""
    problems: list[str] = []
    ma, mb = manifest(a), manifest(b)
    for side, m in (("A", ma), ("B", mb)):
        missing = sorted(set(expected) - set(m))
        extra = sorted(set(m) - set(expected))
        wrong = sorted(rel for rel in set(expected) & set(m) if m[rel][0] != expected[rel])
        for what, rels in (("missing", missing), ("unexpected", extra), ("wrong content", wrong)):
            if rels:
                problems.append(f"{side}: {len(rels)} {what} (e.g. {rels[0]})")
    skew = sorted(rel for rel in set(ma) & set(mb) if abs(ma[rel][1] - mb[rel][1]) > 1_000_000_000)
    if skew:
        problems.append(f"{len(skew)} files with mtimes more than 1 s apart on A and B (e.g. {skew[0]})")
    return problems


def tool_command(tool: str, a: Path, b: Path, state: Path, first: bool) -> tuple[list[str], dict[str, str]]:
    env = dict(os.environ)
    if tool == "darkstorage":
        env["DARKSTORAGE_HOME"] = str(state)
        script = Path(sys.executable).with_name("darkstorage")
        cli = [str(script)] if script.exists() else [sys.executable, "-m", "agent"]
        return [*cli, "sync", str(a), "--with", str(b), "--bidirectional"], env
    if tool == "rclone":
        cmd = ["rclone", "bisync", str(a), str(b), "--workdir", str(state), "--config", "/dev/null"]
        return cmd + (["--resync"] if first else []), env
    env["UNISON"] = str(state)
    return ["unison", str(a), str(b), "-batch", "-auto", "-times", "-ui", "text"], env


def drop_caches() -> bool:
    try:
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return True
    except OSError:
        return False


@dataclass
class Timing:
    """One tool's rows at one tree size: ``(wall s, CPU s)`` of every run, failures, differences."""

    runs: dict[str, list[tuple[float, float]]] = field(default_factory=dict)
    failed: set[str] = field(default_factory=set)
    differs: dict[str, list[str]] = field(default_factory=dict)

    def best(self, key: str) -> tuple[float, float] | None:
        """The fastest run of row *key* (None when it failed or never ran)."""
        if key in self.failed or not self.runs.get(key):
            return None
        return min(self.runs[key])

    def wall(self, key: str) -> float | None:
        b = self.best(key)
        return b[0] if b else None


def child_cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def run_tool(
    tool: str, a: Path, b: Path, state: Path, first: bool, log: Path, args: argparse.Namespace
) -> tuple[float, float]:
    """Run *tool* once: ``(wall seconds, CPU seconds)``."""
    cmd, env = tool_command(tool, a, b, state, first)
    os.sync()
    if args.drop_caches and not drop_caches():
        note("cannot write /proc/sys/vm/drop_caches (not root?): caches stay warm")
        args.drop_caches = False
    with open(log, "ab") as out:
        out.write(f"\n$ {' '.join(cmd)}\n".encode())
        out.flush()
        # a blocking wait, not subprocess.run(timeout=...): with a timeout, Popen.wait polls
        # with sleeps growing to 50 ms, which rounded short runs up by as much
        cpu0, t0 = child_cpu_s(), time.perf_counter()
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=out, env=env, cwd=ROOT)
        watchdog = threading.Timer(args.timeout, proc.kill)
        watchdog.start()
        try:
            proc.wait()
        finally:
            watchdog.cancel()
        elapsed, cpu = time.perf_counter() - t0, child_cpu_s() - cpu0
    if elapsed >= args.timeout:
        raise RuntimeError(f"killed after --timeout {args.timeout:g} s")
    if proc.returncode != 0:
        tail = log.read_text(errors="replace")[-600:].strip().replace("\n", " | ")
        raise RuntimeError(f"exit {proc.returncode}: ...{tail}")
    return elapsed, cpu


def bench_tool(tool: str, n_files: int, master: Path, tree: Tree, changes: Changes, base: Path,
               args: argparse.Namespace, timing: Timing) -> None:  # fmt: skip
    """Run the three rows for *tool* on a fresh copy of *master*, adding to *timing*."""
    tdir = base / f"{tool}-{n_files}"
    tdir.mkdir()
    try:
        a, b, state, log = tdir / "A", tdir / "B", tdir / "state", tdir / "tool.log"
        subprocess.run(["cp", "-a", str(master), str(a)], check=True)
        b.mkdir()
        state.mkdir()
        expected = tree.expected
        for key in ROWS:
            if key == "change":
                apply_changes(changes, a, b)
                expected = changes.expected(tree.expected)
            try:
                wall, cpu = run_tool(tool, a, b, state, key == "first", log, args)
            except (RuntimeError, subprocess.TimeoutExpired, OSError) as e:
                timing.failed.add(key)
                note(f"{tool} {n_files:,} files: {ROWS[key]} failed: {e}")
                return
            timing.runs.setdefault(key, []).append((wall, cpu))
            problems = verify(a, b, expected)
            if problems:
                timing.differs[key] = problems
                note(f"{tool} {n_files:,} files: {ROWS[key]}: sides differ: {'; '.join(problems)}")
            flag = " [red](differs)[/]" if problems else " [green]ok[/]"
            console.print(f"  {tool:<12} {ROWS[key]:<22} {wall:9.3f} s {cpu:8.2f} CPU-s{flag}")
    finally:
        shutil.rmtree(tdir, ignore_errors=True)


def fmt_time(best: tuple[float, float] | None, differs: bool) -> str:
    if best is None:
        return "[red]failed[/]"
    s = f"{best[0]:.2f} s ({best[1]:.2f} CPU-s)"
    return f"{s} [red](differs)[/]" if differs else s


def fmt_ratio(other: float | None, ds: float | None) -> str:
    if not other or not ds:
        return "-"
    r = other / ds
    return f"[{'green' if r >= 1 else 'red'}]{r:.2f}x[/]"


def ratios(other: Timing, ds: Timing) -> dict[str, float]:
    out: dict[str, float] = {}
    for key in ROWS:
        o, d = other.wall(key), ds.wall(key)
        if o and d:
            out[key] = o / d
    return out


def load_line() -> str:
    la = os.getloadavg()
    return f"load average {la[0]:.2f}, {la[1]:.2f}, {la[2]:.2f} on {os.cpu_count()} CPUs"


def report(results: dict[int, dict[str, Timing]], tools: list[str], args: argparse.Namespace, load_start: str) -> None:
    large = f"{args.large_count} x {args.large_size / (1 << 20):g} MiB" if args.large_count else "no large files"
    table = Table(title=f"darkstorage sync benchmark (small files {args.min_size:,}-{args.max_size:,} B, {large})")
    table.add_column("files", justify="right")
    table.add_column("row", no_wrap=True)
    for t in tools:
        table.add_column(t, justify="right", no_wrap=True)
    peers = [p for p in PEERS if p in tools] if "darkstorage" in tools else []
    for p in peers:
        table.add_column(f"ds vs {p}", justify="right")
    none = Timing()
    for n, per_tool in results.items():
        for key, label in ROWS.items():
            cells = [fmt_time(per_tool[t].best(key), key in per_tool[t].differs)
                     if t in per_tool and (key in per_tool[t].runs or key in per_tool[t].failed) else "-"
                     for t in tools]  # fmt: skip
            ds = per_tool.get("darkstorage", none).wall(key)
            ratio_cells = [fmt_ratio(per_tool.get(p, none).wall(key), ds) for p in peers]
            table.add_row(f"{n:,}", label, *cells, *ratio_cells)
        table.add_section()
    console.print()
    if args.repeat > 1:
        console.print(f"Each cell: the fastest of {args.repeat} runs, and the CPU seconds that run used.")
    if peers:
        console.print("Ratios are other_time / darkstorage_time: [green]>1 means darkstorage is faster[/], "
                      "[red]<1 means darkstorage is slower[/].")  # fmt: skip
    console.print(table)
    console.print(f"machine: {load_start} at start, {load_line()} at the end")
    if args.json:
        data = {
            "seed": SEED, "files": list(results), "min_size_bytes": args.min_size, "max_size_bytes": args.max_size,
            "large_count": args.large_count, "large_size_bytes": args.large_size, "rows": ROWS, "units": "seconds",
            "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": sys.version.split()[0],
                        "load_start": load_start, "load_end": load_line()},
            "repeat": args.repeat,
            "results": {str(n): {t: {k: tm.wall(k) for k in ROWS if k in tm.runs or k in tm.failed}
                                 for t, tm in r.items()} for n, r in results.items()},
            "runs_wall_cpu": {str(n): {t: tm.runs for t, tm in r.items()} for n, r in results.items()},
            "differences": {str(n): {t: tm.differs for t, tm in r.items()} for n, r in results.items()},
            "notes": notes,
            "ratios_other_over_darkstorage": {
                str(n): {p: ratios(r.get(p, none), r.get("darkstorage", none)) for p in peers}
                for n, r in results.items()
            },
        }  # fmt: skip
        Path(args.json).write_text(json.dumps(data, indent=2) + "\n")
        console.print(f"wrote {args.json}")


def on_sigterm(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # same clean-up path as Ctrl-C


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--files", type=parse_counts, default=[10_000, 100_000],
                    help="comma-separated small-file counts, one tree each (default 10000,100000)")  # fmt: skip
    ap.add_argument("--min-size", type=parse_size, default=parse_size("1K"), help="smallest small file (default 1K)")
    ap.add_argument("--max-size", type=parse_size, default=parse_size("8K"), help="largest small file (default 8K)")
    ap.add_argument("--large-count", type=int, default=3, help="large files per tree (default 3)")
    ap.add_argument("--large-size", type=parse_size, default=parse_size("64M"), help="large file size (default 64M)")
    ap.add_argument("--only", default=",".join(TOOLS), help=f"comma-separated tools out of {','.join(TOOLS)}")
    ap.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    ap.add_argument("--tmpdir", default=None, help="where to make the temp dir (default: system temp dir)")
    ap.add_argument("--drop-caches", action="store_true", help="drop the page cache before every timed run (root)")
    ap.add_argument("--timeout", type=float, default=3600, help="seconds one tool run may take (default 3600)")
    ap.add_argument("--repeat", type=int, default=1, help="runs of every row per tool, fastest shown (default 1)")
    args = ap.parse_args(argv)
    if args.repeat < 1:
        ap.error("--repeat must be at least 1")
    if args.min_size > args.max_size:
        ap.error("--min-size is larger than --max-size")
    if args.large_count < 0:
        ap.error("--large-count must be 0 or more")
    wanted = {t.strip() for t in args.only.split(",") if t.strip()}
    if bad := sorted(wanted - set(TOOLS)):
        ap.error(f"unknown tool(s) {bad}; choose from {TOOLS}")
    tools = [t for t in TOOLS if t in wanted]
    for t in list(tools):
        if t != "darkstorage" and shutil.which(t) is None:
            note(f"skipping {t}: {t} not found (apt-get install {t})")
            tools.remove(t)
    if "rclone" in tools:
        note("rclone bisync's first run uses --resync (required: it has no listings yet)")
    signal.signal(signal.SIGTERM, on_sigterm)
    if "darkstorage" in tools:
        for package in ("agent", "pool", "sync", "vfs", "imaging"):
            compileall.compile_dir(ROOT / package, quiet=1)
    load_start = load_line()
    console.print(f"machine: {load_start}")
    results: dict[int, dict[str, Timing]] = {}
    base = Path(tempfile.mkdtemp(prefix="darkstorage-syncbench-", dir=args.tmpdir))
    try:
        for n in args.files:
            console.rule(f"{n:,} small files")
            master = base / f"master-{n}"
            master.mkdir()
            t0 = time.perf_counter()
            tree = build_tree(master, n, args)
            changes = plan_changes(tree, args)
            console.print(f"tree: {len(tree.expected):,} files in {time.perf_counter() - t0:.1f} s; change row: "
                          f"{len(changes.modify_a)} modified on A, {len(changes.delete_b)} deleted on B, "
                          f"{len(changes.new_a)} new on A, {len(changes.new_b)} new on B")  # fmt: skip
            results[n] = {t: Timing() for t in tools}  # filled run by run, so an interrupted bench still reports
            for r in range(args.repeat):
                if args.repeat > 1:
                    console.print(f"[bold]run {r + 1} of {args.repeat}[/] ({load_line()})")
                for tool in tools[r % len(tools) :] + tools[: r % len(tools)]:  # the tools take turns going first
                    bench_tool(tool, n, master, tree, changes, base, args, results[n][tool])
            shutil.rmtree(master, ignore_errors=True)
    except KeyboardInterrupt:
        console.print("[red]interrupted; cleaning up[/]")
        return 130
    finally:
        shutil.rmtree(base, ignore_errors=True)
        if results:
            report(results, tools, args, load_start)
    return 0


if __name__ == "__main__":
    sys.exit(main())
