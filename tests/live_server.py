"""A real `seekd serve` subprocess on a free loopback port, for the tests that talk to it."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

STARTUP_TIMEOUT_S = 90.0
MAX_REQUEST_BODY_BYTES = 1_000_000


@dataclass
class ServerHandle:
    base_url: str
    process: subprocess.Popen
    log_path: Path
    client_options: dict = field(default_factory=dict)  # httpx options: auth headers, TLS verify/cert

    @property
    def api_url(self) -> str:
        return f"{self.base_url}/v1"

    def ready_payload(self) -> dict:
        return httpx.get(f"{self.base_url}/ready", timeout=5.0, **self.client_options).json()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running_server(
    data_dir: Path,
    log_path: Path,
    *extra: str,
    scheme: str = "http",
    client_options: dict | None = None,
    port: int | None = None,
):
    """`client_options` (httpx keyword arguments) let the readiness poll pass auth and TLS; `port`
    brings a server back where a killed one was (a free port when None)."""
    port = port or free_port()
    cmd = [
        sys.executable,
        "-m",
        "seekd.cli",
        "serve",
        "--port",
        str(port),
        "--data-dir",
        str(data_dir),
        "--num-kv-blocks",
        "1536",
        "--max-request-body-bytes",
        str(MAX_REQUEST_BODY_BYTES),
        *extra,
    ]
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    with open(log_path, "ab") as log:
        process = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    handle = ServerHandle(f"{scheme}://127.0.0.1:{port}", process, log_path, client_options or {})
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while True:
            if process.poll() is not None:
                pytest.fail(f"server exited with {process.returncode}:\n{handle.log()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{handle.base_url}/ready", timeout=1.0, **handle.client_options).status_code == 200:
                    break
            if time.monotonic() > deadline:
                pytest.fail(f"server not ready after {STARTUP_TIMEOUT_S} s:\n{handle.log()}")
            time.sleep(0.2)
        yield handle
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
