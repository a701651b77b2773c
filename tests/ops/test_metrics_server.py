"""Acceptance: /metrics, request ids and the access log of the real `seekd serve` after a known workload."""

from __future__ import annotations

import json
import time

import httpx
import openai
import pytest

from seekd.ops.gpu import GPU_METRICS

from .conftest import ServerHandle, scrape

pytestmark = pytest.mark.slow

LONG_PROMPT = " ".join(f"line {i} says {i * 5 % 11}" for i in range(50))
MAX_TOKENS = (3, 5, 8)
HISTOGRAMS = (
    "time_to_first_token_seconds",
    "e2e_request_latency_seconds",
    "request_queue_time_seconds",
    "request_prefill_time_seconds",
    "request_decode_time_seconds",
)


@pytest.fixture(scope="module")
def client(server: ServerHandle) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.api_url, api_key="unused", max_retries=0, timeout=60)


def delta(after: dict[str, float], before: dict[str, float], key: str) -> float:
    return after[key] - before.get(key, 0.0)


def wait_until_engine_idle(server: ServerHandle) -> dict[str, float]:
    """The engine's stats arrive with its output batches; wait for the batch after the last finish."""
    deadline = time.monotonic() + 10.0
    while True:
        samples = scrape(server)
        if samples["seekd:num_requests_running{}"] == 0 or time.monotonic() > deadline:
            return samples
        time.sleep(0.1)


def test_known_workload_is_counted_exactly(server: ServerHandle, client: openai.OpenAI) -> None:
    model = client.models.list().data[0].id
    before = scrape(server)
    usages = [
        client.completions.create(model=model, prompt=f"count {i}", max_tokens=k, extra_body={"ignore_eos": True}).usage
        for i, k in enumerate(MAX_TOKENS)
    ]
    usages += [
        client.completions.create(model=model, prompt=LONG_PROMPT, max_tokens=2, extra_body={"ignore_eos": True}).usage
        for _ in range(2)
    ]
    after = wait_until_engine_idle(server)

    assert [u.completion_tokens for u in usages] == [*MAX_TOKENS, 2, 2]
    cached = sum(u.prompt_tokens_details.cached_tokens for u in usages)
    assert cached >= 16  # the repeated long prompt hit whole blocks
    assert delta(after, before, 'seekd:request_success_total{finished_reason="length"}') == len(usages)
    assert delta(after, before, "seekd:prompt_tokens_total{}") == sum(u.prompt_tokens for u in usages)
    assert delta(after, before, "seekd:generation_tokens_total{}") == sum(u.completion_tokens for u in usages)
    assert delta(after, before, "seekd:cached_prompt_tokens_total{}") == cached
    for name in HISTOGRAMS:
        assert delta(after, before, f"seekd:{name}_count{{}}") == len(usages), name
        assert delta(after, before, f'seekd:{name}_bucket{{le="+Inf"}}') == len(usages), name
        assert delta(after, before, f"seekd:{name}_sum{{}}") > 0, name
    # one interval between consecutive outputs of a sequence, each output carrying one token here
    assert delta(after, before, "seekd:inter_token_latency_seconds_count{}") == sum(k - 1 for k in [*MAX_TOKENS, 2, 2])
    assert delta(after, before, "seekd:prefix_cache_hits_total{}") >= cached
    assert delta(after, before, "seekd:prefix_cache_queries_total{}") >= sum(u.prompt_tokens for u in usages)
    assert after["seekd:num_requests_waiting{}"] == 0
    assert 0 <= after["seekd:kv_cache_usage_perc{}"] <= 1


def test_engine_rejection_and_restart_series_start_at_zero(server: ServerHandle) -> None:
    samples = scrape(server)
    for reason in ("queue_full", "rate_limit", "auth"):
        assert samples[f'seekd:request_rejected_total{{reason="{reason}"}}'] == 0
    assert samples["seekd:engine_restarts_total{}"] == 0
    assert samples["seekd:num_requests_swapped{}"] == 0
    assert samples["seekd:num_preemptions_total{}"] >= 0


def test_no_gpu_series_on_a_cpu_host(server: ServerHandle) -> None:
    names = {key.split("{")[0] for key in scrape(server)}
    assert not names & {name for name, _ in GPU_METRICS.values()}


def test_metrics_labels_carry_the_model_name(server: ServerHandle) -> None:
    text = httpx.get(f"{server.base_url}/metrics", timeout=5.0).text
    assert 'seekd:time_to_first_token_seconds_count{model_name="seekd-demo-random"}' in text


def test_request_id_is_echoed_or_generated(server: ServerHandle, client: openai.OpenAI) -> None:
    model = client.models.list().data[0].id
    body = {"model": model, "prompt": "hello", "max_tokens": 2}
    given = httpx.post(f"{server.api_url}/completions", json=body, headers={"X-Request-Id": "gw-42.a"}, timeout=30)
    assert given.status_code == 200 and given.headers["x-request-id"] == "gw-42.a"
    fresh = httpx.post(f"{server.api_url}/completions", json=body, timeout=30)
    assert len(fresh.headers["x-request-id"]) == 32 and fresh.headers["x-request-id"] != "gw-42.a"
    forged = httpx.post(f"{server.api_url}/completions", json=body, headers={"X-Request-Id": "a b\tc"}, timeout=30)
    assert forged.headers["x-request-id"] != "a b\tc"
    with httpx.stream(
        "POST",
        f"{server.api_url}/completions",
        json={**body, "stream": True},
        headers={"X-Request-Id": "stream-7"},
        timeout=30,
    ) as streamed:
        assert streamed.headers["x-request-id"] == "stream-7"
        assert b"[DONE]" in b"".join(streamed.iter_bytes())


def access_lines(server: ServerHandle) -> list[dict]:
    lines = []
    for line in server.log().splitlines():
        if line.startswith("{"):
            record = json.loads(line)
            if record.get("logger") == "seekd.access":
                lines.append(record)
    return lines


def test_access_log_has_one_json_line_per_request(server: ServerHandle, client: openai.OpenAI) -> None:
    model = client.models.list().data[0].id
    response = httpx.post(
        f"{server.api_url}/completions",
        headers={"X-Request-Id": "access-1", "X-Seekd-Tenant": "team-a"},
        json={"model": model, "prompt": LONG_PROMPT, "max_tokens": 4, "ignore_eos": True},
        timeout=30,
    )
    usage = response.json()["usage"]
    bad = httpx.post(
        f"{server.api_url}/completions",
        headers={"X-Request-Id": "access-2"},
        json={"model": model, "prompt": "x", "max_tokens": -1},
        timeout=30,
    )
    assert bad.status_code == 400
    deadline = time.monotonic() + 5.0
    while not {"access-1", "access-2"} <= {r["request_id"] for r in access_lines(server)}:
        assert time.monotonic() < deadline, server.log()[-3000:]
        time.sleep(0.1)
    records = {r["request_id"]: r for r in access_lines(server)}
    ok = records["access-1"]
    assert [r["request_id"] for r in access_lines(server)].count("access-1") == 1
    assert ok["status"] == 200 and ok["path"] == "/v1/completions"
    assert ok["id"] == response.json()["id"] and ok["tenant"] == "team-a" and ok["model"] == model
    assert ok["prompt_tokens"] == usage["prompt_tokens"]
    assert ok["output_tokens"] == usage["completion_tokens"] == 4
    assert ok["cached_tokens"] == usage["prompt_tokens_details"]["cached_tokens"]
    assert ok["finish_reason"] == "length"
    assert 0 <= ok["queue_ms"] <= ok["ttft_ms"] <= ok["e2e_ms"]
    assert records["access-2"]["status"] == 400
    # the server's other lines (uvicorn's included) are JSON too with --log-format json
    loggers = {json.loads(line)["logger"] for line in server.log().splitlines() if line.startswith("{")}
    assert {"uvicorn.error", "seekd.server.app"} <= loggers
