"""How a model's KV cache is cut into cache groups that share one pool of equal-size pages.

Every attention layer declares the entries it caches (`KVCacheSpec`: kind, entry shape and dtype,
tokens per entry, sliding window). Layers with equal specs form one cache group; a DeepSeek-V4 model
has five (sliding keys, CSA and HCA compressor states, CSA and HCA compressed entries), a dense or MLA
model one. All groups draw their blocks from ONE BlockPool, so there is one memory budget, one free
list and one LRU for prefix caching; a block id is owned by one group at a time.

Why equal pages with a per-group block size in tokens (and not per-group pools): one pool means no
group runs dry while another has memory to spare, and no split of the budget has to be guessed. A page
holds one block of a group for *all* its layers: `entries_per_block` entries per layer. Each group's
entries per block is the power-of-two multiple of its smallest aligned block (tokens a multiple of
`block_size` and of its tokens per entry) that fills the page best, so bytes per block are (nearly)
equal. The page is the largest such smallest block over the groups.

The price: a group of small entries (V4's HCA entries: one per 128 tokens) would cover thousands of
tokens per block, and prefix hits come in multiples of every group's block tokens (`hit_granularity`).
So tokens per block are capped at `MAX_BLOCK_TOKENS_FACTOR * max(block_size, largest tokens per
entry)` (2,048 for V4-Flash with 16-token blocks), leaving the rest of such a group's pages unused.

Storage: a single group keeps one contiguous tensor per layer [num_blocks, block_size, *entry_shape]
(the paged kernels and CUDA graphs index those, unchanged). Several groups share one byte arena
[num_blocks, page_bytes]; each (group, layer) views its byte range of every page as
[num_blocks, entries_per_block, *entry_shape]. Those views are strided, so layers index them by
(block, offset) and never flatten them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn

from seekd.layers.attention import KVCacheSpec

MAX_BLOCK_TOKENS_FACTOR = 16


@dataclass(frozen=True)
class CacheGroupShape:
    """What the KVCacheManager needs to know about a group: no tensors, no layers."""

    name: str
    block_tokens: int  # tokens covered by one block (entries_per_block * tokens_per_entry)
    tokens_per_entry: int = 1
    sliding_window: int | None = None

    @property
    def entries_per_block(self) -> int:
        return self.block_tokens // self.tokens_per_entry

    def num_entries(self, num_tokens: int) -> int:
        """Entries that exist once `num_tokens` tokens are computed (a compressed entry needs all its tokens)."""
        return num_tokens // self.tokens_per_entry

    def first_needed_token(self, num_computed: int) -> int:
        """Earliest token a query at position >= num_computed still reads from this group."""
        if self.sliding_window is None:
            return 0
        return max(0, num_computed - self.sliding_window + 1)


@dataclass
class CacheGroup:
    shape: CacheGroupShape
    spec: KVCacheSpec
    members: list[tuple[nn.Module, str]] = field(default_factory=list)  # (layer, the layer's name for it)

    @property
    def bytes_per_block(self) -> int:
        return len(self.members) * self.spec.bytes_per_block(self.shape.entries_per_block)


def layer_cache_specs(layer: nn.Module, dtype: torch.dtype) -> dict[str, KVCacheSpec]:
    """A layer with several kinds of entries declares `kv_cache_specs` (and holds `kv_caches`);
    a layer with one declares `kv_cache_spec` (and holds `kv_cache`)."""
    if hasattr(layer, "kv_cache_specs"):
        return layer.kv_cache_specs(dtype)
    return {"kv": layer.kv_cache_spec(dtype)}


def _bind(layer: nn.Module, name: str, tensor: torch.Tensor | None) -> None:
    if hasattr(layer, "kv_cache_specs"):
        if tensor is None:
            layer.kv_caches.pop(name, None)
        else:
            layer.kv_caches[name] = tensor
    else:
        layer.kv_cache = tensor


class KVCacheLayout:
    def __init__(self, layers: list[nn.Module], dtype: torch.dtype, block_size: int) -> None:
        self.block_size = block_size
        by_spec: dict[KVCacheSpec, list[tuple[nn.Module, str]]] = {}
        for layer in layers:
            for name, spec in layer_cache_specs(layer, dtype).items():
                by_spec.setdefault(spec, []).append((layer, name))
        kinds = [spec.kind for spec in by_spec]
        if len(set(kinds)) != len(kinds):
            raise ValueError(f"cache kinds {kinds} repeat a name for different specs; name each kind apart")
        # the first group carries AttentionMetadata's own slot mapping and block tables: one entry per token
        by_spec = dict(sorted(by_spec.items(), key=lambda item: item[0].tokens_per_entry))
        if next(iter(by_spec)).tokens_per_entry != 1:
            raise ValueError("a model needs one cache kind of one entry per token")
        self.page_bytes, blocks = self._plan(by_spec)
        self.groups = [
            CacheGroup(CacheGroupShape(spec.kind, tokens, spec.tokens_per_entry, spec.sliding_window), spec, members)
            for (spec, members), tokens in zip(by_spec.items(), blocks)
        ]
        self.num_blocks = 0

    def _plan(self, by_spec: dict[KVCacheSpec, list]) -> tuple[int, list[int]]:
        """(page bytes, block tokens per group): see the module docstring."""
        units = []
        for spec, members in by_spec.items():
            tokens = math.lcm(self.block_size, spec.tokens_per_entry)
            units.append((tokens, len(members) * spec.bytes_per_block(tokens // spec.tokens_per_entry)))
        page = max(b for _, b in units)
        cap = MAX_BLOCK_TOKENS_FACTOR * max([self.block_size] + [s.tokens_per_entry for s in by_spec])
        block_tokens = []
        for tokens, unit_bytes in units:
            k = 1
            while 2 * k * unit_bytes <= page and 2 * k * tokens <= cap:
                k *= 2
            block_tokens.append(k * tokens)
        return page, block_tokens

    @property
    def shapes(self) -> list[CacheGroupShape]:
        return [g.shape for g in self.groups]

    @property
    def hit_granularity(self) -> int:
        """Prefix hits are multiples of this many tokens (every group's block boundary)."""
        return math.lcm(*(s.block_tokens for s in self.shapes))

    def blocks_per_group(self, num_tokens: int) -> list[int]:
        """Blocks of each group that hold every entry of `num_tokens` tokens (nothing freed)."""
        return [-(-s.num_entries(num_tokens) // s.entries_per_block) for s in self.shapes]

    def blocks_for_tokens(self, num_tokens: int, chunk: int) -> int:
        """Blocks one sequence of `num_tokens` holds at most, computed in chunks of up to `chunk`."""
        total = 0
        for s in self.shapes:
            full = -(-s.num_entries(num_tokens) // s.entries_per_block)
            if s.sliding_window is not None:
                full = min(full, (s.sliding_window - 1 + chunk) // s.block_tokens + 2)
            total += full
        return total

    def max_tokens(self, num_blocks: int, chunk: int) -> int:
        """Longest sequence that `num_blocks` blocks hold on their own."""
        lo, hi = 0, num_blocks * max(s.block_tokens for s in self.shapes)
        while lo < hi:
            mid = (lo + hi + 1) // 2
            lo, hi = (mid, hi) if self.blocks_for_tokens(mid, chunk) <= num_blocks else (lo, mid - 1)
        return lo

    def allocate(self, num_blocks: int, device: torch.device) -> None:
        """Bind every layer's cache tensors for `num_blocks` pages (block 0 is the null block)."""
        if len(self.groups) == 1:
            group = self.groups[0]
            for layer, name in group.members:
                shape = (num_blocks, group.shape.entries_per_block, *group.spec.entry_shape)
                _bind(layer, name, torch.zeros(shape, dtype=group.spec.dtype, device=device))
        else:
            arena = torch.zeros((num_blocks, self.page_bytes), dtype=torch.uint8, device=device)
            for group in self.groups:
                width = group.spec.bytes_per_block(group.shape.entries_per_block)
                for j, (layer, name) in enumerate(group.members):
                    view = arena[:, j * width : (j + 1) * width].view(group.spec.dtype)
                    _bind(layer, name, view.view(num_blocks, group.shape.entries_per_block, *group.spec.entry_shape))
        self.num_blocks = num_blocks

    def release(self) -> None:
        for group in self.groups:
            for layer, name in group.members:
                _bind(layer, name, None)
        self.num_blocks = 0


def bytes_per_token_by_kind(layout: KVCacheLayout) -> dict[str, dict[str, float]]:
    """Per cache kind, summed over the kind's layers: bytes one token adds for good (`per_token`,
    0 for sliding kinds), the same counting whole pages (`per_token_in_pages`: what the pool spends,
    a group's block taking a page), and for sliding kinds the bytes of one full window."""
    report = {}
    for group in layout.groups:
        s, per_entry = group.shape, len(group.members) * group.spec.bytes_per_entry
        report[s.name] = {
            "layers": len(group.members),
            "per_token": 0.0 if s.sliding_window else per_entry / s.tokens_per_entry,
            "per_token_in_pages": 0.0 if s.sliding_window else layout.page_bytes / s.block_tokens,
            "per_request_window": float(per_entry * (s.sliding_window or 0)),
            "block_tokens": s.block_tokens,
        }
    return report
