"""Unit tests of the admission queue's parts: fair ordering, priorities, bounds, token buckets."""

from __future__ import annotations

import asyncio
import itertools

import pytest

from seekd.config import AdmissionConfig
from seekd.errors import APIError
from seekd.ops.limits import RateLimitExceeded, TenantRateLimiter, TokenBucket
from seekd.server.admission import AdmissionController, FairQueue, Ticket

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


def test_reserved_slot_lets_a_newcomer_start_at_once_and_out_of_queue_order() -> None:
    async def scenario() -> None:
        ctl = AdmissionController(AdmissionConfig(max_queued_requests=64), max_inflight_seqs=4)
        flood = [ctl.enqueue(f"f{i}", "flood", 0, 10, 1) for i in range(10)]
        assert [t.admitted_at is not None for t in flood].count(True) == 3  # the 4th slot is reserved
        quiet = ctl.enqueue("q0", "quiet", 0, 10, 1)
        assert quiet.admitted_at is not None  # ahead of 7 queued flood requests
        other = ctl.enqueue("o0", "other", 0, 10, 1)
        assert other.admitted_at is None  # no slot left: it queues, behind flood's head
        ctl.release(quiet)  # the freed reserved slot goes to the newcomer, not to flood's head
        await ctl.wait(other, None)
        assert other.admitted_at is not None and sum(t.admitted_at is not None for t in flood) == 3
        ctl.release(flood[0])  # the reserve stays free for the next newcomer: flood runs 2 beside `other`
        assert sum(t.admitted_at is not None for t in flood) == 3 and ctl.inflight_seqs == 3
        low = ctl.enqueue("l0", "low", 1, 10, 1)
        assert low.admitted_at is None  # a newcomer, but less urgent than the queue's head: it queues
        urgent = ctl.enqueue("u0", "urgent", -1, 10, 1)
        assert urgent.admitted_at is not None and ctl.inflight_seqs == 4

    asyncio.run(scenario())


def test_without_reserved_slots_a_tenant_may_fill_the_engine() -> None:
    ctl = AdmissionController(AdmissionConfig(inflight_reserved_for_new_tenants=0), max_inflight_seqs=4)

    async def scenario() -> None:
        tickets = [ctl.enqueue(f"f{i}", "flood", 0, 10, 1) for i in range(5)]
        assert [t.admitted_at is not None for t in tickets] == [True] * 4 + [False]

    asyncio.run(scenario())


def test_active_tenants_hold_at_most_their_weighted_share_of_the_slots() -> None:
    async def scenario() -> None:
        ctl = AdmissionController(AdmissionConfig(max_queued_requests=64, tenant_weights="a=3"), max_inflight_seqs=8)
        a = [ctl.enqueue(f"a{i}", "a", 0, 10, 1) for i in range(12)]
        assert ctl.running_by_tenant == {"a": 7}  # alone: every slot but the reserved one
        b = [ctl.enqueue(f"b{i}", "b", 0, 10, 1) for i in range(12)]
        assert ctl.running_by_tenant == {"a": 7, "b": 1}  # b's first request took the reserved slot
        for ticket in a[:4]:
            ctl.release(ticket)
        # shares with weights 3:1 of 8 slots are 6 and 2; one slot stays free for newcomers
        assert ctl.running_by_tenant["b"] == 2 and ctl.running_by_tenant["a"] <= 6
        assert ctl.inflight_seqs <= 7
        for ticket in [*a, *b]:
            ctl.release(ticket)
        assert ctl.is_idle

    asyncio.run(scenario())
