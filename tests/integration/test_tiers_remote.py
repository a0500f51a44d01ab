"""Tiers on real external stores, through a real mount.

* The standard-library test on a pool whose hot tier is on S3 (SeaweedFS) and cold tier on SFTP
  (sshd): copy in, unmount, empty the local cache, remount, compare every byte, mode and mtime;
  the objects are plain keys on the servers with POSIX attributes in their metadata.
* Archive on S3 GLACIER (moto, which refuses GETs with InvalidObjectState until restored):
  RestoreObject + HEAD x-amz-restore, then a read through the mount.
* Credential rotation under a running mount: the store stops taking the old key, write-back
  fails, ``integrations update`` hands the new one over, the mount picks it up without a remount.
* Azure access tiers on Azurite.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from pool.backends import Backend
from pool.pool import Pool
from tests.conftest import Mount, cli, pattern, wait_until
from tests.integration.test_connectors import s3_args
from tests.integration.test_e2e import STDLIB, _make_extra_tree, _manifest, _stdlib_ignore, sha256_file, state_of

MiB = 1 << 20
STDLIB_SLICE = (
    "json",
    "email",
    "asyncio",
    "importlib",
    "wsgiref",
    "string.py",
    "textwrap.py",
    "xml",
    "unittest",
    "http",
    "logging",
)


def _drop_local_cache(home: Path) -> int:
    """Forget every clean cached file (what a new machine, or the cache limit, would do), so the
    next mount reads from the tiers' stores."""
    pool = Pool.open(home)
    try:
        rows = pool.catalog.db.execute(
            "SELECT c.inode FROM cache c JOIN objects o ON o.inode = c.inode WHERE o.state = 'clean'"
        ).fetchall()
        with pool.catalog.tx():
            for (ino,) in rows:
                pool.catalog.cache_drop(ino)
        for (ino,) in rows:
            pool.cache_path(ino).unlink(missing_ok=True)
        return len(rows)
    finally:
        pool.close()


def _s3_add(home: Path, server: Any, name: str, bucket: str) -> None:
    var = f"{name.upper().replace('-', '_')}_SECRET"
    cli("integrations", "add", *s3_args(server, bucket, secret=["--secret-key-env", var]), "--name", name, home=home)


def _copy_slice(dst: Path) -> None:
    dst.mkdir()
    for name in STDLIB_SLICE:
        src = STDLIB / name
        if src.is_dir():
            shutil.copytree(src, dst / name, symlinks=True, ignore=_stdlib_ignore, copy_function=shutil.copy2)
        else:
            shutil.copy2(src, dst / name)


def _slice_manifest(root: Path) -> dict[str, tuple]:
    out: dict[str, tuple] = {}
    for name in STDLIB_SLICE:
        p = root / name
        if p.is_dir():
            out.update({f"{name}/{k}": v for k, v in _manifest(p, _stdlib_ignore).items()})
        st = os.lstat(p)
        out[name] = (st.st_mode, st.st_mtime_ns, sha256_file(p) if stat.S_ISREG(st.st_mode) else None, {})
    return out


@pytest.mark.fuse
@pytest.mark.server
@pytest.mark.slow
def test_stdlib_on_s3_hot_and_sftp_cold(
    mounts: Callable[..., Mount],
    home: Path,
    tmp_path: Path,
    s3_server: Any,
    sftp_server: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    bucket = s3_server.fresh_root()
    monkeypatch.setenv("WEED_SECRET", s3_server.secret)
    _s3_add(home, s3_server, "weed", bucket)
    folder = sftp_server.fresh_root()
    cli(
        "integrations",
        "add",
        "sftp",
        "--name",
        "nas",
        "--host",
        sftp_server.host,
        "--port",
        str(sftp_server.port),
        "--username",
        sftp_server.user,
        "--key-file",
        str(sftp_server.client_key),
        "--no-host-key-check",
        "--path",
        folder,
        home=home,
    )
    cli("tiers", "set-backend", "hot", "integration:weed/pool/hot/", home=home)
    cli("tiers", "set-backend", "cold", "integration:nas/cold tier/", home=home)
    listed = json.loads(cli("tiers", "list", "--json", home=home).stdout)["tiers"]
    assert {t["tier"]: t["url"] for t in listed}["cold"] == "integration:nas/cold tier"
    res = cli("integrations", "remove", "nas", home=home, check=False)
    assert res.returncode == 7 and "backs tier(s) cold" in res.stderr  # BUSY: a tier uses it

    extra = tmp_path / "extra"
    extra.mkdir()
    _make_extra_tree(extra)
    want_slice = _slice_manifest(STDLIB)
    want_extra = _manifest(extra, None)
    regular = sum(1 for v in want_slice.values() if stat.S_ISREG(v[0]))
    assert regular > 150, regular

    m = mounts("--write-back", "0.3s")
    cli("tiers", "set", "b/cold/", "--default", "cold", home=home)
    _copy_slice(m.path / "b" / "stdlib")
    shutil.copytree(extra, m.path / "b" / "cold" / "extra", symlinks=True, copy_function=shutil.copy2)
    assert m.stop() == 0, m.log.read_text() if m.log else ""

    stats = json.loads(cli("tiers", "stats", "b", "--json", home=home).stdout)
    assert stats["hot"]["files"] >= regular and stats["cold"]["files"] > 0
    assert _drop_local_cache(home) > 0

    m2 = mounts("--write-back", "0.3s")
    got_slice = _slice_manifest(m2.path / "b" / "stdlib")
    got_extra = _manifest(m2.path / "b" / "cold" / "extra", None)
    for want, got in ((want_slice, got_slice), (want_extra, got_extra)):
        assert sorted(got) == sorted(want)
        bad = {rel: (want[rel], got[rel]) for rel in want if got[rel] != want[rel]}
        assert not bad, f"{len(bad)} entries differ after remount, e.g. {list(bad.items())[:5]}"
    assert m2.stop() == 0

    # plain objects on the servers: S3 keys with the attributes in their metadata, SFTP files
    s3 = s3_server.boto3_client()
    key = "pool/hot/b/stdlib/json/__init__.py"
    head = s3.head_object(Bucket=bucket, Key=key)
    attrs = json.loads(head["Metadata"]["darkstorage-attrs"])
    src = os.stat(STDLIB / "json" / "__init__.py")
    assert (attrs["mode"], attrs["mtime_ns"]) == (src.st_mode, src.st_mtime_ns)
    body = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    assert body == (STDLIB / "json" / "__init__.py").read_bytes()
    on_sftp = sftp_server.local_path(folder) / "cold tier" / "b" / "cold" / "extra" / "sub dir" / "deeper" / "data.bin"
    assert sha256_file(on_sftp) == sha256_file(extra / "sub dir" / "deeper" / "data.bin")


def _file_ino(home: Path, path: str) -> int:
    pool = Pool.open(home)
    try:
        return pool.resolve(path)[0]
    finally:
        pool.close()


@pytest.mark.fuse
@pytest.mark.server
def test_glacier_archive_restores_through_the_store(
    mounts: Callable[..., Mount], home: Path, moto_server: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    bucket = moto_server.fresh_root()
    monkeypatch.setenv("MOTO_SECRET", moto_server.secret)
    _s3_add(home, moto_server, "moto", bucket)
    res = cli(
        "tiers",
        "set-backend",
        "archive",
        "integration:moto/archive",
        "--storage-class",
        "ARCHIVE_ME",
        home=home,
        check=False,
    )
    assert res.returncode == 2 and "no storage class ARCHIVE_ME" in res.stderr
    cli("tiers", "set-backend", "archive", "integration:moto/archive", "--storage-class", "GLACIER", home=home)
    cli("tiers", "set-backend", "cold", "integration:moto/cold", "--storage-class", "STANDARD_IA", home=home)

    data = pattern(11, 2 * MiB + 5)
    m = mounts("--write-back", "0.2s")
    (m.path / "b" / "doc.bin").write_bytes(data)
    (m.path / "b" / "ia.bin").write_bytes(data[:1000])
    wait_until(lambda: state_of(m.path / "b" / "doc.bin") == "clean", "write-back")
    wait_until(lambda: state_of(m.path / "b" / "ia.bin") == "clean", "write-back")
    assert m.stop() == 0
    cli("tiers", "assign", "b/doc.bin", "--tier", "archive", home=home)
    cli("tiers", "assign", "b/ia.bin", "--tier", "cold", home=home)
    _drop_local_cache(home)

    s3 = moto_server.boto3_client()
    assert s3.head_object(Bucket=bucket, Key="archive/b/doc.bin")["StorageClass"] == "GLACIER"
    assert s3.head_object(Bucket=bucket, Key="cold/b/ia.bin")["StorageClass"] == "STANDARD_IA"
    with pytest.raises(Exception, match="InvalidObjectState"):
        s3.get_object(Bucket=bucket, Key="archive/b/doc.bin")
    status = cli("tiers", "restore", "b/doc.bin", "--status", "--json", home=home, check=False)
    assert status.returncode == 9 and json.loads(status.stdout)["state"] == "none"

    started = cli("tiers", "restore", "b/doc.bin", "--json", home=home, check=False)
    assert json.loads(started.stdout)["state"] in ("pending", "ready")
    assert "Restore" in s3.head_object(Bucket=bucket, Key="archive/b/doc.bin")  # x-amz-restore is set
    wait_until(
        lambda: cli("tiers", "restore", "b/doc.bin", "--status", home=home, check=False).returncode == 0,
        "restore",
        timeout=60,
    )

    m2 = mounts()
    assert sha256_file(m2.path / "b" / "doc.bin") == sha256_file_bytes(data)
    assert (m2.path / "b" / "ia.bin").read_bytes() == data[:1000]
    assert m2.stop() == 0


def sha256_file_bytes(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()


@pytest.mark.fuse
@pytest.mark.server
def test_rotation_reaches_a_running_mount(
    mounts: Callable[..., Mount], home: Path, moto_server: Any, tmp_path: Path
) -> None:
    import boto3

    iam = boto3.client(
        "iam",
        endpoint_url=moto_server.endpoint,
        aws_access_key_id=moto_server.user,
        aws_secret_access_key=moto_server.secret,
        region_name=moto_server.region,
    )
    user = f"rotator-{os.getpid()}-{tmp_path.name}"
    iam.create_user(UserName=user)
    policy = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}
    iam.put_user_policy(UserName=user, PolicyName="all", PolicyDocument=json.dumps(policy))
    old = iam.create_access_key(UserName=user)["AccessKey"]
    bucket = moto_server.fresh_root()
    old_secret = tmp_path / "old.key"
    old_secret.write_text(old["SecretAccessKey"])
    cli(
        "integrations",
        "add",
        "s3",
        "--name",
        "rot",
        "--bucket",
        bucket,
        "--endpoint",
        moto_server.endpoint,
        "--region",
        moto_server.region,
        "--path-style",
        "--access-key",
        old["AccessKeyId"],
        "--secret-key-file",
        str(old_secret),
        home=home,
    )
    cli("tiers", "set-backend", "warm", "integration:rot/warm", home=home)

    m = mounts("--write-back", "0.2s")
    cli("tiers", "set", "b", "--default", "warm", home=home)
    (m.path / "b" / "before.txt").write_text("written with the old key\n")
    wait_until(lambda: state_of(m.path / "b" / "before.txt") == "clean", "write-back with the old key")

    new = iam.create_access_key(UserName=user)["AccessKey"]
    iam.delete_access_key(UserName=user, AccessKeyId=old["AccessKeyId"])
    (m.path / "b" / "after.txt").write_text("written after the rotation\n")
    res = cli("integrations", "test", "rot", home=home, check=False, timeout=60)
    assert res.returncode == 15, res.stderr  # the store refuses the old key now
    assert state_of(m.path / "b" / "after.txt") != "clean"

    new_secret = tmp_path / "new.key"
    new_secret.write_text(new["SecretAccessKey"])
    cli(
        "integrations",
        "update",
        "rot",
        "--access-key",
        new["AccessKeyId"],
        "--secret-key-file",
        str(new_secret),
        home=home,
    )
    wait_until(lambda: state_of(m.path / "b" / "after.txt") == "clean", "write-back after rotation", timeout=60)
    s3 = moto_server.boto3_client()
    got = s3.get_object(Bucket=bucket, Key="warm/b/after.txt")["Body"].read()
    assert got == b"written after the rotation\n"
    assert m.proc is not None and m.proc.poll() is None  # same mount process throughout
    assert m.stop() == 0
    assert new["SecretAccessKey"] not in (m.log.read_text() if m.log else "")


@pytest.mark.server
def test_azure_access_tiers_on_azurite(home: Path, azure_server: Any, tmp_path: Path) -> None:
    container = azure_server.fresh_root()
    cli(
        "integrations",
        "add",
        "azure",
        "--name",
        "az",
        "--container",
        container,
        "--account-name",
        azure_server.user,
        "--endpoint",
        azure_server.endpoint,
        "--account-key",
        azure_server.secret,
        home=home,
    )
    src = tmp_path / "f"
    src.write_bytes(pattern(3, 100_000))
    for tier in ("Cool", "Archive"):
        backend = Backend("cold", "integration:az/t", {"storage_class": tier}, home=home)
        key = f"b/{tier}.bin"
        fd = os.open(src, os.O_RDONLY)
        try:
            tmp = backend.tmp_key(key)
            stored = backend.upload_fd(fd, tmp, {"mode": 0o100644, "uid": 1, "gid": 2, "mtime_ns": 3})
        finally:
            os.close(fd)
        backend.verify(tmp, stored)
        backend.move(tmp, key)
        assert backend.storage_class_of(key) == tier
        assert backend.get_attrs(key) == {"mode": 0o100644, "uid": 1, "gid": 2, "mtime_ns": 3}
    archived = Backend("archive", "integration:az/t", {"storage_class": "Archive"}, home=home)
    assert archived.store_restores
    assert archived.restore_status("b/Archive.bin").state == "none"
    archived.request_restore("b/Archive.bin")
    # Azurite takes the rehydrate request; whether it reports it pending or finishes it at once
    # is the emulator's choice (Azure itself takes hours): either way the blob leaves Archive
    assert archived.restore_status("b/Archive.bin").state in ("pending", "ready")
