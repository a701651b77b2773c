"""Routers and backends on loopback for the router tests: the real `seekd router` as a subprocess,
fake OpenAI-compatible backends in-process, and a real `redis-server` started by the test."""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import yaml
from live_server import free_port, running_process

ADMIN_KEY = "sk-router-admin-test"


@dataclass
class RouterHandle:
    base_url: str
    process: subprocess.Popen
    log_path: Path
    config_path: Path

    def admin(self, method: str, path: str, **kwargs) -> httpx.Response:
        headers = {"Authorization": f"Bearer {ADMIN_KEY}"}
        return httpx.request(method, f"{self.base_url}/admin{path}", headers=headers, timeout=10.0, **kwargs)

    def state(self) -> dict:
        response = self.admin("GET", "/state")
        response.raise_for_status()
        return response.json()

    def backend(self, name: str) -> dict:
        return next(b for b in self.state()["backends"] if b["name"] == name)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


@contextlib.contextmanager
def running_router(config: dict, folder: Path, env: dict[str, str] | None = None, port: int | None = None):
    """`seekd router --config` as a subprocess; `config` is the YAML content (listen port filled in)."""
    port = port or free_port()
    config = {**config, "listen": {**config.get("listen", {}), "port": port}}
    config_path = folder / "router.yaml"
    config_path.write_text(yaml.safe_dump(config))
    log_path = folder / f"router-{port}.log"
    env = {"SEEKD_ROUTER_ADMIN_KEY": ADMIN_KEY, **(env or {})}
    cmd = [sys.executable, "-m", "seekd.cli", "router", "--config", str(config_path)]
    base_url = f"http://127.0.0.1:{port}"
    with running_process(cmd, log_path, f"{base_url}/health", "router", env=env) as process:
        yield RouterHandle(base_url, process, log_path, config_path)


@dataclass
class RedisHandle:
    url: str
    process: subprocess.Popen


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisHandle]:
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server is not installed (Debian: apt-get install -y redis-server)")
    port = free_port()
    process = subprocess.Popen(
        [
            binary,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(tmp_path),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 20
    while True:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
            break
        assert process.poll() is None and time.monotonic() < deadline, "redis-server did not start"
        time.sleep(0.05)
    try:
        yield RedisHandle(f"redis://127.0.0.1:{port}/0", process)
    finally:
        process.terminate()
        process.wait(10)


def fake_backends_config(*backends, **route) -> dict:
    """A router config over fake backends, one route named after the first backend's model."""
    return {
        "backends": [{"name": b.name, "url": b.url, "models": [b.model]} for b in backends],
        "health": {"interval_s": 0.1},
        **route,
    }
