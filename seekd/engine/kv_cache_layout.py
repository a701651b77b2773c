"""How a model's KV cache is cut into cache groups that share one pool of equal-size pages.

Every attention layer declares the entries it caches, per kind (`KVCacheSpec`: kind, entry shape and
dtype, tokens per entry, sliding window); layers with equal specs hold the same kind. A cache group
gathers the kinds of one lifetime: every full-context kind, or every kind of one sliding window. Its
blocks all cover the same `block_tokens` tokens, so one block table per request serves all its kinds
and a block is freed (window) or hashed (prefix cache) for all of them at once; a block holds, per
layer and kind, block_tokens / tokens_per_entry entries. A DeepSeek-V4 model has three groups: the
CSA and HCA compressed entries (full context), the sliding keys with the HCA compressor states
(window 128) and the CSA compressor states (window 8); a dense or MLA model has one.

All groups draw their blocks from ONE BlockPool: one memory budget, one free list and one LRU for
prefix caching; a block id (a page) belongs to one group at a time.

Why equal pages with a per-group block size in tokens (and not per-group pools): one pool means no
group runs dry while another has memory to spare, and no split of the budget has to be guessed. A
group's block is a power-of-two multiple of its smallest aligned block (tokens a multiple of
`block_size` and of each kind's tokens per entry); the page size is the candidate that leaves the
least-filled group's pages fullest. Prefix hits come in multiples of every group's block tokens
(`hit_granularity`: 256 tokens for V4-Flash with 16-token blocks), and block tokens are capped at
`MAX_BLOCK_TOKENS_FACTOR * max(block_size, largest tokens per entry)` to keep that granularity bounded.

Storage: a single group of a single kind keeps one contiguous tensor per layer
[num_blocks, block_size, *entry_shape] (the paged kernels and CUDA graphs index those, unchanged).
Otherwise the groups share one byte arena [num_blocks, page_bytes]; each (layer, kind) of a group
views its byte range of every page as [num_blocks, entries_per_block, *entry_shape]. Those views are
strided, so layers index them by (block, offset) and never flatten them. FP8 kinds (`kv_cache_dtype
fp8`) also bind their float32 scales [num_blocks, entries_per_block, *scale_shape]: a tensor of its own
beside a contiguous cache, the bytes after the codes' range in an arena page; the page bytes count
them, so memory-based sizing sees what an FP8 block really costs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn

from seekd.intmath import cdiv
from seekd.layers.attention import KVCacheSpec
from seekd.layers.forward_context import CacheGroupMetadata
from seekd.layers.pipeline import is_remote

MAX_BLOCK_TOKENS_FACTOR = 16


@dataclass(frozen=True)
class CacheGroupShape:
    """What the KVCacheManager needs to know about a group: no tensors, no layers."""

    name: str
    block_tokens: int  # tokens covered by one block
    sliding_window: int | None = None  # its manager is a SlidingWindowManager (engine/kv_cache_groups.py)


@dataclass
class CacheGroup:
    shape: CacheGroupShape
    members: list[tuple[nn.Module, str, KVCacheSpec]] = field(default_factory=list)  # (layer, its name, spec)

    def entries_per_block(self, spec: KVCacheSpec) -> int:
        return self.shape.block_tokens // spec.tokens_per_entry

    def member_bytes(self, spec: KVCacheSpec) -> int:
        return spec.bytes_per_block(self.entries_per_block(spec))

    @property
    def bytes_per_block(self) -> int:
        return sum(self.member_bytes(spec) for _, _, spec in self.members)

    @property
    def local_members(self) -> list[tuple[nn.Module, str, KVCacheSpec]]:
        """The members this pipeline stage allocates (all of them on one stage)."""
        return [m for m in self.members if not is_remote(m[0])]

    @property
    def kinds(self) -> dict[str, KVCacheSpec]:
        return {spec.kind: spec for _, _, spec in self.members}

    @property
    def has_token_slots(self) -> bool:
        """The group holds a kind of one entry per token, so each step carries its tokens' slots."""
        return any(spec.tokens_per_entry == 1 for _, _, spec in self.members)

    def step_metadata(
        self, block_tables: torch.Tensor, slot_mapping: torch.Tensor | None
    ) -> dict[str, CacheGroupMetadata]:
        """The step's view of this group, under each of its kinds (the kinds share the tables)."""
        return {
            kind: CacheGroupMetadata(
                block_tables, slot_mapping if spec.tokens_per_entry == 1 else None, self.entries_per_block(spec)
            )
            for kind, spec in self.kinds.items()
        }


def layer_cache_specs(layer: nn.Module, dtype: torch.dtype, fp8: bool = False) -> dict[str, KVCacheSpec]:
    """A layer with several kinds of entries declares `kv_cache_specs` (and holds `kv_caches` and, for
    FP8 kinds, `kv_scales`); a layer with one declares `kv_cache_spec` (and holds `kv_cache` and
    `kv_scales`). `dtype` is the model's; with `fp8` the layer says which kinds it stores as FP8."""
    if hasattr(layer, "kv_cache_specs"):
        return layer.kv_cache_specs(dtype, fp8=fp8)
    return {"kv": layer.kv_cache_spec(dtype, fp8=fp8)}


def _bind(layer: nn.Module, name: str, tensor: torch.Tensor | None, scales: torch.Tensor | None = None) -> None:
    if hasattr(layer, "kv_cache_specs"):
        for store, value in ((layer.kv_caches, tensor), (layer.kv_scales, scales)):
            if value is None:
                store.pop(name, None)
            else:
                store[name] = value
    else:
        layer.kv_cache = tensor
        layer.kv_scales = scales


class KVCacheLayout:
    def __init__(self, layers: list[nn.Module], dtype: torch.dtype, block_size: int, fp8: bool = False) -> None:
        self.block_size = block_size
        members: dict[int | None, list[tuple[nn.Module, str, KVCacheSpec]]] = {}
        kinds: dict[str, KVCacheSpec] = {}
        for layer in layers:
            for name, spec in layer_cache_specs(layer, dtype, fp8).items():
                if kinds.setdefault(spec.kind, spec) != spec:
                    raise ValueError(f"cache kind {spec.kind!r} has two different specs; name each kind apart")
                members.setdefault(spec.sliding_window, []).append((layer, name, spec))
        self.page_bytes, block_tokens = self._plan(list(members.values()))
        self.groups = [
            CacheGroup(CacheGroupShape("full" if w is None else f"window_{w}", tokens, w), members[w])
            for w, tokens in zip(members, block_tokens)
        ]
        if any(is_remote(layer) for layer in layers):
            # one pipeline stage: the plan (block tokens) is every stage's, the pages hold this stage's layers
            self.page_bytes = max(sum(g.member_bytes(s) for _, _, s in g.local_members) for g in self.groups)
        self.num_blocks = 0

    def _plan(self, groups: list[list[tuple[nn.Module, str, KVCacheSpec]]]) -> tuple[int, list[int]]:
        """(page bytes, block tokens per group): see the module docstring."""
        units = []  # per group: tokens and bytes of its smallest aligned block
        for members in groups:
            tokens = math.lcm(self.block_size, *(s.tokens_per_entry for _, _, s in members))
            units.append((tokens, sum(s.bytes_per_block(tokens // s.tokens_per_entry) for _, _, s in members)))
        cap = MAX_BLOCK_TOKENS_FACTOR * max(
            [self.block_size] + [s.tokens_per_entry for members in groups for _, _, s in members]
        )

        def multiples(page: int) -> list[int]:
            out = []
            for tokens, unit_bytes in units:
                k = 1
                while 2 * k * unit_bytes <= page and 2 * k * tokens <= cap:
                    k *= 2
                out.append(k)
            return out

        least = max(b for _, b in units)  # every group's smallest block must fit a page
        candidates = sorted({b << j for _, b in units for j in range(32) if least <= b << j < 2 * least})

        def fill(page: int) -> float:
            return min(k * b for k, (_, b) in zip(multiples(page), units)) / page

        page = max(candidates, key=lambda p: (fill(p), -p))
        return page, [k * t for k, (t, _) in zip(multiples(page), units)]

    @property
    def shapes(self) -> list[CacheGroupShape]:
        return [g.shape for g in self.groups]

    @property
    def hit_granularity(self) -> int:
        """Prefix hits are multiples of this many tokens (every group's block boundary)."""
        return math.lcm(*(s.block_tokens for s in self.shapes))

    def blocks_per_group(self, num_tokens: int) -> list[int]:
        """Blocks of each group that hold every entry of `num_tokens` tokens (nothing freed)."""
        return [cdiv(num_tokens, s.block_tokens) for s in self.shapes]

    def blocks_for_tokens(self, num_tokens: int, chunk: int) -> int:
        """Blocks one sequence of `num_tokens` holds at most, computed in chunks of up to `chunk`."""
        total = 0
        for s, full in zip(self.shapes, self.blocks_per_group(num_tokens)):
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
        if len(self.groups) == 1 and len(self.groups[0].kinds) == 1:
            group = self.groups[0]
            for layer, name, spec in group.local_members:
                entries = (num_blocks, group.entries_per_block(spec))
                scales = None
                if spec.scale_shape is not None:
                    scales = torch.zeros((*entries, *spec.scale_shape), dtype=torch.float32, device=device)
                _bind(layer, name, torch.zeros((*entries, *spec.entry_shape), dtype=spec.dtype, device=device), scales)
        else:
            arena = torch.zeros((num_blocks, self.page_bytes), dtype=torch.uint8, device=device)
            for group in self.groups:
                offset = 0
                for layer, name, spec in group.local_members:
                    per_block = group.entries_per_block(spec)
                    data = spec.data_bytes_per_block(per_block)
                    view = arena[:, offset : offset + per_block * spec.data_bytes_per_entry].view(spec.dtype)
                    scales = None
                    if spec.scale_shape is not None:
                        scale_view = arena[:, offset + data : offset + group.member_bytes(spec)].view(torch.float32)
                        scales = scale_view.view(num_blocks, per_block, *spec.scale_shape)
                    _bind(layer, name, view.view(num_blocks, per_block, *spec.entry_shape), scales)
                    offset += group.member_bytes(spec)
        self.num_blocks = num_blocks

    def release(self) -> None:
        for group in self.groups:
            for layer, name, _ in group.local_members:
                _bind(layer, name, None)
        self.num_blocks = 0


def bytes_per_token_by_kind(layout: KVCacheLayout) -> dict[str, dict[str, float]]:
    """Per cache kind, summed over the kind's layers: bytes one token adds for good (`per_token`, 0
    for sliding kinds) and, for sliding kinds, the bytes of one full window (`per_request_window`)."""
    report: dict[str, dict[str, float]] = {}
    for group in layout.groups:
        for _, _, spec in group.members:
            row = report.setdefault(
                spec.kind,
                {
                    "group": group.shape.name,
                    "layers": 0,
                    "per_token": 0.0,
                    "per_request_window": 0.0,
                },
            )
            row["layers"] += 1
            if spec.sliding_window is None:
                row["per_token"] += spec.bytes_per_entry / spec.tokens_per_entry
            else:
                row["per_request_window"] += spec.bytes_per_entry * spec.sliding_window
    return report


def page_bytes_per_token(layout: KVCacheLayout) -> float:
    """What the pool spends per token of context on the full-context groups, whole pages counted."""
    return sum(layout.page_bytes / s.block_tokens for s in layout.shapes if s.sliding_window is None)
