"""The router's Prometheus metrics: the `seekd:` names with a `router_` prefix, per backend and route.

Backend state (health, breaker, load) is read at scrape time from the registry, so a scrape shows
the router's view at that moment without a polling task; counters are bumped where things happen.
Each app has its own CollectorRegistry (several routers in one test process never collide).
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from seekd.router.backends import BackendRegistry
from seekd.router.breaker import BreakerState

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
BREAKER_VALUE = {BreakerState.CLOSED: 0, BreakerState.HALF_OPEN: 1, BreakerState.OPEN: 2}
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 600.0)


class BackendCollector(Collector):
    def __init__(self, backends: BackendRegistry) -> None:
        self.backends = backends

    def collect(self) -> Iterator[Metric]:
        healthy = GaugeMetricFamily(
            "seekd:router_backend_healthy", "1 while the backend passes health checks.", labels=["backend"]
        )
        outstanding = GaugeMetricFamily(
            "seekd:router_backend_outstanding",
            "Requests in flight on the backend through this router.",
            labels=["backend"],
        )
        breaker = GaugeMetricFamily(
            "seekd:router_breaker_state", "Circuit breaker: 0 closed, 1 half-open, 2 open.", labels=["backend"]
        )
        for b in self.backends:
            healthy.add_metric([b.name], float(b.healthy and not b.drained))
            outstanding.add_metric([b.name], float(b.outstanding))
            breaker.add_metric([b.name], float(BREAKER_VALUE[b.breaker.state]))
        yield from (healthy, outstanding, breaker)


class RouterMetrics:
    def __init__(self, backends: BackendRegistry) -> None:
        self.registry = CollectorRegistry()
        self.registry.register(BackendCollector(backends))

        def counter(name: str, doc: str, labels: list[str]) -> Counter:
            return Counter(name, doc, labels, registry=self.registry)

        self.requests = counter(
            "seekd:router_requests", "Client requests answered, by route and status.", ["route", "code"]
        )
        self.attempts = counter(
            "seekd:router_backend_requests", "Requests sent to a backend, retries included.", ["backend", "route"]
        )
        self.errors = counter(
            "seekd:router_backend_errors",
            "Failed backend requests, by kind (connect, status, stream).",
            ["backend", "kind"],
        )
        self.retries = counter("seekd:router_retries", "Attempts beyond a request's first, by cause.", ["reason"])
        self.fallbacks = counter(
            "seekd:router_fallbacks", "Requests answered by a fallback model of their route.", ["route", "model"]
        )
        self.cache_hits = counter("seekd:router_cache_hits", "Responses served from the cache, by level.", ["level"])
        self.cache_misses = counter("seekd:router_cache_misses", "Cacheable requests not found in the cache.", [])
        self.spillovers = counter(
            "seekd:router_spillovers", "Requests sent to the external endpoint, by route.", ["route"]
        )
        self.duration = Histogram(
            "seekd:router_request_duration_seconds",
            "Time from a request's arrival at the router to its last byte.",
            ["route"],
            buckets=DURATION_BUCKETS,
            registry=self.registry,
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def names(self) -> set[str]:
        """Every series name /metrics can export, labelled children or not yet (for dashboard checks)."""
        suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum"), "gauge": ("",)}
        return {m.name + s for m in self.registry.collect() for s in suffixes.get(m.type, ("",))}
