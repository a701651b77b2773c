"""Prometheus metrics of one API server, named as vLLM names them but prefixed `seekd:`.

Every app gets its own CollectorRegistry, so several apps in one process (tests) never collide and
nothing leaks into prometheus_client's global registry. Three sources feed it:
- per-request timings and token counts, recorded where the server serves a request (RequestTracker);
- the engine core's stats, which arrive with each output batch and are read at scrape time
  (EngineCollector), so a scrape always shows the engine's latest state without a polling task;
- rejections and restarts, reported by admission/auth (`request_rejected`) and the supervisor.

Times are time.monotonic() seconds.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# vLLM's buckets, so dashboards and SLOs written for vLLM read the same here.
TTFT_BUCKETS = (
    0.001,
    0.005,
    0.01,
    0.02,
    0.04,
    0.06,
    0.08,
    0.1,
    0.25,
    0.5,
    0.75,
    1.0,
    2.5,
    5.0,
    7.5,
    10.0,
    20.0,
    40.0,
    80.0,
    160.0,
    640.0,
    2560.0,
)
ITL_BUCKETS = (
    0.01,
    0.025,
    0.05,
    0.075,
    0.1,
    0.15,
    0.2,
    0.3,
    0.4,
    0.5,
    0.75,
    1.0,
    2.5,
    5.0,
    7.5,
    10.0,
    20.0,
    40.0,
    80.0,
)
LATENCY_BUCKETS = (
    0.3,
    0.5,
    0.8,
    1.0,
    1.5,
    2.0,
    2.5,
    5.0,
    10.0,
    15.0,
    20.0,
    30.0,
    40.0,
    50.0,
    60.0,
    120.0,
    240.0,
    480.0,
    960.0,
    1920.0,
    7680.0,
)

REJECTION_REASONS = ("queue_full", "rate_limit", "auth")
FINISHED_REASONS = ("stop", "length")  # series that exist from the start; others appear when first seen


class ServerMetrics:
    """The metrics of one server process serving `model_name`."""

    def __init__(self, model_name: str) -> None:
        self.model_name = model_name
        self.registry = CollectorRegistry(auto_describe=True)
        labels = ["model_name"]

        def histogram(name: str, doc: str, buckets: tuple[float, ...]) -> Histogram:
            return Histogram(name, doc, labels, registry=self.registry, buckets=buckets).labels(model_name)

        def counter(name: str, doc: str) -> Counter:
            return Counter(name, doc, labels, registry=self.registry).labels(model_name)

        self.ttft = histogram(
            "seekd:time_to_first_token_seconds", "Time from arrival to the first token.", TTFT_BUCKETS
        )
        self.itl = histogram(
            "seekd:inter_token_latency_seconds", "Time between two outputs of one sequence.", ITL_BUCKETS
        )
        self.e2e = histogram(
            "seekd:e2e_request_latency_seconds", "Time from arrival to the last token.", LATENCY_BUCKETS
        )
        self.queue_time = histogram(
            "seekd:request_queue_time_seconds",
            "Time in the admission queue before the engine got the request.",
            LATENCY_BUCKETS,
        )
        self.prefill_time = histogram(
            "seekd:request_prefill_time_seconds", "Time from admission to the first token.", LATENCY_BUCKETS
        )
        self.decode_time = histogram(
            "seekd:request_decode_time_seconds", "Time from the first token to the last.", LATENCY_BUCKETS
        )
        self.prompt_tokens = counter("seekd:prompt_tokens", "Prompt tokens of finished requests.")
        self.generation_tokens = counter("seekd:generation_tokens", "Generated tokens, counted as produced.")
        self.cached_prompt_tokens = counter(
            "seekd:cached_prompt_tokens", "Prompt tokens of finished requests served from the prefix cache."
        )
        self.success = Counter(
            "seekd:request_success",
            "Finished sequences, by why they finished.",
            ["model_name", "finished_reason"],
            registry=self.registry,
        )
        for reason in FINISHED_REASONS:
            self.success.labels(model_name, reason)
        self.rejected = Counter(
            "seekd:request_rejected",
            "Requests refused before any work, by reason.",
            ["model_name", "reason"],
            registry=self.registry,
        )
        for reason in REJECTION_REASONS:  # a zero series exists from the start, so rate() works at once
            self.rejected.labels(model_name, reason)
        self.http_requests = Counter(
            "seekd:http_requests",
            "API calls (/v1/...) by HTTP status; the error rate is the share of 5xx.",
            ["model_name", "code"],
            registry=self.registry,
        )
        for code in ("200", "500"):  # so the error-rate ratio has series to divide before the first error
            self.http_requests.labels(model_name, code)

    def track(self) -> RequestTracker:
        """A tracker for one API request arriving now."""
        return RequestTracker(self, time.monotonic())

    def request_rejected(self, reason: str) -> None:
        """Count a request refused before any work: `queue_full`, `rate_limit` or `auth`."""
        self.rejected.labels(self.model_name, reason).inc()

    def http_request_done(self, status: int) -> None:
        self.http_requests.labels(self.model_name, str(status)).inc()

    def add_engine_source(self, stats: Callable[[], dict[str, float]], restarts: Callable[[], int]) -> None:
        self.registry.register(EngineCollector(self.model_name, stats, restarts))

    def render(self) -> bytes:
        return generate_latest(self.registry)


@dataclass
class RequestTracker:
    """The timeline of one API request (all its choices); feeds the histograms and the access log."""

    metrics: ServerMetrics
    arrival: float
    scheduled: float | None = None
    first_token: float | None = None
    last_token: float | None = None
    finished: float | None = None
    _last_output: dict[int, float] = field(default_factory=dict)

    def on_scheduled(self) -> None:
        """The request left the admission queue and was sent to the engine."""
        self.scheduled = time.monotonic()
        self.metrics.queue_time.observe(self.scheduled - self.arrival)

    def on_output(self, choice_index: int, num_tokens: int) -> None:
        """Tokens that arrive together (the stream coalesces outputs a slow reader has not taken yet)
        share the gap since the sequence's last output evenly, so the inter-token histogram counts
        every token after a sequence's first, however the outputs were batched."""
        if num_tokens == 0:  # a bare finish signal carries no token and no latency of its own
            return
        now = time.monotonic()
        if self.first_token is None:
            self.first_token = now
            self.metrics.ttft.observe(now - self.arrival)
        previous = self._last_output.get(choice_index)
        gaps, since = (num_tokens, previous) if previous is not None else (num_tokens - 1, now)
        for _ in range(gaps):
            self.metrics.itl.observe((now - since) / gaps)
        self._last_output[choice_index] = now
        self.last_token = now
        self.metrics.generation_tokens.inc(num_tokens)

    def on_finished(self, prompt_tokens: int, cached_tokens: int, finish_reasons: list[str | None]) -> None:
        """Every choice finished normally (not on error or disconnect)."""
        m = self.metrics
        self.finished = time.monotonic()
        m.e2e.observe(self.finished - self.arrival)
        if self.scheduled is not None and self.first_token is not None:
            m.prefill_time.observe(self.first_token - self.scheduled)
        if self.first_token is not None and self.last_token is not None:
            m.decode_time.observe(self.last_token - self.first_token)
        m.prompt_tokens.inc(prompt_tokens)
        m.cached_prompt_tokens.inc(cached_tokens)
        for reason in finish_reasons:
            m.success.labels(m.model_name, str(reason)).inc()

    def ms(self, start: float | None, end: float | None) -> float | None:
        return None if start is None or end is None else round((end - start) * 1000.0, 3)


class _MonotonicTotal:
    """A counter kept across engine restarts: each new engine counts from zero again, so a drop
    means a new engine whose whole value is new. Increments between the last scrape and a crash
    are lost; that is the price of reading the engine's stats only at scrape time."""

    def __init__(self) -> None:
        self.total = 0.0
        self.last_raw = 0.0

    def update(self, raw: float) -> float:
        self.total += raw - self.last_raw if raw >= self.last_raw else raw
        self.last_raw = raw
        return self.total


class EngineCollector(Collector):
    """Engine gauges and counters from the latest stats the engine core sent."""

    def __init__(self, model_name: str, stats: Callable[[], dict[str, float]], restarts: Callable[[], int]) -> None:
        self.model_name = model_name
        self.stats = stats
        self.restarts = restarts
        self.totals = {
            key: _MonotonicTotal() for key in ("prefix_cache_queries", "prefix_cache_hits", "num_preemptions")
        }
        self.expert_totals: dict[str, _MonotonicTotal] = {}

    def collect(self) -> Iterator[Metric]:
        stats = self.stats()
        labels = [self.model_name]
        gauges = {
            "num_requests_running": "Sequences in the engine's running batch.",
            "num_requests_waiting": "Sequences waiting in the engine's scheduler.",
            "kv_cache_usage_perc": "Fraction of KV cache blocks in use (0-1).",
        }
        for key, doc in gauges.items():
            gauge = GaugeMetricFamily(f"seekd:{key}", doc, labels=["model_name"])
            gauge.add_metric(labels, float(stats.get(key, 0.0)))
            yield gauge
        swapped = GaugeMetricFamily(
            "seekd:num_requests_swapped",
            "Always 0: seekd preempts by recompute and never swaps KV to the CPU.",
            labels=["model_name"],
        )
        swapped.add_metric(labels, 0.0)
        yield swapped
        counters = {
            "prefix_cache_queries": ("seekd:prefix_cache_queries", "Prompt tokens looked up in the prefix cache."),
            "prefix_cache_hits": ("seekd:prefix_cache_hits", "Prompt tokens found in the prefix cache."),
            "num_preemptions": ("seekd:num_preemptions", "Sequences preempted (recomputed later) for KV space."),
        }
        for key, (name, doc) in counters.items():
            if key in stats:
                self.totals[key].update(float(stats[key]))
            family = CounterMetricFamily(name, doc, labels=["model_name"])
            family.add_metric(labels, self.totals[key].total)
            yield family
        yield from self._expert_load(stats, labels)
        restarts = CounterMetricFamily(
            "seekd:engine_restarts", "Times the supervisor restarted the engine core.", labels=["model_name"]
        )
        restarts.add_metric(labels, float(self.restarts()))
        yield restarts

    def _expert_load(self, stats: dict[str, float], labels: list[str]) -> Iterator[Metric]:
        """Expert-parallel engines only: pairs routed to each expert (all MoE layers together) and each
        MoE layer's busiest expert over its mean."""
        experts = {k.partition(":")[2]: v for k, v in stats.items() if k.startswith("expert_tokens:")}
        if not experts:
            return
        tokens = CounterMetricFamily(
            "seekd:expert_tokens",
            "(token, expert) pairs routed to each routed expert, over all MoE layers (expert parallel).",
            labels=["model_name", "expert"],
        )
        for expert, value in sorted(experts.items(), key=lambda kv: int(kv[0])):
            total = self.expert_totals.setdefault(expert, _MonotonicTotal())
            tokens.add_metric([*labels, expert], total.update(value))
        yield tokens
        imbalance = GaugeMetricFamily(
            "seekd:expert_load_imbalance",
            "Per MoE layer: pairs of its busiest routed expert over the mean (1 = even; expert parallel).",
            labels=["model_name", "layer"],
        )
        for key, value in stats.items():
            if key.startswith("expert_imbalance:"):
                imbalance.add_metric([*labels, key.partition(":")[2]], value)
        yield imbalance
