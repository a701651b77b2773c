"""Cloud spill-over: only requests the policy marks non-sensitive (a listed tenant, or the request's
own header) leave, only when local capacity is exhausted, and each one is in a verifiable audit log."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import httpx

from seekd.ops.audit import verify

from .conftest import running_router
from .fake_backend import FakeBackend

MODEL = "m"
KEYS = {"KEY_PUBLIC": "sk-public", "KEY_PRIVATE": "sk-private"}


def ask(base_url: str, key: str, **headers: str) -> httpx.Response:
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hello"}]}
    return httpx.post(
        f"{base_url}/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {key}", **headers}, timeout=30
    )


def test_spill_over_policy_capacity_and_audit(tmp_path: Path) -> None:
    local, cloud = FakeBackend("local", MODEL), FakeBackend("cloud", "cloud-model")
    audit_path = tmp_path / "spill-audit.jsonl"
    with local.running(), cloud.running():
        config = {
            "backends": [{"name": "local", "url": local.url, "models": [MODEL], "max_outstanding": 1}],
            "health": {"interval_s": 0.1},
            "spill": {
                "url": cloud.url,
                "model": "cloud-model",
                "tenants": ["public-team"],
                "allow_header": True,
                "audit_log": str(audit_path),
            },
            "keys": [
                {"key_env": "KEY_PUBLIC", "tenant": "public-team"},
                {"key_env": "KEY_PRIVATE", "tenant": "private"},
            ],
        }
        with running_router(config, tmp_path, env=KEYS) as router:
            assert ask(router.base_url, KEYS["KEY_PUBLIC"]).headers["x-seekd-backend"] == "local"

            local.delay_s = 1.5  # one request in flight saturates the only replica
            holder = threading.Thread(target=ask, args=(router.base_url, KEYS["KEY_PRIVATE"]))
            holder.start()
            deadline = time.monotonic() + 10
            while local.in_flight < 1:
                assert time.monotonic() < deadline
                time.sleep(0.01)
            spilled = ask(router.base_url, KEYS["KEY_PUBLIC"])
            assert spilled.status_code == 200 and spilled.json()["model"] == "cloud-model"
            assert spilled.headers["x-seekd-backend"] == "spill-over"
            kept = ask(router.base_url, KEYS["KEY_PRIVATE"])  # sensitive: waits for the local replica
            assert kept.status_code == 200 and kept.headers["x-seekd-backend"] == "local"
            holder.join()
            local.delay_s = 0.0

            local.ready = False
            deadline = time.monotonic() + 10
            while router.backend("local")["healthy"]:
                assert time.monotonic() < deadline
                time.sleep(0.05)
            refused = ask(router.base_url, KEYS["KEY_PRIVATE"])
            assert refused.status_code == 503 and refused.json()["error"]["code"] == "no_backend_available"
            marked = ask(router.base_url, KEYS["KEY_PRIVATE"], **{"X-Seekd-Data-Class": "non-sensitive"})
            assert marked.status_code == 200 and marked.json()["model"] == "cloud-model"
            assert cloud.requests == 2
            metrics = httpx.get(f"{router.base_url}/metrics").text
            assert f'seekd:router_spillovers_total{{route="{MODEL}"}} 2.0' in metrics

    records = [json.loads(line) for line in audit_path.read_text().splitlines()]
    assert [(r["tenant"], r["allowed_by"], r["endpoint"]) for r in records] == [
        ("public-team", "tenant", cloud.url),
        ("private", "header", cloud.url),
    ]
    assert all(r["event"] == "spill_over" and r["request_id"] for r in records)
    assert verify(audit_path).ok
