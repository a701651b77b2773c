"""`seekd top`: a live terminal view of a running server, read from its /metrics only.

Everything shown is computed the way a Prometheus query would compute it (rates from two scrapes,
quantiles interpolated within histogram buckets), so what `top` says and what the dashboard says agree.
"""

from __future__ import annotations

import math
import time
from collections import defaultdict
from dataclasses import dataclass, field

import httpx
from prometheus_client.parser import text_string_to_metric_families
from rich.console import Console
from rich.live import Live
from rich.table import Table

TTFT = "seekd:time_to_first_token_seconds"
E2E = "seekd:e2e_request_latency_seconds"


@dataclass
class Snapshot:
    """One scrape: the sum of every series of each sample name, and each histogram's buckets."""

    taken_at: float
    model_name: str
    values: dict[str, float]
    buckets: dict[str, list[tuple[float, float]]] = field(default_factory=dict)  # name -> [(le, cumulative)]

    def get(self, name: str) -> float:
        return self.values.get(name, 0.0)


def parse_metrics(text: str, taken_at: float) -> Snapshot:
    values: dict[str, float] = defaultdict(float)
    buckets: dict[str, dict[float, float]] = defaultdict(lambda: defaultdict(float))
    model_name = ""
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            model_name = sample.labels.get("model_name", model_name)
            if sample.name.endswith("_bucket"):
                buckets[family.name][float(sample.labels["le"])] += sample.value
            else:
                values[sample.name] += sample.value
    sorted_buckets = {name: sorted(by_le.items()) for name, by_le in buckets.items()}
    return Snapshot(taken_at, model_name, dict(values), sorted_buckets)


def scrape(url: str, api_key: str | None = None) -> Snapshot:
    """`api_key`: a key with role admin or metrics, for a server that has keys."""
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    response = httpx.get(f"{url.rstrip('/')}/metrics", headers=headers, timeout=5.0)
    response.raise_for_status()
    return parse_metrics(response.text, time.monotonic())


def histogram_quantile(q: float, buckets: list[tuple[float, float]]) -> float | None:
    """Prometheus' histogram_quantile: linear interpolation inside the bucket holding rank q·count;
    a rank in the +Inf bucket answers the highest finite bound. None without observations."""
    if not buckets or buckets[-1][1] == 0:
        return None
    rank = q * buckets[-1][1]
    lower, below = 0.0, 0.0
    for upper, count in buckets:
        if count >= rank:
            if math.isinf(upper):
                return lower
            if count == below:
                return upper
            return lower + (upper - lower) * (rank - below) / (count - below)
        lower, below = upper, count
    return lower


def _rate(now: Snapshot, before: Snapshot | None, name: str) -> float | None:
    if before is None or now.taken_at <= before.taken_at:
        return None
    return max(0.0, now.get(name) - before.get(name)) / (now.taken_at - before.taken_at)


def _fmt(value: float | None, unit: str = "", scale: float = 1.0, digits: int = 1) -> str:
    return "—" if value is None else f"{value * scale:,.{digits}f}{unit}"


def render(url: str, now: Snapshot, before: Snapshot | None) -> Table:
    """The view of one scrape; rates need the previous scrape (`—` without one)."""
    table = Table(
        title=f"seekd top — {now.model_name or 'unknown model'} at {url}", show_header=False, title_justify="left"
    )
    table.add_column("what", style="bold")
    table.add_column("value", justify="right")
    ttft = now.buckets.get(TTFT, [])
    e2e = now.buckets.get(E2E, [])
    rows = [
        ("requests running", _fmt(now.get("seekd:num_requests_running"), digits=0)),
        ("requests waiting", _fmt(now.get("seekd:num_requests_waiting"), digits=0)),
        ("generated tok/s", _fmt(_rate(now, before, "seekd:generation_tokens_total"))),
        ("prompt tok/s", _fmt(_rate(now, before, "seekd:prompt_tokens_total"))),
        ("KV cache usage", _fmt(now.get("seekd:kv_cache_usage_perc"), " %", scale=100.0)),
        (
            "TTFT p50 / p99 (since start)",
            f"{_fmt(histogram_quantile(0.5, ttft), ' ms', 1000.0, 0)} / "
            f"{_fmt(histogram_quantile(0.99, ttft), ' ms', 1000.0, 0)}",
        ),
        (
            "e2e latency p50 / p99 (since start)",
            f"{_fmt(histogram_quantile(0.5, e2e), ' s', digits=2)} / "
            f"{_fmt(histogram_quantile(0.99, e2e), ' s', digits=2)}",
        ),
        ("requests finished", _fmt(now.get("seekd:request_success_total"), digits=0)),
        ("requests rejected", _fmt(now.get("seekd:request_rejected_total"), digits=0)),
        ("engine restarts", _fmt(now.get("seekd:engine_restarts_total"), digits=0)),
    ]
    for row in rows:
        table.add_row(*row)
    return table


def run_top(url: str, interval_s: float, once: bool, console: Console, api_key: str | None = None) -> int:
    """Refresh every `interval_s` until Ctrl-C; `once` renders one frame (rates over one interval)."""
    before = scrape(url, api_key)
    if once:
        time.sleep(interval_s)
        console.print(render(url, scrape(url, api_key), before))
        return 0
    with Live(render(url, before, None), console=console, auto_refresh=False) as live:
        try:
            while True:
                time.sleep(interval_s)
                now = scrape(url, api_key)
                live.update(render(url, now, before), refresh=True)
                before = now
        except KeyboardInterrupt:
            return 0
