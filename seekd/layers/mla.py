"""Multi-head Latent Attention (DeepSeek-V2/V3) over a paged cache of the compressed latent.

Per token and layer the cache holds only [c_kv (kv_lora_rank, normalised) | k_pe (qk_rope_head_dim,
roped)] — 576 values for V3 — instead of per-head keys and values. Two torch paths compute the same
attention from it:
- naive (the reference): up-project the cached latent with kv_b_proj into per-head K and V, then SDPA;
- absorbed: fold W_UK (the key half of kv_b_proj) into the query and apply W_UV (the value half) after
  the output, so attention runs in latent space as one shared KV head (MQA) over the cache itself.
  Decode reads far fewer bytes this way; prefill does fewer FLOPs the naive way.
On the GPU fast path (`use_kernel`, chosen when the layer is built) an absorbed pure-decode step runs
fused Triton kernels instead (`_fused_decode`); the torch paths stay the reference.
An FP8 cache (`kv_cache_dtype fp8`) holds e4m3 codes of the row and, in `kv_scales`, a float32 scale
for each of its segments: c_kv, k_pe (their magnitudes differ) and, for sparse MLA, the indexer key.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from seekd.distributed import tp_size
from seekd.layers.attention import KVCacheSpec, causal_mask, gather_kv
from seekd.layers.build_scope import build_kernels
from seekd.layers.forward_context import AttentionMetadata, ForwardContext
from seekd.layers.kv_quant import FP8, dequantize, quantize
from seekd.layers.linear import ColumnParallelLinear, ReplicatedLinear, RowParallelLinear
from seekd.layers.norms import RMSNorm
from seekd.layers.rotary import RotaryEmbedding

MLA_MODES = ("auto", "naive", "absorbed")
_SDPA_BACKENDS = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]


class MLAAttention(nn.Module):
    """The whole MLA block: low-rank projections, rope on the decoupled rope dims, latent cache, o_proj.

    `mode` picks the attention path: "naive", "absorbed", or "auto" (absorbed for pure-decode steps,
    naive otherwise). Parameter names follow the DeepSeek checkpoints (q_a_proj, kv_a_proj_with_mqa, ...).
    """

    def __init__(
        self,
        hidden_size: int,
        num_heads: int,
        q_lora_rank: int | None,
        kv_lora_rank: int,
        qk_nope_head_dim: int,
        qk_rope_head_dim: int,
        v_head_dim: int,
        rotary_emb: RotaryEmbedding,
        scale: float,
        bias: bool = False,
        *,
        use_kernel: bool | None = None,
    ) -> None:
        """`use_kernel`: the Triton latent decode kernels; unset = the model's KernelChoice."""
        super().__init__()
        if num_heads % tp_size():
            raise ValueError(f"{num_heads} attention heads are not divisible by tensor-parallel size {tp_size()}")
        self.num_heads = num_heads // tp_size()
        self.q_lora_rank = q_lora_rank
        self.kv_lora_rank = kv_lora_rank
        self.qk_nope_head_dim = qk_nope_head_dim
        self.qk_rope_head_dim = qk_rope_head_dim
        self.v_head_dim = v_head_dim
        self.scale = scale
        qk_head_dim = qk_nope_head_dim + qk_rope_head_dim
        # the inner norms use DeepSeek's default eps, not rms_norm_eps (as the reference code does)
        if q_lora_rank is None:
            self.q_proj = ColumnParallelLinear(hidden_size, num_heads * qk_head_dim)
        else:
            self.q_a_proj = ReplicatedLinear(hidden_size, q_lora_rank, bias)
            self.q_a_layernorm = RMSNorm(q_lora_rank)
            self.q_b_proj = ColumnParallelLinear(q_lora_rank, num_heads * qk_head_dim)
        self.kv_a_proj_with_mqa = ReplicatedLinear(hidden_size, kv_lora_rank + qk_rope_head_dim, bias)
        self.kv_a_layernorm = RMSNorm(kv_lora_rank)
        # folded into attention as dense W_UK / W_UV (absorbed decode), so never low-bit
        self.kv_b_proj = ColumnParallelLinear(
            kv_lora_rank, num_heads * (qk_nope_head_dim + v_head_dim), quantizable=False
        )
        self.o_proj = RowParallelLinear(num_heads * v_head_dim, hidden_size, bias)
        self.rotary_emb = rotary_emb
        self.kv_cache: torch.Tensor | None = None  # [num_blocks, block_size, kv_lora_rank + qk_rope_head_dim]
        self.kv_scales: torch.Tensor | None = None  # FP8 caches: [num_blocks, block_size, segments]
        self.mode = "auto"
        self.use_kernel = build_kernels().mla_decode if use_kernel is None else use_kernel

    @property
    def graph_safe(self) -> bool:
        """Decode steps are capturable once they run the kernel: the torch paths loop over sequences."""
        return self.use_kernel

    def kv_cache_spec(self, dtype: torch.dtype, fp8: bool = False) -> KVCacheSpec:
        segments = self.cache_segments
        if fp8:
            return KVCacheSpec((sum(segments),), FP8, scale_shape=(len(segments),))
        return KVCacheSpec((sum(segments),), dtype)

    @property
    def cache_segments(self) -> tuple[int, ...]:
        """Widths of the parts of a cache row, each with its own FP8 scale: c_kv, then k_pe."""
        return (self.kv_lora_rank, self.qk_rope_head_dim)

    @property
    def latent_width(self) -> int:
        """Values per token of the MLA latent: kv_lora_rank + qk_rope_head_dim (576 for V3)."""
        return self.kv_lora_rank + self.qk_rope_head_dim

    def forward(self, positions: torch.Tensor, x: torch.Tensor, ctx: ForwardContext) -> torch.Tensor:
        meta = ctx.attn
        # an adapter on kv_b_proj changes W_UK / W_UV per sequence: only the naive path applies it
        absorbed = self.use_absorbed(meta) and not (self.kv_b_proj.lora is not None and self.kv_b_proj.lora.active())
        if self.use_kernel and absorbed and meta.is_pure_decode:
            return self.output(self._fused_decode(positions, x, meta))
        q_nope, q_pe, _ = self.project_and_cache(positions, x, meta)
        return self.output((self._absorbed if absorbed else self._naive)(q_nope, q_pe, meta))

    def project_q(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Unroped queries [T, H, qk_nope_head_dim + qk_rope_head_dim] and the compressed query
        (None without q_lora_rank)."""
        q_latent = None
        if self.q_lora_rank is None:
            q = self.q_proj(x)
        else:
            q_latent = self.q_a_layernorm(self.q_a_proj(x))
            q = self.q_b_proj(q_latent)
        return q.view(-1, self.num_heads, self.qk_nope_head_dim + self.qk_rope_head_dim), q_latent

    def project_and_cache(
        self, positions: torch.Tensor, x: torch.Tensor, meta: AttentionMetadata
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Roped queries (q_nope, q_pe) and the compressed query (None without q_lora_rank); writes
        this step's latents into the first `latent_width` values of each token's cache row."""
        q, q_latent = self.project_q(x)
        q_nope, q_pe = q.split([self.qk_nope_head_dim, self.qk_rope_head_dim], dim=-1)
        kv_c, k_pe = self.kv_a_proj_with_mqa(x).split([self.kv_lora_rank, self.qk_rope_head_dim], dim=-1)
        kv_c = self.kv_a_layernorm(kv_c)
        q_pe, k_pe = self.rotary_emb(positions, q_pe, k_pe.unsqueeze(1))
        assert self.kv_cache is not None, "KV cache is not bound; the ModelRunner binds it"
        latent = torch.cat([kv_c, k_pe.squeeze(1)], dim=-1)
        flat = self.kv_cache.view(-1, self.kv_cache.shape[-1])
        if self.kv_scales is None:
            flat[meta.kv.slot_mapping, : self.latent_width] = latent.to(flat.dtype)
        else:
            codes, scales = quantize(latent, self.cache_segments[:2])
            flat[meta.kv.slot_mapping, : self.latent_width] = codes
            self.kv_scales.view(-1, self.kv_scales.shape[-1])[meta.kv.slot_mapping, :2] = scales
        return q_nope, q_pe, q_latent

    def use_absorbed(self, meta: AttentionMetadata) -> bool:
        if self.mode not in MLA_MODES:
            raise ValueError(f"MLA mode must be one of {', '.join(MLA_MODES)}, not {self.mode!r}")
        return self.mode == "absorbed" or (self.mode == "auto" and meta.is_pure_decode)

    def output(self, out: torch.Tensor) -> torch.Tensor:
        """[T, H, v_head_dim] attention output -> [T, hidden] through o_proj."""
        return self.o_proj(out.reshape(-1, self.num_heads * self.v_head_dim))

    def _latent_context(self, meta: AttentionMetadata, i: int, dtype: torch.dtype) -> torch.Tensor:
        """The cached latents of sequence i: [seq_len, kv_lora_rank + qk_rope_head_dim]."""
        rows = gather_kv(self.kv_cache, meta.kv.block_tables[i], meta.seq_lens_cpu[i])[:, : self.latent_width]
        if self.kv_scales is None:
            return rows.to(dtype)
        scales = gather_kv(self.kv_scales, meta.kv.block_tables[i], meta.seq_lens_cpu[i])[:, :2]
        return dequantize(rows, scales, dtype, self.cache_segments[:2])

    def _naive(
        self,
        q_nope: torch.Tensor,
        q_pe: torch.Tensor,
        meta: AttentionMetadata,
        masks: list[torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Reference: per-head K = [W_UK c_kv | k_pe], V = W_UV c_kv, standard attention. -> [T, H, v].
        `masks[i]` ([q_len, seq_len] bool, True = attend) replaces sequence i's causal mask (sparse
        attention passes causal & selected)."""
        q = torch.cat([q_nope, q_pe], dim=-1)
        out = q.new_empty(q.size(0), self.num_heads, self.v_head_dim)
        start = 0
        for i, (q_len, seq_len) in enumerate(zip(meta.query_lens_cpu, meta.seq_lens_cpu)):
            kv_c, k_pe = self._latent_context(meta, i, q.dtype).split([self.kv_lora_rank, self.qk_rope_head_dim], -1)
            kv = self._up_project(kv_c, i).view(seq_len, self.num_heads, self.qk_nope_head_dim + self.v_head_dim)
            k_nope, v = kv.split([self.qk_nope_head_dim, self.v_head_dim], dim=-1)
            k = torch.cat([k_nope, k_pe.unsqueeze(1).expand(-1, self.num_heads, -1)], dim=-1)
            out[start : start + q_len] = self._attend(
                q[start : start + q_len], k, v, None if masks is None else masks[i]
            )
            start += q_len
        return out

    def _up_project(self, kv_c: torch.Tensor, i: int) -> torch.Tensor:
        """kv_b_proj of sequence i's cached latents, with sequence i's adapter delta if it has one."""
        kv = self.kv_b_proj(kv_c)
        lora = self.kv_b_proj.lora
        if lora is not None and lora.state.batch is not None:
            kv = lora.apply_slot(kv_c, kv, lora.state.batch.seq_slots[i])
        return kv

    def _attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """One sequence's attention, [q_len | seq_len, H, D] -> [q_len, H, v_head_dim]. A fresh prompt
        (no cached prefix, no extra mask) is plain causal attention: SDPA's is_causal with no mask
        tensor lets it take a fused flash kernel, whose one head size is met by zero-padding V (the
        extra outputs are dropped). SDPA's fused kernels also want 4-D inputs: with 3-D ones it fell
        back to its fp32 math path, some 0.5 ms per layer of DeepSeek-V2-Lite's 1024-token prefill on
        an H100 (benchmarks/results/timeline_prefill1024_deepseek-v2-lite_h100_39040e5.json). cuDNN's
        attention is left out: it builds a plan per new sequence length, which halved the offline
        benchmark's throughput (random prompt lengths) though its kernel was fast."""
        q_len, seq_len, v_dim = q.size(0), k.size(0), v.size(-1)
        causal = mask is None and q_len == seq_len
        if causal and v_dim < q.size(-1):
            v = F.pad(v, (0, q.size(-1) - v_dim))
        with sdpa_kernel(_SDPA_BACKENDS):
            o = F.scaled_dot_product_attention(
                q.transpose(0, 1).unsqueeze(0),
                k.transpose(0, 1).unsqueeze(0),
                v.transpose(0, 1).unsqueeze(0),
                attn_mask=None if causal else causal_mask(q_len, seq_len, q.device) if mask is None else mask,
                is_causal=causal,
                scale=self.scale,
            )
        return o[0].transpose(0, 1)[..., :v_dim]

    def absorb_query(self, q_nope: torch.Tensor, q_pe: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(q' = [q_nope W_UK | q_pe] of shape [T, H, latent_width], W_UV of shape [H, v, kv_lora_rank])."""
        q = q_nope.new_empty(q_nope.size(0), self.num_heads, self.latent_width)
        q[..., self.kv_lora_rank :] = q_pe
        return q, self._absorb_nope(q_nope, q)

    def _absorb_nope(self, q_nope: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
        """Write q_nope W_UK into the first kv_lora_rank features of q' [T, H, latent_width] (one
        batched matmul over heads, straight into the strided view: no cat); returns W_UV [H, v, rank]."""
        w_kv = self.kv_b_proj.weight.view(self.num_heads, self.qk_nope_head_dim + self.v_head_dim, self.kv_lora_rank)
        w_uk, w_uv = w_kv.split([self.qk_nope_head_dim, self.v_head_dim], dim=1)
        torch.bmm(q_nope.transpose(0, 1), w_uk, out=q[..., : self.kv_lora_rank].transpose(0, 1))
        return w_uv

    def _fused_decode(self, positions: torch.Tensor, x: torch.Tensor, meta: AttentionMetadata) -> torch.Tensor:
        """The absorbed path of a pure-decode step with four launches between the projections and
        o_proj: kv_a_layernorm + rope + cache write + q_pe into q' in one kernel, the W_UK product into
        q', the latent decode kernel (and its split merge), W_UV. The math of project_and_cache
        then _absorbed. -> [T, H, v]."""
        from seekd.kernels.mla_decode import mla_decode, mla_decode_splits
        from seekd.kernels.mla_rope_cache import mla_rope_cache

        assert self.kv_cache is not None, "KV cache is not bound; the ModelRunner binds it"
        q, _ = self.project_q(x)
        q_abs = q.new_empty(q.size(0), self.num_heads, self.latent_width)
        rope = self.rotary_emb
        mla_rope_cache(
            q,
            self.kv_a_proj_with_mqa(x),
            self.kv_a_layernorm.weight,
            self.kv_a_layernorm.eps,
            positions,
            rope.cos_sin_cache,
            rope.rotary_dim,
            rope.interleaved,
            self.kv_cache,
            meta.kv.slot_mapping,
            q_abs,
            self.kv_scales,
        )
        w_uv = self._absorb_nope(q[..., : self.qk_nope_head_dim], q_abs)
        splits = mla_decode_splits(meta.num_seqs, self.num_heads, meta.max_seq_len)
        out_latent = mla_decode(
            q_abs,
            self.kv_cache,
            meta.kv.block_tables,
            meta.seq_lens,
            self.kv_lora_rank,
            self.scale,
            splits,
            self.kv_scales,
        )
        out = out_latent.new_empty(out_latent.size(0), self.num_heads, self.v_head_dim)
        # written through the head-major view, so o_proj's reshape needs no copy at batch > 1
        torch.bmm(out_latent.transpose(0, 1), w_uv.transpose(1, 2), out=out.transpose(0, 1))
        return out

    def _absorbed(self, q_nope: torch.Tensor, q_pe: torch.Tensor, meta: AttentionMetadata) -> torch.Tensor:
        """Latent space: q' = [q_nope W_UK | q_pe] against the cached [c_kv | k_pe], values c_kv,
        then W_UV maps the latent output back to per-head values. -> [T, H, v]."""
        q, w_uv = self.absorb_query(q_nope, q_pe)
        out_latent = q.new_empty(q.size(0), self.num_heads, self.kv_lora_rank)
        start = 0
        for i, (q_len, seq_len) in enumerate(zip(meta.query_lens_cpu, meta.seq_lens_cpu)):
            latent = self._latent_context(meta, i, q.dtype).unsqueeze(0).expand(self.num_heads, -1, -1)
            o = F.scaled_dot_product_attention(
                q[start : start + q_len].transpose(0, 1),
                latent,
                latent[..., : self.kv_lora_rank],
                attn_mask=causal_mask(q_len, seq_len, q.device),
                scale=self.scale,
            )
            out_latent[start : start + q_len] = o.transpose(0, 1)
            start += q_len
        return torch.einsum("thr,hvr->thv", out_latent, w_uv)
