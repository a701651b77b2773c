"""Tokenizing a multi-megabyte prompt happens off the event loop: other clients' streams keep
flowing while it runs (on the loop it would freeze every stream for seconds)."""

from __future__ import annotations

import asyncio
import itertools
import time
from pathlib import Path

import httpx
from live_server import running_server

BODY_LIMIT = 16_000_000


def test_a_huge_prompt_does_not_stall_other_streams(data_dir: Path, tmp_path: Path) -> None:
    async def scenario(base: str) -> tuple[list[float], float, httpx.Response]:
        async with httpx.AsyncClient(timeout=120) as client:
            arrivals: list[float] = []
            first = asyncio.Event()

            async def stream() -> None:
                body = {
                    "model": "seekd-demo-random",
                    "prompt": "Once upon a time",
                    "max_tokens": 400,
                    "ignore_eos": True,
                    "stream": True,
                }
                async with client.stream("POST", f"{base}/v1/completions", json=body) as resp:
                    async for line in resp.aiter_lines():
                        if line.startswith("data:") and line != "data: [DONE]":
                            arrivals.append(time.monotonic())
                            first.set()

            streaming = asyncio.create_task(stream())
            await first.wait()
            start = time.monotonic()
            big = await client.post(
                f"{base}/v1/completions",
                json={
                    "model": "seekd-demo-random",
                    "prompt": "tokens of a very long prompt " * 400_000,
                    "max_tokens": 1,
                },
            )
            took = time.monotonic() - start
            await streaming
            window = [b - a for a, b in itertools.pairwise(arrivals) if start <= a and b <= start + took]
            return window, took, big

    with running_server(data_dir, tmp_path / "server.log", "--max-request-body-bytes", str(BODY_LIMIT)) as server:
        gaps, took, big = asyncio.run(scenario(server.base_url))
    assert big.status_code == 400 and "context" in big.json()["error"]["message"]  # 2.4M tokens: too long
    assert took > 1.0, f"the 11 MB prompt took only {took:.2f} s: the test cannot tell a stall"
    assert len(gaps) > 5 and max(gaps) < took / 3, (max(gaps), took)
