from __future__ import annotations

from seekd.engine.kv_cache_layout import CacheGroupShape
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
    assert [b.block_id for b in blocks[0]] == kv.block_ids("a")[0][:2]


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
    assert kv.block_ids("b") == [[]]
    kv.free(a)
    assert kv.pool.num_free_blocks == 4


# Several cache groups through one pool: a sliding window of 6 tokens in 4-token blocks, and a
# full-context group (compressed entries, say) in 8-token blocks. Hits come in multiples of 8.
WINDOW = CacheGroupShape("window", block_tokens=4, sliding_window=6)
ENTRIES = CacheGroupShape("entries", block_tokens=8)


def hybrid(num_blocks: int = 64) -> KVCacheManager:
    return KVCacheManager(num_blocks, block_size=4, groups=[WINDOW, ENTRIES])


def test_each_group_allocates_by_its_own_tokens_per_block():
    kv = hybrid()
    request = make_request("a", list(range(21)))
    assert kv.allocate_slots(request, 21)
    # window: tokens 0..20 in 6 blocks of 4; entries: in 3 blocks of 8
    assert kv.num_held_blocks("a") == [6, 3]
    assert kv.pool.num_free_blocks == 63 - 9
    kv.free(request)
    assert kv.pool.num_free_blocks == 63


def test_sliding_group_frees_blocks_that_left_the_window():
    kv = hybrid()
    request = make_request("a", list(range(10)))
    run_prefill(kv, request)
    for step in range(40):
        request.append_output_token(step)
        assert kv.allocate_slots(request, 1)
        request.num_computed_tokens += 1
        kv.cache_computed_blocks(request)
        window_blocks = kv.block_ids("a")[0]
        first_needed = request.num_computed_tokens - 1 - WINDOW.sliding_window + 1
        assert all(b == 0 for b in window_blocks[: first_needed // 4])  # freed: the null block
        assert all(b != 0 for b in window_blocks[first_needed // 4 :])
        assert kv.num_held_blocks("a")[0] <= (6 - 1 + 1) // 4 + 2
    assert kv.num_held_blocks("a")[1] == -(-50 // 8)  # the full-context group keeps every block
    held = sum(kv.num_held_blocks("a"))
    assert kv.pool.num_free_blocks == 63 - held
    kv.free(request)
    assert kv.pool.num_free_blocks == 63


def test_prefix_hit_is_a_multiple_of_every_groups_block_and_needs_only_the_window_blocks():
    kv = hybrid()
    a = make_request("a", list(range(24)))
    run_prefill(kv, a)
    kv.free(a)  # its blocks stay cached
    blocks, hit = kv.get_computed_blocks(make_request("b", list(range(30))))
    assert hit == 24
    window, entries = blocks
    # the first query after the hit (position 24) sees tokens 19..24: window blocks 4 and 5 only
    assert [b.block_id for b in window[:4]] == [0] * 4 and all(b.block_id for b in window[4:])
    assert len(window) == 6 and len(entries) == 3
    _, hit = kv.get_computed_blocks(make_request("c", list(range(23))))
    assert hit == 16  # at most 22 tokens may hit, rounded down to a multiple of 8


def test_hit_steps_down_when_a_sliding_groups_window_blocks_were_evicted():
    kv = hybrid(num_blocks=10)  # exactly the 9 blocks a 24-token request holds
    a = make_request("a", list(range(24)))
    run_prefill(kv, a)
    kv.free(a)
    # freed tail first: window blocks 5, 4, 3, 2, 1, 0, then entry blocks 2, 1, 0 join the LRU queue
    filler = make_request("filler", [1000])
    assert kv.allocate_slots(filler, 1)  # one block per group: evicts window blocks 5 and 4
    blocks, hit = kv.get_computed_blocks(make_request("b", list(range(30))))
    # at 24 the window needs blocks 4 and 5 (evicted); at 16 it needs tokens 11..15: blocks 2 and 3, cached
    assert hit == 16
    assert [b.block_id == 0 for b in blocks[0]] == [True, True, False, False] and len(blocks[1]) == 2
    b = make_request("b", list(range(30)))
    blocks, hit = kv.get_computed_blocks(b)
    # tokens 16..29 would need 4 revived + 6 new blocks; the filler left 7 of the 9 usable ones
    assert not kv.allocate_slots(b, 30 - hit, blocks) and kv.block_ids("b") == [[], []]
    assert kv.allocate_slots(b, 8, blocks)  # a chunk of tokens 16..23: 4 revived + 3 new
    assert kv.num_held_blocks("b") == [2 + 2, 2 + 1] and kv.pool.num_free_blocks == 0
    kv.free(b)
    kv.free(filler)
    assert kv.pool.num_free_blocks == 9
