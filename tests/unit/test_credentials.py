"""Credentials: the encrypted file when no keyring is available, file modes, masking in every
output, environment references, rotation, and secrets never reaching the config or logs."""

from __future__ import annotations

import json
import logging
import os
import stat
from pathlib import Path

import pytest

from pool.credentials import CredentialStore, keyring_available, mask, redact, remember_secret
from pool.errors import AuthError, ExitCode
from pool.integrations import add_integration, describe, open_integration, update_integration
from tests.conftest import cli

SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
ACCESS = "AKIAIOSFODNN7EXAMPLE"


def test_no_real_keyring_here_means_encrypted_file(home: Path) -> None:
    # this machine has keyring's fail backend only (no Secret Service): not "available"
    assert not keyring_available()
    assert CredentialStore(home).backend == "file"


def test_encrypted_file_round_trip_modes_and_no_plaintext(home: Path) -> None:
    store = CredentialStore(home, backend="file")
    store.set("aws", {"secret_key": SECRET, "access_key": ACCESS})
    assert store.get("aws", "secret_key") == SECRET
    for p in (store.file_path, store.key_path):
        assert stat.S_IMODE(os.stat(p).st_mode) == 0o600
    blob = store.file_path.read_bytes()
    assert SECRET.encode() not in blob and ACCESS.encode() not in blob
    assert blob.startswith(b"DSC1K")
    store.delete("aws", ["secret_key"])
    assert store.get("aws", "secret_key") is None and store.get("aws", "access_key") == ACCESS


def test_wrong_key_file_is_an_auth_error(home: Path) -> None:
    store = CredentialStore(home, backend="file")
    store.set("aws", {"secret_key": SECRET})
    store.key_path.write_bytes(__import__("base64").b64encode(os.urandom(32)))
    with pytest.raises(AuthError, match="cannot decrypt"):
        store.get("aws", "secret_key")


def test_passphrase_sealing(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DARKSTORAGE_PASSPHRASE", "correct horse battery staple")
    store = CredentialStore(home, backend="file")
    store.set("nas", {"password": "hunter2-hunter2"})
    assert store.file_path.read_bytes().startswith(b"DSC1P")
    assert not store.key_path.exists()
    assert store.get("nas", "password") == "hunter2-hunter2"
    monkeypatch.setenv("DARKSTORAGE_PASSPHRASE", "wrong")
    with pytest.raises(AuthError):
        store.get("nas", "password")
    monkeypatch.delenv("DARKSTORAGE_PASSPHRASE")
    with pytest.raises(AuthError, match="passphrase"):
        store.get("nas", "password")


def test_mask() -> None:
    assert mask(SECRET) == "****EKEY"
    assert mask("short") == "****"
    assert mask(None) == ""


def test_secrets_stay_out_of_config_and_show(home: Path) -> None:
    add_integration("s3", "aws", {"bucket": "b"}, {"access_key": ACCESS, "secret_key": SECRET}, {}, home=home)
    config = (home / "config.toml").read_text()
    assert SECRET not in config and ACCESS not in config
    shown = json.dumps(describe("aws", home=home))
    assert SECRET not in shown and ACCESS not in shown and "****EKEY" in shown
    for args in (
        ("integrations", "show", "aws", "--json"),
        ("integrations", "list", "--configured", "--json"),
        ("integrations", "show", "aws"),
        ("integrations", "list", "--configured"),
    ):
        res = cli(*args, home=home)
        assert SECRET not in res.stdout and ACCESS not in res.stdout, args
        assert "EKEY" in res.stdout


def test_env_reference(home: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    res = cli("integrations", "add", "local", "--name", "usb", "--path", str(tmp_path / "usb"), home=home)
    assert res.returncode == 0
    add_integration("s3", "envy", {"bucket": "b"}, {"access_key": ACCESS}, {"secret_key": "MY_S3_SECRET"}, home=home)
    assert 'secret_key_env = "MY_S3_SECRET"' in (home / "config.toml").read_text()
    monkeypatch.delenv("MY_S3_SECRET", raising=False)
    with pytest.raises(AuthError, match="MY_S3_SECRET is not set"):
        open_integration("envy", home=home)
    monkeypatch.setenv("MY_S3_SECRET", SECRET)
    fs, base = open_integration("envy", home=home)
    assert base == "b" and fs.secret == SECRET
    d = describe("envy", home=home)
    assert d["secrets"]["secret_key"]["source"] == "env:MY_S3_SECRET"
    assert d["secrets"]["secret_key"]["value"] == "****EKEY"


def test_rotation_replaces_env_reference_and_bumps_revision(home: Path) -> None:
    add_integration("s3", "rot", {"bucket": "b"}, {}, {"secret_key": "SOME_VAR"}, home=home)
    integ = update_integration("rot", {}, {"secret_key": SECRET}, {}, home=home)
    assert integ.revision == 2 and "secret_key" not in integ.env_refs
    assert "SOME_VAR" not in (home / "config.toml").read_text()
    assert CredentialStore(home).get("rot", "secret_key") == SECRET


def test_secret_in_config_file_is_refused(home: Path) -> None:
    with open(home / "config.toml", "a") as f:
        f.write('\n[integrations.bad]\nkind = "s3"\nbucket = "b"\nsecret_key = "plain"\n')
    res = cli("integrations", "show", "bad", home=home, check=False)
    assert res.returncode == ExitCode.CONFIG
    assert "must not be in the config file" in res.stderr and "Traceback" not in res.stderr


def test_log_records_are_redacted(caplog: pytest.LogCaptureFixture) -> None:
    handler = logging.StreamHandler()
    logging.getLogger().addHandler(handler)
    try:
        remember_secret(SECRET)
        assert redact(f"signing with {SECRET}") == "signing with ****EKEY"
        with caplog.at_level(logging.INFO):
            logging.getLogger("pool.test").info("key %s", SECRET)
        assert any(f.__class__.__name__ == "_RedactFilter" for f in handler.filters)
    finally:
        logging.getLogger().removeHandler(handler)


def test_unavailable_kind_exit_20(home: Path) -> None:
    res = cli("integrations", "add", "dropbox", "--name", "d", home=home, check=False)
    assert res.returncode == ExitCode.UNSUPPORTED
    assert "dropbox is not available" in res.stderr and "OAuth" in res.stderr
    listing = json.loads(cli("integrations", "list", "--json", home=home).stdout)
    by_kind = {c["kind"]: c for c in listing}
    assert by_kind["s3"]["available"] and not by_kind["hdfs"]["available"] and by_kind["hdfs"]["reason"]
