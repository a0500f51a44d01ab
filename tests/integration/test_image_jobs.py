"""Scheduled image jobs (``bucket2iso``/``bucket2dmg --schedule``, ``darkstorage jobs``, the agent
running them) and incremental DMG chains (``bucket2dmg --incremental``, ``dmg restore``), through
the real CLI; 7-Zip checks every chain image independently."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT, Mount, cli, wait_until

needs_7zz = pytest.mark.skipif(shutil.which("7zz") is None, reason="Debian package 7zip not installed")
DAY_NS = 86_400 * 10**9


def make_src(root: Path) -> None:
    for rel, data in {
        "a.txt": b"hello\n",
        "keep/big.bin": os.urandom(600_000),  # incompressible: the full image is big, the incremental not
        "keep/old.txt": b"to be deleted",
        "gone/x.txt": b"a folder to be deleted",
        "swap": b"a file that becomes a folder",
    }.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    (root / "empty").mkdir()
    os.symlink("a.txt", root / "link")


def tree_of(root: Path) -> dict[str, object]:
    """rel -> bytes (files), ("->", target) (symlinks), None (folders)."""
    out: dict[str, object] = {}
    for dirpath, dirs, names in os.walk(root):
        for n in dirs + names:
            p = Path(dirpath) / n
            rel = str(p.relative_to(root))
            out[rel] = ("->", os.readlink(p)) if p.is_symlink() else (None if p.is_dir() else p.read_bytes())
    return out


def backdate(home: Path, name: str) -> None:
    """Make job *name* look registered (and last run) a day earlier, so a tick of its schedule was missed."""
    db = sqlite3.connect(home / "sync" / "jobs.db")
    with db:
        db.execute(
            "UPDATE jobs SET created_ns = created_ns - ?1, last_run_ns = last_run_ns - ?1 WHERE name = ?2",
            (DAY_NS, name),
        )
    db.close()


def jobs(home: Path) -> dict[str, dict[str, object]]:
    return {j["name"]: j for j in json.loads(cli("jobs", "list", "--json", home=home).stdout)}


def test_schedule_registers_lists_and_removes_without_building(
    home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "f.txt").write_text("x")
    out = tmp_path / "Backups" / "weekly-backup.iso"
    # relative paths, run from tmp_path: stored absolute
    res = subprocess.run([sys.executable, "-m", "agent", "bucket2iso", "./src", "-o", "Backups/weekly-backup.iso",
                          "--schedule", "0 0 * * 0", "--compress", "gzip", "--json"], cwd=tmp_path, text=True,
                         capture_output=True, env={**os.environ, "PYTHONPATH": str(ROOT)}, check=True)  # fmt: skip
    job = json.loads(res.stdout)
    assert job["name"] == "weekly-backup" and job["registered"] == "new" and job["schedule"] == "0 0 * * 0"
    assert job["argv"] == [str(src), "--output", str(out), "--compress", "gzip"]
    assert job["next_run"] and not out.parent.exists()  # nothing built
    res = cli("bucket2dmg", str(src), "-o", str(tmp_path / "d.dmg"), "--schedule", "0 2 * * *",
              "--incremental", "--name", "daily", home=home)  # fmt: skip
    assert "registered image job daily" in res.stdout and "next run" in res.stdout
    assert set(jobs(home)) == {"weekly-backup", "daily"}
    assert jobs(home)["daily"]["argv"] == [str(src), "--output", str(tmp_path / "d.dmg"), "--incremental"]
    # the same name for another output is refused; the same job again updates its schedule
    r = cli("bucket2iso", str(src), "-o", str(tmp_path / "x" / "weekly-backup.iso"), "--schedule", "@daily",
            home=home, check=False)  # fmt: skip
    assert r.returncode == 4 and "already writes" in r.stderr
    r = cli("bucket2iso", str(src), "-o", str(out), "--schedule", "0 1 * * *", "--json", home=home)
    assert json.loads(r.stdout)["registered"] == "updated" and jobs(home)["weekly-backup"]["schedule"] == "0 1 * * *"
    # bad input: one line, exit 2, nothing registered
    for args, words in [
        (["--schedule", "0 0 * * 77"], "not a cron expression"),
        (["--schedule", "daily"], "not a cron expression"),
        (["--name", "x"], "goes with --schedule"),
        (["--schedule", "@daily", "--name", "../evil"], "job name"),
        (["--schedule", "@daily", "--encrypt", "--password"], "cannot"),
    ]:
        r = cli("bucket2iso", str(src), "-o", str(tmp_path / "e.iso"), *args, home=home, check=False)
        assert r.returncode == 2 and words in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    r = cli("bucket2dmg", str(src), "-o", str(tmp_path / "e.dmg"), "--schedule", "@daily", "--encrypt", "AES-256",
            "--password", home=home, check=False)  # fmt: skip
    assert r.returncode == 2 and "--password-env" in r.stderr
    r = cli("bucket2iso", str(tmp_path / "missing"), "-o", str(tmp_path / "e.iso"), "--schedule", "@daily",
            home=home, check=False)  # fmt: skip
    assert r.returncode == 3
    assert set(jobs(home)) == {"weekly-backup", "daily"}
    # an encrypted DMG job stores the variable's name, never the password
    monkeypatch.setenv("DMG_PW", "s3cret pw")
    cli("bucket2dmg", str(src), "-o", str(tmp_path / "v.dmg"), "--schedule", "@daily", "--encrypt", "AES-256",
        "--password-env", "DMG_PW", home=home)  # fmt: skip
    assert "s3cret" not in (home / "sync" / "jobs.db").read_bytes().decode("latin-1")
    assert jobs(home)["v"]["argv"][-2:] == ["--password-env", "DMG_PW"]
    assert cli("jobs", "remove", "daily", home=home).returncode == 0
    assert cli("jobs", "remove", "daily", home=home, check=False).returncode == 3
    assert set(jobs(home)) == {"weekly-backup", "v"}


def test_run_now_builds_verifies_installs_and_keeps_the_last_image_on_failure(home: Path, tmp_path: Path) -> None:
    src = tmp_path / "src"
    make_src(src)
    out = tmp_path / "out" / "snap.iso"
    cli("bucket2iso", str(src), "-o", str(out), "--schedule", "0 3 * * *", home=home)
    (out.parent / ".snap.job-part").mkdir(parents=True)  # left by a killed run
    (out.parent / ".snap.job-part" / "snap.iso").write_bytes(b"half an image")
    res = json.loads(cli("jobs", "run-now", "snap", "--json", home=home).stdout)
    assert res["result"] == "ok" and res["files"] == [str(out)] and res["build"]["files"] == 5
    cli("iso", "verify", str(out), home=home)
    assert sorted(p.name for p in out.parent.iterdir()) == ["snap.iso", "snap.iso.sha256"]  # no staging left
    first = out.read_bytes()
    job = jobs(home)["snap"]
    assert job["last_result"] == "ok" and job["last_files"] == [str(out)]
    # the source is gone: run-now fails with the command's own exit code, the image stays
    shutil.rmtree(src)
    r = cli("jobs", "run-now", "snap", home=home, check=False)
    assert r.returncode == 3 and "no such folder" in r.stderr
    assert out.read_bytes() == first
    cli("iso", "verify", str(out), home=home)
    job = jobs(home)["snap"]
    assert job["last_result"] == "failed" and "no such folder" in str(job["last_message"])
    assert cli("jobs", "run-now", "nope", home=home, check=False).returncode == 3


def test_encrypted_iso_from_env_or_file_and_as_a_scheduled_job(
    home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``bucket2iso --encrypt`` takes its age passphrase from a variable or a file, so a job can
    encrypt; the job stores the file's path, never the passphrase; pyrage (another age
    implementation) decrypts what was written into an image ``iso verify`` accepts."""
    pyrage = pytest.importorskip("pyrage")
    src = tmp_path / "src"
    make_src(src)
    pw = tmp_path / "pw"
    pw.write_text("correct horse\n")
    out = tmp_path / "out" / "sec.iso"
    cli("bucket2iso", str(src), "-o", str(out), "--encrypt", "--password-file", str(pw), "--schedule", "@daily",
        home=home)  # fmt: skip
    assert "correct horse" not in (home / "sync" / "jobs.db").read_bytes().decode("latin-1")
    res = json.loads(cli("jobs", "run-now", "sec", "--json", home=home).stdout)
    enc = out.with_name("sec.iso.age")
    assert res["result"] == "ok" and res["files"] == [str(enc)]
    (tmp_path / "job.iso").write_bytes(pyrage.passphrase.decrypt(enc.read_bytes(), "correct horse"))
    cli("iso", "verify", str(tmp_path / "job.iso"), home=home)
    monkeypatch.setenv("ISO_PW", "battery staple")
    cli("bucket2iso", str(src), "-o", str(tmp_path / "now.iso"), "--encrypt", "--password-env", "ISO_PW", home=home)
    plain = pyrage.passphrase.decrypt((tmp_path / "now.iso.age").read_bytes(), "battery staple")
    (tmp_path / "now-plain.iso").write_bytes(plain)
    assert "a.txt" in cli("iso", "ls", str(tmp_path / "now-plain.iso"), home=home).stdout
    for args, words in [
        (["--password-env", "ISO_PW"], "go with --encrypt"),
        (["--encrypt"], "needs the age passphrase"),
        (["--encrypt", "--password-env", "NOT_SET_ANYWHERE"], "not set"),
        (["--encrypt", "--password-env", "ISO_PW", "--password-file", str(pw)], "only one of"),
    ]:
        r = cli("bucket2iso", str(src), "-o", str(tmp_path / "bad.iso"), *args, home=home, check=False,
                stdin=subprocess.DEVNULL)  # fmt: skip
        assert r.returncode == 2 and words in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert not list(tmp_path.glob("bad.iso*"))


def test_agent_once_and_resident_agent_run_due_jobs(home: Path, tmp_path: Path) -> None:
    src = tmp_path / "src"
    make_src(src)
    cli("bucket2dmg", str(src), "-o", str(tmp_path / "a.dmg"), "--schedule", "*/5 * * * *", home=home)
    cli("bucket2dmg", str(src), "-o", str(tmp_path / "b.dmg"), "--schedule", "*/5 * * * *", home=home)
    # nothing is due yet (no tick since they were registered, unless one falls right now)
    backdate(home, "a")
    ran = json.loads(cli("agent", "start", "--once", "--json", home=home).stdout)
    assert ran["jobs"] == ["a"] and ran["failed"] == []
    cli("dmg", "verify", str(tmp_path / "a.dmg"), home=home)
    assert json.loads(cli("agent", "start", "--once", "--json", home=home).stdout)["jobs"] == []  # done: not due
    # the resident agent runs a missed tick at start
    backdate(home, "b")
    cli("agent", "start", home=home)
    try:
        wait_until(lambda: jobs(home)["b"]["last_result"] is not None, "the agent running job b", timeout=60)
        assert jobs(home)["b"]["last_result"] == "ok", jobs(home)["b"]["last_message"]
        st = json.loads(cli("agent", "status", "--json", home=home).stdout)
        assert {j["name"] for j in st["jobs"]} == {"a", "b"}
    finally:
        cli("agent", "stop", home=home)
    cli("dmg", "verify", str(tmp_path / "b.dmg"), home=home)
    # a job that fails makes --once exit non-zero and names it
    shutil.rmtree(src)
    backdate(home, "a")
    r = cli("agent", "start", "--once", home=home, check=False)
    assert r.returncode == 21 and "a" in r.stderr and jobs(home)["a"]["last_result"] == "failed"


@needs_7zz
def test_incremental_chain_holds_only_changes_and_restores_byte_for_byte(home: Path, tmp_path: Path) -> None:
    src = tmp_path / "src"
    make_src(src)
    out = tmp_path / "backups" / "daily.dmg"
    full = json.loads(cli("bucket2dmg", str(src), "-o", str(out), "--incremental", "--json", home=home).stdout)
    assert full["kind"] == "full" and Path(full["image"]).name.endswith("-full.dmg")
    before = tree_of(src)
    # change, add, delete (a file, a folder), a file that becomes a folder, a retargeted symlink
    (src / "a.txt").write_bytes(b"changed, longer\n")
    (src / "new.txt").write_bytes(b"new")
    (src / "keep" / "old.txt").unlink()
    shutil.rmtree(src / "gone")
    (src / "swap").unlink()
    (src / "swap").mkdir()
    (src / "swap" / "inside.txt").write_bytes(b"now a folder")
    (src / "link").unlink()
    os.symlink("new.txt", src / "link")
    incr = json.loads(cli("bucket2dmg", str(src), "-o", str(out), "--incremental", "--json", home=home).stdout)
    assert incr["kind"] == "incr" and Path(incr["image"]).name.endswith("-incr.dmg")
    assert sorted(incr["changed"]) == ["a.txt", "link", "new.txt", "swap/inside.txt"]
    assert sorted(incr["deleted"]) == ["gone", "keep/old.txt", "swap"]
    listed = json.loads(cli("dmg", "ls", incr["image"], "--json", home=home).stdout)
    files = sorted(e["path"] for e in listed if e["kind"] != "dir")
    assert files == [".darkstorage-increment.json", "a.txt", "link", "new.txt", "swap/inside.txt"]  # not big.bin
    assert Path(incr["image"]).stat().st_size < 50_000 < Path(full["image"]).stat().st_size
    # a run with nothing changed: an image with the manifest alone
    same = json.loads(cli("bucket2dmg", str(src), "-o", str(out), "--incremental", "--json", home=home).stdout)
    assert same["changed"] == [] and same["deleted"] == []
    chain = json.loads((out.parent / "daily.chain.json").read_text())
    assert [i["kind"] for i in chain["images"]] == ["full", "incr", "incr"]
    assert [i["file"] for i in chain["images"]] == [Path(x["image"]).name for x in (full, incr, same)]
    for i in chain["images"]:
        t = subprocess.run(["7zz", "t", str(out.parent / i["file"])], capture_output=True, text=True)
        assert t.returncode == 0 and "Everything is Ok" in t.stdout, t.stdout + t.stderr
        cli("dmg", "verify", str(out.parent / i["file"]), home=home)
    # replay the chain, and a point-in-time restore from the first image
    res = json.loads(cli("dmg", "restore", str(out.parent / "daily.chain.json"), "-o", str(tmp_path / "r"),
                         "--json", home=home).stdout)  # fmt: skip
    assert len(res["images"]) == 3
    assert tree_of(tmp_path / "r") == tree_of(src)
    cli("dmg", "restore", full["image"], "-o", str(tmp_path / "r0"), home=home)
    assert tree_of(tmp_path / "r0") == before
    # a damaged image: nothing is restored, exit 18
    img = Path(incr["image"])
    data = bytearray(img.read_bytes())
    data[100] ^= 0xFF
    img.write_bytes(bytes(data))
    r = cli("dmg", "restore", str(out.parent / "daily.chain.json"), "-o", str(tmp_path / "r2"), home=home, check=False)
    assert r.returncode == 18 and "SHA-256" in r.stderr and not (tmp_path / "r2").exists()


def test_restore_refuses_a_deletion_leaving_the_output(home: Path, tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "d").mkdir(parents=True)
    (src / "d" / "f").write_text("f")
    out = tmp_path / "c" / "x.dmg"
    cli("bucket2dmg", str(src), "-o", str(out), "--incremental", home=home)
    # a hand-made "incremental" image whose manifest deletes ../victim
    evil = tmp_path / "evil"
    evil.mkdir()
    (evil / ".darkstorage-increment.json").write_text(json.dumps({"kind": "incr", "deleted": ["../victim"]}))
    bad = out.parent / "x-20990101-000000-incr.dmg"
    cli("bucket2dmg", str(evil), "-o", str(bad), home=home)
    chain_file = out.parent / "x.chain.json"
    chain = json.loads(chain_file.read_text())
    sha = (bad.parent / (bad.name + ".sha256")).read_text().split()[0]
    chain["images"].append({**chain["images"][0], "file": bad.name, "kind": "incr", "sha256": sha})
    chain_file.write_text(json.dumps(chain))
    victim = tmp_path / "victim"
    victim.write_text("must survive")
    r = cli("dmg", "restore", str(chain_file), "-o", str(tmp_path / "restore"), home=home, check=False)
    assert r.returncode == 19 and "'..'" in r.stderr
    assert victim.read_text() == "must survive"


def test_a_killed_run_leaves_the_previous_image(home: Path, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "small.txt").write_text("first run")
    out = tmp_path / "out" / "k.dmg"
    cli("bucket2dmg", str(src), "-o", str(out), "--format", "UDRO", "--schedule", "@daily", home=home)
    cli("jobs", "run-now", "k", home=home)
    first = out.read_bytes()
    with open(src / "big.bin", "wb") as f:  # enough work that the kill lands mid-build
        for i in range(64):
            f.write(os.urandom(1 << 20) if i % 8 == 0 else bytes(1 << 20))
    stage = out.parent / ".k.job-part"
    env = {**os.environ, "DARKSTORAGE_HOME": str(home)}
    proc = subprocess.Popen([sys.executable, "-m", "agent", "jobs", "run-now", "k"], env=env, cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        wait_until(lambda: stage.exists() or proc.poll() is not None, "the staging folder")
    finally:
        proc.kill()
        proc.wait()
    assert out.read_bytes() == first and stage.exists()
    cli("dmg", "verify", str(out), home=home)
    cli("jobs", "run-now", "k", home=home)  # the next run clears the staging folder and installs
    assert not stage.exists() and out.read_bytes() != first
    names = [e["path"] for e in json.loads(cli("dmg", "ls", str(out), "--json", home=home).stdout)]
    assert "big.bin" in names


@pytest.mark.fuse
def test_bucket_job_reads_the_mounted_bucket(home: Path, tmp_path: Path, mounted: Mount) -> None:
    (mounted.path / "b" / "docs").mkdir()
    (mounted.path / "b" / "docs" / "r.txt").write_text("in the bucket")
    out = tmp_path / "b-incr.dmg"
    job = json.loads(cli("bucket2dmg", "b/docs", "-o", str(out), "--schedule", "@hourly", "--incremental",
                         "--json", home=home).stdout)  # fmt: skip
    assert job["argv"][0] == "b/docs"  # a bucket path is stored as given, not as a folder
    assert (
        cli("bucket2dmg", "nobucket", "-o", str(out), "--schedule", "@hourly", home=home, check=False).returncode == 3
    )
    res = json.loads(cli("jobs", "run-now", "b-incr", "--json", home=home).stdout)
    assert res["build"]["kind"] == "full" and res["build"]["changed"] == ["r.txt"]
    cli("dmg", "restore", res["files"][1], "-o", str(tmp_path / "r"), home=home)
    assert (tmp_path / "r" / "r.txt").read_text() == "in the bucket"


def test_agent_stopped_mid_run_keeps_the_image_and_the_tick_due(home: Path, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "small.txt").write_text("first run")
    out = tmp_path / "out" / "s.dmg"
    cli("bucket2dmg", str(src), "-o", str(out), "--format", "UDBZ", "--schedule", "0 3 * * *", home=home)
    cli("jobs", "run-now", "s", home=home)
    first = out.read_bytes()
    (src / "big.bin").write_bytes(os.urandom(16 << 20))  # bzip2 of random data: seconds of work
    backdate(home, "s")
    cli("agent", "start", home=home)
    try:
        wait_until(lambda: (out.parent / ".s.job-part").exists(), "the agent starting job s")
    finally:
        cli("agent", "stop", home=home)
    job = jobs(home)["s"]
    assert job["last_result"] == "interrupted" and out.read_bytes() == first
    ran = json.loads(cli("agent", "start", "--once", "--json", home=home, timeout=300).stdout)
    assert ran["jobs"] == ["s"] and ran["failed"] == []  # still due: the next start runs it
    assert "big.bin" in cli("dmg", "ls", str(out), home=home).stdout
