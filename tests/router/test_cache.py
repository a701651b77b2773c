"""The response cache over a real `redis-server`: a repeated deterministic request is served from
the router's memory, then from Redis after the router restarts; tenants never share entries; a
cached stream replays as SSE; sampled requests are not cached unless they opt in; a new model
version misses what the old one cached."""

from __future__ import annotations

from pathlib import Path

import httpx

from .conftest import RedisHandle, running_router
from .fake_backend import FakeBackend

MODEL = "m"
KEYS = {"ROUTER_KEY_A": "sk-tenant-a", "ROUTER_KEY_B": "sk-tenant-b"}


def config(backend: FakeBackend, redis: RedisHandle) -> dict:
    return {
        "backends": [{"name": "only", "url": backend.url, "models": [MODEL]}],
        "cache": {"enabled": True, "redis_url": redis.url, "ttl_s": 600},
        "keys": [{"key_env": "ROUTER_KEY_A", "tenant": "a"}, {"key_env": "ROUTER_KEY_B", "tenant": "b"}],
    }


def ask(base_url: str, key: str, content: str = "what is 2+2?", **extra) -> httpx.Response:
    body = {"model": MODEL, "messages": [{"role": "user", "content": content}], "temperature": 0, **extra}
    return httpx.post(
        f"{base_url}/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {key}"}, timeout=30
    )


def test_l1_then_redis_after_a_restart_and_tenants_apart(tmp_path: Path, redis_server: RedisHandle) -> None:
    backend = FakeBackend("only", MODEL)
    with backend.running():
        with running_router(config(backend, redis_server), tmp_path, env=KEYS) as router:
            first = ask(router.base_url, KEYS["ROUTER_KEY_A"])
            assert first.status_code == 200 and "x-seekd-cache" not in first.headers
            again = ask(router.base_url, KEYS["ROUTER_KEY_A"])
            assert again.headers["x-seekd-cache"] == "hit-l1" and again.json() == first.json()
            assert backend.requests == 1
            other = ask(router.base_url, KEYS["ROUTER_KEY_B"])
            assert "x-seekd-cache" not in other.headers and backend.requests == 2
            assert ask(router.base_url, "sk-nobody").status_code == 401
            port = int(router.base_url.rsplit(":", 1)[1])
        with running_router(config(backend, redis_server), tmp_path, env=KEYS, port=port) as router:
            from_redis = ask(router.base_url, KEYS["ROUTER_KEY_A"])
            assert from_redis.headers["x-seekd-cache"] == "hit-redis" and from_redis.json() == first.json()
            assert ask(router.base_url, KEYS["ROUTER_KEY_A"]).headers["x-seekd-cache"] == "hit-l1"
            assert ask(router.base_url, KEYS["ROUTER_KEY_B"]).headers["x-seekd-cache"] == "hit-redis"
            assert backend.requests == 2
            metrics = httpx.get(f"{router.base_url}/metrics").text
            assert 'seekd:router_cache_hits_total{level="redis"} 2.0' in metrics
            assert 'seekd:router_cache_hits_total{level="l1"} 1.0' in metrics


def test_a_cached_stream_replays_as_sse(tmp_path: Path, redis_server: RedisHandle) -> None:
    backend = FakeBackend("only", MODEL)
    key = KEYS["ROUTER_KEY_A"]
    body = {"model": MODEL, "messages": [{"role": "user", "content": "tell"}], "temperature": 0, "stream": True}
    body["max_tokens"] = 5
    with backend.running(), running_router(config(backend, redis_server), tmp_path, env=KEYS) as router:
        streams = []
        for _ in range(2):
            with httpx.stream(
                "POST", f"{router.base_url}/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {key}"}
            ) as r:
                assert r.headers["content-type"].startswith("text/event-stream")
                streams.append(([line for line in r.iter_lines() if line], r.headers.get("x-seekd-cache")))
        (live, live_cache), (replayed, replay_cache) = streams
        assert live_cache is None and replay_cache == "hit-l1"
        assert replayed == live and live[-1] == "data: [DONE]" and len(live) == 7
        assert backend.requests == 1


def test_only_deterministic_or_opted_in_requests_are_cached(tmp_path: Path, redis_server: RedisHandle) -> None:
    backend = FakeBackend("only", MODEL)
    key = KEYS["ROUTER_KEY_A"]
    with backend.running(), running_router(config(backend, redis_server), tmp_path, env=KEYS) as router:
        for _ in range(2):
            assert "x-seekd-cache" not in ask(router.base_url, key, "sampled", temperature=0.7).headers
        assert backend.requests == 2
        ask(router.base_url, key, "seeded", temperature=0.7, seed=3)
        assert ask(router.base_url, key, "seeded", temperature=0.7, seed=3).headers["x-seekd-cache"] == "hit-l1"
        headers = {"Authorization": f"Bearer {key}", "X-Seekd-Cache": "allow"}
        opt_in = {"model": MODEL, "messages": [{"role": "user", "content": "opt"}], "temperature": 1.0}
        for _ in range(2):
            r = httpx.post(f"{router.base_url}/v1/chat/completions", json=opt_in, headers=headers)
        assert r.headers["x-seekd-cache"] == "hit-l1" and backend.requests == 4

        ask(router.base_url, key, "versioned")
        assert ask(router.base_url, key, "versioned").headers["x-seekd-cache"] == "hit-l1"
        new_version = {"targets": [{"model": MODEL, "version": "v2"}]}
        r = router.admin("PUT", f"/routes/{MODEL}/targets", json=new_version)
        assert r.status_code == 200 and r.json()["cache_entries_dropped"] >= 3
        assert "x-seekd-cache" not in ask(router.base_url, key, "versioned").headers
        assert ask(router.base_url, key, "versioned").headers["x-seekd-cache"] == "hit-l1"
