"""Per-step metadata handed explicitly to the model's forward (no module globals)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class CacheGroupMetadata:
    """One cache kind's view of the step: the block tables of its group (see
    seekd/engine/kv_cache_layout.py), shared by the group's kinds. Entry e of a sequence lives at slot
    block_tables[i, e // entries_per_block] * entries_per_block + e % entries_per_block; a token's
    entry is e = position // tokens_per_entry."""

    block_tables: torch.Tensor  # [B, max_blocks] int32, null block 0 where padded or freed (sliding window)
    slot_mapping: torch.Tensor | None  # [T] int64 slot of each token's entry; None for compressed groups
    entries_per_block: int


KV_KIND = "kv"  # the cache kind of a layer with one kind of entries (KVCacheSpec's default)


@dataclass
class AttentionMetadata:
    """Describes a flat batch of B sequences and T tokens.

    Sequence i owns tokens query_start_loc[i]:query_start_loc[i+1]; its context after this step is
    seq_lens[i] tokens, the first seq_lens[i] - query_len of which are already in the KV cache. Each
    layer finds its slots and block tables under its cache kind in `groups` (a dense or MLA model
    has the one kind `kv`).
    """

    query_start_loc: torch.Tensor  # [B+1] int32, cu_seqlens of the queries
    seq_lens: torch.Tensor  # [B] int32
    max_query_len: int
    max_seq_len: int
    query_lens_cpu: list[int]
    seq_lens_cpu: list[int]
    groups: dict[str, CacheGroupMetadata] = field(default_factory=dict)  # by cache kind (KVCacheSpec.kind)
    backend_data: object | None = None  # what the attention backend precomputed for this step

    @property
    def kv(self) -> CacheGroupMetadata:
        """The cache of layers with one kind of entries, one entry per token."""
        return self.groups[KV_KIND]

    @property
    def num_seqs(self) -> int:
        return len(self.seq_lens_cpu)

    @property
    def is_pure_decode(self) -> bool:
        return self.max_query_len == 1


@dataclass
class ForwardContext:
    attn: AttentionMetadata
    # (flat rows [R] int64, features [R, hidden]): image features that replace these rows' token
    # embeddings (vision-language models at prefill); None on text-only steps
    image_features: tuple[torch.Tensor, torch.Tensor] | None = None
