from __future__ import annotations

import pytest

from seekd.engine.block_pool import BlockPool


def test_block_zero_is_reserved_and_never_allocated():
    pool = BlockPool(4)
    assert pool.num_free_blocks == 3
    blocks = pool.allocate(3)
    assert 0 not in [b.block_id for b in blocks]
    with pytest.raises(RuntimeError):
        pool.allocate(1)


def test_freed_cached_block_can_be_revived_until_evicted():
    pool = BlockPool(3)
    (a,) = pool.allocate(1)
    pool.cache_block(a, b"h1")
    pool.free([a])
    assert pool.get_cached_block(b"h1") is a
    pool.touch([a])
    assert a.ref_cnt == 1 and pool.num_free_blocks == 1
    pool.free([a])
    pool.allocate(2)  # reuses a: its hash must be forgotten
    assert pool.get_cached_block(b"h1") is None


def test_lru_evicts_least_recently_freed_first():
    pool = BlockPool(4)
    a, b, c = pool.allocate(3)
    for block, h in ((a, b"a"), (b, b"b"), (c, b"c")):
        pool.cache_block(block, h)
    pool.free([c, b, a])  # tail first, as KVCacheManager frees
    (reused,) = pool.allocate(1)
    assert reused is c
    assert pool.get_cached_block(b"a") is a


def test_double_free_is_an_error():
    pool = BlockPool(3)
    (a,) = pool.allocate(1)
    pool.free([a])
    with pytest.raises(AssertionError):
        pool.free([a])
