"""API keys on a real `seekd serve`: every route of the app (listed from the app itself, so a new
route cannot be forgotten) refuses missing, wrong and revoked keys; roles guard /admin and /metrics;
model allow-lists, per-key limits and the key's tenant hold; the prefix cache is isolated per
tenant; and every call lands in a verifiable audit chain."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import httpx
import openai
import pytest
from starlette.routing import Route

from seekd.config import load_config
from seekd.ops.audit import verify
from seekd.ops.keys import KeyStore
from seekd.server.app import create_app

from .conftest import ServerHandle, running_server

pytestmark = pytest.mark.slow

DEMO = "seekd-demo-random"


@pytest.fixture(scope="module")
def keys(tmp_path_factory) -> dict:
    data_dir = tmp_path_factory.mktemp("auth-data")
    store = KeyStore.in_data_dir(data_dir)
    made = {
        name: store.create(tenant, role, models, rpm=rpm)[0]
        for name, (tenant, role, models, rpm) in {
            "admin": ("ops", "admin", (), 0),
            "alice": ("tenant-a", "user", (), 0),
            "alice2": ("tenant-a", "user", (), 0),
            "bob": ("tenant-b", "user", (), 0),
            "metrics": ("ops", "metrics", (), 0),
            "other_model": ("tenant-a", "user", ("some-other-model",), 0),
            "demo_only": ("tenant-a", "user", (DEMO,), 0),
            "slow": ("tenant-c", "user", (), 2),
            "revoked": ("tenant-a", "user", (), 0),
        }.items()
    }
    return {"data_dir": data_dir, **made}


@pytest.fixture(scope="module")
def server(keys: dict, tmp_path_factory) -> ServerHandle:
    log_path = tmp_path_factory.mktemp("auth-log") / "server.log"
    with running_server(keys["data_dir"], log_path, client_options={"headers": bearer(keys["admin"])}) as handle:
        yield handle


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def flat_routes(routes: list, prefix: str = "") -> list[tuple[str, Route]]:
    """Newer FastAPI keeps included routers as one entry each; walk into them."""
    out: list[tuple[str, Route]] = []
    for route in routes:
        if isinstance(route, Route):
            out.append((prefix, route))
        elif hasattr(route, "original_router"):
            out += flat_routes(route.original_router.routes, prefix + route.include_context.prefix)
        else:
            raise AssertionError(f"unexpected route type {type(route)}: decide how it is protected")
    return out


def app_routes() -> list[tuple[str, str]]:
    """(method, path) of every route the app registers, path parameters filled in."""
    app = create_app(load_config(environ={}))
    out = []
    for prefix, route in flat_routes(app.routes):
        path = prefix + route.path
        for name in route.param_convertors:
            path = path.replace("{" + name + "}", "abc")
        out += [(method, path) for method in sorted(route.methods or ()) if method != "HEAD"]
    return out


def call(
    server: ServerHandle, method: str, path: str, key: str | None = None, headers: dict | None = None, **kw
) -> httpx.Response:
    headers = {**(headers or {}), **(bearer(key) if key is not None else {})}
    return httpx.request(method, server.base_url + path, headers=headers, timeout=30.0, **kw)


def test_route_list_covers_the_api() -> None:
    routes = app_routes()
    for expected in [
        ("POST", "/v1/chat/completions"),
        ("POST", "/v1/completions"),
        ("GET", "/v1/models"),
        ("GET", "/metrics"),
        ("GET", "/admin/keys"),
        ("POST", "/admin/keys"),
        ("DELETE", "/admin/keys/abc"),
        ("GET", "/openapi.json"),
        ("GET", "/ready"),
        ("GET", "/admin/tenants"),
        ("GET", "/admin/audit"),
        ("PATCH", "/admin/keys/abc"),
        ("GET", "/ui"),
    ]:
        assert expected in routes


def test_every_route_refuses_missing_wrong_and_revoked_keys(server: ServerHandle, keys: dict) -> None:
    KeyStore.in_data_dir(keys["data_dir"]).revoke(keys["revoked"].split("_")[0][len("sk-seekd-") :])
    wrong = keys["alice"][:-2] + ("xx" if not keys["alice"].endswith("xx") else "yy")
    for method, path in app_routes():
        if path == "/health":
            assert call(server, method, path).status_code == 200
            continue
        if path.startswith("/ui"):  # the web page's static files: public, nothing secret in them
            assert call(server, method, path).status_code in (307, 404)
            continue
        bad_keys = (wrong, keys["revoked"], "sk-seekd-nonsense", keys["alice"].split("_")[0])
        if path == "/ready":  # a probe without a key gets the status alone; a bad key is still refused
            assert call(server, method, path).json() == {"status": "ready"}
            assert set(call(server, method, path, keys["alice"]).json()) > {"status", "engine", "admission"}
        else:
            bad_keys = (None, *bad_keys)
        for key in bad_keys:
            response = call(server, method, path, key)
            assert response.status_code == 401, (method, path, key, response.text)
            assert response.json()["error"]["type"] == "authentication_error"
            assert response.headers["www-authenticate"] == "Bearer"


def test_roles_guard_admin_and_metrics(server: ServerHandle, keys: dict) -> None:
    admin_routes = [(m, p) for m, p in app_routes() if p.startswith("/admin")]
    assert admin_routes
    for method, path in admin_routes:
        for name in ("alice", "metrics"):
            response = call(server, method, path, keys[name])
            assert response.status_code == 403, (method, path, name)
            assert response.json()["error"]["code"] == "insufficient_permissions"
    assert call(server, "GET", "/metrics", keys["alice"]).status_code == 403
    assert call(server, "GET", "/metrics", keys["metrics"]).status_code == 200
    assert call(server, "GET", "/metrics", keys["admin"]).status_code == 200
    assert call(server, "GET", "/v1/models", keys["metrics"]).status_code == 403  # a scraper cannot generate
    scrape = call(server, "GET", "/metrics", keys["admin"]).text
    assert "seekd:request_rejected_total{" in scrape and 'reason="auth"' in scrape


def test_seekd_top_reads_metrics_with_a_metrics_key(server: ServerHandle, keys: dict) -> None:
    def top(*extra: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "seekd.cli", "top", "--url", server.base_url, "--once", "--interval", "0.1", *extra],
            capture_output=True,
            text=True,
            timeout=60,
        )

    assert top("--api-key", keys["metrics"]).returncode == 0
    refused = top()
    assert refused.returncode == 2 and "401" in refused.stderr


def test_admin_creates_uses_and_revokes_a_key_over_http(server: ServerHandle, keys: dict) -> None:
    created = call(server, "POST", "/admin/keys", keys["admin"], json={"tenant": "tenant-d", "rpm": 100})
    assert created.status_code == 200, created.text
    new_key, new_id = created.json()["key"], created.json()["id"]
    assert call(server, "GET", "/v1/models", new_key).status_code == 200
    listed = call(server, "GET", "/admin/keys", keys["admin"]).json()["data"]
    assert any(k["id"] == new_id and k["tenant"] == "tenant-d" for k in listed)
    assert all("key" not in k and "hash" not in k for k in listed)
    assert call(server, "DELETE", f"/admin/keys/{new_id}", keys["admin"]).json()["revoked"] is not None
    assert call(server, "GET", "/v1/models", new_key).status_code == 401
    assert call(server, "DELETE", f"/admin/keys/{new_id}", keys["admin"]).status_code == 404
    bad = call(server, "POST", "/admin/keys", keys["admin"], json={"tenant": "t", "role": "root"})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "role"


def test_admin_changes_limits_lists_tenants_and_revokes_a_tenant(server: ServerHandle, keys: dict) -> None:
    made = [call(server, "POST", "/admin/keys", keys["admin"], json={"tenant": "tenant-e"}).json() for _ in range(2)]
    changed = call(server, "PATCH", f"/admin/keys/{made[0]['id']}", keys["admin"], json={"rpm": 7, "models": [DEMO]})
    assert changed.status_code == 200 and (changed.json()["rpm"], changed.json()["models"]) == (7, [DEMO])
    assert changed.json()["tpm"] == 0  # left out: kept
    assert (
        call(server, "POST", "/v1/completions", made[0]["key"], json={"model": "x", "prompt": "a"}).status_code == 404
    )
    refused = call(server, "PATCH", f"/admin/keys/{made[0]['id']}", keys["admin"], json={"rpm": -1})
    assert refused.status_code == 400
    tenants = call(server, "GET", "/admin/tenants", keys["admin"]).json()
    (row,) = [t for t in tenants["data"] if t["tenant"] == "tenant-e"]
    assert (row["keys"], row["active_keys"], row["weight"]) == (2, 2, 1.0)
    revoked = call(server, "DELETE", "/admin/tenants/tenant-e", keys["admin"]).json()
    assert sorted(revoked["revoked_keys"]) == sorted(k["id"] for k in made)
    assert all(call(server, "GET", "/v1/models", k["key"]).status_code == 401 for k in made)
    assert call(server, "DELETE", "/admin/tenants/tenant-e", keys["admin"]).status_code == 404
    assert call(server, "PATCH", f"/admin/keys/{made[1]['id']}", keys["admin"], json={"rpm": 1}).status_code == 404


def test_admin_audit_view_verifies_the_chain_and_names_the_break(server: ServerHandle, keys: dict) -> None:
    view = call(server, "GET", "/admin/audit?limit=3", keys["admin"]).json()
    assert view["enabled"] and view["verified"] and view["num_records"] > 0
    assert len(view["data"]) == 3 and view["data"][0]["seq"] > view["data"][1]["seq"]  # newest first
    assert call(server, "GET", "/admin/audit?limit=0", keys["admin"]).status_code == 400
    path = keys["data_dir"] / "audit.jsonl"
    lines = path.read_text().splitlines()
    first = json.loads(lines[0])
    tampered = json.dumps({**first, "status": 999}, sort_keys=True, separators=(",", ":"))
    path.write_text("\n".join([tampered, *lines[1:]]) + "\n")
    try:
        broken = call(server, "GET", "/admin/audit", keys["admin"]).json()
        assert not broken["verified"] and broken["bad_line"] == 1 and "edited" in broken["reason"]
    finally:
        current = path.read_text().splitlines()
        path.write_text("\n".join([lines[0], *current[1:]]) + "\n")
    assert call(server, "GET", "/admin/audit", keys["admin"]).json()["verified"]


def test_web_page_files_need_no_key_and_nothing_outside_them_is_served(server: ServerHandle) -> None:
    root = httpx.get(server.base_url + "/ui", timeout=10)
    assert root.status_code == 307 and root.headers["location"] == "/ui/"
    page = httpx.get(server.base_url + "/ui/", timeout=10)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "default-src 'none'" in page.headers["content-security-policy"]
    assert "connect-src 'self'" in page.headers["content-security-policy"]
    script = httpx.get(server.base_url + "/ui/js/main.js", timeout=10)
    assert script.status_code == 200 and script.headers["content-type"].startswith("text/javascript")
    for path in (
        "/ui/%2e%2e/routes.py",
        "/ui/%2e%2e/%2e%2e/app.py",
        "/ui/vendor/README.md",
        "/ui/nothing.js",
        "/ui/js",
    ):
        response = httpx.get(server.base_url + path, timeout=10)
        assert response.status_code == 404, (path, response.status_code)


def test_cli_revocation_takes_effect_on_the_running_server(server: ServerHandle, keys: dict) -> None:
    assert call(server, "GET", "/v1/models", keys["alice2"]).status_code == 200
    key_id = keys["alice2"].split("_")[0][len("sk-seekd-") :]
    proc = subprocess.run(
        [sys.executable, "-m", "seekd.cli", "keys", "revoke", key_id, "--data-dir", str(keys["data_dir"])],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert call(server, "GET", "/v1/models", keys["alice2"]).status_code == 401


def test_model_allow_list_holds(server: ServerHandle, keys: dict) -> None:
    body = {"model": DEMO, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    refused = call(server, "POST", "/v1/chat/completions", keys["other_model"], json=body)
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "model_not_allowed"
    assert call(server, "POST", "/v1/completions", keys["other_model"], json={"prompt": "x"}).status_code == 403
    assert call(server, "GET", "/v1/models", keys["other_model"]).json()["data"] == []
    allowed = openai.OpenAI(base_url=server.api_url, api_key=keys["demo_only"])
    assert [m.id for m in allowed.models.list().data] == [DEMO]
    reply = allowed.chat.completions.create(model=DEMO, messages=[{"role": "user", "content": "hi"}], max_tokens=2)
    assert reply.usage.completion_tokens == 2
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=server.api_url, api_key="sk-seekd-wrong").models.list()


def test_tenant_comes_from_the_key_not_the_header(server: ServerHandle, keys: dict) -> None:
    response = call(server, "GET", "/v1/queue", keys["alice"], headers={"X-Seekd-Tenant": "tenant-b"})
    assert response.json()["tenant"] == "tenant-a"


def test_per_key_rate_limit(server: ServerHandle, keys: dict) -> None:
    statuses = [
        call(server, "POST", "/v1/completions", keys["slow"], json={"prompt": "x", "max_tokens": 1}).status_code
        for _ in range(3)
    ]
    assert statuses == [200, 200, 429]
    refused = call(server, "POST", "/v1/completions", keys["slow"], json={"prompt": "x", "max_tokens": 1})
    assert "API key" in refused.json()["error"]["message"] and int(refused.headers["retry-after"]) >= 1
    other = call(server, "POST", "/v1/completions", keys["bob"], json={"prompt": "x", "max_tokens": 1})
    assert other.status_code == 200


def cached_tokens(server: ServerHandle, key: str, prompt: list[int], **extra) -> int:
    response = call(
        server, "POST", "/v1/completions", key, json={"prompt": prompt, "max_tokens": 2, "temperature": 0, **extra}
    )
    assert response.status_code == 200, response.text
    return response.json()["usage"]["prompt_tokens_details"]["cached_tokens"]


def test_prefix_cache_is_isolated_per_tenant(server: ServerHandle, keys: dict) -> None:
    prompt = [100 + (i * 7) % 900 for i in range(600)]  # two full 256-token blocks of the V4 demo's compressed caches
    assert cached_tokens(server, keys["alice"], prompt) == 0
    assert cached_tokens(server, keys["alice"], prompt) > 0  # the same tenant hits its own blocks
    assert cached_tokens(server, keys["demo_only"], prompt) > 0  # another key of the same tenant too
    assert cached_tokens(server, keys["bob"], prompt) == 0  # tenant B gets nothing from A's request
    assert cached_tokens(server, keys["bob"], prompt, cache_salt="") == 0
    assert cached_tokens(server, keys["bob"], prompt) > 0  # B's own repeat hits B's blocks
    # a request's cache_salt narrows within the tenant and never reaches into another tenant
    assert cached_tokens(server, keys["alice"], prompt, cache_salt="project-x") == 0
    assert cached_tokens(server, keys["alice"], prompt, cache_salt="project-x") > 0
    assert cached_tokens(server, keys["bob"], prompt, cache_salt="project-x") == 0


def test_audit_chain_records_calls_and_refusals(server: ServerHandle, keys: dict) -> None:
    """Self-contained: counts only the records of its own calls (by request id), whatever other
    tests wrote before it."""
    path = keys["data_dir"] / "audit.jsonl"
    before = verify(path).num_records if path.exists() else 0
    body = {"prompt": "audit me", "max_tokens": 3, "ignore_eos": True}
    calls = {
        "audit-refused": call(server, "GET", "/v1/models", headers={"X-Request-Id": "audit-refused"}),
        "audit-wrong-key": call(server, "GET", "/v1/models", "sk-seekd-nope_nope", {"X-Request-Id": "audit-wrong-key"}),
        "audit-models": call(server, "GET", "/v1/models", keys["alice"], {"X-Request-Id": "audit-models"}),
        "audit-done": call(server, "POST", "/v1/completions", keys["bob"], {"X-Request-Id": "audit-done"}, json=body),
    }
    assert [r.status_code for r in calls.values()] == [401, 401, 200, 200]
    result = verify(path)
    assert result.ok and result.num_records >= before + len(calls), result
    records = {r["request_id"]: r for r in map(json.loads, path.read_text().splitlines())}
    assert records["audit-refused"]["status"] == 401 and records["audit-refused"]["key_id"] is None
    assert records["audit-refused"]["route"] == "/v1/models"
    assert records["audit-wrong-key"]["status"] == 401
    assert records["audit-models"]["status"] == 200 and records["audit-models"]["tenant"] == "tenant-a"
    done = records["audit-done"]
    assert done["route"] == "/v1/completions" and done["completion_tokens"] == 3
    assert done["tenant"] == "tenant-b" and done["model"] == DEMO
    assert done["key_id"] == keys["bob"].split("_")[0][len("sk-seekd-") :]
    assert "audit me" not in path.read_text()  # prompts are not stored by default


def test_without_keys_a_public_bind_is_refused_at_start(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "seekd.cli", "serve", "--host", "0.0.0.0", "--data-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert "refusing to listen on 0.0.0.0 without API keys" in proc.stderr
