"""Schema fuzzing of a live `seekd serve` with schemathesis: requests generated from the server's own
OpenAPI schema — valid ones and deliberately invalid ones — never get a 5xx, and every refusal is an
OpenAI error object. Bounded (MAX_CASES requests) and derandomized, so CI sees the same cases on
every run; the server's input limits keep each generation short."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from seekd.ops.keys import KeyStore

from .conftest import ServerHandle, running_server

pytestmark = pytest.mark.slow

MAX_CASES = 200  # over every operation, valid and invalid inputs


@pytest.fixture(scope="module")
def admin_key(tmp_path_factory) -> tuple[Path, str]:
    data_dir = tmp_path_factory.mktemp("fuzz-data")
    key, _ = KeyStore.in_data_dir(data_dir).create("fuzz", "admin")
    return data_dir, key


@pytest.fixture(scope="module")
def server(admin_key, tmp_path_factory) -> ServerHandle:
    data_dir, key = admin_key
    flags = ["--max-output-tokens", "4", "--max-n", "2", "--max-prompt-tokens", "128", "--max-model-len", "512"]
    log = tmp_path_factory.mktemp("fuzz-log") / "server.log"
    with running_server(data_dir, log, *flags, client_options={"headers": {"Authorization": f"Bearer {key}"}}) as h:
        yield h


def test_schema_fuzz_finds_no_server_errors(server: ServerHandle, admin_key) -> None:
    _, key = admin_key
    auth = {"Authorization": f"Bearer {key}"}
    schema_doc = httpx.get(f"{server.base_url}/openapi.json", headers=auth, timeout=10).json()
    schema = schemathesis.openapi.from_dict(schema_doc)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {op.label for op in operations} >= {"POST /v1/chat/completions", "POST /v1/completions",
                                               "GET /v1/models", "POST /admin/keys"}
    strategy = st.one_of([op.as_strategy(generation_mode=mode) for op in operations
                          for mode in schemathesis.GenerationMode])
    seen: list[tuple[str, int]] = []
    failures: list[str] = []

    @settings(max_examples=MAX_CASES, derandomize=True, database=None,
              deadline=None, suppress_health_check=list(HealthCheck), phases=[Phase.generate])
    @given(case=strategy)
    def run(case: schemathesis.Case) -> None:
        response = case.call(base_url=server.base_url, headers=auth, timeout=60)
        seen.append((case.operation.label, response.status_code))
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
