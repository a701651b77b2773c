"""The admission queue: what runs next, what waits, and what is refused (429) before any work.

The server admits at most a bounded amount of work into the engine at once (sequences, and
optionally estimated tokens), so the engine's own waiting queue stays short and the order is
decided here. Everything else waits in a queue bounded by request count and estimated tokens
(prompt + max_tokens). Order: strict priority classes (lower value first, as in the engine), and
within a class start-time fair queuing between tenants weighted by `tenant_weights`: each request
gets a virtual start tag max(V, F_tenant) and advances its tenant's finish tag by cost / weight, so
a tenant that floods the queue only delays itself, and a quiet tenant's next request goes first.

In-flight slots are shared too. The last `inflight_reserved_for_new_tenants` slots are kept for
tenants with nothing running, so a quiet tenant's request starts the moment it arrives (ahead of
the queue, unless the queue holds more urgent priorities) instead of waiting for one of a flood's
requests to finish. And while several tenants are active (running or queued), a tenant that already
runs something holds at most its weighted share of the slots: a flood cannot keep the engine's
batch, and with it every other tenant's per-token latency, at its own size. Alone, a tenant may use
every slot but the reserved ones.

One tenant may hold at most `max_queued_per_tenant` queued requests, so a flood fills its own share
and gets 429s while other tenants still find room. A request beyond the queue's bounds gets 429 with
`Retry-After` = time for the queue ahead to drain at the measured drain rate (an EWMA of
completions per busy second).
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import math
import time
from collections import deque
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any

from starlette.requests import Request

from seekd.config import AdmissionConfig
from seekd.errors import APIError
from seekd.ops.auth import principal_of
from seekd.ops.limits import KeyLimits, KeyRateLimiter, RateLimitExceeded, TenantRateLimiter, check_limits
from seekd.server.adapters import selected_adapter
from seekd.server.errors import shutting_down

logger = logging.getLogger(__name__)

TENANT_HEADER = "x-seekd-tenant"
DEFAULT_TENANT = "default"
MAX_TENANT_LEN = 64
DRAIN_RATE_ALPHA = 0.1  # EWMA weight of the newest completion interval
MAX_RETRY_AFTER_S = 60
QUEUE_TIME_WINDOW = 1000  # recent admissions kept for the queue-time percentiles


def resolve_tenant(request: Request) -> str:
    """The tenant a request is accounted to: its API key's. Only without keys (loopback, one trusted
    user) may the `X-Seekd-Tenant` header choose one, for tests and local experiments."""
    principal = principal_of(request.scope)
    if principal is not None and principal.authenticated:
        return principal.key.tenant
    raw = request.headers.get(TENANT_HEADER, "").strip()
    if not raw:
        return DEFAULT_TENANT
    if len(raw) > MAX_TENANT_LEN or not raw.isprintable():
        raise APIError(
            HTTPStatus.BAD_REQUEST,
            f"{TENANT_HEADER} must be at most {MAX_TENANT_LEN} printable characters",
            code="invalid_tenant",
        )
    return raw


@dataclass(frozen=True)
class RequestPolicy:
    """Who asks, how urgently, and until when: fixed when the request arrives."""

    tenant: str = DEFAULT_TENANT
    priority: int = 0  # lower = more important, as in the engine
    timeout_s: float | None = None
    arrival: float = field(default_factory=time.monotonic)
    key_limits: KeyLimits | None = None  # the API key's own rpm/tpm, if it has any
    request_cache_salt: str | None = None  # the request's `cache_salt`; the tenant is added to it
    lora_name: str | None = None  # the LoRA adapter its model name selects (server/adapters.py)

    @property
    def deadline(self) -> float | None:
        """time.monotonic() based, like the engine's: CLOCK_MONOTONIC is system-wide on Linux, so the
        engine process can compare it with its own clock."""
        return None if self.timeout_s is None else self.arrival + self.timeout_s


def request_policy(
    request: Request, priority: int, timeout_s: float | None, default_timeout_s: float, cache_salt: str | None = None
) -> RequestPolicy:
    """The request's `timeout` field wins over the server's `request_timeout_s` (0 = none)."""
    timeout = timeout_s if timeout_s is not None else (default_timeout_s or None)
    principal = principal_of(request.scope)
    key_limits = None
    if principal is not None and (principal.key.rpm or principal.key.tpm):
        key_limits = KeyLimits(principal.key.id, principal.key.rpm, principal.key.tpm)
    return RequestPolicy(
        resolve_tenant(request),
        priority,
        timeout,
        key_limits=key_limits,
        request_cache_salt=cache_salt,
        lora_name=selected_adapter(request),
    )


@dataclass(eq=False)
class Ticket:
    """One API request's place in line, then its share of the engine while it runs."""

    request_id: str
    tenant: str
    priority: int
    cost: int  # estimated tokens: prompt + max_tokens, over all its sequences
    num_seqs: int
    arrival: float  # time.monotonic()
    key_limits: KeyLimits | None = None
    start_tag: float = 0.0
    seq: int = 0
    queued: bool = False
    admitted_at: float | None = None
    released: bool = False
    granted: asyncio.Future[None] | None = None

    @property
    def queue_time(self) -> float:
        return (self.admitted_at or time.monotonic()) - self.arrival

    def cut(self, error: APIError) -> bool:
        """Stop waiting in the queue: `wait` raises `error`. False if the request was admitted."""
        if self.granted is None or self.granted.done():
            return False
        self.granted.set_exception(error)
        return True


class FairQueue:
    """Waiting tickets ordered by (priority, virtual start tag, arrival). Plain data, no asyncio.

    One heap for the queue order and one per tenant, for the out-of-order admission of a tenant with
    room when the head's tenant holds its share. A ticket that leaves is only marked (`queued`);
    heaps drop marked entries when they reach the top."""

    def __init__(self, weights: dict[str, float] | None = None) -> None:
        self.weights = weights or {}
        self.virtual_time = 0.0
        self._finish_tags: dict[str, float] = {}
        self._heap: list[tuple[int, float, int, Ticket]] = []
        self._tenant_heaps: dict[str, list[tuple[int, float, int, Ticket]]] = {}
        self._seq = itertools.count()
        self._num_queued = 0
        self.num_tokens = 0
        self.by_tenant: dict[str, int] = {}

    def __len__(self) -> int:
        return self._num_queued

    def push(self, ticket: Ticket) -> None:
        weight = self.weights.get(ticket.tenant, 1.0)
        ticket.start_tag = max(self.virtual_time, self._finish_tags.get(ticket.tenant, 0.0))
        self._finish_tags[ticket.tenant] = ticket.start_tag + max(ticket.cost, 1) / weight
        ticket.seq = next(self._seq)
        ticket.queued = True
        entry = (ticket.priority, ticket.start_tag, ticket.seq, ticket)
        heapq.heappush(self._heap, entry)
        heapq.heappush(self._tenant_heaps.setdefault(ticket.tenant, []), entry)
        self._num_queued += 1
        self._count(ticket, +1)

    def peek(self) -> Ticket | None:
        return _top(self._heap)

    def first_of(self, tenants: set[str]) -> Ticket | None:
        """The first ticket in queue order among those of `tenants`."""
        heads = [t for t in (_top(self._tenant_heaps.get(tenant, [])) for tenant in tenants) if t is not None]
        return min(heads, key=lambda t: (t.priority, t.start_tag, t.seq), default=None)

    def pop(self, ticket: Ticket | None = None) -> Ticket:
        """The head, or `ticket` taken out of order."""
        if ticket is None:
            ticket = self.peek()
            if ticket is None:
                raise IndexError("pop from an empty FairQueue")
        self.virtual_time = max(self.virtual_time, ticket.start_tag)
        self._leave(ticket)
        self._forget_idle_tenants()
        return ticket

    def remove(self, ticket: Ticket) -> None:
        """Take out a ticket that gave up waiting (deadline, client gone)."""
        self._leave(ticket)

    def _leave(self, ticket: Ticket) -> None:
        ticket.queued = False
        self._num_queued -= 1
        self._count(ticket, -1)
        if ticket.tenant not in self.by_tenant:
            self._tenant_heaps.pop(ticket.tenant, None)

    def _count(self, ticket: Ticket, sign: int) -> None:
        self.num_tokens += sign * ticket.cost
        n = self.by_tenant.get(ticket.tenant, 0) + sign
        if n:
            self.by_tenant[ticket.tenant] = n
        else:
            self.by_tenant.pop(ticket.tenant, None)

    def _forget_idle_tenants(self) -> None:
        """A finish tag at or behind virtual time has no effect (start = max(V, F)), so drop it."""
        if len(self._finish_tags) > 2 * len(self.by_tenant) + 64:
            v = self.virtual_time
            self._finish_tags = {t: f for t, f in self._finish_tags.items() if f > v or t in self.by_tenant}


def _top(heap: list[tuple[int, float, int, Ticket]]) -> Ticket | None:
    while heap and not heap[0][3].queued:
        heapq.heappop(heap)
    return heap[0][3] if heap else None


@dataclass
class DrainRate:
    """EWMA of completions per second, measured only while work is in flight (idle time is not
    slowness)."""

    interval_s: float | None = None
    _last: float | None = None

    def busy_from(self, now: float) -> None:
        self._last = now

    def completed(self, now: float) -> None:
        if self._last is not None:
            dt = now - self._last
            self.interval_s = (
                dt if self.interval_s is None else (DRAIN_RATE_ALPHA * dt + (1 - DRAIN_RATE_ALPHA) * self.interval_s)
            )
        self._last = now

    @property
    def per_s(self) -> float | None:
        if self.interval_s is None:
            return None
        return 1.0 / max(self.interval_s, 1e-3)

    def seconds_for(self, num_requests: int) -> float | None:
        rate = self.per_s
        return None if rate is None else num_requests / rate


@dataclass
class AdmissionController:
    """Queue bounds, rate limits, in-flight bounds and draining for the whole server."""

    config: AdmissionConfig
    max_inflight_seqs: int
    queue: FairQueue = field(init=False)
    limiter: TenantRateLimiter = field(init=False)
    key_limiter: KeyRateLimiter = field(default_factory=KeyRateLimiter)
    drain_rate: DrainRate = field(default_factory=DrainRate)
    inflight_seqs: int = 0
    inflight_tokens: int = 0
    running_by_tenant: dict[str, int] = field(default_factory=dict)
    draining: bool = False
    num_rejected: int = 0
    _queue_times: deque[float] = field(default_factory=lambda: deque(maxlen=QUEUE_TIME_WINDOW))
    _idle: asyncio.Event | None = None

    def __post_init__(self) -> None:
        self.queue = FairQueue(self.config.weights())
        self.limiter = TenantRateLimiter(self.config.rate_limit_requests_per_min, self.config.rate_limit_tokens_per_min)

    # -- the request path -------------------------------------------------------------------
    def enqueue(
        self, request_id: str, tenant: str, priority: int, cost: int, num_seqs: int, key_limits: KeyLimits | None = None
    ) -> Ticket:
        """Admit at once, queue, or refuse (APIError 429/503) — synchronously, before any work."""
        if self.draining:
            raise shutting_down("it takes no new requests")
        now = time.monotonic()
        ticket = Ticket(request_id, tenant, priority, cost, num_seqs, now, key_limits)
        if (len(self.queue) == 0 or self._is_newcomer(ticket)) and self._fits(ticket):
            self._check_rate(ticket)
            self._admit(ticket, now)
            return ticket
        per_tenant = self.config.max_queued_per_tenant or max(1, self.config.max_queued_requests // 2)
        if (
            len(self.queue) >= self.config.max_queued_requests
            or self.queue.by_tenant.get(tenant, 0) >= per_tenant
            or (self.queue.num_tokens + cost > self.config.max_queued_tokens and len(self.queue) > 0)
        ):
            self.num_rejected += 1
            retry = self.retry_after_s()
            logger.info(
                "queue full request_id=%s tenant=%s queued=%d queued_tokens=%d retry_after=%d",
                request_id,
                tenant,
                len(self.queue),
                self.queue.num_tokens,
                retry,
            )
            raise APIError(
                HTTPStatus.TOO_MANY_REQUESTS,
                f"the server's queue is full ({len(self.queue)} requests, {self.queue.num_tokens} estimated "
                f"tokens waiting); retry after {retry} s",
                type="rate_limit_error",
                code="queue_full",
                headers={"Retry-After": str(retry)},
            )
        self._check_rate(ticket)
        ticket.granted = asyncio.get_running_loop().create_future()
        self.queue.push(ticket)
        logger.debug(
            "queued request_id=%s tenant=%s priority=%d position<=%d", request_id, tenant, priority, len(self.queue)
        )
        return ticket

    async def wait(self, ticket: Ticket, deadline: float | None) -> None:
        """Until admitted; APIError 408 past `deadline` (monotonic). Cancellation leaves the queue."""
        if ticket.granted is None:
            return
        timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
        try:
            await asyncio.wait_for(asyncio.shield(ticket.granted), timeout)
        except asyncio.TimeoutError:
            self.release(ticket)
            raise APIError(
                HTTPStatus.REQUEST_TIMEOUT,
                f"the request's deadline passed after {ticket.queue_time:.1f} s waiting in the queue",
                type="timeout_error",
                code="request_timeout",
            ) from None
        except asyncio.CancelledError:
            self.release(ticket)
            raise

    def release(self, ticket: Ticket) -> None:
        """The request is over (any outcome); its share goes to the next in line."""
        if ticket.released:
            return
        ticket.released = True
        if ticket.admitted_at is None:  # gave up waiting (deadline, client gone)
            self.queue.remove(ticket)
            self._notify_idle()
            return
        now = time.monotonic()
        self.inflight_seqs -= ticket.num_seqs
        self.inflight_tokens -= ticket.cost
        left = self.running_by_tenant[ticket.tenant] - 1
        if left:
            self.running_by_tenant[ticket.tenant] = left
        else:
            del self.running_by_tenant[ticket.tenant]
        self.drain_rate.completed(now)
        self._dispatch(now)
        self._notify_idle()

    # -- internals --------------------------------------------------------------------------
    def _check_rate(self, ticket: Ticket) -> None:
        checks = [(self.limiter, ticket.tenant, "tenant")]
        if ticket.key_limits is not None:
            checks.append((self.key_limiter.limiter_for(ticket.key_limits), ticket.key_limits.key_id, "API key"))
        try:
            check_limits(checks, ticket.cost)
        except RateLimitExceeded as e:
            self.num_rejected += 1
            logger.info(
                "rate limited request_id=%s tenant=%s limit=%s retry_after=%d",
                ticket.request_id,
                ticket.tenant,
                e.limit,
                e.retry_after_s,
            )
            raise APIError(
                HTTPStatus.TOO_MANY_REQUESTS,
                str(e),
                type="rate_limit_error",
                code="rate_limit_exceeded",
                headers={"Retry-After": str(e.retry_after_s)},
            ) from None

    def _is_newcomer(self, ticket: Ticket) -> bool:
        """Nothing of its tenant runs or waits, and nothing more urgent waits."""
        head = self.queue.peek()
        return (
            ticket.tenant not in self.running_by_tenant
            and ticket.tenant not in self.queue.by_tenant
            and (head is None or ticket.priority <= head.priority)
        )

    def _active_weight(self, extra: str) -> float | None:
        """Total weight of the active tenants (running or queued, plus `extra`); None when there is
        only one, which then may use every slot."""
        active = self.running_by_tenant.keys() | self.queue.by_tenant.keys() | {extra}
        if len(active) == 1:
            return None
        return sum(self.queue.weights.get(t, 1.0) for t in active)

    def _share(self, tenant: str, active_weight: float | None) -> int:
        """The tenant's weighted share of the in-flight slots, rounded up so that shares never
        leave slots idle."""
        if active_weight is None:
            return self.max_inflight_seqs
        return math.ceil(self.max_inflight_seqs * self.queue.weights.get(tenant, 1.0) / active_weight)

    def _first_fitting(self) -> Ticket | None:
        """Out of queue order, when the head's tenant holds its share: the first ticket of a tenant
        with room. Tenants are checked once each, so a long queue costs one cheap scan."""
        if self.inflight_seqs >= self.max_inflight_seqs:
            return None
        unreserved = max(1, self.max_inflight_seqs - self.config.inflight_reserved_for_new_tenants)
        weight = self._active_weight(next(iter(self.queue.by_tenant), DEFAULT_TENANT))
        room = {
            t
            for t in self.queue.by_tenant
            if t not in self.running_by_tenant
            or (self.inflight_seqs < unreserved and self.running_by_tenant[t] < self._share(t, weight))
        }
        while room:
            ticket = self.queue.first_of(room)
            if ticket is None or self._fits(ticket):
                return ticket
            room.discard(ticket.tenant)  # its next request is too large for what is free
        return None

    def _fits(self, ticket: Ticket) -> bool:
        """Room in the engine; anything fits an empty engine, so no request can wait forever."""
        if self.inflight_seqs == 0:
            return True
        if self.inflight_seqs + ticket.num_seqs > self.max_inflight_seqs:
            return False
        running = self.running_by_tenant.get(ticket.tenant, 0)
        if running:
            unreserved = max(1, self.max_inflight_seqs - self.config.inflight_reserved_for_new_tenants)
            if self.inflight_seqs + ticket.num_seqs > unreserved or running + 1 > self._share(
                ticket.tenant, self._active_weight(ticket.tenant)
            ):
                return False
        limit = self.config.max_inflight_tokens
        return not limit or self.inflight_tokens + ticket.cost <= limit

    def _admit(self, ticket: Ticket, now: float) -> None:
        if self.inflight_seqs == 0:
            self.drain_rate.busy_from(now)
        ticket.admitted_at = now
        self.inflight_seqs += ticket.num_seqs
        self.inflight_tokens += ticket.cost
        self.running_by_tenant[ticket.tenant] = self.running_by_tenant.get(ticket.tenant, 0) + 1
        self._queue_times.append(now - ticket.arrival)

    def _dispatch(self, now: float) -> None:
        while (head := self.queue.peek()) is not None and (
            self._fits(head) or (head := self._first_fitting()) is not None
        ):
            self.queue.pop(head)
            self._admit(head, now)
            assert head.granted is not None
            if not head.granted.done():
                head.granted.set_result(None)
            logger.debug(
                "admitted request_id=%s tenant=%s priority=%d queue_s=%.3f",
                head.request_id,
                head.tenant,
                head.priority,
                now - head.arrival,
            )

    # -- observability and draining ---------------------------------------------------------
    def retry_after_s(self) -> int:
        wait = self.drain_rate.seconds_for(len(self.queue) + 1)
        return 1 if wait is None else max(1, min(MAX_RETRY_AFTER_S, math.ceil(wait)))

    def snapshot(self, tenant: str | None = None) -> dict[str, Any]:
        wait = self.drain_rate.seconds_for(len(self.queue)) if len(self.queue) else 0.0
        times = sorted(self._queue_times)
        out: dict[str, Any] = {
            "queued": len(self.queue),
            "queued_tokens": self.queue.num_tokens,
            "inflight_seqs": self.inflight_seqs,
            "inflight_tokens": self.inflight_tokens,
            "max_inflight_seqs": self.max_inflight_seqs,
            "drain_rate_per_s": self.drain_rate.per_s,
            "estimated_wait_s": wait,
            "rejected": self.num_rejected,
            "queue_time_p50_s": _percentile(times, 0.50),
            "queue_time_p99_s": _percentile(times, 0.99),
            "draining": self.draining,
        }
        if tenant is not None:
            out = {
                "tenant": tenant,
                "tenant_queued": self.queue.by_tenant.get(tenant, 0),
                "tenant_running": self.running_by_tenant.get(tenant, 0),
                **out,
            }
        return out

    @property
    def is_idle(self) -> bool:
        return len(self.queue) == 0 and self.inflight_seqs == 0

    async def drain(self, timeout_s: float) -> bool:
        """Refuse new requests and wait for queued and running ones; False if time ran out."""
        self.draining = True
        self._idle = asyncio.Event()
        self._notify_idle()
        try:
            await asyncio.wait_for(self._idle.wait(), timeout_s)
        except asyncio.TimeoutError:
            return False
        return True

    def _notify_idle(self) -> None:
        if self._idle is not None and self.is_idle:
            self._idle.set()


def _percentile(sorted_values: list[float], q: float) -> float | None:
    if not sorted_values:
        return None
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]
