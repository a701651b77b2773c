"""The path of one client request through the router: rollout target → cache → attempts over
backends and fallbacks → spill-over → the answer, passed through as it streams.

Every backend attempt is matched by exactly one breaker outcome and one `outstanding` decrement,
whether the request succeeds, fails, or the client leaves mid-stream.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
from fastapi.responses import Response, StreamingResponse

from seekd.router.auth import ANONYMOUS
from seekd.router.backends import Backend, BackendRegistry
from seekd.router.balancer import Balancer, affinity_key
from seekd.router.breaker import CircuitBreaker
from seekd.router.cache import CachedResponse, ResponseCache, cache_key, cacheable
from seekd.router.config import BackendConfig, RouterConfig
from seekd.router.errors import APIError, no_backend, unknown_model
from seekd.router.metrics import RouterMetrics
from seekd.router.proxy import AttemptFailed, Upstream, open_upstream
from seekd.router.retry import Step, backoff_s, chain, counts_against_breaker, retry_after_s
from seekd.router.rollout import Rollout
from seekd.router.spill import SpillPolicy

logger = logging.getLogger(__name__)

SSE_DONE = b"data: [DONE]"
BUSY_COOLDOWN_CAP_S = 1.0  # a 429's Retry-After may be long; another replica's state changes sooner


@dataclass
class Answer:
    upstream: Upstream
    backend: Backend
    step: Step | None  # None: the spill-over endpoint


class Gateway:
    def __init__(self, config: RouterConfig, state_dir: Path) -> None:
        self.config = config
        self.registry = BackendRegistry(config.backends, config.breaker)
        self.balancer = Balancer(config.balance)
        self.rollout = Rollout(config)
        self.cache = ResponseCache(config.cache)
        self.spill = SpillPolicy(config.spill, state_dir)
        self.spill_backend = Backend(
            BackendConfig(
                name="spill-over",
                url=config.spill.url or "http://unset",
                models=["*"],
                api_key_env=config.spill.api_key_env,
            ),
            CircuitBreaker(config.breaker),
        )
        self.metrics = RouterMetrics(self.registry)
        timeout = httpx.Timeout(config.retry.read_timeout_s, connect=config.retry.connect_timeout_s)
        limits = httpx.Limits(max_connections=None, max_keepalive_connections=256)
        self.client = httpx.AsyncClient(timeout=timeout, limits=limits)

    def reload(self, config: RouterConfig) -> None:
        """Apply a new config without dropping anything: backends that stay keep their state and their
        streams; the rollout takes the new routes for new requests only."""
        self.config = config
        self.registry.breaker_config = config.breaker
        self.registry.update(config.backends)
        self.rollout.reload(config)
        self.balancer.config = config.balance
        self.spill.config = config.spill

    async def handle(self, path: str, body: dict, headers: dict[str, str], tenant: str, request_id: str) -> Response:
        started = time.monotonic()
        model = body.get("model")
        route = self.rollout.route(model) if isinstance(model, str) else None
        if route is None:
            raise unknown_model(str(model), self.config.public_models())
        user = body.get("user") if isinstance(body.get("user"), str) else None
        target = self.rollout.choose(route, user, tenant if tenant != ANONYMOUS else None)
        steps = chain(route, target)
        key = None
        if self.config.cache.enabled and cacheable(body, headers):
            key = cache_key(tenant, route.name, steps[0].version, body)
            if (hit := await self.cache.get(key)) is not None:
                self.metrics.cache_hits.labels(hit[0]).inc()
                self.metrics.requests.labels(route.name, "200").inc()
                return cached_response(hit[1], hit[0])
            self.metrics.cache_misses.inc()
        headers = {**headers, "x-request-id": request_id}
        answer = await self.first_answer(path, body, headers, route.name, steps, tenant, request_id)
        if answer.step is not None and answer.step.fallback:
            self.metrics.fallbacks.labels(route.name, answer.step.model).inc()
        out_headers = {**answer.upstream.headers, "x-seekd-backend": answer.backend.name}
        if answer.upstream.response is None:
            self._finish(answer.backend, failed=False)
            if key is not None and answer.upstream.status == 200:
                await self.cache.put(key, CachedResponse(False, answer.upstream.first))
            self._count(route.name, answer.upstream.status, started)
            return Response(answer.upstream.first, answer.upstream.status, out_headers)
        stream = self.pass_through(answer, route.name, key, started)
        return StreamingResponse(stream, answer.upstream.status, out_headers, media_type="text/event-stream")

    async def first_answer(
        self,
        path: str,
        body: dict,
        headers: dict[str, str],
        route: str,
        steps: list[Step],
        tenant: str,
        request_id: str,
    ) -> Answer:
        affinity = affinity_key(body, self.config.balance.affinity_prefix_chars)
        tried: set[str] = set()
        attempts = 0
        last: AttemptFailed | None = None
        for step in steps:
            while attempts < self.config.retry.max_attempts:
                now = time.monotonic()
                ready = [
                    b
                    for b in self.registry.serving(step.model, step.group)
                    if b.name not in tried and b.available(now) and not b.saturated()
                ]
                backend = self.balancer.pick(ready, affinity)
                if backend is None:
                    break
                attempts += 1
                if attempts > 1:
                    self.metrics.retries.labels(last.kind if last else "unavailable").inc()
                    await asyncio.sleep(backoff_s(self.config.retry, attempts))
                tried.add(backend.name)
                try:
                    return Answer(
                        await self._attempt(backend, path, {**body, "model": step.model}, headers, route), backend, step
                    )
                except AttemptFailed as failure:
                    last = failure
        if because := self.spill.allows(tenant, headers):
            return await self._spill(path, body, headers, route, tenant, request_id, because, last)
        # Local capacity is only busy, not broken: the least-loaded replica queues it (its admission decides).
        busy = [b for s in steps for b in self.registry.serving(s.model, s.group) if b.available(time.monotonic())]
        if busy and attempts < self.config.retry.max_attempts:
            backend = self.balancer.least_loaded(busy)
            step = next(s for s in steps if backend.serves(s.model, s.group))
            try:
                return Answer(
                    await self._attempt(backend, path, {**body, "model": step.model}, headers, route), backend, step
                )
            except AttemptFailed as failure:
                last = failure
        raise self._give_up(steps[0].model, last)

    async def _attempt(self, backend: Backend, path: str, body: dict, headers: dict[str, str], route: str) -> Upstream:
        if not backend.breaker.acquire():
            raise AttemptFailed(f"breaker of {backend.name} is open", "breaker")
        backend.outstanding += 1
        backend.attempts += 1
        self.metrics.attempts.labels(backend.name, route).inc()
        try:
            return await open_upstream(self.client, backend, path, body, headers)
        except AttemptFailed as failure:
            self._finish(backend, failed=failure.status is None or counts_against_breaker(failure.status))
            self.metrics.errors.labels(backend.name, failure.kind).inc()
            backend.last_error = failure.reason
            if failure.down:
                backend.mark_down(failure.reason)
            if failure.status == 429:
                backend.busy_until = time.monotonic() + retry_after_s(
                    failure.headers.get("retry-after"), BUSY_COOLDOWN_CAP_S
                )
            logger.info("backend %s failed (%s): %s", backend.name, failure.kind, failure.reason)
            raise

    def _finish(self, backend: Backend, failed: bool) -> None:
        backend.outstanding -= 1
        backend.failures += failed
        backend.breaker.record(failed)

    async def _spill(
        self,
        path: str,
        body: dict,
        headers: dict[str, str],
        route: str,
        tenant: str,
        request_id: str,
        because: str,
        last: AttemptFailed | None,
    ) -> Answer:
        model = self.config.spill.model or body.get("model")
        local = last.reason if last else "every local backend is busy or down"
        await asyncio.to_thread(self.spill.record, request_id, tenant, route, str(model), because, local)
        self.metrics.spillovers.labels(route).inc()
        backend = self.spill_backend
        try:
            return Answer(await self._attempt(backend, path, {**body, "model": model}, headers, route), backend, None)
        except AttemptFailed as failure:
            raise self._give_up(str(model), failure) from None

    def _give_up(self, model: str, last: AttemptFailed | None) -> APIError | UpstreamError:
        if last is not None and last.status is not None:
            return UpstreamError(last)
        return no_backend(model, last.reason if last else "every backend is down, open or drained")

    async def pass_through(self, answer: Answer, route: str, key: str | None, started: float) -> AsyncIterator[bytes]:
        """The stream as it arrives. A failure mid-stream ends it with an OpenAI error event and [DONE]:
        the status line went out with the first chunk, so the client can only learn it this way."""
        upstream, backend = answer.upstream, answer.backend
        kept: list[bytes] | None = [] if key is not None else None
        size, tail, failed, completed = 0, b"", False, False
        try:
            async for chunk in _chain_first(upstream):
                tail = (tail + chunk)[-64:]
                if kept is not None:
                    size += len(chunk)
                    kept = kept if size <= self.config.cache.max_entry_bytes else None
                    if kept is not None:
                        kept.append(chunk)
                yield chunk
            if not tail.rstrip().endswith(SSE_DONE):
                raise httpx.RemoteProtocolError("the stream ended without [DONE]")
            completed = True
        except httpx.HTTPError as e:
            failed = True
            self.metrics.errors.labels(backend.name, "stream").inc()
            if isinstance(e, (httpx.RemoteProtocolError, httpx.ReadError)):
                backend.mark_down(f"stream broke: {e}")
            logger.warning("stream from backend %s broke: %s", backend.name, e)
            yield stream_error(f"the backend {backend.name} failed mid-stream ({type(e).__name__}); retry the request")
            yield SSE_DONE + b"\n\n"
        finally:
            await upstream.close()
            self._finish(backend, failed=failed)
            self._count(route, 200, started)
        if completed and kept is not None:
            await self.cache.put(key, CachedResponse(True, b"".join(kept)))

    def _count(self, route: str, status: int, started: float) -> None:
        self.metrics.requests.labels(route, str(status)).inc()
        self.metrics.duration.labels(route).observe(time.monotonic() - started)

    async def close(self) -> None:
        await self.client.aclose()
        await self.cache.close()


class UpstreamError(Exception):
    """The last backend's own error answer (e.g. its 429 with Retry-After), passed on unchanged."""

    def __init__(self, failure: AttemptFailed) -> None:
        super().__init__(failure.reason)
        self.failure = failure

    def response(self) -> Response:
        return Response(self.failure.body, self.failure.status or 502, self.failure.headers)


async def _chain_first(upstream: Upstream) -> AsyncIterator[bytes]:
    yield upstream.first
    async for chunk in upstream.rest():
        yield chunk


def stream_error(message: str) -> bytes:
    error = {"error": {"message": message, "type": "server_error", "param": None, "code": "backend_failed"}}
    return f"data: {json.dumps(error)}\n\n".encode()


def cached_response(entry: CachedResponse, level: str) -> Response:
    headers = {"x-seekd-cache": f"hit-{level}"}
    if not entry.stream:
        return Response(entry.body, 200, headers, media_type="application/json")

    async def replay() -> AsyncIterator[bytes]:
        for event in entry.events():
            yield event

    return StreamingResponse(replay(), 200, headers, media_type="text/event-stream")
