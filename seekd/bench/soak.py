"""`seekd bench soak`: a long mixed workload against one server, watched over time.

The run is a series of cycles: an active phase (a burst of simultaneous requests, then
`concurrency` clients sending the request mix back to back), then an idle phase in which the soak
waits for the server to become quiet and takes an idle sample. Meanwhile a sampler reads the server
every few seconds, and a killer SIGKILLs the engine-core process at random times (one in each
`kill_every` slot, always while requests are in flight) and times the supervisor's restart.
The verdict (seekd.bench.soak_checks) is drawn from the records, samples and kills at the end.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import signal
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

from seekd.bench.client import ClientConfig, send_request
from seekd.bench.soak_checks import Check, IdleSample, Tolerances, evaluate, server_log
from seekd.bench.soak_probe import ServerProbe, ServerSample, parent_pid
from seekd.bench.soak_workload import PlannedRequest, RequestPlanner, SoakRecord, record

logger = logging.getLogger(__name__)

SETTLE_POLL_S = 0.25
KV_SETTLE_S = 5.0  # after the server is quiet, how long KV usage may take to reach the tolerance


@dataclass(frozen=True)
class SoakSettings:
    duration_s: float
    concurrency: int = 6
    burst: int = 16
    active_s: float = 50.0
    idle_s: float = 10.0
    kill_every_s: float = 600.0  # 0: never
    warmup_s: float = 300.0
    window_s: float = 60.0
    sample_interval_s: float = 5.0
    max_tokens: int = 32
    prompt_tokens: int = 64
    long_prompt_tokens: int = 3000
    mix: dict[str, float] = field(default_factory=dict)
    timeout_s: float = 300.0
    idle_timeout_s: float = 60.0
    restart_timeout_s: float = 300.0
    seed: int = 0
    tolerances: Tolerances = field(default_factory=Tolerances)

    @property
    def planned_kills(self) -> int:
        """One kill in each whole `kill_every` slot of the run."""
        return 0 if self.kill_every_s <= 0 else int(self.duration_s // self.kill_every_s)


@dataclass
class SoakOutcome:
    records: list[SoakRecord]
    samples: list[ServerSample]
    idle: list[IdleSample]
    kills: list[dict[str, Any]]
    checks: list[Check]
    elapsed_s: float
    final_health: dict[str, Any]
    server_log: dict[str, Any] | None = None

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks)


class Soak:
    """One soak against `base_url`. `api_pid` is the API-server process where it runs on this
    machine (kills are only sent to a process whose parent it is)."""

    def __init__(
        self,
        settings: SoakSettings,
        base_url: str,
        model: str,
        api_key: str | None,
        api_pid: int | None,
        log_summary: Callable[[], dict[str, Any]] | None = None,
    ) -> None:
        self.settings = settings
        self.base_url = base_url
        self.api_pid = api_pid
        self.log_summary = log_summary  # the started server's log, read at the end
        self.configs = {
            endpoint: ClientConfig(base_url, model, endpoint, True, None, {}, api_key, settings.timeout_s)
            for endpoint in ("chat", "completions")
        }
        self.planner = RequestPlanner(
            settings.mix, settings.max_tokens, settings.prompt_tokens, settings.long_prompt_tokens, settings.seed
        )
        self.probe = ServerProbe(base_url, api_key, api_pid)
        self.kill_rng = random.Random(settings.seed + 1)
        self.records: list[SoakRecord] = []
        self.samples: list[ServerSample] = []
        self.idle: list[IdleSample] = []
        self.kills: list[dict[str, Any]] = []
        self.phase = "active"
        self.in_flight = 0
        self.start = 0.0
        self.end = 0.0
        self.on_progress: Callable[[float, int], None] | None = None  # (elapsed s, requests so far)

    def now(self) -> float:
        return time.perf_counter() - self.start

    async def run(self) -> SoakOutcome:
        s = self.settings
        self.start = time.perf_counter()
        self.end = s.duration_s
        async with httpx.AsyncClient() as probe_client:
            sampler = asyncio.create_task(self._sample_loop(probe_client))
            killer = asyncio.create_task(self._kill_loop(probe_client))
            cycle = 0
            while self.now() < self.end:
                await self._active_phase(min(self.now() + s.active_s, self.end))
                await self._idle_phase(probe_client, cycle)
                cycle += 1
            await killer
            sampler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sampler
            health = await self._final_health(probe_client)
        elapsed = self.now()
        checks = evaluate(self.records, self.samples, self.idle, self.kills, s.planned_kills, s.warmup_s, s.tolerances)
        log = self.log_summary() if self.log_summary is not None else None
        checks += [_health_check(health, self.kills), server_log(log)]
        return SoakOutcome(self.records, self.samples, self.idle, self.kills, checks, elapsed, health, log)

    async def _active_phase(self, stop_at: float) -> None:
        s = self.settings
        self.phase = "active"
        width = s.concurrency + s.burst
        limits = httpx.Limits(max_connections=width, max_keepalive_connections=width)
        timeout = httpx.Timeout(s.timeout_s, connect=min(s.timeout_s, 30.0))
        # a fresh client per phase: its keep-alive connections close before the idle sample counts FDs
        async with httpx.AsyncClient(limits=limits, timeout=timeout) as client:
            burst = [self._one(client, self.planner.next(burst=True), True) for _ in range(s.burst)]
            workers = [self._worker(client, stop_at) for _ in range(s.concurrency)]
            await asyncio.gather(*burst, *workers)

    async def _worker(self, client: httpx.AsyncClient, stop_at: float) -> None:
        while self.now() < stop_at:
            await self._one(client, self.planner.next(), False)

    async def _one(self, client: httpx.AsyncClient, plan: PlannedRequest, burst: bool) -> None:
        self.in_flight += 1
        try:
            result = await send_request(
                client,
                self.configs[plan.endpoint],
                plan.request,
                run_start=self.start,
                overrides=plan.overrides,
                disconnect_after=plan.disconnect_after,
            )
        finally:
            self.in_flight -= 1
        self.records.append(record(plan, result, self.now(), burst))
        if self.on_progress is not None:
            self.on_progress(self.now(), len(self.records))

    async def _idle_phase(self, client: httpx.AsyncClient, cycle: int) -> None:
        """Wait until the server is quiet (nothing running, waiting, queued or in flight, engine up),
        then give the KV figure up to KV_SETTLE_S to reach the tolerance (the engine reports stats
        with its heartbeat), take the idle sample and rest for what is left of the idle phase."""
        s = self.settings
        self.phase = "idle"
        began = self.now()
        quiet_since: float | None = None
        while True:
            sample = await self.probe.sample(client, self.now(), "idle", self.in_flight)
            waited = self.now() - began
            if sample.quiet:
                quiet_since = quiet_since if quiet_since is not None else self.now()
                kv_ok = sample.kv_usage is None or sample.kv_usage <= s.tolerances.kv_idle
                if kv_ok or self.now() - quiet_since >= KV_SETTLE_S:
                    break
            else:
                quiet_since = None
            if waited >= s.idle_timeout_s:
                break
            await asyncio.sleep(SETTLE_POLL_S)
        self.idle.append(IdleSample(cycle, sample.quiet, round(waited, 2), sample))
        if not sample.quiet:
            logger.warning("cycle %d: the server did not settle within %.0f s: %s", cycle, s.idle_timeout_s, sample)
        outcomes = Counter(r.outcome for r in self.records)
        logger.info(
            "cycle %d at %.0f s: %d requests (%s), idle KV %s, API RSS %s MiB / %s FDs, engine RSS %s MiB, %d kills",
            cycle,
            sample.t,
            len(self.records),
            ", ".join(f"{k} {v}" for k, v in sorted(outcomes.items())),
            sample.kv_usage,
            sample.api_rss_mib,
            sample.api_fds,
            sample.engine_rss_mib,
            sum(k.get("pid") is not None for k in self.kills),
        )
        rest = min(s.idle_s - (self.now() - began), self.end - self.now())
        if rest > 0:
            await asyncio.sleep(rest)

    async def _sample_loop(self, client: httpx.AsyncClient) -> None:
        while True:
            self.samples.append(await self.probe.sample(client, self.now(), self.phase, self.in_flight))
            await asyncio.sleep(self.settings.sample_interval_s)

    async def _kill_loop(self, client: httpx.AsyncClient) -> None:
        s = self.settings
        for slot in range(s.planned_kills):
            at = (slot + self.kill_rng.random()) * s.kill_every_s
            await asyncio.sleep(max(0.0, at - self.now()))
            # only while requests are in flight, so that each kill exercises resuming them
            while not (self.phase == "active" and self.in_flight > 0):
                if self.now() >= self.end:
                    self.kills.append({"t": round(self.now(), 2), "pid": None, "skipped": "the run ended first"})
                    return
                await asyncio.sleep(0.1)
            self.kills.append(await self._kill_engine(client))

    async def _kill_engine(self, client: httpx.AsyncClient) -> dict[str, Any]:
        """SIGKILL the engine core and time until a new one runs (engine_state back to running)."""
        s = self.settings
        event: dict[str, Any] = {"t": round(self.now(), 2), "pid": None}
        ready = await self._engine_running(client, s.restart_timeout_s)  # not mid-way through a restart
        pid = ready.get("engine_pid") if ready else None
        if not pid or (self.api_pid is not None and parent_pid(pid) != self.api_pid):
            event["skipped"] = f"engine pid {pid} is not a child of the API server (pid {self.api_pid})"
            return event
        event.update(t=round(self.now(), 2), client_in_flight=self.in_flight)
        event["engine_running"] = (ready.get("engine") or {}).get("num_requests_running")
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            event["skipped"] = f"engine pid {pid} was already gone"
            return event
        event["pid"] = pid
        logger.info("killed the engine core (pid %d) with %d requests in flight", pid, self.in_flight)
        killed_at = time.perf_counter()
        ready = await self._engine_running(client, s.restart_timeout_s, not_pid=pid)
        event["restart_s"] = round(time.perf_counter() - killed_at, 2) if ready else None
        event["new_pid"] = ready.get("engine_pid") if ready else None
        return event

    async def _engine_running(
        self, client: httpx.AsyncClient, timeout_s: float, not_pid: int | None = None
    ) -> dict[str, Any] | None:
        """/ready once it reports an engine other than `not_pid` running; None after `timeout_s`."""
        deadline = time.perf_counter() + timeout_s
        while time.perf_counter() < deadline:
            with contextlib.suppress(httpx.HTTPError, ValueError, AttributeError):
                ready = await self.probe.ready(client)
                if ready.get("engine_pid") not in (None, not_pid) and ready.get("engine_state") == "running":
                    return ready
            await asyncio.sleep(0.2)
        return None

    async def _final_health(self, client: httpx.AsyncClient) -> dict[str, Any]:
        try:
            response = await client.get(f"{self.base_url}/health", timeout=10.0)
            return {"http_status": response.status_code, **response.json()}
        except (httpx.HTTPError, ValueError) as e:
            return {"http_status": None, "error": f"{type(e).__name__}: {e}"}


def _health_check(health: dict[str, Any], kills: list[dict[str, Any]]) -> Check:
    """The server is alive at the end, and restarted its engine exactly once per kill: a restart
    nobody asked for is the engine crashing or hanging on its own."""
    if health.get("http_status") != 200 or health.get("status") != "ok":
        return Check("server healthy at the end", False, f"/health: {health}")
    killed = sum(k.get("pid") is not None for k in kills)
    restarts = health.get("engine_restarts", 0)
    detail = f"/health ok, {restarts} engine restarts for {killed} kills"
    if restarts != killed:
        detail += f" (last reason: {health.get('last_restart_reason')})"
    return Check("server healthy at the end", restarts == killed, detail)
