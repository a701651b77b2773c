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
    base_url = f"{scheme}://127.0.0.1:{port}"
    with running_process(cmd, log_path, f"{base_url}/ready", "server", client_options) as process:
        yield ServerHandle(base_url, process, log_path, client_options or {})


@contextlib.contextmanager
def running_process(
    cmd: list[str],
    log_path: Path,
    probe_url: str,
    what: str,
    client_options: dict | None = None,
    env: dict[str, str] | None = None,
    timeout_s: float = STARTUP_TIMEOUT_S,
):
    """`cmd` as a subprocess logging to `log_path`, yielded once `probe_url` answers 200; stopped with
    SIGINT (SIGKILL after 20 s) unless a test killed it already."""
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", **(env or {})}
    with open(log_path, "ab") as log:
        process = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            if process.poll() is not None:
                pytest.fail(f"{what} exited with {process.returncode}:\n{log_path.read_text(errors='replace')}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(probe_url, timeout=1.0, **(client_options or {})).status_code == 200:
                    break
            if time.monotonic() > deadline:
                pytest.fail(f"{what} not ready after {timeout_s} s:\n{log_path.read_text(errors='replace')}")
            time.sleep(0.1)
        yield process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
