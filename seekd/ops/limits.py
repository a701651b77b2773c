"""Per-tenant rate limits: token buckets for requests/min and (estimated) tokens/min.

A bucket holds at most one minute's allowance and refills continuously, so a tenant may burst up
to its per-minute limit and then proceeds at the steady rate. Limits are checked before a request
is queued; a refusal says how long until the request would fit (the `Retry-After` of the 429).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

MAX_IDLE_TENANTS = 10_000  # beyond this many buckets, full (idle) ones are forgotten


class TokenBucket:
    """`capacity` units, refilled at `rate_per_s`. Time is passed in (monotonic seconds)."""

    def __init__(self, rate_per_s: float, capacity: float, now: float) -> None:
        self.rate_per_s = rate_per_s
        self.capacity = capacity
        self.level = capacity
        self.updated = now

    def _refill(self, now: float) -> None:
        self.level = min(self.capacity, self.level + (now - self.updated) * self.rate_per_s)
        self.updated = now

    def wait_time(self, amount: float, now: float) -> float:
        """Seconds until `amount` units are available (0 if now). An amount above the capacity is
        treated as the capacity: such a request passes when the bucket is full and empties it."""
        self._refill(now)
        missing = min(amount, self.capacity) - self.level
        return 0.0 if missing <= 0 else missing / self.rate_per_s

    def take(self, amount: float) -> None:
        """Remove units; call after `wait_time` returned 0 for the same `now`."""
        self.level -= min(amount, self.capacity)

    def is_full(self, now: float) -> bool:
        self._refill(now)
        return self.level >= self.capacity


@dataclass
class RateLimitExceeded(Exception):
    tenant: str
    limit: str  # "requests" or "tokens"
    per_min: int
    retry_after_s: int
    subject: str = "tenant"  # or "API key"

    def __str__(self) -> str:
        return (
            f"rate limit of {self.per_min} {self.limit} per minute exceeded for {self.subject} "
            f"{self.tenant!r}; retry after {self.retry_after_s} s"
        )


@dataclass(frozen=True)
class KeyLimits:
    """One API key's own limits, on top of its tenant's."""

    key_id: str
    requests_per_min: int
    tokens_per_min: int


class TenantRateLimiter:
    """Both limits of every tenant; 0 turns a limit off."""

    def __init__(self, requests_per_min: int, tokens_per_min: int) -> None:
        self.requests_per_min = requests_per_min
        self.tokens_per_min = tokens_per_min
        self._buckets: dict[str, tuple[TokenBucket | None, TokenBucket | None]] = {}

    @property
    def enabled(self) -> bool:
        return bool(self.requests_per_min or self.tokens_per_min)

    def check(self, tenant: str, tokens: int, now: float | None = None) -> None:
        """Charge one request of `tokens` estimated tokens, or raise RateLimitExceeded and charge
        nothing (a refused request must not eat into the allowance)."""
        now = time.monotonic() if now is None else now
        if (refusal := self.refusal(tenant, tokens, now)) is not None:
            raise refusal
        self.charge(tenant, tokens, now)

    def refusal(self, tenant: str, tokens: int, now: float, subject: str = "tenant") -> RateLimitExceeded | None:
        """Why a request would be refused now, without charging anything."""
        if not self.enabled:
            return None
        requests, token_bucket = self._buckets_of(tenant, now)
        for bucket, amount, kind, per_min in (
            (requests, 1, "requests", self.requests_per_min),
            (token_bucket, tokens, "tokens", self.tokens_per_min),
        ):
            if bucket is not None and (wait := bucket.wait_time(amount, now)) > 0:
                return RateLimitExceeded(tenant, kind, per_min, max(1, math.ceil(wait)), subject)
        return None

    def charge(self, tenant: str, tokens: int, now: float) -> None:
        """Take a request's allowance; call after `refusal` returned None for the same `now`."""
        if not self.enabled:
            return
        requests, token_bucket = self._buckets_of(tenant, now)
        if requests is not None:
            requests.take(1)
        if token_bucket is not None:
            token_bucket.take(tokens)

    def _buckets_of(self, tenant: str, now: float) -> tuple[TokenBucket | None, TokenBucket | None]:
        buckets = self._buckets.get(tenant)
        if buckets is None:
            if len(self._buckets) >= MAX_IDLE_TENANTS:
                self._forget_idle(now)
            buckets = (
                TokenBucket(self.requests_per_min / 60, self.requests_per_min, now) if self.requests_per_min else None,
                TokenBucket(self.tokens_per_min / 60, self.tokens_per_min, now) if self.tokens_per_min else None,
            )
            self._buckets[tenant] = buckets
        return buckets

    def _forget_idle(self, now: float) -> None:
        """A full bucket is indistinguishable from a new one, so dropping it changes nothing."""
        self._buckets = {t: b for t, b in self._buckets.items() if not all(x is None or x.is_full(now) for x in b)}


class KeyRateLimiter:
    """Per-key limits, each key with its own rates (one TenantRateLimiter per distinct rate pair)."""

    def __init__(self) -> None:
        self._by_rates: dict[tuple[int, int], TenantRateLimiter] = {}

    def limiter_for(self, limits: KeyLimits) -> TenantRateLimiter:
        rates = (limits.requests_per_min, limits.tokens_per_min)
        limiter = self._by_rates.get(rates)
        if limiter is None:
            limiter = self._by_rates[rates] = TenantRateLimiter(*rates)
        return limiter


def check_limits(checks: list[tuple[TenantRateLimiter, str, str]], tokens: int, now: float | None = None) -> None:
    """All-or-nothing over several limiters of (limiter, name, subject): either every one is
    charged, or RateLimitExceeded is raised and none is."""
    now = time.monotonic() if now is None else now
    for limiter, name, subject in checks:
        if (refusal := limiter.refusal(name, tokens, now, subject)) is not None:
            raise refusal
    for limiter, name, _ in checks:
        limiter.charge(name, tokens, now)
