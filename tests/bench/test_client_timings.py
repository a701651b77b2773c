"""The benchmark client against a fake OpenAI-compatible server whose delays are known."""

from __future__ import annotations

import asyncio
import math

import pytest

from seekd.bench.client import ClientConfig, arrival_offsets, run_load
from seekd.bench.metrics import SLO, summarize
from seekd.bench.workloads import BenchRequest

from .conftest import FakeOpenAIServer


def requests(n: int, max_tokens: int, text: str = "hello there") -> list[BenchRequest]:
    return [BenchRequest(f"{text} {i}", max_tokens) for i in range(n)]


@pytest.mark.parametrize("endpoint", ["completions", "chat"])
def test_measured_ttft_and_tpot_match_the_injected_delays(fake_server: FakeOpenAIServer, endpoint: str) -> None:
    config = ClientConfig(fake_server.base_url, "fake-model", endpoint)
    work = requests(8, 10)
    results, duration = asyncio.run(run_load(config, work, max_concurrency=4))

    assert all(r.ok for r in results)
    for request, r in zip(work, results):
        # against what the server really did (a busy machine delays its sleeps), tightly
        received, token_times = fake_server.sent[request.text]
        # the role-only chunk is no token; the client's clock also holds the connect, so some absolute slack
        assert r.ttft == pytest.approx(token_times[0] - received, rel=0.1, abs=0.1)
        assert r.tpot == pytest.approx((token_times[-1] - token_times[0]) / 9, rel=0.1)
        assert len(r.itl) == 9
        assert r.output_tokens == r.usage_output_tokens == 10
    summary = summarize(results, duration, SLO())
    # and the injected delays: a sleep never ends early, but a busy CI machine may end it late
    assert 195 <= summary["ttft_ms"]["p50"] <= 300
    assert 39 <= summary["tpot_ms"]["p50"] <= 60
    assert 39 <= summary["itl_ms"]["p50"] <= 60
    assert summary["output_tokens"] == 80 and summary["failed"] == 0
    assert fake_server.max_in_flight == 4
    body = fake_server.bodies[0]
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}
    assert body["max_tokens"] == 10 and "ignore_eos" not in body


def test_goodput_counts_only_requests_that_meet_every_slo(fake_server: FakeOpenAIServer) -> None:
    config = ClientConfig(fake_server.base_url, "fake-model")
    results, duration = asyncio.run(run_load(config, requests(4, 4), max_concurrency=4))

    met = summarize(results, duration, SLO(ttft_ms=300, tpot_ms=50))
    assert met["goodput"] == met["request_throughput"] and met["slo_met"] == 4
    assert summarize(results, duration, SLO(ttft_ms=100))["goodput"] == 0
    assert summarize(results, duration, SLO(ttft_ms=300, tpot_ms=30))["goodput"] == 0
    assert summarize(results, duration, SLO())["goodput"] is None


def test_output_tokens_are_counted_with_the_tokenizer_when_the_server_sends_no_usage(demo_tokenizer) -> None:
    with FakeOpenAIServer(ttft_s=0.01, itl_s=0.005, send_usage=False).running() as server:
        config = ClientConfig(server.base_url, "fake-model")
        counted, _ = asyncio.run(run_load(config, requests(2, 7), tokenizer=demo_tokenizer))
        by_chunk, _ = asyncio.run(run_load(config, requests(2, 7)))
    assert [r.output_tokens for r in counted] == [7, 7]
    assert all(r.usage_output_tokens is None for r in counted)
    assert [r.output_tokens for r in by_chunk] == [7, 7]


def test_errors_are_counted_by_status_and_never_stop_the_run() -> None:
    with FakeOpenAIServer(ttft_s=0.01, itl_s=0.005).running() as server:
        config = ClientConfig(server.base_url, "fake-model", timeout_s=1.0)
        work = [
            *requests(3, 3),
            BenchRequest("STATUS=429", 3),
            BenchRequest("STATUS=500", 3),
            BenchRequest("STATUS=429 again", 3),
            BenchRequest("HANG", 3),
        ]
        results, duration = asyncio.run(run_load(config, work, max_concurrency=8))
    refused = ClientConfig("http://127.0.0.1:9", "fake-model", timeout_s=5.0)  # port 9 (discard) is closed
    unreachable, _ = asyncio.run(run_load(refused, requests(2, 3)))

    summary = summarize(results, duration, SLO(ttft_ms=1000))
    assert summary["completed"] == 3 and summary["failed"] == 4
    assert summary["errors"] == {"429": 2, "500": 1, "timeout": 1}
    assert "injected" in summary["error_examples"]["429"]
    assert summary["goodput"] <= summary["request_throughput"]
    assert [r.error for r in unreachable] == ["connect", "connect"]


def test_poisson_arrivals_are_seeded_and_follow_the_rate(fake_server: FakeOpenAIServer) -> None:
    offsets = arrival_offsets(4000, 50.0, seed=3)
    assert offsets == arrival_offsets(4000, 50.0, seed=3)
    assert offsets[-1] / 3999 == pytest.approx(1 / 50, rel=0.05)
    assert arrival_offsets(3, math.inf, seed=0) == [0.0, 0.0, 0.0]

    fake_server.ttft_s = fake_server.itl_s = 0.001
    config = ClientConfig(fake_server.base_url, "fake-model")
    results, _ = asyncio.run(run_load(config, requests(10, 2), request_rate=20.0, seed=5))
    expected = arrival_offsets(10, 20.0, seed=5)
    for r, offset in zip(results, expected):
        assert r.send_time == pytest.approx(offset, abs=0.05)
