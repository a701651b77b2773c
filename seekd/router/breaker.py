"""Circuit breaker of one backend: closed → open above an error rate → half-open probes → closed.

The error rate is measured over a sliding time window (not a count of the last N calls), so a quiet
backend's old failures age out instead of keeping it open; `min_requests` keeps one early failure
from opening it. While open, no request is sent; after `open_s` a few probes go through at once,
and the first outcome decides: success closes the breaker, failure opens it again.
"""

from __future__ import annotations

import time
from collections import deque
from enum import Enum

from seekd.router.config import BreakerConfig


class BreakerState(str, Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class CircuitBreaker:
    def __init__(self, config: BreakerConfig, clock=time.monotonic) -> None:
        self.config = config
        self.clock = clock
        self.outcomes: deque[tuple[float, bool]] = deque()  # (time, failed)
        self.failures = 0
        self._state = BreakerState.CLOSED
        self.opened_at = 0.0
        self.probes_in_flight = 0

    @property
    def state(self) -> BreakerState:
        if self._state is BreakerState.OPEN and self.clock() - self.opened_at >= self.config.open_s:
            self._state = BreakerState.HALF_OPEN
            self.probes_in_flight = 0
        return self._state

    def allows(self) -> bool:
        """Whether a request may be sent now (without taking a probe slot)."""
        state = self.state
        if state is BreakerState.HALF_OPEN:
            return self.probes_in_flight < self.config.half_open_probes
        return state is BreakerState.CLOSED

    def acquire(self) -> bool:
        """Take the right to send one request; a half-open breaker hands out its probe slots."""
        if not self.allows():
            return False
        if self._state is BreakerState.HALF_OPEN:
            self.probes_in_flight += 1
        return True

    def record(self, failed: bool) -> None:
        now = self.clock()
        if self._state is BreakerState.HALF_OPEN:
            self.probes_in_flight = max(0, self.probes_in_flight - 1)
            if failed:
                self._open(now)
            else:
                self._state = BreakerState.CLOSED
                self.outcomes.clear()
                self.failures = 0
            return
        if self._state is BreakerState.OPEN:
            return  # a request sent before it opened: its outcome is already counted in
        self.outcomes.append((now, failed))
        self.failures += failed
        self._expire(now)
        total = len(self.outcomes)
        if total >= self.config.min_requests and self.failures / total > self.config.error_rate:
            self._open(now)

    def error_rate(self) -> float:
        self._expire(self.clock())
        return self.failures / len(self.outcomes) if self.outcomes else 0.0

    def _open(self, now: float) -> None:
        self._state = BreakerState.OPEN
        self.opened_at = now
        self.outcomes.clear()
        self.failures = 0

    def _expire(self, now: float) -> None:
        horizon = now - self.config.window_s
        while self.outcomes and self.outcomes[0][0] < horizon:
            _, failed = self.outcomes.popleft()
            self.failures -= failed
