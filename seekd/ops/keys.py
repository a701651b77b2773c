"""API keys: created once, shown once, stored only as a SHA-256 hash in `<data_dir>/keys.db` (0600).

A key reads `sk-seekd-<id>_<secret>`: the id (public, 8 hex chars) names the row, so lookup is an
index read and revocation / audit records can name a key without holding it; the secret is 32 random
bytes. The stored hash is compared with `hmac.compare_digest`, in constant time.

Why SHA-256 and not a slow KDF (bcrypt, scrypt, argon2): slow hashes protect low-entropy passwords
from guessing after a database leak. A 256-bit random secret cannot be guessed at any hash speed, so
a slow KDF would add nothing but ~100 ms of CPU to every API request — itself a denial-of-service lever.

The store is read on every request, so `seekd keys revoke` in another process takes effect on a
running server at once.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

KEY_PREFIX = "sk-seekd-"
ROLES = ("user", "admin", "metrics")
KEYS_FILE = "keys.db"
ID_HEX_CHARS = 8
SECRET_BYTES = 32

_SCHEMA = """
CREATE TABLE IF NOT EXISTS api_keys (
    id TEXT PRIMARY KEY,
    hash BLOB NOT NULL,
    name TEXT NOT NULL DEFAULT '',
    tenant TEXT NOT NULL,
    role TEXT NOT NULL,
    models TEXT NOT NULL DEFAULT '[]',
    rpm INTEGER NOT NULL DEFAULT 0,
    tpm INTEGER NOT NULL DEFAULT 0,
    created REAL NOT NULL,
    revoked REAL
)
"""


@dataclass(frozen=True)
class ApiKey:
    """What a key may do; never holds the secret."""

    id: str
    tenant: str
    role: str
    models: tuple[str, ...] = ()  # empty = every model this server serves
    rpm: int = 0  # requests per minute for this key; 0 = only the tenant's limits
    tpm: int = 0  # estimated tokens per minute for this key
    name: str = ""
    created: float = field(default_factory=time.time)
    revoked: float | None = None

    def allows_model(self, model: str) -> bool:
        return not self.models or model in self.models

    def public(self) -> dict[str, object]:
        return {
            "id": self.id,
            "name": self.name,
            "tenant": self.tenant,
            "role": self.role,
            "models": list(self.models),
            "rpm": self.rpm,
            "tpm": self.tpm,
            "created": self.created,
            "revoked": self.revoked,
        }


def hash_secret(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


def parse_key_id(key: str) -> str | None:
    """The id part of a well-formed key, else None (so junk never reaches the database)."""
    if not key.startswith(KEY_PREFIX):
        return None
    key_id, sep, secret = key[len(KEY_PREFIX) :].partition("_")
    if not sep or len(key_id) != ID_HEX_CHARS or not secret or len(secret) > 128:
        return None
    try:
        int(key_id, 16)
    except ValueError:
        return None
    return key_id


def validate_key_fields(tenant: str, role: str, rpm: int, tpm: int) -> None:
    if role not in ROLES:
        raise ValueError(f"role must be one of {', '.join(ROLES)}, not {role!r}")
    if not tenant or len(tenant) > 64 or not tenant.isprintable():
        raise ValueError("tenant must be 1 to 64 printable characters")
    if rpm < 0 or tpm < 0:
        raise ValueError("rpm and tpm must not be negative")


class KeyStore:
    """The SQLite key file; the server and the CLI may use it at once. Writes use a short connection
    each; lookups share one read-only connection."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._reader: sqlite3.Connection | None = None
        self._lock = threading.Lock()

    @classmethod
    def in_data_dir(cls, data_dir: Path) -> KeyStore:
        return cls(data_dir / KEYS_FILE)

    @contextmanager
    def _connect(self, create: bool) -> Iterator[sqlite3.Connection | None]:
        if not self.path.exists():
            if not create:
                yield None
                return
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            os.close(os.open(self.path, os.O_CREAT | os.O_WRONLY, 0o600))
        if self.path.stat().st_mode & 0o077:
            os.chmod(self.path, 0o600)
        conn = sqlite3.connect(self.path, timeout=5.0)
        try:
            conn.execute(_SCHEMA)
            yield conn
            conn.commit()
        finally:
            conn.close()

    def create(
        self, tenant: str, role: str = "user", models: tuple[str, ...] = (), rpm: int = 0, tpm: int = 0, name: str = ""
    ) -> tuple[str, ApiKey]:
        """Returns (the key — shown to the caller once, never stored — and its record)."""
        validate_key_fields(tenant, role, rpm, tpm)
        key_id = secrets.token_hex(ID_HEX_CHARS // 2)
        key = f"{KEY_PREFIX}{key_id}_{secrets.token_urlsafe(SECRET_BYTES)}"
        record = ApiKey(key_id, tenant, role, tuple(models), rpm, tpm, name)
        with self._connect(create=True) as conn:
            assert conn is not None
            conn.execute(
                "INSERT INTO api_keys (id, hash, name, tenant, role, models, rpm, tpm, created) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (key_id, hash_secret(key), name, tenant, role, json.dumps(list(models)), rpm, tpm, record.created),
            )
        return key, record

    def list_keys(self) -> list[ApiKey]:
        with self._connect(create=False) as conn:
            if conn is None:
                return []
            rows = conn.execute(
                "SELECT id, tenant, role, models, rpm, tpm, name, created, revoked FROM api_keys ORDER BY created"
            ).fetchall()
        return [_record(row) for row in rows]

    def revoke(self, key_id: str) -> bool:
        """False if there is no such key or it was already revoked."""
        with self._connect(create=False) as conn:
            if conn is None:
                return False
            cur = conn.execute(
                "UPDATE api_keys SET revoked = ? WHERE id = ? AND revoked IS NULL", (time.time(), key_id)
            )
            return cur.rowcount == 1

    def update_limits(
        self, key_id: str, rpm: int | None = None, tpm: int | None = None, models: tuple[str, ...] | None = None
    ) -> bool:
        """Change an active key's limits in place (None keeps a field); False if no such active key.
        The key itself is unchanged, so its holder keeps working under the new limits at once."""
        if any(limit is not None and limit < 0 for limit in (rpm, tpm)):
            raise ValueError("rpm and tpm must not be negative")
        changes = {"rpm": rpm, "tpm": tpm, "models": None if models is None else json.dumps(list(models))}
        changes = {column: value for column, value in changes.items() if value is not None}
        with self._connect(create=False) as conn:
            if conn is None:
                return False
            assignments = ", ".join(f"{column} = ?" for column in changes) or "id = id"  # none: is it active?
            cur = conn.execute(
                f"UPDATE api_keys SET {assignments} WHERE id = ? AND revoked IS NULL", (*changes.values(), key_id)
            )
            return cur.rowcount == 1

    def _read_one(self, sql: str, params: tuple) -> tuple | None:
        """The per-request path: one long-lived read-only connection. Every SELECT outside a
        transaction reads the latest commit, so another process's revocation applies at once."""
        with self._lock:
            if self._reader is None:
                if not self.path.exists():
                    return None
                self._reader = sqlite3.connect(
                    f"file:{self.path}?mode=ro", uri=True, timeout=5.0, check_same_thread=False
                )
            try:
                return self._reader.execute(sql, params).fetchone()
            except sqlite3.OperationalError:  # created by another process, table not yet there
                return None

    def has_keys(self) -> bool:
        """Any key ever created, revoked ones included: revoking the last key must not open the server."""
        return self._read_one("SELECT 1 FROM api_keys LIMIT 1", ()) is not None

    def authenticate(self, key: str) -> ApiKey | None:
        """The key's record if the key is valid and not revoked."""
        key_id = parse_key_id(key)
        if key_id is None:
            return None
        row = self._read_one(
            "SELECT id, tenant, role, models, rpm, tpm, name, created, revoked, hash FROM api_keys WHERE id = ?",
            (key_id,),
        )
        if row is None or not hmac.compare_digest(hash_secret(key), row[9]):
            return None
        record = _record(row[:9])
        return None if record.revoked is not None else record


def _record(row: tuple) -> ApiKey:
    key_id, tenant, role, models, rpm, tpm, name, created, revoked = row
    return ApiKey(key_id, tenant, role, tuple(json.loads(models)), rpm, tpm, name, created, revoked)
