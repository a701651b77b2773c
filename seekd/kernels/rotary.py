"""Neox-layout rotary embedding of q and k in one kernel (one program per token, all heads)."""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def rotated_halves(
    src,
    cos,
    sin,
    num_heads,
    half,
    stride_src_h,
    HEADS_P: tl.constexpr,
    HALF_P: tl.constexpr,
    INTERLEAVED: tl.constexpr = False,
):
    """The rotated first and second halves of `num_heads` heads at src, in fp32 ([HEADS_P, HALF_P]
    each, zero where padded). INTERLEAVED reads GPT-J pairs, as deinterleave() does (DeepSeek's layout)."""
    heads = tl.arange(0, HEADS_P)
    i = tl.arange(0, HALF_P)
    m = (heads < num_heads)[:, None] & (i < half)[None, :]
    s = src + heads[:, None] * stride_src_h
    if INTERLEAVED:
        x1 = tl.load(s + 2 * i[None, :], mask=m, other=0.0)
        x2 = tl.load(s + 2 * i[None, :] + 1, mask=m, other=0.0)
    else:
        x1 = tl.load(s + i[None, :], mask=m, other=0.0)
        x2 = tl.load(s + half + i[None, :], mask=m, other=0.0)
    x1f, x2f = x1.to(tl.float32), x2.to(tl.float32)
    return x1f * cos[None, :] - x2f * sin[None, :], x2f * cos[None, :] + x1f * sin[None, :]


@triton.jit
def rotate_heads(
    src,
    dst,
    cos,
    sin,
    num_heads,
    head_dim,
    half,
    stride_src_h,
    stride_dst_h,
    HEADS_P: tl.constexpr,
    HALF_P: tl.constexpr,
    REST_P: tl.constexpr,
    INTERLEAVED: tl.constexpr = False,
):
    """Rotate the first 2 * half features of `num_heads` heads from src into dst (neox halves, in
    fp32, rounded once); copy the features past them. INTERLEAVED reads GPT-J pairs and writes the
    halves, as deinterleave() then the neox rotation do (DeepSeek's layout)."""
    heads = tl.arange(0, HEADS_P)
    i = tl.arange(0, HALF_P)
    m = (heads < num_heads)[:, None] & (i < half)[None, :]
    d = dst + heads[:, None] * stride_dst_h
    o1, o2 = rotated_halves(src, cos, sin, num_heads, half, stride_src_h, HEADS_P, HALF_P, INTERLEAVED)
    tl.store(d + i[None, :], o1.to(dst.dtype.element_ty), mask=m)
    tl.store(d + half + i[None, :], o2.to(dst.dtype.element_ty), mask=m)
    if REST_P > 0:  # features past the rotary part pass through
        r = 2 * half + tl.arange(0, REST_P)
        rm = (heads < num_heads)[:, None] & (r < head_dim)[None, :]
        s = src + heads[:, None] * stride_src_h
        tl.store(d + r[None, :], tl.load(s + r[None, :], mask=rm, other=0.0).to(dst.dtype.element_ty), mask=rm)


@triton.jit
def position_cos_sin(pos_ptr, cos_sin_ptr, token, stride_cs, half, HALF_P: tl.constexpr):
    """The cos and sin rows of `token`'s position ([cos | sin] per row of the cache), padded to HALF_P."""
    pos = tl.load(pos_ptr + token)
    i = tl.arange(0, HALF_P)
    cos = tl.load(cos_sin_ptr + pos * stride_cs + i, mask=i < half, other=0.0)
    sin = tl.load(cos_sin_ptr + pos * stride_cs + half + i, mask=i < half, other=0.0)
    return cos, sin


@triton.jit
def _rotary_kernel(
    x_ptr,
    out_ptr,
    pos_ptr,
    cos_sin_ptr,
    stride_xt,
    stride_xh,
    stride_ot,
    stride_oh,
    stride_cs,
    num_heads,
    head_dim,
    half,
    HEADS_P: tl.constexpr,
    HALF_P: tl.constexpr,
    REST_P: tl.constexpr,
):
    token = tl.program_id(0)
    cos, sin = position_cos_sin(pos_ptr, cos_sin_ptr, token, stride_cs, half, HALF_P)
    rotate_heads(
        x_ptr + token * stride_xt,
        out_ptr + token * stride_ot,
        cos,
        sin,
        num_heads,
        head_dim,
        half,
        stride_xh,
        stride_oh,
        HEADS_P,
        HALF_P,
        REST_P,
    )


def rotary(x: torch.Tensor, positions: torch.Tensor, cos_sin_cache: torch.Tensor, rotary_dim: int) -> torch.Tensor:
    """x: [T, heads, head_dim] (any strides with a unit last stride) -> rotated contiguous copy."""
    tokens, heads, head_dim = x.shape
    out = torch.empty((tokens, heads, head_dim), dtype=x.dtype, device=x.device)
    half = rotary_dim // 2
    rest = head_dim - rotary_dim
    _rotary_kernel[(tokens,)](
        x,
        out,
        positions,
        cos_sin_cache,
        x.stride(0),
        x.stride(1),
        out.stride(0),
        out.stride(1),
        cos_sin_cache.stride(0),
        heads,
        head_dim,
        half,
        HEADS_P=triton.next_power_of_2(heads),
        HALF_P=triton.next_power_of_2(half),
        REST_P=triton.next_power_of_2(rest) if rest else 0,
    )
    return out
