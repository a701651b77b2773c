"""DeepSeek Sparse Attention's lightning indexer (DeepSeek-V3.2).

Each query scores every cached token with a few cheap heads,
    I[t, s] = sum_h w[t, h] * relu(q[t, h] . k[s] / sqrt(index_head_dim)),   w = weights_proj(x) / sqrt(H),
and MLA then attends only to the `index_topk` best-scoring tokens (among those the query may see).
The indexer keys (one head of `index_head_dim`, shared by all indexer heads) are cached per token
beside the MLA latent in the same paged rows, so chunked prefill, decode and prefix-cache hits score
against keys computed once.

Rope: the first `qk_rope_head_dim` features of the indexer's queries and keys are rotated in the neox
(halves) layout, unlike MLA's interleaved pairs; both use the model's one rope table.
Scores are computed in float32 (DeepSeek's kernel uses FP8 keys after a Hadamard rotation; the rotation
keeps dot products, so float32 is the exact reference).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from seekd.layers.attention import causal_mask, gather_entries
from seekd.layers.forward_context import AttentionMetadata
from seekd.layers.kv_quant import quantize
from seekd.layers.linear import ReplicatedLinear
from seekd.layers.rotary import RotaryEmbedding, apply_rotary


class LightningIndexer(nn.Module):
    """Projections (names as in the checkpoints: wq_b, wk, k_norm, weights_proj) and top-k selection.
    Replicated across tensor-parallel ranks: its weights are small and every rank needs all scores."""

    graph_safe = False  # selects sequence by sequence on host-side lengths

    def __init__(
        self,
        hidden_size: int,
        q_lora_rank: int,
        n_heads: int,
        head_dim: int,
        rope_dim: int,
        topk: int,
        rotary_emb: RotaryEmbedding,
    ) -> None:
        super().__init__()
        if rope_dim > head_dim:
            raise ValueError(f"index_head_dim {head_dim} is smaller than qk_rope_head_dim {rope_dim}")
        self.n_heads = n_heads
        self.head_dim = head_dim
        self.rope_dim = rope_dim
        self.topk = topk
        self.softmax_scale = head_dim**-0.5
        self.wq_b = ReplicatedLinear(q_lora_rank, n_heads * head_dim)
        self.wk = ReplicatedLinear(hidden_size, head_dim)
        self.k_norm = nn.LayerNorm(head_dim, eps=1e-6)
        self.weights_proj = ReplicatedLinear(hidden_size, n_heads)
        self.rotary_emb = rotary_emb

    def _rope(self, positions: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        cos, sin = self.rotary_emb.cos_sin_cache[positions].chunk(2, dim=-1)
        return apply_rotary(x, cos, sin, self.rope_dim)

    def forward(
        self,
        positions: torch.Tensor,
        x: torch.Tensor,
        q_latent: torch.Tensor,
        key_cache: torch.Tensor,
        meta: AttentionMetadata,
        key_scales: torch.Tensor | None = None,
    ) -> list[torch.Tensor]:
        """Writes this step's indexer keys into `key_cache` ([num_blocks, block_size, head_dim], a view
        of the layer's cache rows; FP8 codes with `key_scales` [num_blocks, block_size, 1]) and
        returns, per sequence, the selected context positions [q_len, min(topk, seq_len)] (int64). A
        query with fewer visible tokens than topk also gets positions after its own, which the
        attention must mask causally (as transformers does)."""
        q, weights = self.project_and_cache(positions, x, q_latent, key_cache, meta, key_scales)
        selected = []
        start = 0
        for i, (q_len, seq_len) in enumerate(zip(meta.query_lens_cpu, meta.seq_lens_cpu)):
            if seq_len <= self.topk:  # every visible token is selected: skip the scores
                selected.append(torch.arange(seq_len, device=x.device).expand(q_len, seq_len))
            else:
                keys = gather_entries(key_cache, key_scales, meta.kv.block_tables[i], seq_len, torch.float32)
                scores = self.index_scores(q[start : start + q_len], weights[start : start + q_len], keys)
                scores = scores.masked_fill(~causal_mask(q_len, seq_len, x.device), float("-inf"))
                selected.append(scores.topk(self.topk, dim=-1).indices)
            start += q_len
        return selected

    def select_for_decode(
        self,
        positions: torch.Tensor,
        x: torch.Tensor,
        q_latent: torch.Tensor,
        key_cache: torch.Tensor,
        meta: AttentionMetadata,
        key_scales: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """`forward` for a pure-decode step on the kernel path: every sequence scored by one Triton
        launch and selected by one batched top-k, with no host sync -> int32 [B, min(topk,
        max_seq_len)] positions; those at or past a sequence's length mean "none" (see select_top)."""
        from seekd.kernels.indexer_scores import indexer_decode_scores, select_top

        q, weights = self.project_and_cache(positions, x, q_latent, key_cache, meta, key_scales)
        width = meta.max_seq_len
        scores = indexer_decode_scores(
            q.to(x.dtype),
            weights,
            key_cache,
            meta.kv.block_tables,
            meta.seq_lens,
            width,
            self.softmax_scale,
            key_scales,
        )
        return select_top(scores, self.topk)

    def project_and_cache(
        self,
        positions: torch.Tensor,
        x: torch.Tensor,
        q_latent: torch.Tensor,
        key_cache: torch.Tensor,
        meta: AttentionMetadata,
        key_scales: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Writes this step's keys into the cache -> (roped float32 queries [T, H, D], head weights [T, H])."""
        k = self._rope(positions, self.k_norm(self.wk(x)).unsqueeze(1)).squeeze(1)
        slots = key_cache.view(-1, self.head_dim)
        if key_scales is None:
            slots[meta.kv.slot_mapping] = k.to(key_cache.dtype)
        else:
            slots[meta.kv.slot_mapping], key_scales.view(-1, 1)[meta.kv.slot_mapping] = quantize(k)
        q = self._rope(positions, self.wq_b(q_latent).view(-1, self.n_heads, self.head_dim)).float()
        return q, self.weights_proj(x).float() * self.n_heads**-0.5

    def index_scores(self, q: torch.Tensor, weights: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        """q [T, H, D], weights [T, H], keys [S, D] -> [T, S]: sum_h w[t, h] * relu(q[t, h] . k[s] * scale)."""
        scores = F.relu(torch.einsum("thd,sd->ths", q, keys) * self.softmax_scale)
        return torch.einsum("th,ths->ts", weights, scores)
