"""Token compression (introduced by DeepSeek-V4): the compressor behind CSA and HCA attention, and CSA's indexer.

A compressor turns every block of `compress_rate` consecutive tokens into one KV entry: per feature a
softmax over the block's gate logits (+ a learned per-slot bias `ape`) weights the block's projected
values; the sum is RMS-normed and roped at the block's first position. CSA (rate 4) overlaps blocks:
each token projects two series, and entry w pools series a of block w-1 with series b of block w.
HCA (rate 128) does not overlap. Entry w exists once token (w+1) * rate - 1 has been seen, so query p
sees entries w < (p + 1) // rate.

Paged-cache contract (see compressed_attention.py): each token's projections (`project`, the compressor
*state*) are cached for as long as a block still to be pooled needs them (a sliding window of
`compress_rate` tokens, two blocks' worth when blocks overlap), and each entry is cached once pooled.
Any later step, chunk or prefix-cache hit can then pool a block whose tokens arrived in earlier
steps, with no per-request state outside the paged cache.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from seekd.layers.linear import ReplicatedLinear
from seekd.layers.norms import RMSNorm
from seekd.layers.rotary import RotaryEmbedding, apply_interleaved_rotary_tail


class Compressor(nn.Module):
    """Names as in the DeepSeek checkpoints: wkv, wgate, ape, norm."""

    def __init__(
        self,
        hidden_size: int,
        head_dim: int,
        compress_rate: int,
        overlap: bool,
        norm_eps: float,
        rotary_emb: RotaryEmbedding,
    ) -> None:
        super().__init__()
        self.head_dim = head_dim
        self.compress_rate = compress_rate
        self.overlap = overlap
        width = (2 if overlap else 1) * head_dim
        self.wkv = ReplicatedLinear(hidden_size, width)
        self.wgate = ReplicatedLinear(hidden_size, width)
        self.ape = nn.Parameter(torch.empty(compress_rate, width, dtype=torch.float32), requires_grad=False)
        self.norm = RMSNorm(head_dim, norm_eps)
        self.rotary_emb = rotary_emb

    @property
    def state_width(self) -> int:
        """Values per token of the compressor state: projected values, then gate logits."""
        return 2 * self.wkv.out_features

    def project(self, x: torch.Tensor) -> torch.Tensor:
        """x [T, hidden] -> per-token state [T, state_width]."""
        return torch.cat([self.wkv(x), self.wgate(x)], dim=-1)

    @property
    def state_window(self) -> int:
        """Tokens whose states pooling the current block may still read."""
        return self.compress_rate * (2 if self.overlap else 1)

    def first_state_token(self, first: int) -> int:
        """The first token whose state pooling blocks first.. reads."""
        return (max(first - 1, 0) if self.overlap else first) * self.compress_rate

    def pool(self, state: torch.Tensor, first: int, end: int) -> torch.Tensor:
        """Entries of blocks first..end-1 from the per-token states of tokens
        first_state_token(first)..end * compress_rate - 1: [end - first, head_dim], normed and roped."""
        m, d = self.compress_rate, self.head_dim
        lo = self.first_state_token(first) // m
        blocks = state.view(end - lo, m, -1)
        width = blocks.size(-1) // 2
        kv, gate = blocks[..., :width], blocks[..., width:] + self.ape.to(blocks.dtype)
        if self.overlap:  # slots: series a of the previous block, then series b of this one
            prev_kv = torch.cat([kv.new_zeros(1, m, d), kv[:-1, :, :d]])
            prev_gate = torch.cat([gate.new_full((1, m, d), float("-inf")), gate[:-1, :, :d]])
            kv = torch.cat([prev_kv, kv[..., d:]], dim=1)[first - lo :]
            gate = torch.cat([prev_gate, gate[..., d:]], dim=1)[first - lo :]
        pooled = (kv * gate.softmax(dim=1, dtype=torch.float32).to(kv.dtype)).sum(dim=1)
        positions = torch.arange(first, end, device=state.device) * m
        cos, sin = self.rotary_emb.cos_sin_cache[positions].chunk(2, dim=-1)
        return apply_interleaved_rotary_tail(self.norm(pooled).unsqueeze(1), cos, sin).squeeze(1)


class CompressedIndexer(nn.Module):
    """CSA's lightning indexer over compressed entries: I[t, w] = sum_h g[t, h] relu(q[t, h] . k[w]) / sqrt(c),
    g = weights_proj(x) / sqrt(H); each query keeps its `index_topk` best visible entries. Its keys come
    from its own (overlapping) compressor at index_head_dim. Names as in the DeepSeek checkpoints."""

    def __init__(
        self, hidden_size: int, q_lora_rank: int, n_heads: int, head_dim: int, topk: int, compressor: Compressor
    ) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.head_dim = head_dim
        self.topk = topk
        self.wq_b = ReplicatedLinear(q_lora_rank, n_heads * head_dim)
        self.weights_proj = ReplicatedLinear(hidden_size, n_heads)
        self.compressor = compressor

    def queries(self, q_latent: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """[T, n_heads, head_dim], roped at the tokens' positions."""
        q = self.wq_b(q_latent).view(-1, self.n_heads, self.head_dim)
        return apply_interleaved_rotary_tail(q, cos, sin)

    def select_for_decode(
        self,
        q: torch.Tensor,
        weights: torch.Tensor,
        keys: torch.Tensor,
        block_tables: torch.Tensor,
        num_entries: torch.Tensor,
        width: int,
        key_scales: torch.Tensor | None,
    ) -> torch.Tensor:
        """`select` for a pure-decode batch on the GPU, every sequence at once and with no host sync:
        q [B, H, c], weights [B, H], keys a paged view [blocks, per_block, >= c], num_entries [B] the
        visible entries of each -> int32 [B, min(topk, width)] entry indices; those at or past a
        sequence's count mean "none"."""
        from seekd.kernels.indexer_scores import indexer_decode_scores, select_top

        scores = indexer_decode_scores(
            q, weights, keys, block_tables, num_entries, width, self.head_dim**-0.5, key_scales
        )
        return select_top(scores, self.topk)

    def head_weights(self, x: torch.Tensor) -> torch.Tensor:
        return self.weights_proj(x).float() * self.n_heads**-0.5

    def select(self, q: torch.Tensor, weights: torch.Tensor, keys: torch.Tensor, visible: torch.Tensor) -> torch.Tensor:
        """q [Q, H, c], weights [Q, H], keys [n, c], visible [Q, n] bool -> [Q, n] bool: the chosen entries."""
        scores = F.relu(torch.einsum("qhc,nc->qhn", q.float(), keys.float())) * self.head_dim**-0.5
        scores = (scores * weights.unsqueeze(-1)).sum(dim=1).masked_fill(~visible, float("-inf"))
        chosen = scores.topk(min(self.topk, keys.size(0)), dim=-1).indices
        return torch.zeros_like(visible).scatter_(1, chosen, True) & visible
