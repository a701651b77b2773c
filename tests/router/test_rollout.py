"""Rollout through the admin API of a running router: canary shares within binomial bounds and sticky
per user; a blue-green switch and a config reload under load drop nothing."""

from __future__ import annotations

import asyncio
import math
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from .conftest import RouterHandle, running_router
from .fake_backend import FakeBackend

MODEL = "m"
REQUESTS = 2000
SIGMAS = 4.5  # a correct router fails this about once in 150,000 runs


def binomial_bounds(n: int, p: float) -> tuple[float, float]:
    spread = SIGMAS * math.sqrt(n * p * (1 - p))
    return n * p - spread, n * p + spread


async def backends_of(base_url: str, users: list[str | None], concurrency: int = 8) -> list[str]:
    """The backend that answered each user's request, in order."""
    out: list[str] = [""] * len(users)
    queue = list(enumerate(users))

    async def worker(client: httpx.AsyncClient) -> None:
        while queue:
            i, user = queue.pop()
            body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}
            if user is not None:
                body["user"] = user
            r = await client.post("/v1/chat/completions", json=body)
            assert r.status_code == 200, r.text
            out[i] = r.headers["x-seekd-backend"]

    async with httpx.AsyncClient(base_url=base_url, timeout=30) as client:
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
    return out


@pytest.fixture
def blue_green(tmp_path: Path) -> Iterator[tuple[RouterHandle, FakeBackend, FakeBackend]]:
    blue, green = FakeBackend("blue", MODEL), FakeBackend("green", MODEL)
    with blue.running(), green.running():
        config = {
            "backends": [
                {"name": "blue", "url": blue.url, "models": [MODEL], "group": "blue"},
                {"name": "green", "url": green.url, "models": [MODEL], "group": "green"},
            ],
            "routes": [
                {
                    "name": MODEL,
                    "targets": [
                        {"model": MODEL, "group": "blue", "weight": 99},
                        {"model": MODEL, "group": "green", "weight": 1},
                    ],
                }
            ],
            "health": {"interval_s": 0.2},
        }
        with running_router(config, tmp_path) as router:
            yield router, blue, green


def set_canary(router: RouterHandle, share: float) -> None:
    targets = [
        {"model": MODEL, "group": "blue", "weight": 1 - share},
        {"model": MODEL, "group": "green", "weight": share},
    ]
    r = router.admin("PUT", f"/routes/{MODEL}/targets", json={"targets": targets})
    assert r.status_code == 200, r.text


def test_canary_shares_land_within_binomial_bounds_and_stay_sticky(blue_green) -> None:
    router, _, _ = blue_green
    users = [f"user-{i}" for i in range(REQUESTS)]
    for share in (0.01, 0.10):
        set_canary(router, share)
        served = asyncio.run(backends_of(router.base_url, users))
        low, high = binomial_bounds(REQUESTS, share)
        assert low <= served.count("green") <= high, (share, Counter(served))
        if share == 0.01:
            canary_users = {u for u, b in zip(users, served) if b == "green"}
        else:  # growing the canary only adds users to it
            assert canary_users <= {u for u, b in zip(users, served) if b == "green"}
    again = asyncio.run(backends_of(router.base_url, users[:300]))
    assert again == served[:300], "a user moved between targets while the weights stood"

    set_canary(router, 0.10)  # without a user (and no key), each request draws anew
    anonymous = asyncio.run(backends_of(router.base_url, [None] * REQUESTS))
    low, high = binomial_bounds(REQUESTS, 0.10)
    assert low <= anonymous.count("green") <= high


def test_the_admin_api_needs_its_key(blue_green) -> None:
    router, _, _ = blue_green
    assert httpx.get(f"{router.base_url}/admin/state").status_code == 401
    r = httpx.get(f"{router.base_url}/admin/state", headers={"Authorization": "Bearer wrong"})
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"


async def _load(base_url: str, until: asyncio.Event, log: list[tuple[float, float, int, str, bool]]) -> None:
    """(started, ended, status, backend, complete) per request, streams and whole answers alternating."""
    async with httpx.AsyncClient(base_url=base_url, timeout=30) as client:
        i = 0
        while not until.is_set():
            stream, started = i % 2 == 0, time.monotonic()
            body = {"model": MODEL, "messages": [{"role": "user", "content": f"q{i}"}], "max_tokens": 8}
            if stream:
                async with client.stream("POST", "/v1/chat/completions", json={**body, "stream": True}) as r:
                    text = (await r.aread()).decode()
                complete = text.rstrip().endswith("data: [DONE]") and '"error"' not in text
            else:
                r = await client.post("/v1/chat/completions", json=body)
                complete = "says" in r.text
            log.append((started, time.monotonic(), r.status_code, r.headers.get("x-seekd-backend", ""), complete))
            i += 1


def test_blue_green_switch_and_reload_under_load_drop_nothing(blue_green) -> None:
    router, blue, green = blue_green
    blue.itl_s = green.itl_s = 0.03  # each stream ~0.25 s: some are always in flight at the switch
    set_canary(router, 0.0)

    async def scenario() -> tuple[list, float, float, dict]:
        until, log = asyncio.Event(), []
        workers = [asyncio.create_task(_load(router.base_url, until, log)) for _ in range(6)]
        await asyncio.sleep(1.5)
        r = await asyncio.to_thread(router.admin, "POST", f"/routes/{MODEL}/switch", json={"group": "green"})
        switched = time.monotonic()
        assert r.status_code == 200, r.text
        switch = r.json()
        await asyncio.sleep(1.0)
        config = yaml.safe_load(router.config_path.read_text())
        config["routes"][0]["targets"] = [{"model": MODEL, "group": "green"}]
        router.config_path.write_text(yaml.safe_dump(config))
        reload = await asyncio.to_thread(router.admin, "POST", "/reload")
        assert reload.status_code == 200, reload.text
        await asyncio.sleep(1.0)
        until.set()
        await asyncio.gather(*workers)
        return log, switched, switch

    log, switched, switch = asyncio.run(scenario())
    assert switch["draining"] == ["blue"]
    assert all(status == 200 and complete for _, _, status, _, complete in log), [x for x in log if not x[4]]
    before = [backend for started, ended, *_, backend, _ in log if ended < switched]
    after = [backend for started, _, _, backend, _ in log if started > switched]
    assert set(before) == {"blue"} and set(after) == {"green"} and len(after) > 20
    straddling = [backend for started, ended, *_, backend, _ in log if started < switched < ended]
    assert "blue" in straddling, "no request was in flight on blue at the switch: the drain went untested"
    assert router.admin("GET", f"/routes/{MODEL}/drain", params={"groups": "blue"}).json()["in_flight"] == 0
