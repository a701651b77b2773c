"""Schema fuzzing of a live `seekd serve` with schemathesis: requests generated from the server's own
OpenAPI schema — valid ones and deliberately invalid ones — never get a 5xx, every refusal is an
OpenAI error object, and every response is one the schema declares (status, content type, body).
Bounded (MAX_CASES requests) and derandomized, so CI sees the same cases on every run; the server's
input limits keep each generation short."""

from __future__ import annotations

import json
import secrets
from pathlib import Path

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis.checks import content_type_conformance, response_schema_conformance, status_code_conformance

from seekd.ops.audit import ContentCipher, verify
from seekd.ops.keys import KeyStore

from .conftest import ServerHandle, running_server

pytestmark = pytest.mark.slow

MAX_CASES = 200  # over every operation, valid and invalid inputs
# the response's status is one its operation declares, with the declared content type and schema
CONFORMANCE = [status_code_conformance, content_type_conformance, response_schema_conformance]


@pytest.fixture(scope="module")
def admin_key(tmp_path_factory) -> tuple[Path, str]:
    data_dir = tmp_path_factory.mktemp("fuzz-data")
    key, _ = KeyStore.in_data_dir(data_dir).create("fuzz", "admin")
    return data_dir, key


@pytest.fixture(scope="module")
def audit_key(admin_key) -> bytes:
    key = secrets.token_bytes(32)
    (admin_key[0] / "audit.key").write_text(key.hex())
    return key


@pytest.fixture(scope="module")
def server(admin_key, audit_key, tmp_path_factory) -> ServerHandle:
    data_dir, key = admin_key
    flags = [
        "--max-output-tokens",
        "4",
        "--max-n",
        "2",
        "--max-prompt-tokens",
        "128",
        "--max-model-len",
        "512",
        "--max-json-depth",
        "8",
        "--audit-store-content",
        "--audit-encryption-key-file",
        str(data_dir / "audit.key"),
    ]
    log = tmp_path_factory.mktemp("fuzz-log") / "server.log"
    with running_server(data_dir, log, *flags, client_options={"headers": {"Authorization": f"Bearer {key}"}}) as h:
        yield h


def test_schema_fuzz_finds_no_server_errors(server: ServerHandle, admin_key) -> None:
    _, key = admin_key
    auth = {"Authorization": f"Bearer {key}"}
    schema_doc = httpx.get(f"{server.base_url}/openapi.json", headers=auth, timeout=10).json()
    schema = schemathesis.openapi.from_dict(schema_doc)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {op.label for op in operations} >= {
        "POST /v1/chat/completions",
        "POST /v1/completions",
        "GET /v1/models",
        "POST /admin/keys",
    }
    strategy = st.one_of(
        [op.as_strategy(generation_mode=mode) for op in operations for mode in schemathesis.GenerationMode]
    )
    seen: list[tuple[str, int]] = []
    failures: list[str] = []

    @settings(
        max_examples=MAX_CASES,
        derandomize=True,
        database=None,
        deadline=None,
        suppress_health_check=list(HealthCheck),
        phases=[Phase.generate],
    )
    @given(case=strategy)
    def run(case: schemathesis.Case) -> None:
        response = case.call(base_url=server.base_url, headers=auth, timeout=60)
        seen.append((case.operation.label, response.status_code))
        case.validate_response(response, checks=CONFORMANCE)  # raises, with a curl line that reproduces it
        if response.status_code >= 500:
            failures.append(f"{case.operation.label} -> {response.status_code}: {case.body!r} {response.text[:300]}")
        elif response.status_code >= 400:
            error = response.json().get("error")
            assert isinstance(error, dict) and error.get("message"), response.text

    run()
    assert not failures, "\n".join(failures)
    assert len(seen) >= 100
    assert any(status == 200 for _, status in seen) and any(400 <= status < 500 for _, status in seen)
    health = httpx.get(f"{server.base_url}/ready", headers=auth, timeout=10)
    assert health.status_code == 200, health.text  # the engine survived the fuzzing


def post(server: ServerHandle, admin_key, path: str, **kw) -> httpx.Response:
    headers = {"Authorization": f"Bearer {admin_key[1]}", "Content-Type": "application/json"}
    return httpx.post(f"{server.api_url}{path}", headers=headers, timeout=30, **kw)


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (b"[" * 200_000, "json_too_deep"),  # would be a RecursionError in the JSON parser
        (b'{"prompt": "x", "extra": ' + b"[" * 9 + b"]" * 9 + b"}", "json_too_deep"),
        (b'{"prompt": "x", "max_tokens": 5}', "max_tokens_too_large"),
        (b'{"prompt": "' + b"word " * 200 + b'"}', "prompt_too_long"),
        (b'{"prompt": "x", "n": 3}', None),
        (b'{"prompt": "x", "max_tokens": 2', "invalid_json"),
        (b"\xff\xfe", "invalid_json"),
        # integers past 64 bits once overflowed in the engine client (500s found by probing)
        (b'{"prompt": [1180591620717411303424]}', None),
        (b'{"prompt": "x", "seed": 9223372036854775808}', None),
        (b'{"prompt": "x", "priority": 1180591620717411303424}', None),
        (b'{"prompt": "x", "top_k": 1180591620717411303424}', None),
        (b'{"prompt": "x", "stop_token_ids": [1180591620717411303424]}', None),
    ],
    ids=[
        "200k-brackets",
        "depth-9",
        "max-tokens",
        "prompt-length",
        "n",
        "truncated-json",
        "not-utf8",
        "huge-token-id",
        "huge-seed",
        "huge-priority",
        "huge-top-k",
        "huge-stop-token",
    ],
)
def test_hardened_inputs_get_openai_400s(server: ServerHandle, admin_key, body: bytes, code: str | None) -> None:
    response = post(server, admin_key, "/completions", content=body)
    assert response.status_code == 400, response.text
    assert code is None or response.json()["error"]["code"] == code


def test_largest_accepted_integers_work(server: ServerHandle, admin_key) -> None:
    body = {
        "prompt": "x",
        "max_tokens": 1,
        "n": 2,
        "seed": 2**63 - 1,
        "priority": 2**31 - 1,
        "top_k": 2**31 - 1,
        "stop_token_ids": [2**31 - 1],
        "stream": True,
    }
    response = post(server, admin_key, "/completions", json=body)
    assert response.status_code == 200 and response.text.rstrip().endswith("data: [DONE]"), response.text


def test_strings_with_brackets_do_not_count_as_nesting(server: ServerHandle, admin_key) -> None:
    response = post(server, admin_key, "/completions", json={"prompt": "[[[[[[[[[[{{{{{{{{{{", "max_tokens": 1})
    assert response.status_code == 200, response.text


def test_chat_without_max_tokens_is_capped_by_the_server(server: ServerHandle, admin_key) -> None:
    response = post(
        server,
        admin_key,
        "/chat/completions",
        json={"messages": [{"role": "user", "content": "hi"}], "ignore_eos": True},
    )
    assert response.status_code == 200 and response.json()["usage"]["completion_tokens"] == 4


def test_audit_content_is_sealed_and_opens_with_the_key(server: ServerHandle, admin_key, audit_key) -> None:
    reply = post(server, admin_key, "/completions", json={"prompt": "confidential text", "max_tokens": 2})
    assert reply.status_code == 200
    path = admin_key[0] / "audit.jsonl"
    log = path.read_bytes()
    assert b"confidential" not in log
    # records end at b"\n" only: str.splitlines() would also cut at U+2028 or U+0085 in a fuzzed URL path
    lines = [line for line in log.split(b"\n") if line]
    record = [r for r in map(json.loads, lines) if r.get("response_id") == reply.json()["id"]]
    assert len(record) == 1
    content = ContentCipher(audit_key).open(record[0]["content"], record[0]["request_id"])
    assert content["request"]["prompt"] == "confidential text"
    assert content["outputs"] == [reply.json()["choices"][0]["text"]]
    assert verify(path).ok
