"""DeepSeek-V4 attention: one shared KV head (the key is also the value), sliding window + compressed entries.

Per layer kind, a query at position p attends to
- sliding_attention: the last `sliding_window` tokens (p - W, p];
- heavily_compressed_attention (HCA): those, plus every visible compressed entry (see v4_compression.py);
- compressed_sparse_attention (CSA): those, plus the visible entries its indexer selects (top-k);
with a learned per-head sink logit in the softmax denominator. Queries and keys are roped on their
last rope dims (interleaved pairs); since values carry that rope too, the output's rope dims are
rotated back at the query position. Heads are projected out in `o_groups` low-rank groups (wo_a),
then mixed (wo_b).

Cache row per token (one paged tensor per layer, so prefix caching, preemption and chunked prefill
work unchanged): [kv | compressor state | compressed entry | indexer state | indexer entry], the
parts a layer kind lacks left out. A compressed entry lives in the row of its block's last token.
This is the simple layout, not the memory-optimal one: sliding rows older than the window and
compressor states of closed blocks are kept although no query reads them again.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from seekd.layers.attention import KVCacheSpec, gather_kv
from seekd.layers.forward_context import AttentionMetadata, ForwardContext
from seekd.layers.hyper_connection import unweighted_rms_norm
from seekd.layers.linear import ReplicatedLinear
from seekd.layers.norms import RMSNorm
from seekd.layers.rotary import RotaryEmbedding, apply_interleaved_rotary_tail
from seekd.layers.v4_compression import CompressedIndexer, Compressor


class GroupedLinear(nn.Module):
    """Block-diagonal projection: group g of the input [T, G, in] goes through its own [out/G, in] matrix."""

    def __init__(self, in_per_group: int, out_features: int, groups: int) -> None:
        super().__init__()
        self.groups = groups
        self.weight = nn.Parameter(torch.empty(out_features, in_per_group), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight.view(self.groups, -1, self.weight.size(-1))
        return torch.einsum("tgi,goi->tgo", x, w).flatten(1)


class V4Attention(nn.Module):
    """Names as in the DeepSeek checkpoints (wq_a, q_norm, wq_b, wkv, norm, wo_a, wo_b, attn_sink)."""

    def __init__(
        self, hidden_size: int, num_heads: int, head_dim: int, q_lora_rank: int, o_groups: int, o_lora_rank: int,
        sliding_window: int, norm_eps: float, rotary_emb: RotaryEmbedding,
        compressor: Compressor | None = None, indexer: CompressedIndexer | None = None,
    ) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = head_dim
        self.sliding_window = sliding_window
        self.norm_eps = norm_eps
        self.scale = head_dim**-0.5
        self.wq_a = ReplicatedLinear(hidden_size, q_lora_rank)
        self.q_norm = RMSNorm(q_lora_rank, norm_eps)
        self.wq_b = ReplicatedLinear(q_lora_rank, num_heads * head_dim)
        self.wkv = ReplicatedLinear(hidden_size, head_dim)
        self.norm = RMSNorm(head_dim, norm_eps)
        self.wo_a = GroupedLinear(num_heads * head_dim // o_groups, o_groups * o_lora_rank, o_groups)
        self.wo_b = ReplicatedLinear(o_groups * o_lora_rank, hidden_size)
        self.attn_sink = nn.Parameter(torch.empty(num_heads, dtype=torch.float32), requires_grad=False)
        self.rotary_emb = rotary_emb
        self.compressor = compressor
        self.indexer = indexer
        self.kv_cache: torch.Tensor | None = None  # [num_blocks, block_size, row_width]
        self._columns = self._row_layout()

    def _row_layout(self) -> dict[str, slice]:
        widths = {"kv": self.head_dim}
        if self.compressor is not None:
            widths |= {"state": self.compressor.state_width, "entry": self.head_dim}
        if self.indexer is not None:
            widths |= {"index_state": self.indexer.compressor.state_width, "index_entry": self.indexer.head_dim}
        columns, start = {}, 0
        for name, width in widths.items():
            columns[name] = slice(start, start + width)
            start += width
        return columns

    @property
    def row_width(self) -> int:
        return max(c.stop for c in self._columns.values())

    def kv_cache_spec(self, dtype: torch.dtype) -> KVCacheSpec:
        return KVCacheSpec((self.row_width,), dtype)

    def forward(self, positions: torch.Tensor, x: torch.Tensor, ctx: ForwardContext) -> torch.Tensor:
        meta, cols = ctx.attn, self._columns
        assert self.kv_cache is not None, "KV cache is not bound; the ModelRunner binds it"
        cos, sin = self.rotary_emb.cos_sin_cache[positions].chunk(2, dim=-1)
        q_latent = self.q_norm(self.wq_a(x))
        q = unweighted_rms_norm(self.wq_b(q_latent).view(-1, self.num_heads, self.head_dim), self.norm_eps)
        q = apply_interleaved_rotary_tail(q, cos, sin)
        kv = apply_interleaved_rotary_tail(self.norm(self.wkv(x)).unsqueeze(1), cos, sin).squeeze(1)
        flat = self.kv_cache.view(-1, self.row_width)
        flat[meta.slot_mapping, cols["kv"]] = kv.to(flat.dtype)
        index_q = index_w = None
        if self.compressor is not None:
            flat[meta.slot_mapping, cols["state"]] = self.compressor.project(x).to(flat.dtype)
        if self.indexer is not None:
            flat[meta.slot_mapping, cols["index_state"]] = self.indexer.compressor.project(x).to(flat.dtype)
            index_q, index_w = self.indexer.queries(q_latent, cos, sin), self.indexer.head_weights(x)
        out = torch.empty_like(q)
        start = 0
        for i, (q_len, seq_len) in enumerate(zip(meta.query_lens_cpu, meta.seq_lens_cpu)):
            rows = gather_kv(self.kv_cache, meta.block_tables[i], seq_len).to(q.dtype)
            span = slice(start, start + q_len)
            keys, mask = self._context(rows, meta, i, q_len, seq_len,
                                       None if index_q is None else (index_q[span], index_w[span]))
            out[span] = self._attend(q[span], keys, mask)
            start += q_len
        out = apply_interleaved_rotary_tail(out, cos, -sin)
        return self.wo_b(self.wo_a(out.view(out.size(0), self.wo_a.groups, -1)))

    def _context(
        self, rows: torch.Tensor, meta: AttentionMetadata, i: int, q_len: int, seq_len: int,
        index_inputs: tuple[torch.Tensor, torch.Tensor] | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys of sequence i's queries ([K, head_dim]: window tokens, then compressed entries) and
        the mask [q_len, K] (True = attend). Pools the blocks that closed in this step first."""
        q_pos = torch.arange(seq_len - q_len, seq_len, device=rows.device).unsqueeze(1)
        first = max(0, seq_len - q_len - self.sliding_window + 1)
        k_pos = torch.arange(first, seq_len, device=rows.device).unsqueeze(0)
        keys = rows[first:, self._columns["kv"]]
        mask = (k_pos <= q_pos) & (k_pos > q_pos - self.sliding_window)
        if self.compressor is None:
            return keys, mask
        entries = self._entries(rows, meta, i, q_len, seq_len, self.compressor, "state", "entry")
        visible = torch.arange(entries.size(0), device=rows.device) < (q_pos + 1) // self.compressor.compress_rate
        if self.indexer is not None and entries.size(0):
            index_keys = self._entries(rows, meta, i, q_len, seq_len, self.indexer.compressor,
                                       "index_state", "index_entry")
            visible = self.indexer.select(*index_inputs, index_keys, visible)
        return torch.cat([keys, entries]), torch.cat([mask, visible], dim=1)

    def _entries(
        self, rows: torch.Tensor, meta: AttentionMetadata, i: int, q_len: int, seq_len: int,
        compressor: Compressor, state: str, entry: str,
    ) -> torch.Tensor:
        """All entries of sequence i so far ([seq_len // rate, width]); the blocks that closed in this
        step are pooled, written to the cache and into `rows`."""
        m, cols = compressor.compress_rate, self._columns
        first, end = (seq_len - q_len) // m, seq_len // m
        if end > first:
            new = compressor.pool(rows[:, cols[state]], first, end)
            last = torch.arange(first, end, device=rows.device) * m + m - 1
            rows[last, cols[entry]] = new.to(rows.dtype)
            bs = meta.block_size
            slots = meta.block_tables[i].long()[last // bs] * bs + last % bs
            self.kv_cache.view(-1, self.row_width)[slots, cols[entry]] = new.to(self.kv_cache.dtype)
        return rows[m - 1 :: m][:end, cols[entry]]

    def _attend(self, q: torch.Tensor, keys: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Softmax over [scores | sink] in float32; the shared KV head is key and value. -> [Q, H, D]."""
        scores = torch.einsum("qhd,kd->qhk", q, keys).float() * self.scale
        scores = scores.masked_fill(~mask.unsqueeze(1), float("-inf"))
        sink = self.attn_sink.float().view(1, -1, 1).expand(q.size(0), -1, 1)
        probs = F.softmax(torch.cat([scores, sink], dim=-1), dim=-1)[..., :-1]
        return torch.einsum("qhk,kd->qhd", probs.to(q.dtype), keys)
