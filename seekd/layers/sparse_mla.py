"""Sparse MLA (DeepSeek-V3.2): MLA whose queries attend only to the tokens the lightning indexer selects.

One paged cache row per token and layer holds [c_kv | k_pe | indexer key]: the MLA latent and the
indexer key share blocks, block table, prefix-cache hashes and preemption with no engine changes (an
FP8 row has a scale per part).
Two attention paths, as for MLA:
- naive (the reference): dense per-head attention with mask = causal & selected;
- absorbed (the sparse one): each query gathers its top-k latents and attends in latent space, so a
  decode step reads index_topk latents instead of the whole context.
With the kernels on (`use_kernel`), a pure-decode step scores and selects for the whole batch on the
GPU (seekd/kernels/indexer_scores.py) and runs the latent decode kernel over the selected positions
only; the absorbed torch path is its reference.
"""

from __future__ import annotations

from typing import Any

import torch

from seekd.layers.attention import causal_mask
from seekd.layers.forward_context import AttentionMetadata, ForwardContext
from seekd.layers.indexer import LightningIndexer
from seekd.layers.mla import MLAAttention


class SparseMLAAttention(MLAAttention):
    def __init__(self, *args: Any, indexer: LightningIndexer, **kwargs: Any) -> None:
        """MLAAttention's arguments plus the layer's indexer."""
        super().__init__(*args, **kwargs)
        self.indexer = indexer

    @property
    def graph_safe(self) -> bool:
        return False  # the indexer's selection and the sparse gather loop over sequences on the host

    @property
    def cache_segments(self) -> tuple[int, ...]:
        return (self.kv_lora_rank, self.qk_rope_head_dim, self.indexer.head_dim)

    def forward(self, positions: torch.Tensor, x: torch.Tensor, ctx: ForwardContext) -> torch.Tensor:
        meta = ctx.attn
        q_nope, q_pe, q_latent = self.project_and_cache(positions, x, meta)
        key_scales = None if self.kv_scales is None else self.kv_scales[..., 2:]
        key_cache = self.kv_cache[..., self.latent_width :]
        if self.use_kernel and self.use_absorbed(meta) and meta.is_pure_decode:
            selected = self.indexer.select_for_decode(positions, x, q_latent, key_cache, meta, key_scales)
            return self.output(self._sparse_decode(q_nope, q_pe, meta, selected))
        selected = self.indexer(positions, x, q_latent, key_cache, meta, key_scales)
        if self.use_absorbed(meta):
            out = self._sparse_absorbed(q_nope, q_pe, meta, selected)
        else:
            masks = [selection_mask(idx, seq_len) for idx, seq_len in zip(selected, meta.seq_lens_cpu)]
            out = self._naive(q_nope, q_pe, meta, masks)
        return self.output(out)

    def _sparse_decode(
        self, q_nope: torch.Tensor, q_pe: torch.Tensor, meta: AttentionMetadata, selected: torch.Tensor
    ) -> torch.Tensor:
        """The latent decode kernel over each sequence's selected positions [B, K]: [B, H, v]."""
        from seekd.kernels.mla_decode import mla_decode, mla_decode_splits

        q, w_uv = self.absorb_query(q_nope, q_pe)
        splits = mla_decode_splits(meta.num_seqs, self.num_heads, selected.size(1))
        out_latent = mla_decode(
            q,
            self.kv_cache,
            meta.kv.block_tables,
            meta.seq_lens,
            self.kv_lora_rank,
            self.scale,
            splits,
            self.kv_scales,
            selected,
        )
        return torch.einsum("thr,hvr->thv", out_latent, w_uv)

    def _sparse_absorbed(
        self, q_nope: torch.Tensor, q_pe: torch.Tensor, meta: AttentionMetadata, selected: list[torch.Tensor]
    ) -> torch.Tensor:
        """Per query, softmax over its selected latents only: [T, H, v]."""
        q, w_uv = self.absorb_query(q_nope, q_pe)
        out_latent = q.new_empty(q.size(0), self.num_heads, self.kv_lora_rank)
        start = 0
        for i, (q_len, seq_len) in enumerate(zip(meta.query_lens_cpu, meta.seq_lens_cpu)):
            idx = selected[i]
            latent = self._latent_context(meta, i, q.dtype)[idx]  # [q_len, k, latent_width]
            scores = torch.einsum("thr,tkr->thk", q[start : start + q_len], latent).float() * self.scale
            visible = idx <= torch.arange(seq_len - q_len, seq_len, device=idx.device).unsqueeze(1)
            probs = scores.masked_fill(~visible.unsqueeze(1), float("-inf")).softmax(dim=-1).to(q.dtype)
            out_latent[start : start + q_len] = torch.einsum("thk,tkr->thr", probs, latent[..., : self.kv_lora_rank])
            start += q_len
        return torch.einsum("thr,hvr->thv", out_latent, w_uv)


def selection_mask(selected: torch.Tensor, seq_len: int) -> torch.Tensor:
    """[q_len, seq_len] bool: True where the query may see the token and the indexer selected it."""
    q_len = selected.size(0)
    chosen = torch.zeros(q_len, seq_len, dtype=torch.bool, device=selected.device).scatter_(1, selected, True)
    return chosen & causal_mask(q_len, seq_len, selected.device)
