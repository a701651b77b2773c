"""The audit log: append-only JSONL in which every record is chained to the one before it.

Each record carries `seq` (0, 1, 2, ...), `prev` (the previous record's `hash`; 64 zeros for the
first) and `hash` = SHA-256 of the record's canonical JSON without `hash`. So an edited record no
longer matches its own hash, and a deleted or moved record breaks `prev` and `seq` of the record
that now follows it; `verify` names the first line where either happens.

A chain without a secret shows tampering by anyone who did not also rewrite every later record: to
catch a full rewrite (or a cut-off tail), copy the head hash that `seekd audit verify` prints to
somewhere the server cannot write, and pass it back later (`seekd audit verify --head HASH`).

Writers take an exclusive `flock` and read the last record from the file itself, so several server
processes may share one log. Prompts and outputs are not recorded unless asked for; then they are
sealed with AES-256-GCM (random 96-bit nonce per record, the record's request id as associated
data), never written in clear.
"""

from __future__ import annotations

import base64
import binascii
import fcntl
import hashlib
import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

GENESIS = "0" * 64
AUDIT_FILE = "audit.jsonl"
KEY_BYTES = 32
NONCE_BYTES = 12
TAIL_CHUNK = 1 << 16


def record_hash(record: dict[str, Any]) -> str:
    body = {k: v for k, v in record.items() if k != "hash"}
    return hashlib.sha256(_canonical(body)).hexdigest()


def _canonical(record: dict[str, Any]) -> bytes:
    return json.dumps(record, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def parse_key(text: str) -> bytes:
    """A 256-bit key written as 64 hex characters or as base64."""
    text = text.strip()
    try:
        key = bytes.fromhex(text) if len(text) == 2 * KEY_BYTES else base64.b64decode(text, validate=True)
    except (ValueError, binascii.Error):
        key = b""
    if len(key) != KEY_BYTES:
        raise ValueError(
            "the audit encryption key must be 32 bytes, written as 64 hex characters or base64 "
            "(make one with: python -c 'import secrets; print(secrets.token_hex(32))')"
        )
    return key


def load_key(value: str | None, key_file: str | None) -> bytes:
    if value:
        return parse_key(value)
    if key_file:
        path = Path(key_file).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"audit encryption key file {path} does not exist")
        return parse_key(path.read_text())
    raise ValueError("no audit encryption key given (SEEKD_AUDIT_ENCRYPTION_KEY or audit_encryption_key_file)")


class ContentCipher:
    """AES-256-GCM over a record's content; the associated data ties a sealed blob to its record."""

    def __init__(self, key: bytes) -> None:
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        self._aead = AESGCM(key)

    def seal(self, content: dict[str, Any], associated: str) -> dict[str, str]:
        nonce = secrets.token_bytes(NONCE_BYTES)
        sealed = self._aead.encrypt(nonce, _canonical(content), associated.encode())
        return {
            "alg": "AES-256-GCM",
            "nonce": base64.b64encode(nonce).decode(),
            "ciphertext": base64.b64encode(sealed).decode(),
        }

    def open(self, sealed: dict[str, str], associated: str) -> dict[str, Any]:
        """Raises cryptography's InvalidTag if the key is wrong or the blob was altered."""
        plain = self._aead.decrypt(
            base64.b64decode(sealed["nonce"]), base64.b64decode(sealed["ciphertext"]), associated.encode()
        )
        return json.loads(plain)


class AuditLog:
    def __init__(self, path: Path, cipher: ContentCipher | None = None) -> None:
        self.path = path
        self.cipher = cipher

    def append(self, fields: dict[str, Any], content: dict[str, Any] | None = None) -> dict[str, Any]:
        """Write one record (content is sealed, and dropped when no cipher is configured)."""
        if not self.path.exists():
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o600)
        with os.fdopen(fd, "r+b") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                prev, seq = _chain_head(_last_line(f))
                record: dict[str, Any] = {"seq": seq, "prev": prev, **fields}
                if content is not None and self.cipher is not None:
                    record["content"] = self.cipher.seal(content, str(fields.get("request_id", "")))
                record["hash"] = record_hash(record)
                f.write(_canonical(record) + b"\n")
                f.flush()
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)
        return record


def _last_line(f: Any) -> bytes | None:
    f.seek(0, os.SEEK_END)
    pos = f.tell()
    buf = b""
    while pos > 0:
        step = min(TAIL_CHUNK, pos)
        pos -= step
        f.seek(pos)
        buf = f.read(step) + buf
        cut = buf.rstrip(b"\n").rfind(b"\n")
        if cut >= 0:
            return buf[cut + 1 :].rstrip(b"\n")
    return buf.rstrip(b"\n") or None


def _chain_head(line: bytes | None) -> tuple[str, int]:
    """(prev hash, seq) for the next record. A torn last line (crash mid-write) is chained by the
    hash of its bytes, so the log goes on; `verify` still reports that line."""
    if line is None:
        return GENESIS, 0
    try:
        last = json.loads(line)
        return str(last["hash"]), int(last["seq"]) + 1
    except (ValueError, KeyError, TypeError):
        return hashlib.sha256(line).hexdigest(), 0


@dataclass
class VerifyResult:
    num_records: int
    head_hash: str  # hash of the last good record; compare it with a copy kept elsewhere
    bad_line: int | None = None  # 1-based line of the first bad record
    reason: str = ""

    @property
    def ok(self) -> bool:
        return self.bad_line is None


def verify(path: Path, anchor: str | None = None) -> VerifyResult:
    """`anchor`: a head hash printed by an earlier verify and kept elsewhere; it must still be in the
    chain, which catches a cut-off tail and a rewrite of the whole file."""
    prev, expected_seq = GENESIS, 0
    count = 0
    anchor_seen = anchor is None
    with open(path, "rb") as f:
        for number, raw in enumerate(f, start=1):
            line = raw.rstrip(b"\n")
            try:
                record = json.loads(line)
                if not isinstance(record, dict):
                    raise ValueError("not an object")
            except ValueError:
                return VerifyResult(count, prev, number, "not a JSON record (edited or torn)")
            where = f"record seq={record.get('seq')}"
            if record.get("hash") != record_hash(record):
                return VerifyResult(count, prev, number, f"{where}: its content does not match its hash (edited)")
            if record.get("prev") != prev or record.get("seq") != expected_seq:
                return VerifyResult(
                    count,
                    prev,
                    number,
                    f"{where}: expected seq={expected_seq} chained to {prev[:16]}…, found prev "
                    f"{str(record.get('prev'))[:16]}… (a record before it was deleted, inserted or moved)",
                )
            prev, expected_seq = record["hash"], expected_seq + 1
            anchor_seen = anchor_seen or prev == anchor
            count += 1
    if not anchor_seen:
        return VerifyResult(
            count,
            prev,
            count + 1,
            f"the earlier head hash {str(anchor)[:16]}… is not in this chain: "
            "records were cut off the end or the whole log was rewritten",
        )
    return VerifyResult(count, prev)
