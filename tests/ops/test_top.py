"""`seekd top` against the real server, and its quantiles against Prometheus' definition."""

from __future__ import annotations

import math
import os
import subprocess
import sys

import httpx
import pytest

from seekd.ops.top import histogram_quantile

from .conftest import ServerHandle


def test_histogram_quantile_interpolates_within_the_bucket() -> None:
    buckets = [(0.1, 2.0), (0.5, 6.0), (1.0, 8.0), (math.inf, 8.0)]
    assert histogram_quantile(0.25, buckets) == pytest.approx(0.1)  # rank 2: top of the first bucket
    assert histogram_quantile(0.5, buckets) == pytest.approx(0.3)  # rank 4: halfway through (0.1, 0.5]
    assert histogram_quantile(1.0, buckets) == pytest.approx(1.0)
    assert histogram_quantile(0.99, [(0.1, 0.0), (math.inf, 3.0)]) == pytest.approx(0.1)  # only +Inf: highest bound
    assert histogram_quantile(0.5, [(0.1, 0.0), (math.inf, 0.0)]) is None


@pytest.mark.slow
def test_top_renders_once_against_a_live_server(server: ServerHandle) -> None:
    body = {"prompt": "hello there", "max_tokens": 4, "ignore_eos": True}
    for _ in range(2):
        httpx.post(f"{server.api_url}/completions", json=body, timeout=30).raise_for_status()
    result = subprocess.run(
        [sys.executable, "-m", "seekd.cli", "top", "--url", server.base_url, "--once", "--interval", "0.2"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "COLUMNS": "120"},
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr == "", result.stderr  # no library lines (httpx logged each scrape at INFO)
    out = result.stdout
    assert "seekd-demo-random" in out
    for label in ("requests running", "requests waiting", "generated tok/s", "KV cache usage", "TTFT p50 / p99"):
        assert label in out
    ttft_line = next(line for line in out.splitlines() if "TTFT" in line)
    assert ttft_line.count("ms") == 2  # both quantiles known after two requests
    finished = next(line for line in out.splitlines() if "requests finished" in line)
    assert finished.split()[-2] == "2"


def test_top_says_what_is_wrong_when_no_server_answers() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "seekd.cli", "top", "--url", "http://127.0.0.1:9", "--once"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2 and "cannot read http://127.0.0.1:9/metrics" in result.stderr
