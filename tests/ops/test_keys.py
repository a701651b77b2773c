"""The key store as the server and `seekd keys` use it: hashes only, 0600, revocation, parsing."""

from __future__ import annotations

import sqlite3
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from seekd.ops.keys import KEY_PREFIX, KeyStore, hash_secret, parse_key_id


def test_created_key_authenticates_and_only_its_hash_is_stored(tmp_path: Path) -> None:
    store = KeyStore.in_data_dir(tmp_path / "data")
    key, record = store.create("acme", "user", ("m1",), rpm=5, tpm=100, name="ci")
    assert key.startswith(KEY_PREFIX) and parse_key_id(key) == record.id
    assert store.authenticate(key) == record
    assert stat.S_IMODE(store.path.stat().st_mode) == 0o600
    assert stat.S_IMODE(store.path.parent.stat().st_mode) == 0o700
    raw = store.path.read_bytes()
    secret = key.split("_", 1)[1]
    assert secret.encode() not in raw and key.encode() not in raw
    with sqlite3.connect(store.path) as conn:
        (stored,) = conn.execute("SELECT hash FROM api_keys WHERE id = ?", (record.id,)).fetchone()
    assert stored == hash_secret(key)


def test_wrong_tampered_and_revoked_keys_are_refused(tmp_path: Path) -> None:
    store = KeyStore(tmp_path / "keys.db")
    assert not store.has_keys() and store.authenticate("sk-seekd-00000000_x") is None
    key, record = store.create("acme")
    other, _ = store.create("beta")
    key_id = record.id
    flipped = key[:-1] + ("A" if key[-1] != "A" else "B")
    for bad in (flipped, f"{KEY_PREFIX}{key_id}_", "Bearer " + key, key + "x", other.replace(other[9:17], key_id), ""):
        assert store.authenticate(bad) is None, bad
    assert store.revoke(key_id) and not store.revoke(key_id)
    assert store.authenticate(key) is None
    assert store.authenticate(other) is not None
    assert store.has_keys()  # a revoked key still counts: the server stays closed
    assert [k.revoked is not None for k in store.list_keys()] == [True, False]


@pytest.mark.parametrize(("tenant", "role"), [("", "user"), ("t", "root"), ("x" * 65, "user")])
def test_invalid_key_fields_are_refused(tmp_path: Path, tenant: str, role: str) -> None:
    with pytest.raises(ValueError):
        KeyStore(tmp_path / "keys.db").create(tenant, role)


def test_cli_creates_lists_and_revokes(tmp_path: Path) -> None:
    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "seekd.cli", "keys", *args, "--data-dir", str(tmp_path)],
            capture_output=True,
            text=True,
            timeout=60,
        )

    created = cli("create", "--tenant", "acme", "--role", "admin", "--models", "a, b", "--rpm", "7")
    assert created.returncode == 0, created.stderr
    key = created.stdout.strip()
    record = KeyStore.in_data_dir(tmp_path).authenticate(key)
    assert record is not None and (record.tenant, record.role, record.models, record.rpm) == (
        "acme",
        "admin",
        ("a", "b"),
        7,
    )
    listed = cli("list")
    assert record.id in listed.stdout and "active" in listed.stdout and key not in listed.stdout
    assert cli("revoke", record.id).returncode == 0
    assert "revoked" in cli("list").stdout
    again = cli("revoke", record.id)
    assert again.returncode == 1 and "no active key" in again.stderr
    assert cli("create", "--tenant", "acme", "--role", "root").returncode == 2
