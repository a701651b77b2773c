"""The router's decision rules on their own: the breaker's states, bounded-load prefix affinity,
sticky rollout, the retry chain and the YAML schema."""

from __future__ import annotations

from collections import Counter

import pytest

from seekd.router.backends import Backend
from seekd.router.balancer import Balancer, affinity_key
from seekd.router.breaker import BreakerState, CircuitBreaker
from seekd.router.config import BackendConfig, BalanceConfig, BreakerConfig, RouteConfig, router_config_from_dict
from seekd.router.retry import backoff_s, chain
from seekd.router.rollout import Rollout


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_breaker_opens_above_the_error_rate_probes_and_closes() -> None:
    clock = Clock()
    breaker = CircuitBreaker(BreakerConfig(error_rate=0.2, window_s=10, min_requests=5, open_s=3), clock)
    for failed in (True, False, False, False):
        breaker.record(failed)  # 25 % but below min_requests: stays closed
    assert breaker.state is BreakerState.CLOSED
    breaker.record(False)
    breaker.record(True)  # 2 of 6 > 20 %
    assert breaker.state is BreakerState.OPEN and not breaker.acquire()
    clock.now = 3.0
    assert breaker.state is BreakerState.HALF_OPEN
    assert breaker.acquire() and not breaker.acquire()  # one probe at a time
    breaker.record(True)
    assert breaker.state is BreakerState.OPEN
    clock.now = 6.0
    assert breaker.acquire()
    breaker.record(False)
    assert breaker.state is BreakerState.CLOSED and breaker.error_rate() == 0.0


def test_breaker_forgets_failures_older_than_its_window() -> None:
    clock = Clock()
    breaker = CircuitBreaker(BreakerConfig(error_rate=0.3, window_s=10, min_requests=4, open_s=3), clock)
    breaker.record(True)
    breaker.record(True)
    clock.now = 11.0
    for _ in range(4):
        breaker.record(False)
    assert breaker.state is BreakerState.CLOSED and breaker.error_rate() == 0.0


def backends(n: int) -> list[Backend]:
    return [
        Backend(BackendConfig(name=f"r{i}", url=f"http://r{i}", models=["m"]), CircuitBreaker(BreakerConfig()))
        for i in range(n)
    ]


def test_prefix_affinity_keeps_a_prefix_on_one_backend_until_it_is_loaded() -> None:
    pool = backends(3)
    balancer = Balancer(BalanceConfig(load_factor=1.5))
    owners = {balancer.pick(pool, f"system prompt {k}").name for k in range(40)}
    assert owners == {"r0", "r1", "r2"}  # prefixes spread over the ring
    owner = balancer.pick(pool, "shared prefix")
    assert all(balancer.pick(pool, "shared prefix") is owner for _ in range(10))
    owner.outstanding = 5  # far above the mean: the prefix yields to the least loaded
    chosen = balancer.pick(pool, "shared prefix")
    assert chosen is not owner and chosen.outstanding == 0
    pool.remove(next(b for b in pool if b is not owner and b is not chosen))
    owner.outstanding = 0
    assert balancer.pick(pool, "shared prefix") is owner  # removing another backend does not move it


def test_least_outstanding_spreads_work_by_weight() -> None:
    pool = backends(2)
    pool[1].config.weight = 3.0
    balancer = Balancer(BalanceConfig(prefix_affinity=False))
    for _ in range(40):
        balancer.pick(pool, None).outstanding += 1
    assert (pool[0].outstanding, pool[1].outstanding) == (10, 30)


def test_affinity_key_reads_the_opening_of_chats_and_prompts() -> None:
    chat = {"messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]}
    assert affinity_key(chat, 12) == "system:be br"
    assert affinity_key({"prompt": "once upon a time"}, 4) == "once"
    assert affinity_key({"prompt": ""}, 4) is None


def test_rollout_is_sticky_per_user_and_canary_growth_only_adds_users() -> None:
    config = router_config_from_dict(
        {
            "backends": [{"name": "a", "url": "http://a", "models": ["m"]}],
            "routes": [
                {
                    "name": "m",
                    "targets": [
                        {"model": "m", "group": "blue", "weight": 95},
                        {"model": "m", "group": "green", "weight": 5},
                    ],
                }
            ],
        }
    )
    rollout = Rollout(config)
    route = rollout.route("m")
    first = {u: rollout.choose(route, f"u{u}", None).group for u in range(4000)}
    assert first == {u: rollout.choose(route, f"u{u}", None).group for u in range(4000)}
    assert 140 < Counter(first.values())["green"] < 260
    route = rollout.set_targets("m", [route.targets[0], type(route.targets[1])(model="m", group="green", weight=25)])
    grown = {u: rollout.choose(route, f"u{u}", None).group for u in range(4000)}
    assert {u for u, g in first.items() if g == "green"} <= {u for u, g in grown.items() if g == "green"}


def test_the_retry_chain_puts_fallbacks_after_the_target_and_backs_off() -> None:
    route = RouteConfig(name="r1", fallbacks=["distill", "r1"])
    steps = chain(route, route.targets[0])
    assert [(s.model, s.fallback) for s in steps] == [("r1", False), ("distill", True)]
    config = router_config_from_dict({"backends": [{"name": "a", "url": "http://a", "models": ["m"]}]}).retry
    assert [backoff_s(config, n) for n in (1, 2, 3)] == [0.0, config.backoff_s, 2 * config.backoff_s]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"backends": []}, "no backends"),
        ({"backends": [{"name": "a", "url": "http://a"}]}, "lists no models"),
        ({"backends": [{"name": "a", "url": "http://a", "models": ["m"], "colour": 1}]}, "unknown key"),
        (
            {"backends": [{"name": "a", "url": "http://a", "models": ["m"]}], "routes": [{"name": "m", "sticky": "x"}]},
            "sticky",
        ),
        (
            {"backends": [{"name": "a", "url": "u", "models": ["m"]}, {"name": "a", "url": "v", "models": ["m"]}]},
            "unique",
        ),
    ],
)
def test_the_yaml_schema_refuses_mistakes_with_a_message(data: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        router_config_from_dict(data)
