"""Random paged caches for kernel tests: rows scattered over shuffled blocks, as a long-running
block pool leaves them."""

from __future__ import annotations

import torch


def paged_latents(seq_lens, width, dtype, device, block_size=16, num_blocks=128):
    """A random latent cache and block tables that scatter each sequence over shuffled blocks."""
    cache = torch.randn(num_blocks, block_size, width, device=device, dtype=dtype)
    perm = torch.randperm(num_blocks - 1) + 1
    max_blocks = max(-(-n // block_size) for n in seq_lens)
    tables, used = [], 0
    for n in seq_lens:
        blocks = -(-n // block_size)
        tables.append(torch.cat([perm[used : used + blocks], torch.zeros(max_blocks - blocks, dtype=torch.long)]))
        used += blocks
    block_tables = torch.stack(tables).to(device=device, dtype=torch.int32)
    return cache, block_tables, torch.tensor(seq_lens, device=device, dtype=torch.int32)
