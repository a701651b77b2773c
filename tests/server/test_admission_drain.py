"""SIGTERM drains: new requests get 503 while the in-flight ones finish, then the server exits 0."""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path

import httpx
import pytest

from .conftest import running_server

pytestmark = pytest.mark.slow


def test_sigterm_finishes_in_flight_requests_refuses_new_ones_and_exits_0(data_dir: Path, tmp_path: Path) -> None:
    with running_server(data_dir, tmp_path / "server.log", "--max-inflight-requests", "2") as server:
        body = {"prompt": "drain me", "max_tokens": 24, "ignore_eos": True}
        results: list[httpx.Response] = []
        threads = [
            threading.Thread(
                target=lambda: results.append(httpx.post(f"{server.api_url}/completions", json=body, timeout=120))
            )
            for _ in range(4)
        ]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 30

        def admitted_or_queued() -> int:
            admission = server.ready_payload()["admission"]
            return admission["inflight_seqs"] + admission["queued"]

        while admitted_or_queued() < 4:  # all four in: one running (one slot is kept for newcomers), three queued
            assert time.monotonic() < deadline
            time.sleep(0.02)
        server.process.send_signal(signal.SIGTERM)
        while True:
            refused = httpx.post(f"{server.api_url}/completions", json=body, timeout=10)
            if refused.status_code == 503:
                break
            assert time.monotonic() < deadline
        assert refused.json()["error"]["code"] == "server_shutting_down"
        for t in threads:
            t.join(timeout=120)
        assert [r.status_code for r in results] == [200] * 4
        assert all(r.json()["usage"]["completion_tokens"] == 24 for r in results)
        assert server.process.wait(timeout=30) == 0
        log = server.log()
        assert "SIGTERM: draining" in log and "drained: all requests finished" in log
