"""Token bitmasks applied to logits on the logits' device: bit j of word w of a row allows token
32*w + j. One [B, W] int32 tensor per step, copied to the device once; rows of unconstrained
requests are all ones and leave their logits bit-for-bit unchanged."""

from __future__ import annotations

import torch

_BIT_CACHE: dict[torch.device, torch.Tensor] = {}


def _bits(device: torch.device) -> torch.Tensor:
    bits = _BIT_CACHE.get(device)
    if bits is None:
        bits = torch.tensor([1 << j if j < 31 else -(1 << 31) for j in range(32)], dtype=torch.int32, device=device)
        _BIT_CACHE[device] = bits
    return bits


def allowed_tokens(bitmask: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """bool [B, vocab_size]: which tokens each row allows."""
    words = bitmask.unsqueeze(-1) & _bits(bitmask.device)
    return (words != 0).view(bitmask.shape[0], -1)[:, :vocab_size]


def apply_token_bitmask(logits: torch.Tensor, bitmask: torch.Tensor) -> torch.Tensor:
    """logits [B, V] (any float dtype) with disallowed tokens set to -inf, in place."""
    return logits.masked_fill_(~allowed_tokens(bitmask, logits.shape[1]), float("-inf"))


def apply_token_bitmask_reference(logits: torch.Tensor, bitmask: torch.Tensor) -> torch.Tensor:
    """Token by token from the bit definition: the reference the fast path is tested against."""
    out = logits.clone()
    words = bitmask.cpu().tolist()
    for row in range(out.shape[0]):
        for token in range(out.shape[1]):
            word = words[row][token // 32] & 0xFFFFFFFF
            if not (word >> (token % 32)) & 1:
                out[row, token] = float("-inf")
    return out
