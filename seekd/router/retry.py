"""Retry and fallback policy: what may be tried again, where, and after how long.

A request is retried only while nothing of its answer has reached the client — never mid-stream,
where a retry would repeat or contradict what was sent. Retried: connection failures, timeouts
before the first byte, 5xx and 429 (the replica is full: another one may not be). Each attempt goes
to a backend not yet tried; when the route's own target has no backend left, the fallback chain
(e.g. R1 → R1-Distill-32B) is walked in order.
"""

from __future__ import annotations

from dataclasses import dataclass

from seekd.router.config import RetryConfig, RouteConfig, TargetConfig

RETRYABLE_STATUS = frozenset({429, 500, 502, 503, 504})


@dataclass(frozen=True)
class Step:
    """One model of the chain: the chosen target first, then each fallback (any group)."""

    model: str
    group: str
    version: str
    fallback: bool


def chain(route: RouteConfig, target: TargetConfig) -> list[Step]:
    steps = [Step(target.model, target.group, target.cache_version, False)]
    return steps + [Step(m, "", m, True) for m in route.fallbacks if m != target.model]


def is_retryable(status: int) -> bool:
    return status in RETRYABLE_STATUS


def counts_against_breaker(status: int) -> bool:
    """Server errors count; 429 is a full queue, not a fault, and 4xx are the client's."""
    return status >= 500


def backoff_s(config: RetryConfig, attempt: int) -> float:
    """Pause before attempt number `attempt` (1-based): none before the first two, then doubling."""
    return 0.0 if attempt <= 1 else config.backoff_s * 2 ** (attempt - 2)


def retry_after_s(header: str | None, cap: float = 5.0) -> float:
    try:
        return min(cap, max(0.0, float(header))) if header else 1.0
    except ValueError:
        return 1.0
