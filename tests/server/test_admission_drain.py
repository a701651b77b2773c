"""SIGTERM drains: new requests get 503 while the in-flight ones finish, then the server exits 0; past the
drain timeout, whatever still runs ends with an error its client can read."""

from __future__ import annotations

import asyncio
import json
import signal
import threading
import time
from pathlib import Path

import httpx
import openai
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


def test_sigterm_past_the_drain_timeout_ends_every_request_with_an_error_the_client_reads(
    data_dir: Path, tmp_path: Path
) -> None:
    """Two streams and a blocking request run and one more waits in the queue when SIGTERM comes
    with a 1 s drain timeout: each stream ends with an error event naming the shutdown and [DONE],
    the others get 503 with Retry-After, the log says once per request what was cut, and nothing
    is cancelled under uvicorn (no traceback)."""
    flags = ("--drain-timeout-s", "1", "--max-inflight-requests", "3", "--inflight-reserved-for-new-tenants", "0")
    with running_server(data_dir, tmp_path / "server.log", *flags) as server:
        asyncio.run(_cut_off_scenario(server))
        assert server.process.wait(timeout=20) == 0
        log = server.log()
    assert "drain timeout of 1 s passed" in log
    cut_lines = [line for line in log.splitlines() if "cut off request_id=" in line]
    assert len(cut_lines) == 4, cut_lines
    assert sum("while queued" in line for line in cut_lines) == 1
    assert "Traceback" not in log and "CancelledError" not in log and "Cancel " not in log


async def _cut_off_scenario(server) -> None:
    body = {
        "model": "seekd-demo-random",
        "messages": [{"role": "user", "content": "a long answer"}],
        "max_tokens": 4000,
        "extra_body": {"ignore_eos": True},
    }
    async with openai.AsyncOpenAI(base_url=server.api_url, api_key="unused", max_retries=0, timeout=60) as client:
        first_chunks: list[str] = []

        async def sdk_stream() -> openai.APIError:
            with pytest.raises(openai.APIError) as e:
                async for chunk in await client.chat.completions.create(**body, stream=True):
                    first_chunks.append(chunk.id)
            return e.value

        async def raw_stream() -> list[str]:
            raw = {**{k: v for k, v in body.items() if k != "extra_body"}, "ignore_eos": True, "stream": True}
            url = f"{server.api_url}/chat/completions"
            async with httpx.AsyncClient(timeout=60) as http, http.stream("POST", url, json=raw) as response:
                assert response.status_code == 200
                return [line async for line in response.aiter_lines() if line]

        async def blocking() -> openai.APIStatusError:
            with pytest.raises(openai.APIStatusError) as e:
                await client.chat.completions.create(**body)
            return e.value

        async def admission() -> dict:
            return (await asyncio.to_thread(server.ready_payload))["admission"]

        deadline = time.monotonic() + 60
        running = [asyncio.create_task(f()) for f in (sdk_stream, raw_stream, blocking)]
        while (await admission())["inflight_seqs"] < 3 or not first_chunks:
            assert time.monotonic() < deadline, "the three requests did not start"
            await asyncio.sleep(0.05)
        queued = asyncio.create_task(blocking())
        while (await admission())["queued"] < 1:
            assert time.monotonic() < deadline, "the fourth request was not queued"
            await asyncio.sleep(0.05)
        server.process.send_signal(signal.SIGTERM)
        sdk_error, raw_lines, *refused = await asyncio.gather(*running, queued)

    assert sdk_error.code == "server_shutting_down" and "drain timeout of 1 s" in sdk_error.message
    assert raw_lines[-1] == "data: [DONE]"
    error = json.loads(raw_lines[-2].removeprefix("data: "))["error"]
    assert error["code"] == "server_shutting_down" and "shutting down" in error["message"]
    assert all(json.loads(line.removeprefix("data: "))["choices"] for line in raw_lines[:-2])  # output came first
    for e in refused:
        assert e.status_code == 503 and e.response.headers["retry-after"].isdigit(), e
        assert e.body["code"] == "server_shutting_down"
