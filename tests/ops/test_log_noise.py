"""What one request leaves in the log of a real `seekd serve` at the default level: seekd's own
access line and nothing else (no uvicorn access line, no per-request start/finish lines)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx
import pytest
from live_server import ServerHandle, running_server

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def text_server(data_dir: Path, tmp_path_factory) -> ServerHandle:
    log_path = tmp_path_factory.mktemp("noise-log") / "server.log"
    with running_server(data_dir, log_path) as handle:  # default flags: text logs at info
        yield handle


def lines_caused_by(server: ServerHandle, send, request_id: str) -> list[str]:
    """The log lines written while `send()` ran and until its access line (plus a grace period for
    stragglers) appeared."""
    before = len(server.log().splitlines())
    send()
    deadline = time.monotonic() + 10.0
    while request_id not in server.log():
        assert time.monotonic() < deadline, server.log()[-3000:]
        time.sleep(0.05)
    time.sleep(1.0)
    return server.log().splitlines()[before:]


def access_record(line: str) -> dict:
    _, _, payload = line.partition(" INFO seekd.access: ")
    assert payload, f"not an access line: {line!r}"
    return json.loads(payload)


def test_a_completion_logs_one_access_line(text_server: ServerHandle) -> None:
    body = {"prompt": "count the lines", "max_tokens": 4, "ignore_eos": True}

    def send() -> None:
        r = httpx.post(f"{text_server.api_url}/completions", json=body, headers={"X-Request-Id": "noise-1"}, timeout=60)
        assert r.status_code == 200

    lines = lines_caused_by(text_server, send, "noise-1")
    assert len(lines) == 1, "\n".join(lines)
    record = access_record(lines[0])
    assert record["request_id"] == "noise-1" and record["status"] == 200 and record["output_tokens"] == 4


def test_a_streamed_chat_logs_one_access_line(text_server: ServerHandle) -> None:
    body = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4, "stream": True}

    def send() -> None:
        headers = {"X-Request-Id": "noise-2"}
        with httpx.stream(
            "POST", f"{text_server.api_url}/chat/completions", json=body, headers=headers, timeout=60
        ) as r:
            assert r.status_code == 200 and b"[DONE]" in b"".join(r.iter_bytes())

    lines = lines_caused_by(text_server, send, "noise-2")
    assert len(lines) == 1, "\n".join(lines)
    assert access_record(lines[0])["path"] == "/v1/chat/completions"


def test_probes_and_scrapes_log_nothing(text_server: ServerHandle) -> None:
    def send() -> None:
        for path in ("/health", "/ready", "/metrics"):
            assert httpx.get(text_server.base_url + path, timeout=10).status_code == 200
        models = httpx.get(f"{text_server.api_url}/models", headers={"X-Request-Id": "noise-3"}, timeout=10)
        assert models.status_code == 200

    lines = lines_caused_by(text_server, send, "noise-3")
    assert len(lines) == 1, "\n".join(lines)
    assert access_record(lines[0])["path"] == "/v1/models"
