"""The audit chain: every edit, deletion and reordering is found and the first bad record named;
content is sealed with AES-256-GCM and opens only with the right key and the right record."""

from __future__ import annotations

import itertools
import json
import secrets
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.exceptions import InvalidTag

from seekd.ops.audit import AuditLog, ContentCipher, load_key, parse_key, verify

NUM_RECORDS = 6


def write_log(path: Path, cipher: ContentCipher | None = None) -> list[dict]:
    log = AuditLog(path, cipher)
    return [
        log.append(
            {
                "request_id": f"r{i}",
                "key_id": "k1",
                "tenant": "acme",
                "route": "/v1/completions",
                "status": 200,
                "prompt_tokens": 10 + i,
            },
            {"request": {"prompt": f"secret {i}"}},
        )
        for i in range(NUM_RECORDS)
    ]


def audit_verify(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "seekd.cli", "audit", "verify", str(path)], capture_output=True, text=True, timeout=60
    )


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines(keepends=True)


def test_intact_log_verifies_and_reopening_continues_the_chain(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    records = write_log(path)
    records += write_log(path)  # a restarted server appends to the same chain
    assert [r["seq"] for r in records] == list(range(2 * NUM_RECORDS))
    assert all(b["prev"] == a["hash"] for a, b in itertools.pairwise(records))
    result = verify(path)
    assert result.ok and result.num_records == 2 * NUM_RECORDS and result.head_hash == records[-1]["hash"]
    assert "content" not in lines(path)[0]  # no cipher: prompts are not stored at all
    proc = audit_verify(path)
    assert proc.returncode == 0 and records[-1]["hash"] in proc.stdout


def tamper_edit(rows: list[str]) -> list[str]:
    record = json.loads(rows[2])
    record["tenant"] = "someone-else"
    rows[2] = json.dumps(record, sort_keys=True, separators=(",", ":")) + "\n"
    return rows


def tamper_delete(rows: list[str]) -> list[str]:
    return rows[:2] + rows[3:]


def tamper_swap(rows: list[str]) -> list[str]:
    rows[2], rows[3] = rows[3], rows[2]
    return rows


def tamper_edit_and_rehash(rows: list[str]) -> list[str]:
    from seekd.ops.audit import record_hash

    record = json.loads(rows[2])
    record["status"] = 403
    record["hash"] = record_hash(record)
    rows[2] = json.dumps(record) + "\n"
    return rows


@pytest.mark.parametrize(
    ("tamper", "bad_line"),
    [
        (tamper_edit, 3),
        (tamper_delete, 3),
        (tamper_swap, 3),
        (tamper_edit_and_rehash, 4),
    ],
)
def test_tampering_is_found_at_the_first_bad_record(tmp_path: Path, tamper, bad_line: int) -> None:
    path = tmp_path / "audit.jsonl"
    write_log(path)
    path.write_text("".join(tamper(lines(path))))
    result = verify(path)
    assert not result.ok and result.bad_line == bad_line, result
    proc = audit_verify(path)
    assert proc.returncode == 1
    assert f"line {bad_line}" in proc.stderr


def test_content_is_sealed_and_opens_only_with_its_key_and_record(tmp_path: Path) -> None:
    key = secrets.token_bytes(32)
    cipher = ContentCipher(key)
    path = tmp_path / "audit.jsonl"
    records = write_log(path, cipher)
    assert "secret 0" not in path.read_text()
    assert cipher.open(records[0]["content"], "r0") == {"request": {"prompt": "secret 0"}}
    with pytest.raises(InvalidTag):
        ContentCipher(secrets.token_bytes(32)).open(records[0]["content"], "r0")
    with pytest.raises(InvalidTag):  # a sealed blob moved to another record does not open
        cipher.open(records[0]["content"], "r1")
    assert verify(path).ok


def test_key_parsing_accepts_hex_base64_and_files(tmp_path: Path) -> None:
    key = secrets.token_bytes(32)
    import base64

    assert parse_key(key.hex()) == key and parse_key(base64.b64encode(key).decode()) == key
    key_file = tmp_path / "audit.key"
    key_file.write_text(key.hex() + "\n")
    assert load_key(None, str(key_file)) == key
    for bad in ("abc", "00" * 31, "not base64!"):
        with pytest.raises(ValueError, match="32 bytes"):
            parse_key(bad)


def test_an_earlier_head_hash_catches_a_cut_off_tail(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    records = write_log(path)
    path.write_text("".join(lines(path)[:-2]))  # the last two records removed: the chain itself is intact
    assert verify(path).ok
    assert verify(path, records[2]["hash"]).ok
    result = verify(path, records[-1]["hash"])
    assert not result.ok and "cut off" in result.reason
    proc = subprocess.run(
        [sys.executable, "-m", "seekd.cli", "audit", "verify", str(path), "--head", records[-1]["hash"]],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 1 and "cut off" in proc.stderr
