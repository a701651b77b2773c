"""Engine self-healing on a real `seekd serve`: kill -9 (crash) or SIGSTOP (hang) the engine-core
process mid-generation; the supervisor restarts it and every request completes with exactly the
output of an uninterrupted greedy run. A crash loop fails fast with a clear 503."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from pathlib import Path

import httpx
import pytest

from .conftest import ServerHandle, running_server

pytestmark = pytest.mark.slow

NUM_REQUESTS = 32
MAX_TOKENS = 24


async def one(client: httpx.AsyncClient, server: ServerHandle, i: int) -> str:
    body = {"prompt": f"request number {i} says", "max_tokens": MAX_TOKENS, "temperature": 0, "ignore_eos": True}
    if i % 2:
        async with client.stream("POST", f"{server.api_url}/completions", json={**body, "stream": True}) as resp:
            assert resp.status_code == 200
            text = ""
            async for line in resp.aiter_lines():
                if line.startswith("data: {"):
                    chunk = json.loads(line[6:])
                    assert "error" not in chunk, chunk
                    text += chunk["choices"][0]["text"]
            return text
    resp = await client.post(f"{server.api_url}/completions", json=body)
    assert resp.status_code == 200, resp.text
    return resp.json()["choices"][0]["text"]


async def run_all(server: ServerHandle, interrupt=None) -> list[str]:
    async with httpx.AsyncClient(timeout=120) as client:
        tasks = [asyncio.create_task(one(client, server, i)) for i in range(NUM_REQUESTS)]
        if interrupt is not None:
            await asyncio.to_thread(interrupt)
        return await asyncio.gather(*tasks)


def wait_for_running(server: ServerHandle, count: int) -> int:
    deadline = time.monotonic() + 30
    while True:
        payload = server.ready_payload()
        if payload["engine"].get("num_requests_running", 0) >= count:
            return payload["engine_pid"]
        assert time.monotonic() < deadline, f"requests never started running: {payload}"
        time.sleep(0.02)


@pytest.fixture(scope="module")
def server(data_dir: Path, tmp_path_factory) -> ServerHandle:
    log_path = tmp_path_factory.mktemp("healing-log") / "server.log"
    flags = ["--engine-heartbeat-interval-s", "0.5", "--engine-hang-timeout-s", "10"]
    with running_server(data_dir, log_path, *flags) as handle:
        yield handle


@pytest.fixture(scope="module")
def reference(server: ServerHandle) -> list[str]:
    return asyncio.run(run_all(server))


def test_killed_engine_restarts_and_requests_finish_identically(server: ServerHandle, reference: list[str]) -> None:
    def crash() -> None:
        os.kill(wait_for_running(server, NUM_REQUESTS), signal.SIGKILL)

    old_pid = server.ready_payload()["engine_pid"]
    assert asyncio.run(run_all(server, crash)) == reference
    health = httpx.get(f"{server.base_url}/health").json()
    assert health["status"] == "ok" and health["engine_restarts"] == 1
    assert "exit code -9" in health["last_restart_reason"]
    assert server.ready_payload()["engine_pid"] != old_pid
    assert "restarting the engine core (restart 1)" in server.log()


def test_hung_engine_is_killed_and_restarted(server: ServerHandle, reference: list[str]) -> None:
    def hang() -> None:
        os.kill(wait_for_running(server, NUM_REQUESTS), signal.SIGSTOP)

    assert asyncio.run(run_all(server, hang)) == reference
    health = httpx.get(f"{server.base_url}/health").json()
    assert health["engine_restarts"] == 2 and "hung" in health["last_restart_reason"]


def test_crash_loop_fails_fast_with_a_clear_503(data_dir: Path, tmp_path: Path) -> None:
    flags = ["--engine-max-restarts", "1", "--engine-restart-window-s", "600"]
    with running_server(data_dir, tmp_path / "server.log", *flags) as server:
        os.kill(server.ready_payload()["engine_pid"], signal.SIGKILL)
        deadline = time.monotonic() + 60
        while server.ready_payload().get("engine_state") != "running" or server.ready_payload()["engine_pid"] is None:
            assert time.monotonic() < deadline
            time.sleep(0.1)
        first_restart_pid = server.ready_payload()["engine_pid"]
        os.kill(first_restart_pid, signal.SIGKILL)
        while httpx.get(f"{server.base_url}/health").status_code != 503:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        resp = httpx.post(f"{server.api_url}/completions", json={"prompt": "x", "max_tokens": 2})
        assert resp.status_code == 503 and "crash loop" in resp.json()["error"]["message"]
        assert "engine core crash loop" in server.log()
