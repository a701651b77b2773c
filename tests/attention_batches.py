"""Paged-attention batches for kernel tests: mixed prefill/decode metadata over shuffled blocks."""

from __future__ import annotations

import torch

from seekd.layers.forward_context import AttentionMetadata, CacheGroupMetadata


def build_batch(query_lens, context_lens, block_size, num_blocks, device):
    """Random block tables (distinct blocks per sequence) and metadata for a mixed batch."""
    gen = torch.Generator().manual_seed(0)
    perm = torch.randperm(num_blocks - 1, generator=gen) + 1
    tables, slots, used = [], [], 0
    seq_lens = [q + c for q, c in zip(query_lens, context_lens)]
    max_blocks = max(-(-s // block_size) for s in seq_lens)
    for q_len, seq_len in zip(query_lens, seq_lens):
        n = -(-seq_len // block_size)
        blocks = perm[used : used + n]
        used += n
        tables.append(torch.cat([blocks, torch.zeros(max_blocks - n, dtype=torch.long)]))
        pos = torch.arange(seq_len - q_len, seq_len)
        slots.append(blocks[pos // block_size] * block_size + pos % block_size)
    qsl = torch.zeros(len(query_lens) + 1, dtype=torch.int32)
    qsl[1:] = torch.tensor(query_lens).cumsum(0)
    return AttentionMetadata(
        query_start_loc=qsl.to(device),
        seq_lens=torch.tensor(seq_lens, dtype=torch.int32, device=device),
        max_query_len=max(query_lens),
        max_seq_len=max(seq_lens),
        query_lens_cpu=list(query_lens),
        seq_lens_cpu=seq_lens,
        groups={
            "kv": CacheGroupMetadata(
                torch.stack(tables).to(torch.int32).to(device), torch.cat(slots).to(device), block_size
            )
        },
    )
