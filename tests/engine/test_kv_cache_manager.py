from __future__ import annotations

from seekd.engine.kv_cache_manager import KVCacheManager
from seekd.engine.request import Request
from seekd.sampling_params import SamplingParams


def make_request(rid: str, tokens: list[int], salt: str | None = None) -> Request:
    return Request(rid, tokens, SamplingParams(), max_output_tokens=8, cache_salt=salt)


def run_prefill(kv: KVCacheManager, request: Request) -> None:
    blocks, hit = kv.get_computed_blocks(request)
    assert kv.allocate_slots(request, request.num_tokens - hit, blocks)
    request.num_computed_tokens = request.num_tokens
    kv.cache_computed_blocks(request)


def test_shared_prefix_hits_whole_blocks_only():
    kv = KVCacheManager(num_blocks=32, block_size=4)
    first = make_request("a", list(range(10)))
    run_prefill(kv, first)
    second = make_request("b", [*range(9), 99])
    blocks, hit = kv.get_computed_blocks(second)
    assert hit == 8  # two full blocks shared; the third block differs
    assert [b.block_id for b in blocks] == kv.block_ids("a")[:2]


def test_full_hit_still_leaves_the_last_token_to_compute():
    kv = KVCacheManager(num_blocks=32, block_size=4)
    run_prefill(kv, make_request("a", list(range(8))))
    _, hit = kv.get_computed_blocks(make_request("b", list(range(8))))
    assert hit == 4


def test_cache_salt_separates_identical_prompts():
    kv = KVCacheManager(num_blocks=32, block_size=4)
    run_prefill(kv, make_request("a", list(range(12)), salt="tenant-a"))
    _, hit_other = kv.get_computed_blocks(make_request("b", list(range(12)), salt="tenant-b"))
    _, hit_same = kv.get_computed_blocks(make_request("c", list(range(12)), salt="tenant-a"))
    assert hit_other == 0 and hit_same == 8


def test_allocation_fails_cleanly_when_out_of_blocks_and_free_returns_all():
    kv = KVCacheManager(num_blocks=5, block_size=4)
    a = make_request("a", list(range(12)))
    assert kv.allocate_slots(a, 12)
    b = make_request("b", list(range(100, 108)))
    assert not kv.allocate_slots(b, 8)
    assert kv.block_ids("b") == []
    kv.free(a)
    assert kv.pool.num_free_blocks == 4
