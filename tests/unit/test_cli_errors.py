"""Bad input on the command line: one line on stderr, a documented exit code, no traceback."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from pool.errors import ExitCode
from tests.conftest import cli


def one_line(res_stderr: str) -> str:
    lines = [line for line in res_stderr.splitlines() if line.strip()]
    assert len(lines) == 1, res_stderr
    assert "Traceback" not in res_stderr
    return lines[0]


def test_damaged_catalog(tmp_path: Path) -> None:
    home = tmp_path / "h"
    home.mkdir()
    (home / "catalog.db").write_bytes(b"this is not sqlite" * 100)
    res = cli("init", home=home, check=False)
    assert res.returncode == ExitCode.CATALOG
    assert "catalog" in one_line(res.stderr)


def test_catalog_from_a_newer_version(tmp_path: Path) -> None:
    home = tmp_path / "h"
    cli("init", home=home)
    con = sqlite3.connect(home / "catalog.db")
    con.execute("PRAGMA user_version = 999")
    con.close()
    res = cli("bucket", "list", home=home, check=False)
    assert res.returncode == ExitCode.CATALOG
    assert "newer" in one_line(res.stderr)


def test_bad_config(tmp_path: Path) -> None:
    home = tmp_path / "h"
    cli("init", home=home)
    (home / "config.toml").write_text("[[[ not toml")
    res = cli("status", home=home, check=False)
    assert res.returncode == ExitCode.CONFIG
    assert "config.toml" in one_line(res.stderr)
    (home / "config.toml").write_text('[tiers.hot]\nurl = "nosuchproto://x"\n')
    res = cli("status", home=home, check=False)
    assert res.returncode == ExitCode.CONFIG
    one_line(res.stderr)


def test_bad_sizes_and_durations_are_usage_errors(tmp_path: Path) -> None:
    home = tmp_path / "h"
    cli("init", home=home)
    for args in (
        ["mount", str(tmp_path / "m"), "--cache-max-size", "lots"],
        ["mount", str(tmp_path / "m"), "--write-back", "soon"],
        ["tiers", "files", "--tier", "lukewarm"],
    ):
        res = cli(*args, home=home, check=False)
        assert res.returncode == ExitCode.USAGE, (args, res.stderr)
        assert "Traceback" not in res.stderr
