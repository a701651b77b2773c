"""What a soak watches: the server's /ready and /metrics, and the API-server and engine-core
processes read from /proc (RSS, open file descriptors, threads); and the `seekd serve` it starts.

Process figures exist only for a server on this machine; for a remote one they stay None and the
growth checks that need them are skipped, not guessed.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from seekd.ops.top import parse_metrics

logger = logging.getLogger(__name__)

PROBE_TIMEOUT_S = 10.0
# ERROR lines a soak causes on purpose: the engine core dying of its SIGKILL
EXPECTED_ERRORS = ("the engine core process died (exit code -9)",)


@dataclass(frozen=True)
class ProcessStats:
    rss_mib: float
    fds: int
    threads: int


def process_stats(pid: int | None) -> ProcessStats | None:
    """RSS, open FDs and threads of a process on this machine; None if it is not visible here."""
    if pid is None:
        return None
    try:
        fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines())
        fds = len(os.listdir(f"/proc/{pid}/fd"))
    except (OSError, ValueError):
        return None
    rss_kib = int(fields.get("VmRSS", "0 kB").split()[0])
    return ProcessStats(rss_kib / 1024.0, fds, int(fields["Threads"]))


def parent_pid(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return None


@dataclass
class ServerSample:
    """One look at the server, `t` seconds after the soak started. None: not known (remote process,
    or the probe failed, then `error` says why)."""

    t: float
    phase: str  # active | idle
    client_in_flight: int
    engine_pid: int | None = None
    engine_state: str | None = None  # running | restarting
    server_in_flight: int | None = None  # API requests with engine work outstanding
    queued: int | None = None  # in the admission queue
    running: float | None = None  # seekd:num_requests_running
    waiting: float | None = None  # seekd:num_requests_waiting (the engine's queue)
    kv_usage: float | None = None  # seekd:kv_cache_usage_perc, 0-1
    engine_restarts: float | None = None
    api_rss_mib: float | None = None
    api_fds: int | None = None
    api_threads: int | None = None
    engine_rss_mib: float | None = None
    engine_fds: int | None = None
    engine_threads: int | None = None
    error: str | None = None

    @property
    def quiet(self) -> bool:
        """Nothing in flight anywhere and the engine up: the moment idle figures mean something."""
        return (
            self.error is None
            and self.engine_state == "running"
            and self.server_in_flight == 0
            and self.queued == 0
            and self.running == 0
            and self.waiting == 0
        )


class ServerProbe:
    """Reads /ready (engine pid and state, requests in flight) and /metrics (engine gauges) of one
    server; `api_pid` is its API-server process where known."""

    def __init__(self, base_url: str, api_key: str | None, api_pid: int | None) -> None:
        self.base_url = base_url.rstrip("/")
        self.headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.api_pid = api_pid

    async def ready(self, client: httpx.AsyncClient) -> dict[str, Any]:
        response = await client.get(f"{self.base_url}/ready", headers=self.headers, timeout=PROBE_TIMEOUT_S)
        return response.json()

    async def sample(self, client: httpx.AsyncClient, t: float, phase: str, client_in_flight: int) -> ServerSample:
        sample = ServerSample(t, phase, client_in_flight)
        try:
            ready = await self.ready(client)
            response = await client.get(f"{self.base_url}/metrics", headers=self.headers, timeout=PROBE_TIMEOUT_S)
            response.raise_for_status()
            metrics = parse_metrics(response.text, time.monotonic())
            if not isinstance(ready, dict):
                raise ValueError(f"/ready answered {ready!r}")
        except (httpx.HTTPError, ValueError) as e:  # a long run records a failed probe and goes on
            sample.error = f"{type(e).__name__}: {e}"[:300]
            return sample
        if ready.get("status") != "ready":
            sample.error = f"not ready: {ready.get('reason', ready)}"
        sample.engine_pid = ready.get("engine_pid")
        sample.engine_state = ready.get("engine_state")
        sample.server_in_flight = ready.get("requests_in_flight")
        sample.queued = (ready.get("admission") or {}).get("queued")
        sample.running = metrics.get("seekd:num_requests_running")
        sample.waiting = metrics.get("seekd:num_requests_waiting")
        sample.kv_usage = metrics.get("seekd:kv_cache_usage_perc")
        sample.engine_restarts = metrics.get("seekd:engine_restarts_total")
        for prefix, pid in (("api", self.api_pid), ("engine", sample.engine_pid)):
            if (stats := process_stats(pid)) is not None:
                setattr(sample, f"{prefix}_rss_mib", round(stats.rss_mib, 2))
                setattr(sample, f"{prefix}_fds", stats.fds)
                setattr(sample, f"{prefix}_threads", stats.threads)
        return sample


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class LocalServer:
    base_url: str
    process: subprocess.Popen
    command: list[str]
    log_path: Path

    def log_tail(self, num_chars: int = 3000) -> str:
        return self.log_path.read_text(errors="replace")[-num_chars:]


def _exception_line(lines: list[str], start: int) -> str:
    """The line naming the exception of the traceback opening at `start` (its first unindented line)."""
    for line in lines[start + 1 :]:
        if line and not line[0].isspace():
            return line
    return "(cut off)"


def summarize_log(path: Path) -> dict[str, Any]:
    """Tracebacks and ERROR lines of a server's log, less those the engine kills explain."""
    lines = path.read_text(errors="replace").splitlines()
    errors = [line for line in lines if " ERROR " in line or line.startswith("ERROR:")]
    unexpected = [line for line in errors if not any(e in line for e in EXPECTED_ERRORS)]
    raised = [_exception_line(lines, i) for i, line in enumerate(lines) if line.startswith("Traceback")]
    return {
        "lines": len(lines),
        "warnings": sum(" WARNING " in line or line.startswith("WARNING:") for line in lines),
        "errors": len(errors),
        "unexpected_errors": len(unexpected),
        "tracebacks": len(raised),
        "examples": [line[:300] for line in [*(f"Traceback: {r}" for r in raised), *unexpected][:10]],
    }


@contextlib.contextmanager
def local_server(
    serve_args: Sequence[str], data_dir: Path, log_path: Path, startup_timeout_s: float
) -> Iterator[LocalServer]:
    """`seekd serve` on a free loopback port, ready (model loaded) when this yields; stopped with
    SIGTERM (a drain, then the usual shutdown) afterwards."""
    port = _free_port()
    command = [sys.executable, "-m", "seekd.cli", "serve", "--port", str(port), "--data-dir", str(data_dir)]
    command += list(serve_args)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    server = LocalServer(f"http://127.0.0.1:{port}", process, command, log_path)
    logger.info("started seekd serve (pid %d), log %s", process.pid, log_path)
    try:
        deadline = time.monotonic() + startup_timeout_s
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"seekd serve exited with {process.returncode} while starting:\n{server.log_tail()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{server.base_url}/ready", timeout=2.0).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError(f"seekd serve not ready after {startup_timeout_s:.0f} s:\n{server.log_tail()}")
            time.sleep(0.5)
        yield server
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=90)
            except subprocess.TimeoutExpired:
                logger.warning("seekd serve (pid %d) did not stop in 90 s after SIGTERM; killing it", process.pid)
                process.kill()
                process.wait()
