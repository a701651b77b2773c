"""Maps requests to KV blocks of every cache group: allocation, sliding-window freeing, prefix-cache
lookup and registration, freeing.

All groups draw from one BlockPool (see kv_cache_layout.py). Per request and group the manager keeps
a block list indexed by block number (block i covers tokens [i * block_tokens, (i + 1) * block_tokens));
a sliding-window group replaces blocks that fell entirely out of its window by the null block and
gives them back to the pool, so it holds at most (window - 1 + chunk) / block_tokens + 2 blocks.

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
from seekd.engine.kv_cache_layout import CacheGroupShape
from seekd.engine.request import Request
from seekd.intmath import cdiv


def hash_block(parent: bytes, token_ids: list[int]) -> bytes:
    """Chain hash of one full block: it names the block's tokens *and* everything before them."""
    h = hashlib.sha256(parent)
    h.update(array("q", token_ids).tobytes())
    return h.digest()


def root_hash(cache_salt: str | None) -> bytes:
    """Start of a request's hash chain; different salts never share a block."""
    return hashlib.sha256(b"seekd-prefix:" + (cache_salt or "").encode()).digest()


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
        self._sliding = [i for i, g in enumerate(self.groups) if g.sliding_window is not None]
        self._block_tokens = [g.block_tokens for g in self.groups]
        self._dims = [(g.block_tokens, g.sliding_window) for g in self.groups]
        self.enable_prefix_caching = enable_prefix_caching
        self.pool = BlockPool(num_blocks, enable_prefix_caching)
        self.req_blocks: dict[str, list[list[KVBlock]]] = {}
        self._num_hashed_blocks: dict[str, list[int]] = {}
        self.prefix_queries = 0  # tokens looked up in the prefix cache
        self.prefix_hits = 0  # tokens found

    @property
    def usage(self) -> float:
        return self.pool.usage

    def block_ids(self, request_id: str) -> list[list[int]]:
        """Per group, the request's block table (the null block 0 where a sliding group freed one)."""
        held = self.req_blocks.get(request_id)
        if held is None:
            return [[] for _ in self.groups]
        return [[b.block_id for b in blocks] for blocks in held]

    def num_held_blocks(self, request_id: str) -> list[int]:
        null = self.pool.null_block
        return [sum(b is not null for b in blocks) for blocks in self.req_blocks.get(request_id, ())]

    def _update_block_hashes(self, request: Request) -> None:
        num_full = request.num_known_tokens // self.block_size
        hashes = request.block_hashes
        parent = hashes[-1] if hashes else root_hash(request.cache_salt)
        bs = self.block_size
        for i in range(len(hashes), num_full):
            parent = hash_block(parent, request.all_token_ids[i * bs : (i + 1) * bs])
            hashes.append(parent)

    def _group_hash(self, request: Request, g: int, i: int) -> bytes:
        """Key of group g's block i: the chain hash at the block's last token, tagged with the group."""
        chain = request.block_hashes[(i + 1) * self.groups[g].block_tokens // self.block_size - 1]
        return chain if len(self.groups) == 1 else bytes([g]) + chain

    def _cached(self, request: Request, g: int, first: int, end: int) -> list[KVBlock] | None:
        """Group g's cached blocks first..end-1 of the request's prefix, or None if one is missing."""
        blocks = []
        for i in range(first, end):
            block = self.pool.get_cached_block(self._group_hash(request, g, i))
            if block is None:
                return None
            blocks.append(block)
        return blocks

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
        for g, shape in enumerate(self.groups):
            if shape.sliding_window is None:
                n = 0
                while n < hit // shape.block_tokens and self.pool.get_cached_block(self._group_hash(request, g, n)):
                    n += 1
                hit = min(hit, n * shape.block_tokens // step * step)
        while hit > 0:
            per_group = []
            for g, shape in enumerate(self.groups):
                skip = shape.first_needed_token(hit) // shape.block_tokens
                blocks = self._cached(request, g, skip, hit // shape.block_tokens)
                if blocks is None:
                    break
                per_group.append([self.pool.null_block] * skip + blocks)
            else:
                return per_group, hit
            hit -= step
        return empty, 0

    def record_prefix_lookup(self, num_tokens: int, num_hit_tokens: int) -> None:
        """Count a lookup once its request is scheduled: a request that waits for blocks is
        looked up again every step, and those retries are not new queries."""
        self.prefix_queries += num_tokens
        self.prefix_hits += num_hit_tokens

    def _free_out_of_window(self, held: list[list[KVBlock]], num_computed: int) -> None:
        """Give back the sliding groups' blocks that no query of this request reads again."""
        null = self.pool.null_block
        for g in self._sliding:
            shape, blocks = self.groups[g], held[g]
            skip = min(shape.first_needed_token(num_computed) // shape.block_tokens, len(blocks))
            dropped = [b for b in blocks[:skip] if b is not null]
            if dropped:
                blocks[:skip] = [null] * skip
                self.pool.free(dropped[::-1])

    def allocate_slots(
        self, request: Request, num_new_tokens: int, computed_blocks: list[list[KVBlock]] | None = None
    ) -> bool:
        """Make room for `num_new_tokens` more tokens after the computed ones (and after
        `computed_blocks`, a prefix-cache hit of a request not yet running). False if out of blocks."""
        held = self.req_blocks.get(request.request_id)
        num_computed = request.num_computed_tokens
        if held is not None and self._sliding:
            self._free_out_of_window(held, num_computed)
        null = self.pool.null_block
        revived = 0
        if computed_blocks is not None:
            num_computed += len(computed_blocks[0]) * self.groups[0].block_tokens
            revived = sum(1 for blocks in computed_blocks for b in blocks if b.ref_cnt == 0)
        total = num_computed + num_new_tokens
        plan = []  # per group: (null blocks to append, new blocks to allocate)
        num_new = 0
        for g, (block_tokens, window) in enumerate(self._dims):
            needed = cdiv(total, block_tokens)
            start = len(held[g]) if held is not None else 0
            if computed_blocks is not None:
                start += len(computed_blocks[g])
            nulls = 0
            if window is not None:
                nulls = max(0, min(max(0, num_computed - window + 1) // block_tokens, needed) - start)
            new = max(0, needed - start - nulls)
            num_new += new
            plan.append((nulls, new))
        if num_new + revived > self.pool.num_free_blocks:
            return False
        if held is None:
            held = self.req_blocks[request.request_id] = [[] for _ in self.groups]
        if computed_blocks is not None and computed_blocks[0]:
            for mine, hit in zip(held, computed_blocks):
                self.pool.touch([b for b in hit if b is not null])
                mine.extend(hit)
            self._num_hashed_blocks[request.request_id] = [len(b) for b in held]
        for mine, (nulls, new) in zip(held, plan):
            if nulls:
                mine.extend([null] * nulls)
            if new:
                mine.extend(self.pool.allocate(new))
        return True

    def cache_computed_blocks(self, request: Request) -> None:
        """Register blocks that became full and computed, so later requests can reuse them."""
        if not self.enable_prefix_caching:
            return
        rid = request.request_id
        hashed = self._num_hashed_blocks.get(rid)
        if hashed is None:
            hashed = self._num_hashed_blocks[rid] = [0] * len(self.groups)
        held = self.req_blocks[rid]
        null = self.pool.null_block
        updated = False
        for g, block_tokens in enumerate(self._block_tokens):
            num_full = min(request.num_computed_tokens, request.num_known_tokens) // block_tokens
            if num_full <= hashed[g]:
                continue
            blocks = held[g]
            num_full = min(num_full, len(blocks))
            if not updated:
                self._update_block_hashes(request)
                updated = True
            for i in range(hashed[g], num_full):
                if blocks[i] is not null:
                    self.pool.cache_block(blocks[i], self._group_hash(request, g, i))
            hashed[g] = num_full

    def free(self, request: Request) -> None:
        held = self.req_blocks.pop(request.request_id, [])
        self._num_hashed_blocks.pop(request.request_id, None)
        null = self.pool.null_block
        for blocks in held:
            self.pool.free([b for b in reversed(blocks) if b is not null] if self._sliding else blocks[::-1])

    def reset_prefix_cache(self) -> bool:
        return self.pool.reset_prefix_cache()
