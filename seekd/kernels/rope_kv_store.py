"""Rotary embedding of q and k and the paged-cache write of k and v, in one kernel.

At batch 1 a decode step is a chain of small launches; the reference path spends four of them per
layer between the qkv projection and attention (rotate q, rotate k, store k, store v). This kernel
reads the projection's packed output once per token and writes the rotated queries to a contiguous
buffer and the rotated keys and the values straight into their cache slots. Neox layout only (the
Llama and Qwen models); the reference path in seekd/layers/attention.py stays the definition.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from seekd.kernels.rotary import position_cos_sin, rotate_heads


@triton.jit
def _rope_kv_store_kernel(
    qkv_ptr,
    q_out_ptr,
    kv_ptr,
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
    num_heads,
    num_kv_heads,
    head_dim,
    half,
    HEADS_P: tl.constexpr,
    KV_HEADS_P: tl.constexpr,
    HALF_P: tl.constexpr,
    REST_P: tl.constexpr,
    DIM_P: tl.constexpr,
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
    rotate_heads(
        k_row, cache, cos, sin, num_kv_heads, head_dim, half, head_dim, stride_kv_h, KV_HEADS_P, HALF_P, REST_P
    )
    heads = tl.arange(0, KV_HEADS_P)
    d = tl.arange(0, DIM_P)
    m = (heads < num_kv_heads)[:, None] & (d < head_dim)[None, :]
    v = tl.load(v_row + heads[:, None] * head_dim + d[None, :], mask=m, other=0.0)
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
) -> torch.Tensor:
    """qkv: [T, (heads + 2 * kv_heads) * head_dim] with a unit last stride; kv_cache:
    [num_blocks, block_size, 2, kv_heads, head_dim]. Writes k and v of token t at slot_mapping[t]
    and returns the rotated queries, [T, heads, head_dim] contiguous."""
    tokens = qkv.shape[0]
    assert qkv.stride(-1) == 1 and qkv.shape[1] == (num_heads + 2 * num_kv_heads) * head_dim
    q = torch.empty((tokens, num_heads, head_dim), dtype=qkv.dtype, device=qkv.device)
    if tokens == 0:
        return q
    flat = kv_cache.view(-1, *kv_cache.shape[2:])  # [slots, 2, kv_heads, head_dim]
    half = rotary_dim // 2
    rest = head_dim - rotary_dim
    _rope_kv_store_kernel[(tokens,)](
        qkv,
        q,
        flat,
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
        num_heads,
        num_kv_heads,
        head_dim,
        half,
        HEADS_P=triton.next_power_of_2(num_heads),
        KV_HEADS_P=triton.next_power_of_2(num_kv_heads),
        HALF_P=triton.next_power_of_2(half),
        REST_P=triton.next_power_of_2(rest) if rest else 0,
        DIM_P=triton.next_power_of_2(head_dim),
    )
    return q
