"""/openapi.json describes the API that runs: on a live `seekd serve`, every status each operation
declares is made to happen, each response body validates against the schema declared for it, and
the statuses seen are exactly the ones declared — no 422 (seekd answers validation errors with
400), every error an OpenAI error object (the probes' 503s are their own status bodies)."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import httpx
import jsonschema
import pytest

from .conftest import MAX_REQUEST_BODY_BYTES, ServerHandle, running_server

pytestmark = pytest.mark.slow

MODEL = "seekd-demo-random"
ERROR_REF = "#/components/schemas/ErrorResponse"
PROBE_REF = "#/components/schemas/ProbeStatus"
PROBES = {("get", "/health"), ("get", "/ready")}
LORA = "/admin/lora-adapters"
# loading and unloading an adapter needs a model that serves LoRA (the demo's V4 does not):
# tests/server/test_lora_server.py makes these happen on a tiny Qwen2
NEEDS_LORA_MODEL = {("post", LORA, "200"), ("delete", LORA + "/{name}", "200")}
CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
COMPLETION = {"model": MODEL, "prompt": "hi", "max_tokens": 2}
GENERATE = {"/v1/chat/completions": CHAT, "/v1/completions": COMPLETION}


class Walk:
    """Calls the server, checks each answer against the schema and records (method, route, status)."""

    def __init__(self, server: ServerHandle, doc: dict) -> None:
        self.base = server.base_url
        self.doc = doc
        self.seen: set[tuple[str, str, str]] = set()

    def __call__(
        self, method: str, route: str, status: int, *, path: str | None = None, key: str | None = None, **kw
    ) -> httpx.Response:
        headers = {**({"Authorization": f"Bearer {key}"} if key else {}), **kw.pop("headers", {})}
        response = httpx.request(method, self.base + (path or route), headers=headers, timeout=60, **kw)
        assert response.status_code == status, f"{method} {route}: {response.status_code} {response.text[:300]}"
        self.seen.add((method.lower(), route, str(status)))
        declared = self.doc["paths"].get(route, {}).get(method.lower(), {}).get("responses", {}).get(str(status))
        schema = (declared or {}).get("content", {}).get("application/json", {}).get("schema")
        if schema is not None and response.headers["content-type"].startswith("application/json"):
            jsonschema.validate(response.json(), {**schema, "components": self.doc["components"]})
        return response


def declared_statuses(doc: dict) -> set[tuple[str, str, str]]:
    return {
        (method, route, status)
        for route, operations in doc["paths"].items()
        for method, operation in operations.items()
        for status in operation["responses"]
    }


def test_every_declared_status_happens_and_nothing_else(tmp_path: Path) -> None:
    flags = ("--engine-max-restarts", "0")
    with running_server(tmp_path / "data", tmp_path / "server.log", *flags) as server:
        doc = httpx.get(f"{server.base_url}/openapi.json", timeout=10).json()
        check_declarations(doc)
        walk = Walk(server, doc)
        for route in ("/v1/queue", "/v1/knowledge_bases"):  # without keys a header names the tenant
            walk("GET", route, 400, headers={"x-seekd-tenant": "t" * 65})
        admin = walk("POST", "/admin/keys", 200, json={"tenant": "admin", "role": "admin"}).json()["key"]
        keys = {  # the first key turned authentication on
            name: walk("POST", "/admin/keys", 200, json={"tenant": name, **extra}, key=admin).json()
            for name, extra in {
                "user": {},
                "metrics": {"role": "metrics"},
                "elsewhere": {"models": ["another-model"]},
                "limited": {"rpm": 1},
                "spare": {},
                "leaving/tenant": {},
            }.items()
        }
        secret = {"admin": admin, **{name: key["key"] for name, key in keys.items()}}
        walk_keyed_routes(walk, secret, keys["spare"]["id"])
        walk_generation(walk, secret)
        walk_knowledge_bases(walk, secret)
        walk_lora_adapters(walk, secret)
        kill_engine(server, secret["admin"])
        walk_engine_gone(walk, secret["admin"])
    assert walk.seen == declared_statuses(doc) - NEEDS_LORA_MODEL


def check_declarations(doc: dict) -> None:
    assert '"422"' not in json.dumps(doc) and "HTTPValidationError" not in doc["components"]["schemas"]
    for route, operations in doc["paths"].items():
        for method, operation in operations.items():
            assert "200" in operation["responses"], (method, route)
            for status, response in operation["responses"].items():
                if int(status) >= 400:
                    ref = response["content"]["application/json"]["schema"]["$ref"]
                    probe = (method, route) in PROBES and status == "503"
                    assert ref == (PROBE_REF if probe else ERROR_REF), (method, route, status)


def walk_keyed_routes(walk: Walk, key: dict[str, str], spare_id: str) -> None:
    walk("GET", "/health", 200)
    for method, route, path in [
        ("GET", "/ready", None),
        ("GET", "/v1/queue", None),
        ("GET", "/v1/models", None),
        ("GET", "/v1/models/{model_id}", f"/v1/models/{MODEL}"),
        ("GET", "/admin/keys", None),
        ("DELETE", "/admin/keys/{key_id}", "/admin/keys/nope"),
        ("PATCH", "/admin/keys/{key_id}", "/admin/keys/nope"),
        ("GET", "/admin/tenants", None),
        ("DELETE", "/admin/tenants/{tenant}", "/admin/tenants/nope"),
        ("GET", "/admin/audit", None),
    ]:
        walk(method, route, 401, path=path, key="sk-seekd-wrong")
        forbidden = key["user"] if route.startswith("/admin") else key["metrics"]
        walk(method, route, 403, path=path, key=forbidden)
    walk("GET", "/ready", 200, key=key["admin"])
    walk("GET", "/v1/queue", 200, key=key["user"])
    walk("GET", "/v1/models", 200, key=key["user"])
    walk("GET", "/v1/models/{model_id}", 200, path=f"/v1/models/{MODEL}", key=key["user"])
    walk("GET", "/v1/models/{model_id}", 404, path="/v1/models/nope", key=key["user"])
    walk("GET", "/admin/keys", 200, key=key["admin"])
    walk("POST", "/admin/keys", 400, json={"tenant": ""}, key=key["admin"])
    walk("POST", "/admin/keys", 401, json={"tenant": "x"})
    walk("POST", "/admin/keys", 403, json={"tenant": "x"}, key=key["user"])
    walk("POST", "/admin/keys", 413, content=b"x" * (MAX_REQUEST_BODY_BYTES + 1), key=key["admin"])
    walk("DELETE", "/admin/keys/{key_id}", 404, path="/admin/keys/nope", key=key["admin"])
    walk("PATCH", "/admin/keys/{key_id}", 200, path=f"/admin/keys/{spare_id}", json={"rpm": 5}, key=key["admin"])
    walk("PATCH", "/admin/keys/{key_id}", 400, path=f"/admin/keys/{spare_id}", json={"rpm": -1}, key=key["admin"])
    walk("PATCH", "/admin/keys/{key_id}", 404, path="/admin/keys/nope", json={}, key=key["admin"])
    big = b"x" * (MAX_REQUEST_BODY_BYTES + 1)
    walk("PATCH", "/admin/keys/{key_id}", 413, path=f"/admin/keys/{spare_id}", content=big, key=key["admin"])
    walk("GET", "/admin/tenants", 200, key=key["admin"])
    walk("DELETE", "/admin/tenants/{tenant}", 200, path="/admin/tenants/leaving%2Ftenant", key=key["admin"])
    walk("DELETE", "/admin/tenants/{tenant}", 404, path="/admin/tenants/leaving%2Ftenant", key=key["admin"])
    walk("GET", "/admin/audit", 200, key=key["admin"])
    walk("GET", "/admin/audit", 400, path="/admin/audit?limit=0", key=key["admin"])
    walk("DELETE", "/admin/keys/{key_id}", 200, path=f"/admin/keys/{spare_id}", key=key["admin"])


def walk_generation(walk: Walk, key: dict[str, str]) -> None:
    walk("GET", "/v1/models/{model_id}", 403, path=f"/v1/models/{MODEL}", key=key["elsewhere"])
    walk("POST", "/v1/completions", 200, json=COMPLETION, key=key["limited"])  # its one request this minute
    for route, body in GENERATE.items():
        walk("POST", route, 200, json=body, key=key["user"])
        walk("POST", route, 400, json={**body, "n": 0}, key=key["user"])
        walk("POST", route, 401, json=body)
        walk("POST", route, 403, json=body, key=key["elsewhere"])
        walk("POST", route, 404, json={**body, "model": "nope"}, key=key["user"])
        late = {**body, "max_tokens": 2000, "ignore_eos": True, "timeout": 0.05}
        walk("POST", route, 408, json=late, key=key["user"])
        walk("POST", route, 413, content=b"x" * (MAX_REQUEST_BODY_BYTES + 1), key=key["user"])
        walk("POST", route, 429, json=body, key=key["limited"])


KB = "/v1/knowledge_bases"
KB_ROUTES = [  # (method, route, a path of it for a knowledge base that does not exist, a body)
    ("POST", "/v1/embeddings", None, {"input": "hi"}),
    ("GET", KB, None, None),
    ("POST", KB, None, {"name": "kb"}),
    ("DELETE", KB + "/{name}", KB + "/nope", None),
    ("GET", KB + "/{name}/documents", KB + "/nope/documents", None),
    ("POST", KB + "/{name}/documents", KB + "/nope/documents", {"name": "a.txt", "text": "hi"}),
    ("DELETE", KB + "/{name}/documents/{document}", KB + "/nope/documents/a.txt", None),
    ("POST", KB + "/{name}/search", KB + "/nope/search", {"query": "hi"}),
]


def walk_knowledge_bases(walk: Walk, key: dict[str, str]) -> None:
    user = key["user"]
    for method, route, missing, body in KB_ROUTES:
        walk(method, route, 401, path=missing, json=body)
        walk(method, route, 403, path=missing, json=body, key=key["metrics"])
        if body is not None:
            walk(method, route, 413, path=missing, content=b"x" * (MAX_REQUEST_BODY_BYTES + 1), key=user)
        if missing is not None:
            walk(method, route, 404, path=missing, json=body, key=user)
            walk(method, route, 400, path=missing.replace("nope", "-bad"), json=body, key=user)
    walk("POST", "/v1/embeddings", 200, json={"input": ["hi", "你好"], "model": "use-multilingual-v3"}, key=user)
    walk("POST", "/v1/embeddings", 400, json={"input": [[1, 2]]}, key=user)
    walk("POST", "/v1/embeddings", 404, json={"input": "hi", "model": "nope"}, key=user)
    walk("POST", KB, 200, json={"name": "kb"}, key=user)
    walk("POST", KB, 409, json={"name": "kb"}, key=user)
    walk("POST", KB, 400, json={"name": "../kb"}, key=user)
    walk("GET", KB, 200, key=user)
    walk(
        "POST", KB + "/{name}/documents", 200, path=KB + "/kb/documents", json={"name": "a.txt", "text": "hi"}, key=user
    )
    walk(
        "POST", KB + "/{name}/documents", 415, path=KB + "/kb/documents", json={"name": "a.exe", "text": "MZ"}, key=user
    )
    walk("GET", KB + "/{name}/documents", 200, path=KB + "/kb/documents", key=user)
    walk("POST", KB + "/{name}/search", 200, path=KB + "/kb/search", json={"query": "hi"}, key=user)
    walk("DELETE", KB + "/{name}/documents/{document}", 200, path=KB + "/kb/documents/a.txt", key=user)
    walk("DELETE", KB + "/{name}", 200, path=KB + "/kb", key=user)


def walk_lora_adapters(walk: Walk, key: dict[str, str]) -> None:
    body = {"name": "a", "path": "/nope"}
    for method, route, path in [("GET", LORA, None), ("POST", LORA, None), ("DELETE", LORA + "/{name}", LORA + "/a")]:
        walk(method, route, 401, path=path, json=body, key="sk-seekd-wrong")
        walk(method, route, 403, path=path, json=body, key=key["user"])
    walk("GET", LORA, 200, key=key["admin"])
    walk("POST", LORA, 400, json=body, key=key["admin"])  # the demo model serves no adapters
    walk("POST", LORA, 413, content=b"x" * (MAX_REQUEST_BODY_BYTES + 1), key=key["admin"])
    walk("DELETE", LORA + "/{name}", 404, path=LORA + "/a", key=key["admin"])


def kill_engine(server: ServerHandle, admin: str) -> None:
    """With --engine-max-restarts 0 the server gives up on its first engine death: 503 everywhere."""
    headers = {"Authorization": f"Bearer {admin}"}
    os.kill(httpx.get(f"{server.base_url}/ready", headers=headers, timeout=10).json()["engine_pid"], signal.SIGKILL)
    deadline = time.monotonic() + 30
    while httpx.get(f"{server.base_url}/health", timeout=10).status_code != 503:
        assert time.monotonic() < deadline, "the server did not notice its engine died"
        time.sleep(0.1)


def walk_engine_gone(walk: Walk, admin: str) -> None:
    walk("GET", "/health", 503)
    walk("GET", "/ready", 503, key=admin)
    walk("GET", "/v1/models", 503, key=admin)
    walk("GET", "/v1/models/{model_id}", 503, path=f"/v1/models/{MODEL}", key=admin)
    for route, body in GENERATE.items():
        walk("POST", route, 503, json=body, key=admin)
    walk("GET", LORA, 503, key=admin)
    walk("POST", LORA, 503, json={"name": "a", "path": "/nope"}, key=admin)
    walk("DELETE", LORA + "/{name}", 503, path=LORA + "/a", key=admin)
