"""LoRA adapters through a real `seekd serve`: `/v1/models` lists them as `base:adapter` (the openai
client), the admin API loads and unloads them at runtime, and doing so under load loses no request."""

from __future__ import annotations

import concurrent.futures
import os
import signal
import time
from pathlib import Path

import httpx
import openai
import pytest
from live_server import running_server
from lora_adapters import write_random_adapter
from tiny_chat_model import write_tiny_chat_model


@pytest.fixture(scope="module")
def lora_server(data_dir: Path, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("lora-serve")
    model = write_tiny_chat_model(tmp / "tiny-chat")
    a0 = write_random_adapter(model, tmp / "a0", seed=0)
    a1 = write_random_adapter(model, tmp / "a1", seed=1)
    extra = ("--model", str(model), "--lora-modules", f"a0={a0}", "--max-lora-rank", "8", "--max-loras", "2")
    with running_server(data_dir, tmp / "server.log", *extra) as handle:
        yield handle, a1


def test_models_list_adapters_and_admin_loads_and_unloads_them_under_load(lora_server):
    server, a1 = lora_server
    client = openai.OpenAI(base_url=server.api_url, api_key="none")
    assert [m.id for m in client.models.list()] == ["tiny-chat", "tiny-chat:a0"]
    assert client.models.retrieve("tiny-chat:a0").id == "tiny-chat:a0"
    with pytest.raises(openai.NotFoundError, match="no LoRA adapter `a1` is loaded"):
        client.completions.create(model="tiny-chat:a1", prompt="one two", max_tokens=4)
    admin = f"{server.base_url}/admin/lora-adapters"

    def complete(i: int) -> str:
        out = client.completions.create(model="tiny-chat", prompt=f"one two {i}", max_tokens=24, temperature=0)
        return out.choices[0].finish_reason

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        running = [pool.submit(complete, i) for i in range(24)]
        loaded = httpx.post(admin, json={"name": "a1", "path": str(a1)}, timeout=60).json()
        assert [a["model"] for a in loaded["data"]] == ["tiny-chat:a0", "tiny-chat:a1"]
        assert client.completions.create(model="tiny-chat:a1", prompt="one two", max_tokens=4).choices
        unloaded = httpx.delete(f"{admin}/a0", timeout=60).json()
        assert [a["name"] for a in unloaded["data"]] == ["a1"]
        assert all(f.result(timeout=120) in ("stop", "length") for f in running)
    assert [m.id for m in client.models.list()] == ["tiny-chat", "tiny-chat:a1"]
    assert httpx.delete(f"{admin}/a0", timeout=10).status_code == 404
    bad = httpx.post(admin, json={"name": "bad", "path": str(a1.parent)}, timeout=60)
    assert bad.status_code == 400 and "adapter_config.json" in bad.json()["error"]["message"]


def test_a_restarted_engine_gets_the_adapters_the_server_serves(lora_server):
    """a1 was loaded and a0 unloaded at runtime (the test before): after a crash the new engine,
    which starts from --lora-modules (a0 only), is brought back to serving a1 alone."""
    server, a1 = lora_server
    admin = f"{server.base_url}/admin/lora-adapters"
    if [a["name"] for a in httpx.get(admin, timeout=10).json()["data"]] != ["a1"]:
        httpx.post(admin, json={"name": "a1", "path": str(a1)}, timeout=60).raise_for_status()
        httpx.delete(f"{admin}/a0", timeout=60).raise_for_status()
    old_pid = server.ready_payload()["engine_pid"]
    os.kill(old_pid, signal.SIGKILL)
    deadline = time.monotonic() + 120
    while True:
        payload = server.ready_payload()
        if payload.get("engine_state") == "running" and payload.get("engine_pid") not in (None, old_pid):
            break
        assert time.monotonic() < deadline, payload
        time.sleep(0.2)
    client = openai.OpenAI(base_url=server.api_url, api_key="none")
    assert client.completions.create(model="tiny-chat:a1", prompt="one two", max_tokens=4).choices
    assert [m.id for m in client.models.list()] == ["tiny-chat", "tiny-chat:a1"]
    assert [a["name"] for a in httpx.get(admin, timeout=10).json()["data"]] == ["a1"]
    unloaded = httpx.delete(f"{admin}/a1", timeout=60)  # the engine refuses to unload what it lacks
    assert unloaded.status_code == 200, unloaded.text
