"""Rotary embedding of q and k and the paged-cache write of k and v, in one kernel.

At batch 1 a decode step is a chain of small launches; the reference path spends four of them per
layer between the qkv projection and attention (rotate q, rotate k, store k, store v). This kernel
reads the projection's packed output once per token and writes the rotated queries to a contiguous
buffer and the rotated keys and the values straight into their cache slots. Neox layout only (the
Llama and Qwen models); the reference path in seekd/layers/attention.py stays the definition.
An FP8 cache gets e4m3 codes and a float32 scale per K and V head (seekd/layers/kv_quant.py): the
rotated keys are rounded to the model's dtype first, as the reference stores them, then quantized.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from seekd.kernels.kv_fp8 import e4m3_scale, quantize_e4m3
from seekd.kernels.rotary import position_cos_sin, rotate_heads, rotated_halves


@triton.jit
def _rest_features(k_row, heads_valid, half, head_dim, REST_P: tl.constexpr):
    """The key features past the rotary part of every head (fp32, zero where padded)."""
    heads = tl.arange(0, heads_valid.shape[0])
    r = 2 * half + tl.arange(0, REST_P)
    mask = heads_valid[:, None] & (r < head_dim)[None, :]
    return tl.load(k_row + heads[:, None] * head_dim + r[None, :], mask=mask, other=0.0).to(tl.float32)


@triton.jit
def _rope_kv_store_kernel(
    qkv_ptr,
    q_out_ptr,
    kv_ptr,
    scale_ptr,
    pos_ptr,
    slot_ptr,
    cos_sin_ptr,
    stride_qkv_t,
    stride_q_t,
    stride_q_h,
    stride_cs,
    stride_slot,
    stride_kv,
    stride_kv_h,
    stride_scale_slot,
    stride_scale_kv,
    stride_scale_h,
    num_heads,
    num_kv_heads,
    head_dim,
    half,
    HEADS_P: tl.constexpr,
    KV_HEADS_P: tl.constexpr,
    HALF_P: tl.constexpr,
    REST_P: tl.constexpr,
    DIM_P: tl.constexpr,
    FP8: tl.constexpr,
):
    token = tl.program_id(0)
    slot = tl.load(slot_ptr + token).to(tl.int64)
    cos, sin = position_cos_sin(pos_ptr, cos_sin_ptr, token, stride_cs, half, HALF_P)

    row = qkv_ptr + token * stride_qkv_t
    k_row = row + num_heads * head_dim
    v_row = k_row + num_kv_heads * head_dim
    rotate_heads(
        row,
        q_out_ptr + token * stride_q_t,
        cos,
        sin,
        num_heads,
        head_dim,
        half,
        head_dim,
        stride_q_h,
        HEADS_P,
        HALF_P,
        REST_P,
    )
    cache = kv_ptr + slot * stride_slot
    heads = tl.arange(0, KV_HEADS_P)
    d = tl.arange(0, DIM_P)
    m = (heads < num_kv_heads)[:, None] & (d < head_dim)[None, :]
    v = tl.load(v_row + heads[:, None] * head_dim + d[None, :], mask=m, other=0.0)
    if FP8:
        # a key head's rotated halves and the features past them share one scale
        scales = scale_ptr + slot * stride_scale_slot
        heads_valid = heads < num_kv_heads
        i = tl.arange(0, HALF_P)
        half_valid = heads_valid[:, None] & (i < half)[None, :]
        o1, o2 = rotated_halves(k_row, cos, sin, num_kv_heads, half, head_dim, KV_HEADS_P, HALF_P)
        o1 = o1.to(v.dtype).to(tl.float32)  # rounded to the model's dtype, as the reference stores them
        o2 = o2.to(v.dtype).to(tl.float32)
        amax = tl.maximum(tl.max(tl.abs(o1), axis=1), tl.max(tl.abs(o2), axis=1))
        if REST_P > 0:
            amax = tl.maximum(amax, tl.max(tl.abs(_rest_features(k_row, heads_valid, half, head_dim, REST_P)), axis=1))
        k_scale = e4m3_scale(amax)
        k_rows = cache + heads[:, None] * stride_kv_h
        tl.store(k_rows + i[None, :], quantize_e4m3(o1, k_scale[:, None]), mask=half_valid)
        tl.store(k_rows + half + i[None, :], quantize_e4m3(o2, k_scale[:, None]), mask=half_valid)
        if REST_P > 0:
            r = 2 * half + tl.arange(0, REST_P)
            rest = quantize_e4m3(_rest_features(k_row, heads_valid, half, head_dim, REST_P), k_scale[:, None])
            tl.store(k_rows + r[None, :], rest, mask=heads_valid[:, None] & (r < head_dim)[None, :])
        tl.store(scales + heads * stride_scale_h, k_scale, mask=heads_valid)
        vf = v.to(tl.float32)
        v_scale = e4m3_scale(tl.max(tl.abs(vf), axis=1))
        v_rows = cache + stride_kv + heads[:, None] * stride_kv_h
        tl.store(v_rows + d[None, :], quantize_e4m3(vf, v_scale[:, None]), mask=m)
        tl.store(scales + stride_scale_kv + heads * stride_scale_h, v_scale, mask=heads_valid)
    else:
        rotate_heads(
            k_row, cache, cos, sin, num_kv_heads, head_dim, half, head_dim, stride_kv_h, KV_HEADS_P, HALF_P, REST_P
        )
        tl.store(cache + stride_kv + heads[:, None] * stride_kv_h + d[None, :], v.to(kv_ptr.dtype.element_ty), mask=m)


def rope_and_store_kv(
    qkv: torch.Tensor,
    positions: torch.Tensor,
    cos_sin_cache: torch.Tensor,
    rotary_dim: int,
    kv_cache: torch.Tensor,
    slot_mapping: torch.Tensor,
    num_heads: int,
    num_kv_heads: int,
    head_dim: int,
    kv_scales: torch.Tensor | None = None,
) -> torch.Tensor:
    """qkv: [T, (heads + 2 * kv_heads) * head_dim] with a unit last stride; kv_cache:
    [num_blocks, block_size, 2, kv_heads, head_dim]. Writes k and v of token t at slot_mapping[t]
    and returns the rotated queries, [T, heads, head_dim] contiguous. With `kv_scales` ([num_blocks,
    block_size, 2, kv_heads, 1] float32) the cache is FP8: codes there, their scales here."""
    tokens = qkv.shape[0]
    assert qkv.stride(-1) == 1 and qkv.shape[1] == (num_heads + 2 * num_kv_heads) * head_dim
    q = torch.empty((tokens, num_heads, head_dim), dtype=qkv.dtype, device=qkv.device)
    if tokens == 0:
        return q
    fp8 = kv_scales is not None
    if fp8:
        kv_cache = kv_cache.view(torch.uint8)
    flat = kv_cache.view(-1, *kv_cache.shape[2:])  # [slots, 2, kv_heads, head_dim]
    scales = kv_scales.view(-1, *kv_scales.shape[2:]) if fp8 else flat  # unused without FP8
    half = rotary_dim // 2
    rest = head_dim - rotary_dim
    _rope_kv_store_kernel[(tokens,)](
        qkv,
        q,
        flat,
        scales,
        positions,
        slot_mapping,
        cos_sin_cache,
        qkv.stride(0),
        q.stride(0),
        q.stride(1),
        cos_sin_cache.stride(0),
        flat.stride(0),
        flat.stride(1),
        flat.stride(2),
        scales.stride(0),
        scales.stride(1),
        scales.stride(2),
        num_heads,
        num_kv_heads,
        head_dim,
        half,
        HEADS_P=triton.next_power_of_2(num_heads),
        KV_HEADS_P=triton.next_power_of_2(num_kv_heads),
        HALF_P=triton.next_power_of_2(half),
        REST_P=triton.next_power_of_2(rest) if rest else 0,
        DIM_P=triton.next_power_of_2(head_dim),
        FP8=fp8,
    )
    return q
