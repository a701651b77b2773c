"""Keeps the engine core alive: restarts it after a crash or a hang, and gives up on a crash loop.

A crash is the process exiting (the EngineClient reports it on `client.lost`). A hang is silence:
the engine loop sends a batch at least every heartbeat interval, even when idle, so no message for
`engine_hang_timeout_s` while requests are in flight means it is stuck (a wedged kernel, a deadlock);
it is killed with SIGKILL and handled like a crash. Each restart reloads the model and resumes the
in-flight requests where they were (EngineClient.restart), so clients only see a pause.
The engine cannot speak during a step, and the first step after a restart recomputes every resumed
request: on a starved CPU it can outlast the timeout, and killing it again would repeat that step
forever (a kill loop that loses every request in it). So each hang kill doubles the silence allowed
to the next engine (up to 16x) until an engine is heard from again.

More than `engine_max_restarts` restarts within `engine_restart_window_s` is a crash loop: the
supervisor stops, in-flight and new requests get 503 naming the last reason, /health turns 503.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from typing import Any

from seekd.config import AdmissionConfig
from seekd.server.engine_client import EngineClient, EngineDeadError

logger = logging.getLogger(__name__)


class EngineSupervisor:
    def __init__(self, client: EngineClient, config: AdmissionConfig) -> None:
        self.client = client
        self.config = config
        self.num_restarts = 0
        self.last_reason: str | None = None
        self.last_restart_wall_time: float | None = None
        self._recent: deque[float] = deque()
        self._tasks: list[asyncio.Task] = []
        self.hang_timeout_s = config.engine_hang_timeout_s

    def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._restart_loop(), name="seekd-engine-supervisor"),
            asyncio.create_task(self._watch_heartbeats(), name="seekd-engine-watchdog"),
        ]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def health(self) -> dict[str, Any]:
        return {
            "engine_restarts": self.num_restarts,
            "last_restart_reason": self.last_reason,
            "last_restart_time": self.last_restart_wall_time,
        }

    async def _restart_loop(self) -> None:
        while True:
            reason = await self.client.lost.get()
            while True:
                if not self._may_restart(reason):
                    return
                try:
                    await self.client.restart()
                except EngineDeadError as e:
                    reason = f"restart failed: {e}"
                    continue
                logger.warning("engine core restarted (restart %d, reason: %s)", self.num_restarts, reason)
                break

    def _may_restart(self, reason: str) -> bool:
        """Count this restart, or give up (fail the client) if it would make a crash loop."""
        now = time.monotonic()
        window = self.config.engine_restart_window_s
        while self._recent and now - self._recent[0] > window:
            self._recent.popleft()
        limit = self.config.engine_max_restarts
        if len(self._recent) >= limit:
            why = (
                f"{reason}; not restarting it: {len(self._recent)} restarts in the last {window:.0f} s "
                f"reached engine_max_restarts={limit} (crash loop). Check the log above, then restart "
                "the server"
            )
            logger.error("engine core crash loop: %s", why)
            self.client.fail(why)
            return False
        self._recent.append(now)
        self.num_restarts += 1
        self.last_reason = reason
        self.last_restart_wall_time = time.time()
        logger.warning(
            "restarting the engine core (restart %d): %s; %d requests will resume",
            self.num_restarts,
            reason,
            self.client.num_in_flight,
        )
        return True

    async def _watch_heartbeats(self) -> None:
        base = self.config.engine_hang_timeout_s
        killed_pid: int | None = None  # the engine last killed as hung, until its exit is handled
        heard_mark: float | None = None  # last_heard of the engine that replaced it, when first seen
        while True:
            await asyncio.sleep(self.config.engine_heartbeat_interval_s)
            client = self.client
            if client.dead_reason is not None or client.is_restarting or client.pid == killed_pid:
                continue
            if self.hang_timeout_s > base:  # after a hang kill: back to the base once the new engine speaks
                if heard_mark is None:
                    heard_mark = client.last_heard
                elif client.last_heard > heard_mark:
                    self.hang_timeout_s, heard_mark = base, None
            if not client.has_work:
                continue
            silent = time.monotonic() - client.last_heard
            if silent > self.hang_timeout_s:
                reason = f"the engine core hung (no heartbeat for {silent:.1f} s with requests in flight)"
                logger.error("%s; killing pid=%s", reason, client.pid)
                killed_pid, heard_mark = client.pid, None
                self.hang_timeout_s = min(2 * self.hang_timeout_s, 16 * base)
                client.kill_hung(reason)
