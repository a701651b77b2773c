"""One manager per cache group: which blocks of its group each request holds, how many more a step
needs, which it may give back, and which it registers for prefix caching.

A group's kind decides only one thing, `first_needed_token`: the earliest token a later query still
reads. A full-context group keeps every block; a sliding-window group of window W replaces the blocks
of tokens before p - W + 1 by the null block and gives them back to the pool. Compressed entries
(several tokens per entry) sit in full-context groups, whose blocks simply cover more tokens
(seekd/engine/kv_cache_layout.py), so they need no manager of their own. Every group draws from the
coordinator's one BlockPool (seekd/engine/kv_cache_manager.py).
"""

from __future__ import annotations

from seekd.engine.block_pool import BlockPool, KVBlock
from seekd.engine.kv_cache_layout import CacheGroupShape
from seekd.engine.request import Request
from seekd.intmath import cdiv


class CacheGroupManager:
    """Per request, the group's block list indexed by block number (block i covers tokens
    [i * block_tokens, (i + 1) * block_tokens)); the null block stands where a block was given back."""

    def __init__(self, shape: CacheGroupShape, pool: BlockPool, block_size: int, tag: bytes) -> None:
        """`block_size` is the coordinator's hash granularity; `tag` keeps this group's prefix-cache
        keys apart from the other groups' (empty for a model of one group)."""
        self.shape = shape
        self.block_tokens = shape.block_tokens
        self.pool = pool
        self.block_size = block_size
        self.tag = tag
        self.req_blocks: dict[str, list[KVBlock]] = {}
        self.num_hashed_blocks: dict[str, int] = {}

    def first_needed_token(self, num_computed: int) -> int:
        """Earliest token a query at position >= num_computed still reads from this group."""
        return 0

    def block_ids(self, request_id: str) -> list[int]:
        return [b.block_id for b in self.req_blocks.get(request_id, ())]

    def num_held_blocks(self, request_id: str) -> int:
        null = self.pool.null_block
        return sum(b is not null for b in self.req_blocks.get(request_id, ()))

    def block_hash(self, request: Request, i: int) -> bytes:
        """Key of block i: the request's chain hash at the block's last token, tagged with the group."""
        return self.tag + request.block_hashes[(i + 1) * self.block_tokens // self.block_size - 1]

    def num_cached_blocks(self, request: Request, limit: int) -> int:
        """How many blocks from the start of the prompt are cached, up to `limit`."""
        n = 0
        while n < limit and self.pool.get_cached_block(self.block_hash(request, n)):
            n += 1
        return n

    def cached_blocks(self, request: Request, num_hit_tokens: int) -> list[KVBlock] | None:
        """The blocks a hit of `num_hit_tokens` needs (null before the first needed one), or None if
        one of them is no longer cached."""
        skip = self.first_needed_token(num_hit_tokens) // self.block_tokens
        blocks = [self.pool.null_block] * skip
        for i in range(skip, num_hit_tokens // self.block_tokens):
            block = self.pool.get_cached_block(self.block_hash(request, i))
            if block is None:
                return None
            blocks.append(block)
        return blocks

    def remove_skipped_blocks(self, request_id: str, num_computed: int) -> None:
        """Give back the blocks that no query of this request reads again."""
        blocks = self.req_blocks.get(request_id)
        if blocks is None:
            return
        null = self.pool.null_block
        skip = min(self.first_needed_token(num_computed) // self.block_tokens, len(blocks))
        dropped = [b for b in blocks[:skip] if b is not null]
        if dropped:
            blocks[:skip] = [null] * skip
            self.pool.free(dropped[::-1])

    def plan(self, request_id: str, num_computed: int, total: int, hit: list[KVBlock] | None) -> tuple[int, int]:
        """(null blocks to append, new blocks to allocate) for tokens up to `total`, after the held
        blocks and the prefix-cache `hit`; `num_computed` counts the hit's tokens."""
        needed = cdiv(total, self.block_tokens)
        start = len(self.req_blocks.get(request_id, ())) + (len(hit) if hit is not None else 0)
        nulls = max(0, min(self.first_needed_token(num_computed) // self.block_tokens, needed) - start)
        return nulls, max(0, needed - start - nulls)

    def take_hit(self, request_id: str, hit: list[KVBlock]) -> None:
        """Start the request's blocks with a prefix-cache hit (already registered, so hashed)."""
        blocks = self.req_blocks.setdefault(request_id, [])
        null = self.pool.null_block
        self.pool.touch([b for b in hit if b is not null])
        blocks.extend(hit)
        self.num_hashed_blocks[request_id] = len(blocks)

    def append(self, request_id: str, nulls: int, new: int) -> None:
        """Append the planned null and new blocks."""
        blocks = self.req_blocks.setdefault(request_id, [])
        if nulls:
            blocks.extend([self.pool.null_block] * nulls)
        if new:
            blocks.extend(self.pool.allocate(new))

    def num_new_full_blocks(self, request: Request) -> int:
        """Blocks that became full and computed since they were last registered (0 if none)."""
        num_full = min(request.num_computed_tokens, request.num_known_tokens) // self.block_tokens
        num_full = min(num_full, len(self.req_blocks.get(request.request_id, ())))
        return max(0, num_full - self.num_hashed_blocks.get(request.request_id, 0))

    def cache_full_blocks(self, request: Request) -> None:
        """Register the blocks that became full and computed (the request's hashes cover them)."""
        rid = request.request_id
        blocks = self.req_blocks[rid]
        hashed = self.num_hashed_blocks.get(rid, 0)
        num_full = hashed + self.num_new_full_blocks(request)
        null = self.pool.null_block
        for i in range(hashed, num_full):
            if blocks[i] is not null:
                self.pool.cache_block(blocks[i], self.block_hash(request, i))
        self.num_hashed_blocks[rid] = num_full

    def free(self, request_id: str) -> None:
        """Give back every block the request holds, tail first (see BlockPool.free)."""
        blocks = self.req_blocks.pop(request_id, [])
        self.num_hashed_blocks.pop(request_id, None)
        null = self.pool.null_block
        self.pool.free([b for b in reversed(blocks) if b is not null])


class FullAttentionManager(CacheGroupManager):
    """Every query reads the whole context: blocks are held until the request ends."""


class SlidingWindowManager(CacheGroupManager):
    """A query at p reads tokens p - W + 1 .. p: a request holds at most
    (W - 1 + chunk) / block_tokens + 2 blocks of the group."""

    def __init__(self, shape: CacheGroupShape, pool: BlockPool, block_size: int, tag: bytes) -> None:
        if shape.sliding_window is None:
            raise ValueError(f"cache group {shape.name} has no sliding window")
        super().__init__(shape, pool, block_size, tag)
        self.window = shape.sliding_window

    def first_needed_token(self, num_computed: int) -> int:
        return max(0, num_computed - self.window + 1)

    def num_cached_blocks(self, request: Request, limit: int) -> int:
        """A sliding group serves any prefix whose window blocks are cached: `cached_blocks` checks
        those for each candidate hit."""
        return limit


def group_manager(shape: CacheGroupShape, pool: BlockPool, block_size: int, tag: bytes) -> CacheGroupManager:
    """The manager of a group's kind."""
    kind = FullAttentionManager if shape.sliding_window is None else SlidingWindowManager
    return kind(shape, pool, block_size, tag)
