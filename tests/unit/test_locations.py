"""Parsing transfer sources and destinations."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from fsspec.implementations.local import LocalFileSystem

from pool.errors import NotFoundError, UsageError
from pool.locations import Location, mask_secrets, mounted_root, resolve_location
from pool.poolfs import PoolFileSystem


@pytest.fixture
def pool_home(home: Path) -> Path:
    from pool.pool import Pool

    pool = Pool.open(home)
    pool.create_bucket("photos")
    pool.close()
    return home


@pytest.mark.parametrize("spec", ["./x", "../y", "/abs/dir/", "~/z", ".", "~"])
def test_local_forms(spec: str, pool_home: Path) -> None:
    loc = resolve_location(spec, home=pool_home)
    assert loc.kind == "local"
    assert isinstance(loc.fs, LocalFileSystem)
    assert loc.root == os.path.normpath(os.path.abspath(os.path.expanduser(spec)))
    assert loc.display == spec


def test_bucket_path_unmounted_is_poolfs(pool_home: Path) -> None:
    loc = resolve_location("photos/2024/", home=pool_home)
    assert loc.kind == "bucket"
    assert isinstance(loc.fs, PoolFileSystem)
    assert loc.root == "photos/2024"
    assert loc.path("a/b.jpg") == "photos/2024/a/b.jpg"
    assert loc.path("") == "photos/2024"
    assert resolve_location("photos", home=pool_home).root == "photos"


def test_bucket_path_mounted_uses_mount_record(pool_home: Path, tmp_path: Path) -> None:
    # a live record whose mountpoint is a real mount point ("/" is one) selects the mounted view
    run = pool_home / "run"
    run.mkdir(exist_ok=True)
    (run / "mount.json").write_text(f'{{"pid": {os.getpid()}, "mountpoint": "/", "state": "mounted"}}')
    assert mounted_root(pool_home) == Path("/")
    loc = resolve_location("photos/x", home=pool_home)
    assert isinstance(loc.fs, LocalFileSystem) and loc.root == "/photos/x"
    # a record of a dead process is ignored
    (run / "mount.json").write_text('{"pid": 999999999, "mountpoint": "/", "state": "mounted"}')
    assert mounted_root(pool_home) is None
    assert isinstance(resolve_location("photos/x", home=pool_home).fs, PoolFileSystem)


@pytest.mark.parametrize(
    "spec, error, text",
    [
        ("", UsageError, "empty location"),
        ("integration:", UsageError, "expected integration:NAME/path"),
        ("integration:/x", UsageError, "expected integration:NAME/path"),
        ("s3://bucket/x", UsageError, "URLs are not locations"),
        ("bad name/x", UsageError, "bucket or integration name"),
        ("photos/../etc", UsageError, "'..' are not allowed"),
        ("nosuch/x", NotFoundError, "no bucket named nosuch"),
    ],
)
def test_bad_locations(spec: str, error: type[Exception], text: str, pool_home: Path) -> None:
    with pytest.raises(error) as e:
        resolve_location(spec, home=pool_home)
    assert text in str(e.value)
    assert "\n" not in str(e.value)


def test_unknown_destination_names_both(pool_home: Path) -> None:
    with pytest.raises(NotFoundError, match="no bucket or integration named nosuch"):
        resolve_location("nosuch/x", destination=True, home=pool_home)


def test_unknown_integration(pool_home: Path) -> None:
    with pytest.raises(NotFoundError):
        resolve_location("integration:nosuch/x", home=pool_home)


def test_no_pool_yet(tmp_path: Path) -> None:
    with pytest.raises(NotFoundError, match="darkstorage init"):
        resolve_location("photos/x", home=tmp_path / "nothing")


def test_integration_name_as_destination(pool_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """After --to, NAME/path is an integration when NAME is configured and not a bucket."""
    import pool.integrations as integrations

    target = tmp_path / "remote"
    target.mkdir()
    monkeypatch.setattr(integrations, "integration_names", lambda home=None: ["nas", "photos"])
    monkeypatch.setattr(
        integrations,
        "open_integration",
        lambda name, home=None: (LocalFileSystem(skip_instance_cache=True), str(target)),
    )
    loc = resolve_location("nas/backup/", destination=True, home=pool_home)
    assert (loc.kind, loc.integration, loc.root) == ("integration", "nas", f"{target}/backup")
    assert resolve_location("photos/x", destination=True, home=pool_home).kind == "bucket"  # the bucket wins
    with pytest.raises(NotFoundError):
        resolve_location("nas/backup/", home=pool_home)  # as a source, integrations need the prefix
    loc = resolve_location("integration:nas", home=pool_home)
    assert loc.root == str(target) and loc.limiter_key == "nas"


def test_mask_secrets() -> None:
    assert mask_secrets("sftp://me:hunter2@host/x") == "sftp://me:***@host/x"
    assert mask_secrets("x?token=abc&secret=def") == "x?token=***&secret=***"


def test_location_path_join() -> None:
    loc = Location("local", LocalFileSystem(), "/r", "/r")
    assert loc.path("/a/b/") == "/r/a/b"
