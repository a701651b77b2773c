"""The backends the router knows, and what it knows of each right now: health, load and breaker.

A backend is available for a new request when it is healthy (its last `/ready` probe passed and no
request has since failed to connect), not drained by an operator, its breaker lets the request
through, and it is not cooling down after a 429. Load is the number of requests in flight through
this router (`outstanding`), the one signal a gateway has without asking the replica.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

from seekd.router.breaker import CircuitBreaker
from seekd.router.config import BackendConfig, BreakerConfig

logger = logging.getLogger(__name__)


@dataclass
class Backend:
    config: BackendConfig
    breaker: CircuitBreaker
    healthy: bool = True  # optimistic until the first probe: a router restart must not refuse work
    drained: bool = False
    outstanding: int = 0
    busy_until: float = 0.0  # after a 429: skipped until then
    down_since: float | None = None
    last_error: str = ""
    attempts: int = 0
    failures: int = 0
    streams: set = field(default_factory=set)

    @property
    def name(self) -> str:
        return self.config.name

    def serves(self, model: str, group: str = "") -> bool:
        return model in self.config.models and (not group or not self.config.group or self.config.group == group)

    def available(self, now: float) -> bool:
        return self.healthy and not self.drained and now >= self.busy_until and self.breaker.allows()

    def saturated(self) -> bool:
        return 0 < self.config.max_outstanding <= self.outstanding

    def load(self) -> float:
        return self.outstanding / self.config.weight

    def mark_down(self, reason: str) -> None:
        if self.healthy:
            logger.warning("backend %s marked down: %s", self.name, reason)
            self.down_since = time.monotonic()
        self.healthy = False
        self.last_error = reason

    def mark_up(self) -> None:
        if not self.healthy:
            logger.info("backend %s is back", self.name)
        self.healthy = True
        self.down_since = None

    def state(self) -> dict:
        return {
            "name": self.name,
            "url": self.config.url,
            "models": self.config.models,
            "group": self.config.group,
            "weight": self.config.weight,
            "healthy": self.healthy,
            "drained": self.drained,
            "outstanding": self.outstanding,
            "breaker": self.breaker.state.value,
            "error_rate": round(self.breaker.error_rate(), 4),
            "attempts": self.attempts,
            "failures": self.failures,
            "last_error": self.last_error,
        }


class BackendRegistry:
    def __init__(self, configs: list[BackendConfig], breaker: BreakerConfig) -> None:
        self.breaker_config = breaker
        self.backends: dict[str, Backend] = {}
        self.update(configs)

    def update(self, configs: list[BackendConfig]) -> None:
        """Apply a new backend list: a backend that stays keeps its live state (load, breaker, health),
        so a reload never interrupts what is in flight; a removed one finishes its streams unseen."""
        fresh: dict[str, Backend] = {}
        for config in configs:
            old = self.backends.get(config.name)
            if old is not None and old.config.url == config.url:
                old.config = config
                fresh[config.name] = old
            else:
                fresh[config.name] = Backend(config, CircuitBreaker(self.breaker_config))
        self.backends = fresh

    def __iter__(self):
        return iter(list(self.backends.values()))

    def get(self, name: str) -> Backend | None:
        return self.backends.get(name)

    def serving(self, model: str, group: str = "") -> list[Backend]:
        return [b for b in self.backends.values() if b.serves(model, group)]
