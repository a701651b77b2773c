"""The benchmark against the real `seekd serve` (demo model, CPU): its numbers agree with the server's."""

from __future__ import annotations

import asyncio

from seekd.bench.client import ClientConfig, run_load
from seekd.bench.metrics import SLO, summarize
from seekd.bench.workloads import TextSource, random_requests, shared_prefix_requests


def assert_consistent(summary: dict) -> None:
    for key in ("ttft_ms", "tpot_ms", "itl_ms", "e2e_ms"):
        d = summary[key]
        assert 0 < d["p50"] <= d["p90"] <= d["p99"], (key, d)
    assert summary["ttft_ms"]["p99"] <= summary["e2e_ms"]["p99"]
    assert 0 <= summary["goodput"] <= summary["request_throughput"]
    assert summary["failed"] == 0 and summary["errors"] == {}


def test_token_counts_and_timings_agree_with_the_server(seekd_server: str, demo_tokenizer) -> None:
    work = random_requests(TextSource(demo_tokenizer), 8, input_len=24, output_len=4, range_ratio=0.5, seed=0)
    config = ClientConfig(seekd_server, "seekd-demo-random", ignore_eos=True, temperature=0.0)
    results, duration = asyncio.run(run_load(config, work, max_concurrency=4, tokenizer=demo_tokenizer))

    for request, r in zip(work, results):
        assert r.ok, (r.error, r.error_detail)
        assert r.prompt_tokens == request.prompt_len  # the server counts the prompt as we built it
        assert r.output_tokens == r.usage_output_tokens == request.max_tokens  # ignore_eos honoured
        assert r.text
        assert r.ttft < r.e2e
    summary = summarize(results, duration, SLO(ttft_ms=60_000, tpot_ms=60_000))
    assert_consistent(summary)
    assert summary["output_tokens"] == sum(r.max_tokens for r in work)
    assert summary["goodput"] == summary["request_throughput"]


def test_shared_prefixes_hit_the_servers_prefix_cache_over_chat(seekd_server: str, demo_tokenizer) -> None:
    work = shared_prefix_requests(
        TextSource(demo_tokenizer),
        num_prefixes=2,
        questions_per_prefix=3,
        prefix_len=300,
        question_len=8,
        output_len=3,
        seed=0,
    )  # > 256: the V4 demo's hit unit
    config = ClientConfig(seekd_server, "seekd-demo-random", endpoint="chat", ignore_eos=True)
    # one at a time: a request that shares a step with its prefix's first request cannot hit its blocks
    results, duration = asyncio.run(run_load(config, work, max_concurrency=1))

    summary = summarize(results, duration, SLO(ttft_ms=60_000))
    assert_consistent(summary)
    assert summary["output_tokens"] == 6 * 3
    assert summary["cached_prompt_tokens"] > 0
