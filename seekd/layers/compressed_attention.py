"""Compressed attention (DeepSeek-V4's CSA and HCA, and its sliding layers): one shared KV head (the key
is also the value), a sliding window plus compressed entries.

Per layer kind, a query at position p attends to
- sliding_attention: the last `sliding_window` tokens (p - W, p];
- heavily_compressed_attention (HCA): those, plus every visible compressed entry (see token_compression.py);
- compressed_sparse_attention (CSA): those, plus the visible entries its indexer selects (top-k);
with a learned per-head sink logit in the softmax denominator. Queries and keys are roped on their
last rope dims (interleaved pairs); since values carry that rope too, the output's rope dims are
rotated back at the query position. Heads are projected out in `o_groups` low-rank groups (wo_a),
then mixed (wo_b).

Caches (see seekd/engine/kv_cache_layout.py), one cache group each, shared by the layers of a kind:
- `sliding_kv`: one key per token, kept for `sliding_window` tokens; its blocks are freed as the
  window moves on;
- `compressor_state_<rate>` (CSA/HCA layers): the per-token compressor projections (CSA: of both its
  compressors, attention's and the indexer's), kept only until their block is pooled (rate tokens,
  2 x rate when blocks overlap);
- `compressed_<rate>`: one entry per `rate` tokens (CSA: the attention entry, then the indexer key),
  kept for the whole context.
With `kv_cache_dtype fp8` the sliding keys and the compressed entries are stored as e4m3 codes with a
float32 scale per token (per entry and part: attention entry, indexer key) in `kv_scales`; the
compressor states, short-lived and holding the gate logits of a softmax, stay in the model's dtype.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from seekd.layers.attention import KVCacheSpec
from seekd.layers.build_scope import build_kernels
from seekd.layers.forward_context import AttentionMetadata, ForwardContext
from seekd.layers.hyper_connection import unweighted_rms_norm
from seekd.layers.kv_quant import FP8, dequantize, quantize
from seekd.layers.linear import ReplicatedLinear
from seekd.layers.norms import RMSNorm
from seekd.layers.rotary import RotaryEmbedding, apply_interleaved_rotary_tail
from seekd.layers.token_compression import CompressedIndexer, Compressor


class GroupedLinear(nn.Module):
    """Block-diagonal projection: group g of the input [T, G, in] goes through its own [out/G, in] matrix."""

    def __init__(self, in_per_group: int, out_features: int, groups: int) -> None:
        super().__init__()
        self.groups = groups
        self.weight = nn.Parameter(torch.empty(out_features, in_per_group), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight.view(self.groups, -1, self.weight.size(-1))
        return torch.einsum("tgi,goi->tgo", x, w).flatten(1)


class CompressedAttention(nn.Module):
    """Names as in the DeepSeek checkpoints (wq_a, q_norm, wq_b, wkv, norm, wo_a, wo_b, attn_sink)."""

    graph_safe = False  # attends sequence by sequence on host-side lengths

    def __init__(
        self,
        hidden_size: int,
        num_heads: int,
        head_dim: int,
        q_lora_rank: int,
        o_groups: int,
        o_lora_rank: int,
        sliding_window: int,
        norm_eps: float,
        rotary_emb: RotaryEmbedding,
        compressor: Compressor | None = None,
        indexer: CompressedIndexer | None = None,
        *,
        use_kernel: bool | None = None,
    ) -> None:
        """`use_kernel`: the Triton decode kernels; unset = the model's KernelChoice."""
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
        self.kv_caches: dict[str, torch.Tensor] = {}  # "kv", "state", "entries": [num_blocks, entries_per_block, width]
        self.kv_scales: dict[str, torch.Tensor] = {}  # FP8 "kv" and "entries": [num_blocks, entries_per_block, parts]
        self._compressors = [c for c in (compressor, indexer and indexer.compressor) if c is not None]
        rate = compressor.compress_rate if compressor is not None else 0
        self._kinds = {"kv": "sliding_kv", "state": f"compressor_state_{rate}", "entries": f"compressed_{rate}"}
        self.use_kernel = build_kernels().compressed_decode if use_kernel is None else use_kernel

    def kv_cache_specs(self, dtype: torch.dtype, fp8: bool = False) -> dict[str, KVCacheSpec]:
        def quantizable(parts: tuple[int, ...], kind: str, tokens_per_entry: int, window: int | None) -> KVCacheSpec:
            if fp8:
                return KVCacheSpec((sum(parts),), FP8, kind, tokens_per_entry, window, (len(parts),))
            return KVCacheSpec((sum(parts),), dtype, kind, tokens_per_entry, window)

        specs = {"kv": quantizable((self.head_dim,), self._kinds["kv"], 1, self.sliding_window)}
        if self.compressor is not None:
            cs = self._compressors
            window = max(c.state_window for c in cs)
            specs["state"] = KVCacheSpec((sum(c.state_width for c in cs),), dtype, self._kinds["state"], 1, window)
            rate = self.compressor.compress_rate
            specs["entries"] = quantizable(self.entry_parts, self._kinds["entries"], rate, None)
        return specs

    @property
    def entry_parts(self) -> tuple[int, ...]:
        """Widths of a compressed entry's parts (each with its own FP8 scale): attention, then indexer key."""
        return tuple(c.head_dim for c in self._compressors)

    def forward(self, positions: torch.Tensor, x: torch.Tensor, ctx: ForwardContext) -> torch.Tensor:
        meta = ctx.attn
        assert self.kv_caches, "KV cache is not bound; the ModelRunner binds it"
        cos, sin = self.rotary_emb.cos_sin_cache[positions].chunk(2, dim=-1)
        q_latent = self.q_norm(self.wq_a(x))
        q = unweighted_rms_norm(self.wq_b(q_latent).view(-1, self.num_heads, self.head_dim), self.norm_eps)
        q = apply_interleaved_rotary_tail(q, cos, sin)
        kv = apply_interleaved_rotary_tail(self.norm(self.wkv(x)).unsqueeze(1), cos, sin).squeeze(1)
        kv_group = meta.groups[self._kinds["kv"]]
        slots, per_block = kv_group.slot_mapping, kv_group.entries_per_block
        write_entries(self.kv_caches["kv"], self.kv_scales.get("kv"), slots // per_block, slots % per_block, kv)
        index_q = index_w = None
        if self.compressor is not None:
            group = meta.groups[self._kinds["state"]]
            states = torch.cat([c.project(x) for c in self._compressors], dim=-1)
            slots, per_block = group.slot_mapping, group.entries_per_block
            write_entries(self.kv_caches["state"], None, slots // per_block, slots % per_block, states)
        if self.indexer is not None:
            index_q, index_w = self.indexer.queries(q_latent, cos, sin), self.indexer.head_weights(x)
        if self.use_kernel and meta.is_pure_decode:
            out = self._decode_kernels(meta, q, index_q, index_w)
        else:
            out = torch.empty_like(q)
            start = 0
            for i, (q_len, seq_len) in enumerate(zip(meta.query_lens_cpu, meta.seq_lens_cpu)):
                span = slice(start, start + q_len)
                index_inputs = None if index_q is None else (index_q[span], index_w[span])
                keys, mask = self._context(meta, i, q_len, seq_len, q.dtype, index_inputs)
                out[span] = self._attend(q[span], keys, mask)
                start += q_len
        out = apply_interleaved_rotary_tail(out, cos, -sin)
        return self.wo_b(self.wo_a(out.view(out.size(0), self.wo_a.groups, -1)))

    def _context(
        self,
        meta: AttentionMetadata,
        i: int,
        q_len: int,
        seq_len: int,
        dtype: torch.dtype,
        index_inputs: tuple[torch.Tensor, torch.Tensor] | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys of sequence i's queries ([K, head_dim]: window tokens, then compressed entries) and
        the mask [q_len, K] (True = attend). Pools the blocks that closed in this step first."""
        group = meta.groups[self._kinds["kv"]]
        first = max(0, seq_len - q_len - self.sliding_window + 1)
        table, per_block = group.block_tables[i], group.entries_per_block
        keys = read_entries(self.kv_caches["kv"], table, per_block, first, seq_len, self.kv_scales.get("kv")).to(dtype)
        q_pos = torch.arange(seq_len - q_len, seq_len, device=keys.device).unsqueeze(1)
        k_pos = torch.arange(first, seq_len, device=keys.device).unsqueeze(0)
        mask = (k_pos <= q_pos) & (k_pos > q_pos - self.sliding_window)
        if self.compressor is None:
            return keys, mask
        entries = self._entries(meta, i, q_len, seq_len).to(dtype)
        entries, index_keys = entries[:, : self.head_dim], entries[:, self.head_dim :]
        visible = torch.arange(entries.size(0), device=keys.device) < (q_pos + 1) // self.compressor.compress_rate
        if self.indexer is not None and entries.size(0):
            visible = self.indexer.select(*index_inputs, index_keys, visible)
        return torch.cat([keys, entries]), torch.cat([mask, visible], dim=1)

    def _decode_kernels(
        self, meta: AttentionMetadata, q: torch.Tensor, index_q: torch.Tensor | None, index_w: torch.Tensor | None
    ) -> torch.Tensor:
        """A pure-decode step on the Triton kernels, every sequence at once: its window, then its
        compressed entries (CSA: the indexer's top-k, scored on the GPU). The blocks that closed in
        this step are pooled first, as on the reference path. -> [B, H, D]."""
        from seekd.kernels.compressed_attention import compressed_attention_decode

        window = meta.groups[self._kinds["kv"]]
        rate, entries, tables, scales, selected = 0, None, None, None, None
        if self.compressor is not None:
            rate = self.compressor.compress_rate
            for i, seq_len in enumerate(meta.seq_lens_cpu):
                self._pool_closed(meta, i, 1, seq_len)
            entries, scales = self.kv_caches["entries"], self.kv_scales.get("entries")
            tables = meta.groups[self._kinds["entries"]].block_tables
            if self.indexer is not None:
                selected = self.indexer.select_for_decode(
                    index_q,
                    index_w,
                    entries[..., self.head_dim :],
                    tables,
                    meta.seq_lens // rate,
                    meta.max_seq_len // rate,
                    None if scales is None else scales[..., 1:],
                )
        return compressed_attention_decode(
            q,
            self.attn_sink,
            meta.seq_lens,
            self.sliding_window,
            self.kv_caches["kv"],
            window.block_tables,
            self.scale,
            self.kv_scales.get("kv"),
            rate,
            entries,
            tables,
            scales,
            selected,
        )

    def _entries(self, meta: AttentionMetadata, i: int, q_len: int, seq_len: int) -> torch.Tensor:
        """All compressed entries of sequence i so far ([seq_len // rate, entry width]), the blocks
        that closed in this step pooled first."""
        self._pool_closed(meta, i, q_len, seq_len)
        group = meta.groups[self._kinds["entries"]]
        end = seq_len // self.compressor.compress_rate
        cache, scales = self.kv_caches["entries"], self.kv_scales.get("entries")
        return read_entries(cache, group.block_tables[i], group.entries_per_block, 0, end, scales, self.entry_parts)

    def _pool_closed(self, meta: AttentionMetadata, i: int, q_len: int, seq_len: int) -> None:
        """Pool the blocks of `rate` tokens that closed in this step (sequence i) from the cached
        compressor states, and write them to the entry cache."""
        m = self.compressor.compress_rate
        first, end = (seq_len - q_len) // m, seq_len // m
        group = meta.groups[self._kinds["entries"]]
        cache, table, per_block = self.kv_caches["entries"], group.block_tables[i], group.entries_per_block
        scales = self.kv_scales.get("entries")
        if end > first:
            state_group = meta.groups[self._kinds["state"]]
            lo = min(c.first_state_token(first) for c in self._compressors)
            states = read_entries(
                self.kv_caches["state"], state_group.block_tables[i], state_group.entries_per_block, lo, end * m
            )
            new, col = [], 0
            for c in self._compressors:
                part = states[c.first_state_token(first) - lo :, col : col + c.state_width]
                new.append(c.pool(part.to(c.norm.weight.dtype), first, end))
                col += c.state_width
            index = torch.arange(first, end, device=cache.device)
            blocks, offsets = table.long()[index // per_block], index % per_block
            write_entries(cache, scales, blocks, offsets, torch.cat(new, dim=-1), self.entry_parts)

    def _attend(self, q: torch.Tensor, keys: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Softmax over [scores | sink] in float32; the shared KV head is key and value. -> [Q, H, D]."""
        scores = torch.einsum("qhd,kd->qhk", q, keys).float() * self.scale
        scores = scores.masked_fill(~mask.unsqueeze(1), float("-inf"))
        sink = self.attn_sink.float().view(1, -1, 1).expand(q.size(0), -1, 1)
        probs = F.softmax(torch.cat([scores, sink], dim=-1), dim=-1)[..., :-1]
        return torch.einsum("qhk,kd->qhd", probs.to(q.dtype), keys)


def write_entries(
    cache: torch.Tensor,
    scales: torch.Tensor | None,
    blocks: torch.Tensor,
    offsets: torch.Tensor,
    values: torch.Tensor,
    parts: tuple[int, ...] | None = None,
) -> None:
    """cache [num_blocks, per_block, width] may be a strided view of the shared arena: index it by
    (block, offset), never flatten it. An FP8 cache gets codes, and `scales` one per part of `parts`."""
    if scales is None:
        cache[blocks, offsets] = values.to(cache.dtype)
    else:
        cache[blocks, offsets], scales[blocks, offsets] = quantize(values, parts)


def read_entries(
    cache: torch.Tensor,
    block_table: torch.Tensor,
    per_block: int,
    start: int,
    end: int,
    scales: torch.Tensor | None = None,
    parts: tuple[int, ...] | None = None,
) -> torch.Tensor:
    """Entries start..end-1 of one sequence: [end - start, width]; FP8 ones dequantized to float32."""
    index = torch.arange(start, end, device=cache.device)
    blocks, offsets = block_table.long()[index // per_block], index % per_block
    if scales is None:
        return cache[blocks, offsets]
    return dequantize(cache[blocks, offsets], scales[blocks, offsets], torch.float32, parts)
