"""The MLA decode step between the projections and attention, in one kernel: kv_a_layernorm of c_kv,
rope of k_pe and q_pe, the latent cache write, and the rope half of the absorbed query.

At batch 1 the reference path (MLAAttention.project_and_cache, then absorb_query) launches about
eight small kernels per layer here: the norm, two deinterleave copies, two rotary kernels, a cat and
an index-put for the cache row, and the cat that assembles q' = [q_nope W_UK | q_pe]. This kernel
reads each token's kv_a_proj_with_mqa row and the rope part of its query heads once, writes the
cache row [normed c_kv | roped k_pe] into its slot, and writes the roped q_pe straight into the
tail of q'; the W_UK product fills q''s head (see MLAAttention._fused_decode). Interleaved (DeepSeek)
rope reads GPT-J pairs and writes neox halves, the layout the reference's deinterleave() produces.
An FP8 cache gets e4m3 codes of c_kv and k_pe, each rounded to the model's dtype first (as the
reference stores them) and quantized with its own float32 scale (seekd/layers/kv_quant.py).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from seekd.kernels.kv_fp8 import e4m3_scale, quantize_e4m3
from seekd.kernels.rotary import position_cos_sin, rotate_heads, rotated_halves


@triton.jit
def _mla_rope_cache_kernel(
    q_ptr,
    kv_a_ptr,
    norm_w_ptr,
    pos_ptr,
    slot_ptr,
    cos_sin_ptr,
    cache_ptr,
    scale_ptr,
    q_out_ptr,
    stride_qt,
    stride_qh,
    stride_kvt,
    stride_cs,
    stride_slot,
    stride_scale_slot,
    stride_ot,
    stride_oh,
    num_heads,
    half,
    eps,
    RANK: tl.constexpr,
    RANK_P: tl.constexpr,
    NOPE: tl.constexpr,
    ROPE: tl.constexpr,
    HEADS_P: tl.constexpr,
    HALF_P: tl.constexpr,
    REST_P: tl.constexpr,
    INTERLEAVED: tl.constexpr,
    FP8: tl.constexpr,
):
    token = tl.program_id(0)
    slot = tl.load(slot_ptr + token).to(tl.int64)
    cos, sin = position_cos_sin(pos_ptr, cos_sin_ptr, token, stride_cs, half, HALF_P)

    kv_row = kv_a_ptr + token * stride_kvt
    cache_row = cache_ptr + slot * stride_slot
    # kv_a_layernorm, rounded as RMSNorm does: normalise in fp32, cast, then scale in the input dtype
    r = tl.arange(0, RANK_P)
    r_valid = r < RANK
    c_kv = tl.load(kv_row + r, mask=r_valid, other=0.0)
    cf = c_kv.to(tl.float32)
    normed = (cf * tl.rsqrt(tl.sum(cf * cf, axis=0) / RANK + eps)).to(c_kv.dtype).to(tl.float32)
    w = tl.load(norm_w_ptr + r, mask=r_valid, other=0.0).to(tl.float32)
    c_kv = (normed * w).to(c_kv.dtype)
    # k_pe is one shared head after c_kv in the same row, in the input and in the cache
    if FP8:  # rope == rotary_dim here (REST_P == 0): the wrapper checks it
        scales = scale_ptr + slot * stride_scale_slot
        c_f = c_kv.to(tl.float32)
        c_scale = e4m3_scale(tl.max(tl.abs(c_f), axis=0))
        tl.store(cache_row + r, quantize_e4m3(c_f, c_scale), mask=r_valid)
        tl.store(scales, c_scale)
        o1, o2 = rotated_halves(kv_row + RANK, cos, sin, 1, half, 0, 1, HALF_P, INTERLEAVED)
        o1 = o1.to(c_kv.dtype).to(tl.float32)
        o2 = o2.to(c_kv.dtype).to(tl.float32)
        pe_scale = e4m3_scale(tl.maximum(tl.max(tl.abs(o1), axis=1), tl.max(tl.abs(o2), axis=1)))
        i = tl.arange(0, HALF_P)[None, :]
        tl.store(cache_row + RANK + i, quantize_e4m3(o1, pe_scale[:, None]), mask=i < half)
        tl.store(cache_row + RANK + half + i, quantize_e4m3(o2, pe_scale[:, None]), mask=i < half)
        tl.store(scales + 1 + tl.arange(0, 1), pe_scale)
    else:
        tl.store(cache_row + r, c_kv.to(cache_ptr.dtype.element_ty), mask=r_valid)
        rotate_heads(kv_row + RANK, cache_row + RANK, cos, sin, 1, ROPE, half, 0, 0, 1, HALF_P, REST_P, INTERLEAVED)
    rotate_heads(
        q_ptr + token * stride_qt + NOPE,
        q_out_ptr + token * stride_ot + RANK,
        cos,
        sin,
        num_heads,
        ROPE,
        half,
        stride_qh,
        stride_oh,
        HEADS_P,
        HALF_P,
        REST_P,
        INTERLEAVED,
    )


def mla_rope_cache(
    q: torch.Tensor,
    kv_a: torch.Tensor,
    norm_weight: torch.Tensor,
    eps: float,
    positions: torch.Tensor,
    cos_sin_cache: torch.Tensor,
    rotary_dim: int,
    interleaved: bool,
    cache: torch.Tensor,
    slot_mapping: torch.Tensor,
    q_out: torch.Tensor,
    cache_scales: torch.Tensor | None = None,
) -> None:
    """q: [T, H, qk_nope_head_dim + rope] queries (rope part unroped); kv_a: [T, kv_lora_rank + rope],
    the kv_a_proj_with_mqa output; cache: [num_blocks, block_size, >= kv_lora_rank + rope] latent
    rows. Writes [rmsnorm(c_kv) * norm_weight | rope(k_pe)] into the first kv_lora_rank + rope values
    of slot slot_mapping[t] and rope(q_pe) into q_out[t, :, kv_lora_rank:] ([T, H, kv_lora_rank +
    rope]); q_out's first kv_lora_rank features are the caller's (the W_UK product). With
    `cache_scales` ([num_blocks, block_size, >= 2] float32) the cache is FP8 and c_kv's and k_pe's
    scales go to the slot's first two."""
    tokens, num_heads, qk_head_dim = q.shape
    rank = norm_weight.numel()
    rope = kv_a.shape[1] - rank
    assert q.stride(-1) == 1 and kv_a.stride(-1) == 1 and q_out.stride(-1) == 1
    assert q_out.shape == (tokens, num_heads, rank + rope) and qk_head_dim > rope
    fp8 = cache_scales is not None
    if fp8:
        assert cache.element_size() == 1 and rotary_dim == rope, "FP8 rows: e4m3 codes, all of k_pe rotated"
        cache = cache.view(torch.uint8)
    else:
        assert cache.dtype == kv_a.dtype, "the cache row is written in the projection's dtype, as the reference does"
    if tokens == 0:
        return
    flat = cache.view(-1, cache.shape[-1])
    flat_scales = cache_scales.view(-1, cache_scales.shape[-1]) if fp8 else flat
    half = rotary_dim // 2
    rest = rope - rotary_dim
    _mla_rope_cache_kernel[(tokens,)](
        q,
        kv_a,
        norm_weight,
        positions,
        slot_mapping,
        cos_sin_cache,
        flat,
        flat_scales,
        q_out,
        q.stride(0),
        q.stride(1),
        kv_a.stride(0),
        cos_sin_cache.stride(0),
        flat.stride(0),
        flat_scales.stride(0),
        q_out.stride(0),
        q_out.stride(1),
        num_heads,
        half,
        eps,
        RANK=rank,
        RANK_P=triton.next_power_of_2(rank),
        NOPE=qk_head_dim - rope,
        ROPE=rope,
        HEADS_P=triton.next_power_of_2(num_heads),
        HALF_P=triton.next_power_of_2(half),
        REST_P=triton.next_power_of_2(rest) if rest else 0,
        INTERLEAVED=interleaved,
        FP8=fp8,
        num_warps=4,
    )
