"""When the engine-core process dies and may not be restarted (engine_max_restarts=0; the same path as
a crash loop), in-flight requests fail with a clear error (no hang), and the server reports itself
unready and unhealthy instead of accepting work it cannot do. Restarts: test_self_healing.py."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import httpx
import pytest

from .conftest import running_server

pytestmark = pytest.mark.slow


def test_engine_death_fails_in_flight_requests_and_readiness(data_dir: Path, tmp_path: Path) -> None:
    with running_server(data_dir, tmp_path / "server.log", "--engine-max-restarts", "0") as server:
        engine_pid = server.ready_payload()["engine_pid"]
        body = {"prompt": "keep going", "max_tokens": 4000, "ignore_eos": True}
        result: list[httpx.Response] = []
        thread = threading.Thread(
            target=lambda: result.append(httpx.post(f"{server.api_url}/completions", json=body, timeout=30))
        )
        thread.start()
        deadline = time.monotonic() + 10
        while server.ready_payload()["engine"].get("num_requests_running", 0) < 1:
            assert time.monotonic() < deadline, "request never started running"
            time.sleep(0.05)
        with httpx.stream("POST", f"{server.api_url}/completions", json={**body, "stream": True}, timeout=30) as resp:
            lines = resp.iter_lines()
            assert next(lines).startswith("data: {")
            os.kill(engine_pid, signal.SIGKILL)
            rest = [line for line in lines if line]
        assert any('"engine_unavailable"' in line for line in rest) and rest[-1] == "data: [DONE]"
        thread.join(timeout=10)
        assert not thread.is_alive(), "the non-streaming request hung after the engine died"
        (resp,) = result
        assert resp.status_code == 503
        assert "engine core process died" in resp.json()["error"]["message"]

        assert httpx.get(f"{server.base_url}/ready").status_code == 503
        assert httpx.get(f"{server.base_url}/health").status_code == 503
        again = httpx.post(f"{server.api_url}/completions", json={"prompt": "x", "max_tokens": 2})
        assert again.status_code == 503 and again.json()["error"]["code"] == "engine_unavailable"
        assert server.process.poll() is None  # the server itself stays up and answers
