"""Unit tests of the admission queue's parts: fair ordering, priorities, bounds, token buckets."""

from __future__ import annotations

import asyncio
import itertools

import pytest

from seekd.config import AdmissionConfig
from seekd.ops.limits import RateLimitExceeded, TenantRateLimiter, TokenBucket
from seekd.server.admission import AdmissionController, FairQueue, Ticket
from seekd.server.errors import APIError

_ids = itertools.count()


def ticket(tenant: str, priority: int = 0, cost: int = 100, num_seqs: int = 1) -> Ticket:
    return Ticket(f"r{next(_ids)}", tenant, priority, cost, num_seqs, arrival=0.0)


def drain(queue: FairQueue) -> list[Ticket]:
    out = []
    while len(queue):
        out.append(queue.pop())
    return out


def test_flooding_tenant_cannot_starve_a_quiet_one() -> None:
    queue = FairQueue()
    for _ in range(50):
        queue.push(ticket("flood"))
    first_popped = queue.pop()
    assert first_popped.tenant == "flood"
    queue.push(ticket("quiet"))
    # The quiet tenant's request goes ahead of the 49 flood requests that arrived before it.
    assert queue.pop().tenant == "quiet"


def test_equal_tenants_alternate_and_weights_share_by_cost() -> None:
    queue = FairQueue()
    for _ in range(4):
        queue.push(ticket("a"))
        queue.push(ticket("b"))
    assert [t.tenant for t in drain(queue)] == ["a", "b"] * 4

    weighted = FairQueue({"gold": 3.0})
    for _ in range(12):
        weighted.push(ticket("gold"))
        weighted.push(ticket("free"))
    first_eight = [t.tenant for t in drain(weighted)[:8]]
    assert first_eight.count("gold") == 6 and first_eight.count("free") == 2


def test_fairness_is_by_tokens_not_requests() -> None:
    queue = FairQueue()
    for _ in range(4):
        queue.push(ticket("big", cost=1000))
    for _ in range(10):
        queue.push(ticket("small", cost=100))
    order = [t.tenant for t in drain(queue)]
    assert order[:11].count("small") == 10  # ten small requests cost what one big one costs


def test_priority_classes_are_strict_and_fifo_within_a_tenant() -> None:
    queue = FairQueue()
    low = [ticket("a", priority=5) for _ in range(3)]
    for t in low:
        queue.push(t)
    high = ticket("a", priority=-1)
    queue.push(high)
    order = drain(queue)
    assert order[0] is high and order[1:] == low


def test_removed_tickets_are_skipped_and_uncounted() -> None:
    queue = FairQueue()
    tickets = [ticket("a") for _ in range(3)]
    for t in tickets:
        queue.push(t)
    queue.remove(tickets[0])
    assert len(queue) == 2 and queue.num_tokens == 200 and queue.by_tenant == {"a": 2}
    assert drain(queue) == tickets[1:]
    assert queue.num_tokens == 0 and queue.by_tenant == {}


def test_token_bucket_bursts_then_refills_at_its_rate() -> None:
    bucket = TokenBucket(rate_per_s=2.0, capacity=4.0, now=0.0)
    for _ in range(4):
        assert bucket.wait_time(1, now=0.0) == 0
        bucket.take(1)
    assert bucket.wait_time(1, now=0.0) == pytest.approx(0.5)
    assert bucket.wait_time(1, now=0.5) == 0
    assert bucket.wait_time(100, now=0.5) == pytest.approx(1.5)  # capped at capacity: wait until full


def test_rate_limiter_refuses_without_charging_and_says_when() -> None:
    limiter = TenantRateLimiter(requests_per_min=2, tokens_per_min=1000)
    limiter.check("a", 400, now=0.0)
    limiter.check("a", 400, now=0.0)
    with pytest.raises(RateLimitExceeded) as e:
        limiter.check("a", 10, now=0.0)
    assert e.value.limit == "requests" and e.value.retry_after_s == 30
    limiter.check("b", 900, now=0.0)  # other tenants have their own buckets
    with pytest.raises(RateLimitExceeded) as e:
        limiter.check("b", 900, now=30.0)
    assert e.value.limit == "tokens"
    limiter.check("b", 400, now=30.0)  # the refused 900 did not use up the request allowance
    assert not TenantRateLimiter(0, 0).enabled


def test_controller_bounds_inflight_queue_and_answers_429_with_retry_after() -> None:
    async def scenario() -> None:
        config = AdmissionConfig(max_queued_requests=2, max_queued_per_tenant=2)
        ctl = AdmissionController(config, max_inflight_seqs=1)
        running = ctl.enqueue("r0", "a", 0, 10, 1)
        assert running.admitted_at is not None
        waiting = [ctl.enqueue(f"r{i}", "a", 0, 10, 1) for i in (1, 2)]
        with pytest.raises(APIError) as e:
            ctl.enqueue("r3", "a", 0, 10, 1)
        assert e.value.status == 429 and e.value.headers["Retry-After"] == "1"
        assert ctl.snapshot("a")["tenant_queued"] == 2
        ctl.release(running)
        await ctl.wait(waiting[0], None)
        assert waiting[0].admitted_at is not None and waiting[1].admitted_at is None
        with pytest.raises(APIError) as e:  # deadline while queued: 408, and it leaves the queue
            await ctl.wait(waiting[1], deadline=0.0)
        assert e.value.status == 408 and len(ctl.queue) == 0
        ctl.release(waiting[0])
        assert ctl.is_idle and ctl.drain_rate.per_s is not None
        assert await ctl.drain(1.0)
        with pytest.raises(APIError) as e:
            ctl.enqueue("r4", "a", 0, 10, 1)
        assert e.value.status == 503

    asyncio.run(scenario())
