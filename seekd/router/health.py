"""Active health checks: `GET /ready` on every backend, every `interval_s`.

Passive checks (a refused connection marks a backend down at once, in `proxy.py`) catch a death
between probes; the probe is what brings a backend back: it rejoins on its first 200.
"""

from __future__ import annotations

import asyncio
import logging

import httpx

from seekd.router.backends import Backend, BackendRegistry
from seekd.router.config import HealthConfig

logger = logging.getLogger(__name__)


class HealthChecker:
    def __init__(self, registry: BackendRegistry, config: HealthConfig, client: httpx.AsyncClient) -> None:
        self.registry = registry
        self.config = config
        self.client = client
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self) -> None:
        while True:
            await asyncio.gather(*(self.probe(b) for b in self.registry))
            await asyncio.sleep(self.config.interval_s)

    async def probe(self, backend: Backend) -> None:
        headers = {"Authorization": f"Bearer {key}"} if (key := backend.config.api_key()) else {}
        try:
            response = await self.client.get(
                f"{backend.config.url}/ready", headers=headers, timeout=self.config.timeout_s
            )
        except httpx.HTTPError as e:
            backend.mark_down(f"/ready: {type(e).__name__}")
            return
        if response.status_code == 200:
            backend.mark_up()
        else:
            backend.mark_down(f"/ready answered {response.status_code}")
