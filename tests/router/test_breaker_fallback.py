"""Error injection: a failing backend's breaker opens and its requests go elsewhere; when a route's
every backend fails, the fallback model answers (a real `seekd serve` replica under the name
r1-distill) and says so in `model`; a 429 is re-routed before the client sees it."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from live_server import running_server

from .conftest import RouterHandle, running_router
from .fake_backend import FakeBackend

pytestmark = pytest.mark.slow

PRIMARY, FALLBACK = "deepseek-r1", "r1-distill"


@pytest.fixture(scope="module")
def setup(data_dir: Path, tmp_path_factory) -> Iterator[tuple[RouterHandle, FakeBackend, FakeBackend]]:
    folder = tmp_path_factory.mktemp("breaker")
    a, b = FakeBackend("a", PRIMARY), FakeBackend("b", PRIMARY)
    with (
        a.running(),
        b.running(),
        running_server(data_dir, folder / "fallback.log", "--served-model-name", FALLBACK) as replica,
    ):
        config = {
            "backends": [
                {"name": "a", "url": a.url, "models": [PRIMARY]},
                {"name": "b", "url": b.url, "models": [PRIMARY]},
                {"name": "distill", "url": replica.base_url, "models": [FALLBACK]},
            ],
            "routes": [{"name": PRIMARY, "fallbacks": [FALLBACK]}],
            "health": {"interval_s": 0.1},
            "breaker": {"error_rate": 0.05, "window_s": 30.0, "min_requests": 4, "open_s": 3.0},
            "balance": {"prefix_affinity": False},
        }
        with running_router(config, folder) as router:
            yield router, a, b


@pytest.fixture(autouse=True)
def healed(setup) -> Iterator[None]:
    """Each test leaves both primaries answering, whatever it injected."""
    yield
    _, a, b = setup
    a.fail_status = b.fail_status = None


def ask(router: RouterHandle, i: int, stream: bool = False) -> tuple[int, str, str]:
    """(status, the answer's model, the backend that served it)."""
    body = {"model": PRIMARY, "messages": [{"role": "user", "content": f"question {i}"}], "max_tokens": 4}
    if not stream:
        r = httpx.post(f"{router.base_url}/v1/chat/completions", json=body, timeout=60)
        return r.status_code, r.json().get("model", ""), r.headers.get("x-seekd-backend", "")
    with httpx.stream("POST", f"{router.base_url}/v1/chat/completions", json={**body, "stream": True}, timeout=60) as r:
        text = r.read().decode()
    first = next(line for line in text.splitlines() if line.startswith("data: {"))
    assert text.rstrip().endswith("data: [DONE]") and '"error"' not in text, text
    return r.status_code, json.loads(first[6:])["model"], r.headers.get("x-seekd-backend", "")


def test_a_failing_backend_opens_its_breaker_and_the_route_then_falls_back(setup) -> None:
    router, a, b = setup
    assert {ask(router, i)[2] for i in range(8)} == {"a", "b"}

    a.fail_status = 500
    answers = [ask(router, i) for i in range(12)]
    assert all(status == 200 and model == PRIMARY and backend == "b" for status, model, backend in answers), answers
    assert router.backend("a")["breaker"] == "open"
    sent_to_a = a.requests
    assert all(ask(router, i)[2] == "b" for i in range(5))
    assert a.requests == sent_to_a, "an open breaker let requests through"

    b.fail_status = 503
    for stream in (False, True, False, True):
        status, model, backend = ask(router, 100, stream)
        assert (status, model, backend) == (200, FALLBACK, "distill")
    assert router.backend("b")["breaker"] in ("open", "half_open")  # half-open once open_s has passed

    a.fail_status = b.fail_status = None
    time.sleep(3.1)  # open_s: the next requests are the half-open probes, and they succeed
    assert {ask(router, i)[1] for i in range(6)} == {PRIMARY}
    assert router.backend("a")["breaker"] == router.backend("b")["breaker"] == "closed"
    metrics = httpx.get(f"{router.base_url}/metrics").text
    assert f'seekd:router_fallbacks_total{{model="{FALLBACK}",route="{PRIMARY}"}} 4.0' in metrics


def test_a_429_is_rerouted_before_the_client_sees_it(setup) -> None:
    router, a, _ = setup
    a.fail_status = 429
    try:
        answers = [ask(router, i) for i in range(6)]
    finally:
        a.fail_status = None
    assert all(status == 200 and backend == "b" for status, _, backend in answers), answers
    assert router.backend("a")["breaker"] == "closed"  # a full queue is no fault
