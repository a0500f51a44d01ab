"""The agent running realtime pairs for real: a detached ``darkstorage agent`` process, watchdog on
a local folder and on a pool bucket seen through a live FUSE mount (inotify sees writes made
through the mount)."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import Mount, cli, wait_until


@pytest.fixture
def agent(home: Path) -> Iterator[Path]:
    yield home
    res = cli("agent", "status", "--json", home=home, check=False)
    if res.returncode == 0 and json.loads(res.stdout)["running"]:
        cli("agent", "stop", home=home)


def test_realtime_pair_follows_changes_and_agent_start_status_stop(agent: Path, tmp_path: Path) -> None:
    home = agent
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    (a / "first.txt").write_text("before the agent")
    cli("sync", str(a), "--with", str(b), "--realtime", "--name", "docs", home=home)
    cli("agent", "start", home=home)
    wait_until(lambda: (b / "first.txt").exists(), "catch-up run")
    (a / "sub").mkdir()
    (a / "sub" / "new.txt").write_text("written while the agent runs")
    wait_until(lambda: (b / "sub" / "new.txt").exists(), "realtime run after a change on side 1")
    (b / "back.txt").write_text("from side 2")
    wait_until(lambda: (a / "back.txt").exists(), "realtime run after a change on side 2")
    cli("sync", "pause", "docs", home=home)
    st = json.loads(cli("agent", "status", "--json", home=home).stdout)
    assert st["running"] and st["pairs"][0]["name"] == "docs" and st["pairs"][0]["paused"]
    assert cli("agent", "start", home=home, check=False).returncode == 7  # already running: BUSY
    cli("agent", "stop", home=home)
    assert not json.loads(cli("agent", "status", "--json", home=home).stdout)["running"]


@pytest.mark.fuse
def test_realtime_pair_sees_writes_through_the_fuse_mount(mounted: Mount, agent: Path, tmp_path: Path) -> None:
    home = agent
    out = tmp_path / "replica"
    cli("sync", "b", "--to", str(out), "--realtime", "--name", "bucket-replica", home=home)
    cli("agent", "start", home=home)
    (mounted.path / "b" / "via-mount.txt").write_text("written through FUSE")
    wait_until(lambda: (out / "via-mount.txt").exists(), "a run triggered by inotify on the mount")
    assert (out / "via-mount.txt").read_text() == "written through FUSE"
    os.rename(mounted.path / "b" / "via-mount.txt", mounted.path / "b" / "renamed.txt")
    wait_until(lambda: (out / "renamed.txt").exists() and not (out / "via-mount.txt").exists(), "rename")
