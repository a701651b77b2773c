"""Maps requests to KV blocks: allocation, prefix-cache lookup and registration, freeing."""

from __future__ import annotations

import hashlib
from array import array

from seekd.engine.block_pool import BlockPool, KVBlock
from seekd.engine.request import Request


def hash_block(parent: bytes, token_ids: list[int]) -> bytes:
    """Chain hash of one full block: it names the block's tokens *and* everything before them."""
    h = hashlib.sha256(parent)
    h.update(array("q", token_ids).tobytes())
    return h.digest()


def root_hash(cache_salt: str | None) -> bytes:
    """Start of a request's hash chain; different salts never share a block."""
    return hashlib.sha256(b"seekd-prefix:" + (cache_salt or "").encode()).digest()


class KVCacheManager:
    def __init__(self, num_blocks: int, block_size: int, enable_prefix_caching: bool = True) -> None:
        self.block_size = block_size
        self.enable_prefix_caching = enable_prefix_caching
        self.pool = BlockPool(num_blocks, enable_prefix_caching)
        self.req_blocks: dict[str, list[KVBlock]] = {}
        self._num_hashed_blocks: dict[str, int] = {}
        self.prefix_queries = 0  # tokens looked up in the prefix cache
        self.prefix_hits = 0  # tokens found

    @property
    def usage(self) -> float:
        return self.pool.usage

    def block_ids(self, request_id: str) -> list[int]:
        return [b.block_id for b in self.req_blocks.get(request_id, ())]

    def _update_block_hashes(self, request: Request) -> None:
        num_full = request.num_tokens // self.block_size
        hashes = request.block_hashes
        parent = hashes[-1] if hashes else root_hash(request.cache_salt)
        bs = self.block_size
        for i in range(len(hashes), num_full):
            parent = hash_block(parent, request.all_token_ids[i * bs : (i + 1) * bs])
            hashes.append(parent)

    def get_computed_blocks(self, request: Request) -> tuple[list[KVBlock], int]:
        """Longest cached prefix of the request, in whole blocks. At least one token is always
        left to compute, because the last prompt token's logits are needed to sample."""
        if not self.enable_prefix_caching:
            return [], 0
        self._update_block_hashes(request)
        max_blocks = (request.num_tokens - 1) // self.block_size
        hits: list[KVBlock] = []
        for block_hash in request.block_hashes[:max_blocks]:
            block = self.pool.get_cached_block(block_hash)
            if block is None:
                break
            hits.append(block)
        return hits, len(hits) * self.block_size

    def record_prefix_lookup(self, num_tokens: int, num_hit_tokens: int) -> None:
        """Count a lookup once its request is scheduled: a request that waits for blocks is
        looked up again every step, and those retries are not new queries."""
        self.prefix_queries += num_tokens
        self.prefix_hits += num_hit_tokens

    def allocate_slots(
        self, request: Request, num_new_tokens: int, computed_blocks: list[KVBlock] | None = None
    ) -> bool:
        """Make room for `num_new_tokens` more tokens after the computed ones (and after
        `computed_blocks`, a prefix-cache hit of a request not yet running). False if out of blocks."""
        computed_blocks = computed_blocks or []
        held = self.req_blocks.get(request.request_id, [])
        num_computed = request.num_computed_tokens + len(computed_blocks) * self.block_size
        needed = -(-(num_computed + num_new_tokens) // self.block_size)
        num_new_blocks = needed - len(held) - len(computed_blocks)
        # reviving a cached block that sits in the free queue consumes a free block too
        num_revived = sum(1 for b in computed_blocks if b.ref_cnt == 0)
        if num_new_blocks + num_revived > self.pool.num_free_blocks:
            return False
        self.pool.touch(computed_blocks)
        blocks = self.req_blocks.setdefault(request.request_id, [])
        if computed_blocks:
            blocks.extend(computed_blocks)
            self._num_hashed_blocks[request.request_id] = len(blocks)
        if num_new_blocks > 0:
            blocks.extend(self.pool.allocate(num_new_blocks))
        return True

    def cache_computed_blocks(self, request: Request) -> None:
        """Register blocks that became full and computed, so later requests can reuse them."""
        if not self.enable_prefix_caching:
            return
        rid = request.request_id
        num_full = request.num_computed_tokens // self.block_size
        start = self._num_hashed_blocks.get(rid, 0)
        if num_full <= start:
            return
        self._update_block_hashes(request)
        blocks = self.req_blocks[rid]
        for i in range(start, num_full):
            self.pool.cache_block(blocks[i], request.block_hashes[i])
        self._num_hashed_blocks[rid] = num_full

    def free(self, request: Request) -> None:
        blocks = self.req_blocks.pop(request.request_id, [])
        self._num_hashed_blocks.pop(request.request_id, None)
        self.pool.free(list(reversed(blocks)))

    def reset_prefix_cache(self) -> bool:
        return self.pool.reset_prefix_cache()
