"""Maps requests to KV blocks of every cache group: the coordinator of one manager per group
(seekd/engine/kv_cache_groups.py), the prefix-cache lookup across groups, and the one hash chain.

All groups draw from one BlockPool (see kv_cache_layout.py). A sliding-window group gives back the
blocks that fell entirely out of its window; a full-context group keeps them.

Prefix caching: one hash chain per request at `block_size` tokens; a group's block i is registered
under (group, chain hash at the block's last token). A hit of L tokens needs every group to serve it:
each full-context group its first L / block_tokens blocks, each sliding group the blocks of the
tokens the first query after L can still see ([L - window + 1, L)). L is a multiple of every group's
block tokens; the longest such L that all groups serve is the hit (the min over groups, stepping down
when a sliding group's window blocks for a longer prefix were evicted).
"""

from __future__ import annotations

import hashlib
import math
from array import array

from seekd.engine.block_pool import BlockPool, KVBlock
from seekd.engine.kv_cache_groups import group_manager
from seekd.engine.kv_cache_layout import CacheGroupShape
from seekd.engine.multimodal import block_image_key
from seekd.engine.request import Request


def hash_block(parent: bytes, token_ids: list[int], extra: bytes = b"") -> bytes:
    """Chain hash of one full block: it names the block's tokens *and* everything before them;
    `extra` names what else fills the block (the images behind its image tokens)."""
    h = hashlib.sha256(parent)
    h.update(array("q", token_ids).tobytes())
    if extra:
        h.update(extra)
    return h.digest()


def root_hash(cache_salt: str | None, lora_key: str | None = None) -> bytes:
    """Start of a request's hash chain; different salts never share a block, nor do different LoRA
    adapters or loads of one (an adapter changes every layer's keys and values)."""
    key = (cache_salt or "").encode()
    if lora_key is not None:
        key += b"\x00lora:" + lora_key.encode()
    return hashlib.sha256(b"seekd-prefix:" + key).digest()


class KVCacheManager:
    def __init__(
        self,
        num_blocks: int,
        block_size: int,
        enable_prefix_caching: bool = True,
        groups: list[CacheGroupShape] | None = None,
    ) -> None:
        """`block_size` is the hash granularity; every group's block tokens are a multiple of it.
        Without `groups`, one full-context group of `block_size`-token blocks."""
        self.block_size = block_size
        self.groups = groups or [CacheGroupShape("kv", block_size)]
        for g in self.groups:
            if g.block_tokens % block_size:
                raise ValueError(
                    f"group {g.name}: {g.block_tokens} tokens per block is not a multiple of block_size {block_size}"
                )
        self.hit_granularity = math.lcm(*(g.block_tokens for g in self.groups))
        self.enable_prefix_caching = enable_prefix_caching
        self.pool = BlockPool(num_blocks, enable_prefix_caching)
        tagged = len(self.groups) > 1
        self.managers = [
            group_manager(shape, self.pool, block_size, bytes([g]) if tagged else b"")
            for g, shape in enumerate(self.groups)
        ]
        self.prefix_queries = 0  # tokens looked up in the prefix cache
        self.prefix_hits = 0  # tokens found

    @property
    def usage(self) -> float:
        return self.pool.usage

    def holds(self, request_id: str) -> bool:
        return any(request_id in m.req_blocks for m in self.managers)

    def block_ids(self, request_id: str) -> list[list[int]]:
        """Per group, the request's block table (the null block 0 where a sliding group freed one)."""
        return [m.block_ids(request_id) for m in self.managers]

    def num_held_blocks(self, request_id: str) -> list[int]:
        """Per group, the blocks the request holds (none listed for a request that holds none)."""
        if not self.holds(request_id):
            return []
        return [m.num_held_blocks(request_id) for m in self.managers]

    def _update_block_hashes(self, request: Request) -> None:
        num_full = request.num_known_tokens // self.block_size
        hashes = request.block_hashes
        parent = hashes[-1] if hashes else root_hash(request.cache_salt, request.lora_key)
        bs = self.block_size
        for i in range(len(hashes), num_full):
            extra = block_image_key(request.images, i * bs, (i + 1) * bs) if request.images else b""
            parent = hash_block(parent, request.all_token_ids[i * bs : (i + 1) * bs], extra)
            hashes.append(parent)

    def get_computed_blocks(self, request: Request) -> tuple[list[list[KVBlock]], int]:
        """Longest cached prefix that every group serves (see the module docstring): per group its
        blocks (null where a sliding group needs none), and the hit length in tokens. At least one
        token is always left to compute, because the last prompt token's logits are needed to sample."""
        empty: list[list[KVBlock]] = [[] for _ in self.groups]
        if not self.enable_prefix_caching:
            return empty, 0
        self._update_block_hashes(request)
        step = self.hit_granularity
        hit = (request.num_tokens - 1) // step * step
        for m in self.managers:
            hit = min(hit, m.num_cached_blocks(request, hit // m.block_tokens) * m.block_tokens // step * step)
        while hit > 0:
            per_group = []
            for m in self.managers:
                blocks = m.cached_blocks(request, hit)
                if blocks is None:
                    break
                per_group.append(blocks)
            else:
                return per_group, hit
            hit -= step
        return empty, 0

    def record_prefix_lookup(self, num_tokens: int, num_hit_tokens: int) -> None:
        """Count a lookup once its request is scheduled: a request that waits for blocks is
        looked up again every step, and those retries are not new queries."""
        self.prefix_queries += num_tokens
        self.prefix_hits += num_hit_tokens

    def allocate_slots(
        self, request: Request, num_new_tokens: int, computed_blocks: list[list[KVBlock]] | None = None
    ) -> bool:
        """Make room for `num_new_tokens` more tokens after the computed ones (and after
        `computed_blocks`, a prefix-cache hit of a request not yet running). False if out of blocks."""
        rid = request.request_id
        for m in self.managers:
            m.remove_skipped_blocks(rid, request.num_computed_tokens)
        hits = computed_blocks or [None] * len(self.managers)
        plan = []  # per group: (null blocks to append, new blocks to allocate)
        for m, hit in zip(self.managers, hits):
            num_computed = request.num_computed_tokens + (len(hit) * m.block_tokens if hit is not None else 0)
            plan.append(m.plan(rid, num_computed, num_computed + num_new_tokens, hit))
        revived = sum(1 for hit in hits if hit for b in hit if b.ref_cnt == 0)
        if sum(new for _, new in plan) + revived > self.pool.num_free_blocks:
            return False
        if any(hits):  # every hit first: allocating may evict a cached block another group revives
            for m, hit in zip(self.managers, hits):
                m.take_hit(rid, hit)
        for m, (nulls, new) in zip(self.managers, plan):
            m.append(rid, nulls, new)
        return True

    def cache_computed_blocks(self, request: Request) -> None:
        """Register blocks that became full and computed, so later requests can reuse them."""
        if not self.enable_prefix_caching:
            return
        updating = [m for m in self.managers if m.num_new_full_blocks(request)]
        if updating:
            self._update_block_hashes(request)
        for m in updating:
            m.cache_full_blocks(request)

    def free(self, request: Request) -> None:
        for m in self.managers:
            m.free(request.request_id)

    def reset_prefix_cache(self) -> bool:
        return self.pool.reset_prefix_cache()
