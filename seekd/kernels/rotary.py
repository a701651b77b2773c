"""Neox-layout rotary embedding of q and k in one kernel (one program per token, all heads)."""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _rotary_kernel(
    x_ptr, out_ptr, pos_ptr, cos_sin_ptr, stride_xt, stride_xh, stride_ot, stride_oh, stride_cs,
    num_heads, head_dim, half,
    HEADS_P: tl.constexpr, HALF_P: tl.constexpr, REST_P: tl.constexpr,
):
    token = tl.program_id(0)
    pos = tl.load(pos_ptr + token)
    heads = tl.arange(0, HEADS_P)
    i = tl.arange(0, HALF_P)
    hmask = heads < num_heads
    imask = i < half
    cos = tl.load(cos_sin_ptr + pos * stride_cs + i, mask=imask, other=0.0)
    sin = tl.load(cos_sin_ptr + pos * stride_cs + half + i, mask=imask, other=0.0)
    base_x = x_ptr + token * stride_xt + heads[:, None] * stride_xh
    base_o = out_ptr + token * stride_ot + heads[:, None] * stride_oh
    m = hmask[:, None] & imask[None, :]
    x1 = tl.load(base_x + i[None, :], mask=m, other=0.0)
    x2 = tl.load(base_x + half + i[None, :], mask=m, other=0.0)
    x1f, x2f = x1.to(tl.float32), x2.to(tl.float32)
    tl.store(base_o + i[None, :], (x1f * cos[None, :] - x2f * sin[None, :]).to(x1.dtype), mask=m)
    tl.store(base_o + half + i[None, :], (x2f * cos[None, :] + x1f * sin[None, :]).to(x1.dtype), mask=m)
    if REST_P > 0:  # dims past the rotary part pass through
        r = 2 * half + tl.arange(0, REST_P)
        rm = hmask[:, None] & (r[None, :] < head_dim)
        tl.store(base_o + r[None, :], tl.load(base_x + r[None, :], mask=rm, other=0.0), mask=rm)


def rotary(x: torch.Tensor, positions: torch.Tensor, cos_sin_cache: torch.Tensor, rotary_dim: int) -> torch.Tensor:
    """x: [T, heads, head_dim] (any strides with a unit last stride) -> rotated contiguous copy."""
    tokens, heads, head_dim = x.shape
    out = torch.empty((tokens, heads, head_dim), dtype=x.dtype, device=x.device)
    half = rotary_dim // 2
    rest = head_dim - rotary_dim
    _rotary_kernel[(tokens,)](
        x, out, positions, cos_sin_cache, x.stride(0), x.stride(1), out.stride(0), out.stride(1),
        cos_sin_cache.stride(0), heads, head_dim, half,
        HEADS_P=triton.next_power_of_2(heads), HALF_P=triton.next_power_of_2(half),
        REST_P=triton.next_power_of_2(rest) if rest else 0,
    )
    return out
