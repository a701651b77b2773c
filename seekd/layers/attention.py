"""Attention over the paged KV cache, behind one backend interface.

A layer owns its cache tensor (bound by the ModelRunner after sizing) and delegates the math to a
backend: `torch` is the reference that runs everywhere; faster backends are compared against it.
"""

from __future__ import annotations

import functools
import math
import os
from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn

from seekd.intmath import cdiv, round_up
from seekd.layers.forward_context import KV_KIND, AttentionMetadata, ForwardContext
from seekd.layers.kv_quant import FP8, dequantize, quantize
from seekd.layers.rotary import RotaryEmbedding


@dataclass(frozen=True)
class KVCacheSpec:
    """One kind of cache entry a layer keeps: layers with equal specs form one cache group
    (seekd/engine/kv_cache_layout.py), whose blocks, block tables and slots are shared by those layers.

    `kind` names the group (the key of AttentionMetadata.groups); an entry summarises
    `tokens_per_entry` consecutive tokens (a compressed entry) or is one token's (1); with a
    `sliding_window` W, the token at position p is never read by queries after p + W - 1, so its
    blocks are freed as the request moves on. An FP8 entry (dtype float8_e4m3fn) carries float32
    scales of `scale_shape` beside its codes (seekd/layers/kv_quant.py), in a tensor of their own.
    """

    entry_shape: tuple[int, ...]
    dtype: torch.dtype
    kind: str = KV_KIND
    tokens_per_entry: int = 1
    sliding_window: int | None = None
    scale_shape: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        if (self.dtype == FP8) != (self.scale_shape is not None):
            raise ValueError("an FP8 cache entry needs its scale_shape, and only an FP8 one has scales")

    @property
    def data_bytes_per_entry(self) -> int:
        return torch.empty((), dtype=self.dtype).element_size() * math.prod(self.entry_shape)

    @property
    def scale_bytes_per_entry(self) -> int:
        return 0 if self.scale_shape is None else 4 * math.prod(self.scale_shape)

    @property
    def bytes_per_entry(self) -> int:
        return self.data_bytes_per_entry + self.scale_bytes_per_entry

    def data_bytes_per_block(self, entries_per_block: int) -> int:
        """The codes' bytes, padded to 16 when float32 scales follow them in a shared page."""
        n = entries_per_block * self.data_bytes_per_entry
        return n if self.scale_shape is None else round_up(n, 16)

    def bytes_per_block(self, entries_per_block: int) -> int:
        return self.data_bytes_per_block(entries_per_block) + entries_per_block * self.scale_bytes_per_entry


class AttentionBackend(Protocol):
    name: str

    def prepare(self, meta: AttentionMetadata) -> object | None:
        """Once per step, before the layers run: per-step data shared by every layer."""
        ...

    def attend(self, layer: Attention, q: torch.Tensor, meta: AttentionMetadata) -> torch.Tensor:
        """Attention of q over the layer's cache, in which this step's keys and values already are."""
        ...


class Attention(nn.Module):
    """Multi-head / grouped-query attention. The cache layout per token is [2, kv_heads, head_dim];
    an FP8 cache has a float32 scale per K and V head beside it, `kv_scales` [.., 2, kv_heads, 1]."""

    def __init__(self, num_heads: int, head_dim: int, scale: float, num_kv_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = head_dim
        self.scale = scale
        self.num_kv_heads = num_kv_heads
        self.kv_cache: torch.Tensor | None = None  # [num_blocks, block_size, 2, kv_heads, head_dim]
        self.kv_scales: torch.Tensor | None = None  # FP8 caches: [num_blocks, block_size, 2, kv_heads, 1]
        self.backend: AttentionBackend = TorchAttentionBackend()

    def kv_cache_spec(self, dtype: torch.dtype, fp8: bool = False) -> KVCacheSpec:
        shape = (2, self.num_kv_heads, self.head_dim)
        return KVCacheSpec(shape, FP8, scale_shape=(2, self.num_kv_heads, 1)) if fp8 else KVCacheSpec(shape, dtype)

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, ctx: ForwardContext) -> torch.Tensor:
        """q: [T, heads*head_dim], k/v: [T, kv_heads*head_dim] -> [T, heads*head_dim]."""
        assert self.kv_cache is not None, "KV cache is not bound; the ModelRunner binds it"
        q = q.view(-1, self.num_heads, self.head_dim)
        k = k.view(-1, self.num_kv_heads, self.head_dim)
        v = v.view(-1, self.num_kv_heads, self.head_dim)
        store_kv(self.kv_cache, k, v, ctx.attn.kv.slot_mapping, self.kv_scales)
        out = self.backend.attend(self, q, ctx.attn)
        return out.reshape(-1, self.num_heads * self.head_dim)

    def forward_packed(
        self, positions: torch.Tensor, qkv: torch.Tensor, rope: RotaryEmbedding, ctx: ForwardContext
    ) -> torch.Tensor:
        """Attention straight from the qkv projection's output [T, (heads + 2*kv_heads)*head_dim]:
        on the GPU fast path one kernel rotates q and k and writes k and v into the cache; the
        reference splits, rotates (rope) and stores step by step."""
        q_size, kv_size = self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim
        if rope.use_kernel and not rope.interleaved:
            from seekd.kernels.rope_kv_store import rope_and_store_kv

            assert self.kv_cache is not None, "KV cache is not bound; the ModelRunner binds it"
            q = rope_and_store_kv(
                qkv,
                positions,
                rope.cos_sin_cache,
                rope.rotary_dim,
                self.kv_cache,
                ctx.attn.kv.slot_mapping,
                self.num_heads,
                self.num_kv_heads,
                self.head_dim,
                self.kv_scales,
            )
            return self.backend.attend(self, q, ctx.attn).reshape(-1, q_size)
        q, k, v = qkv.split([q_size, kv_size, kv_size], dim=-1)
        q, k = rope(positions, q.view(-1, self.num_heads, self.head_dim), k.view(-1, self.num_kv_heads, self.head_dim))
        return self.forward(q, k, v, ctx)


def store_kv(
    kv_cache: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    slot_mapping: torch.Tensor,
    kv_scales: torch.Tensor | None = None,
) -> None:
    """Write k and v [T, kv_heads, head_dim] at their slots; with `kv_scales`, as FP8 codes and scales."""
    flat = kv_cache.view(-1, *kv_cache.shape[2:])
    if kv_scales is None:
        flat[slot_mapping, 0] = k.to(kv_cache.dtype)
        flat[slot_mapping, 1] = v.to(kv_cache.dtype)
        return
    codes, scales = quantize(torch.stack([k, v], dim=1))
    flat[slot_mapping] = codes
    kv_scales.view(-1, *kv_scales.shape[2:])[slot_mapping] = scales


def gather_kv(kv_cache: torch.Tensor, block_table: torch.Tensor, seq_len: int) -> torch.Tensor:
    """The first `seq_len` cached tokens of one sequence: [seq_len, 2, kv_heads, head_dim]."""
    block_size = kv_cache.shape[1]
    num_blocks = cdiv(seq_len, block_size)
    return kv_cache[block_table[:num_blocks]].flatten(0, 1)[:seq_len]


def gather_entries(
    cache: torch.Tensor,
    scales: torch.Tensor | None,
    block_table: torch.Tensor,
    seq_len: int,
    dtype: torch.dtype,
    widths: tuple[int, ...] | None = None,
) -> torch.Tensor:
    """gather_kv as `dtype`: FP8 entries dequantized with their scales (segments of `widths`)."""
    rows = gather_kv(cache, block_table, seq_len)
    if scales is None:
        return rows.to(dtype)
    return dequantize(rows, gather_kv(scales, block_table, seq_len), dtype, widths)


class TorchAttentionBackend:
    """Reference: attend sequence by sequence with SDPA over the gathered context, causal with the
    offset of the already-cached tokens."""

    name = "torch"

    def prepare(self, meta: AttentionMetadata) -> None:
        return None

    def attend(self, layer: Attention, q: torch.Tensor, meta: AttentionMetadata) -> torch.Tensor:
        out = torch.empty_like(q)
        group = layer.num_heads // layer.num_kv_heads
        start = 0
        for i, (q_len, seq_len) in enumerate(zip(meta.query_lens_cpu, meta.seq_lens_cpu)):
            kv = gather_entries(layer.kv_cache, layer.kv_scales, meta.kv.block_tables[i], seq_len, q.dtype)
            keys = kv[:, 0].repeat_interleave(group, dim=1).transpose(0, 1)
            values = kv[:, 1].repeat_interleave(group, dim=1).transpose(0, 1)
            queries = q[start : start + q_len].transpose(0, 1)
            mask = causal_mask(q_len, seq_len, q.device)
            o = F.scaled_dot_product_attention(queries, keys, values, attn_mask=mask, scale=layer.scale)
            out[start : start + q_len] = o.transpose(0, 1)
            start += q_len
        return out


def causal_mask(q_len: int, seq_len: int, device: torch.device) -> torch.Tensor:
    """Query j (the token at position seq_len - q_len + j) sees keys 0..seq_len - q_len + j."""
    q_pos = torch.arange(seq_len - q_len, seq_len, device=device).unsqueeze(1)
    k_pos = torch.arange(seq_len, device=device).unsqueeze(0)
    return k_pos <= q_pos


class TritonAttentionBackend:
    """Paged attention in one Triton kernel (GPU); see seekd/kernels/paged_attention.py.

    `prefill="varlen"` runs steps in which no sequence has cached context (fresh prompts) through
    torch's FlashAttention varlen kernel instead; `"auto"` does so on CUDA when the step's longest
    prompt has at least VARLEN_FROM tokens. benchmarks/prefill_attention.py measures both: on an H100
    the Triton kernel wins up to 1024-token prompts (0.14 vs 0.25 ms) and varlen from 4096 (0.68 vs
    0.83 ms; benchmarks/results/prefill_attention_h100.json)."""

    name = "triton"

    def __init__(self, num_kv_heads: int, prefill: str = "auto") -> None:
        if prefill not in PREFILL_KERNELS:
            raise ValueError(f"prefill attention must be one of {', '.join(PREFILL_KERNELS)}, not {prefill!r}")
        self.num_kv_heads = num_kv_heads
        self.prefill = prefill

    def prepare(self, meta: AttentionMetadata) -> TritonStepData:
        from seekd.kernels.paged_attention import decode_splits, query_blocks, split_counters

        block_q = 1 if meta.is_pure_decode else 16
        seqs, starts = query_blocks(meta.query_lens_cpu, block_q)
        num_splits = decode_splits(len(seqs) * self.num_kv_heads, meta.max_seq_len) if meta.is_pure_decode else 1
        device = meta.seq_lens.device
        return TritonStepData(
            counters=split_counters(len(seqs), self.num_kv_heads, device) if num_splits > 1 else None,
            qblock_seq=torch.tensor(seqs, dtype=torch.int32).to(device, non_blocking=True),
            qblock_start=torch.tensor(starts, dtype=torch.int32).to(device, non_blocking=True),
            block_q=block_q,
            num_splits=num_splits,
            varlen=self._varlen(meta),
        )

    def _varlen(self, meta: AttentionMetadata) -> bool:
        if meta.is_pure_decode or meta.query_lens_cpu != meta.seq_lens_cpu or self.prefill == "triton":
            return False
        return self.prefill == "varlen" or (meta.seq_lens.is_cuda and meta.max_query_len >= VARLEN_FROM)

    def attend(self, layer: Attention, q: torch.Tensor, meta: AttentionMetadata) -> torch.Tensor:
        from seekd.kernels.paged_attention import paged_attention

        data = meta.backend_data
        if data.varlen:
            return varlen_prefill(layer, q, meta)
        return paged_attention(
            q.contiguous(),
            layer.kv_cache,
            meta.kv.block_tables,
            meta.seq_lens,
            meta.query_start_loc,
            data.qblock_seq,
            data.qblock_start,
            layer.scale,
            data.block_q,
            data.num_splits,
            counters=data.counters,
            kv_scales=layer.kv_scales,
        )


PREFILL_KERNELS = ("auto", "triton", "varlen")
VARLEN_FROM = 2048  # prompt tokens; between the 1024 where the Triton kernel wins and the 4096 where varlen does


def varlen_prefill(layer: Attention, q: torch.Tensor, meta: AttentionMetadata) -> torch.Tensor:
    """Causal attention of fresh prompts (no cached context) with torch's FlashAttention varlen
    kernel, over this step's keys and values read back from their cache slots."""
    from torch.nn.attention.varlen import varlen_attn

    rows = layer.kv_cache.view(-1, *layer.kv_cache.shape[2:])[meta.kv.slot_mapping]
    if layer.kv_scales is not None:
        rows = dequantize(rows, layer.kv_scales.view(-1, *layer.kv_scales.shape[2:])[meta.kv.slot_mapping], q.dtype)
    k, v = rows[:, 0], rows[:, 1]
    kwargs = varlen_causal_kwargs()
    if "enable_gqa" not in kwargs and layer.num_heads != layer.num_kv_heads:  # older torch: expand the heads
        group = layer.num_heads // layer.num_kv_heads
        k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
    cu = meta.query_start_loc
    return varlen_attn(q, k, v, cu, cu, meta.max_query_len, meta.max_query_len, scale=layer.scale, **kwargs)


@functools.cache
def varlen_causal_kwargs() -> dict[str, object]:
    """torch 2.10 takes is_causal; later releases a window (-1, 0), and grouped KV heads natively."""
    import inspect

    from torch.nn.attention.varlen import varlen_attn

    params = inspect.signature(varlen_attn).parameters
    kwargs: dict[str, object] = {"window_size": (-1, 0)} if "window_size" in params else {"is_causal": True}
    if "enable_gqa" in params:
        kwargs["enable_gqa"] = True
    return kwargs


@dataclass
class TritonStepData:
    qblock_seq: torch.Tensor
    qblock_start: torch.Tensor
    block_q: int
    num_splits: int
    counters: torch.Tensor | None = None  # split-K merge counters, shared by every layer (each leaves them zeroed)
    varlen: bool = False  # fresh prompts through FlashAttention varlen: decided once per step, not per layer


def backend_name(name: str, device: str) -> str:
    """`auto` is triton on CUDA and the torch reference elsewhere."""
    if name == "auto":
        return "triton" if device.startswith("cuda") else "torch"
    return name


def make_backend(name: str, device: str, num_kv_heads: int, prefill: str = "auto") -> AttentionBackend:
    name = backend_name(name, device)
    if name == "torch":
        return TorchAttentionBackend()
    if name == "triton":
        if not device.startswith("cuda") and os.environ.get("TRITON_INTERPRET") != "1":
            raise ValueError(
                "the triton attention backend needs a CUDA device "
                "(or TRITON_INTERPRET=1, Triton's slow CPU interpreter, to debug kernels)"
            )
        return TritonAttentionBackend(num_kv_heads, prefill)
    raise ValueError(f"attention backend must be auto, torch or triton, not {name!r}")
