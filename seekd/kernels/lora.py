"""Segmented LoRA products: many adapters in one batch, two launches per projection.

A step's tokens come in segments of consecutive rows that share an adapter (one request's tokens,
or runs of requests on the same adapter); segment s uses the stacked adapter weights of slot
`seg_slots[s]` (-1: the base model, no delta). `lora_shrink` computes h = x A[slot]^T ([T, R], float32)
and `lora_expand` adds h B[slot]^T to the projection's output in place. The grid is fixed by the
number of segments and the longest one, so a decode step (one row per segment) replays in a CUDA
graph over persistent segment buffers. The torch loop in seekd/layers/lora.py is the reference.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

_BLOCK_M = 16  # tl.dot's smallest tile; a decode segment uses one row of it


@triton.jit
def _segment_block(seg_starts_ptr, seg_slots_ptr, BLOCK_M: tl.constexpr):
    """(slot, first row, end row) of this program's block of rows: segment program_id(0), block
    program_id(1) of it. The caller returns at once for a base segment or a block past its end."""
    seg = tl.program_id(0)
    slot = tl.load(seg_slots_ptr + seg)
    start = tl.load(seg_starts_ptr + seg) + tl.program_id(1) * BLOCK_M
    end = tl.load(seg_starts_ptr + seg + 1)
    return slot, start, end


@triton.jit
def _shrink_kernel(
    x_ptr,
    a_ptr,
    h_ptr,
    seg_starts_ptr,
    seg_slots_ptr,
    k,
    rank,
    stride_x,
    stride_al,
    stride_ar,
    stride_h,
    IEEE: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    slot, start, end = _segment_block(seg_starts_ptr, seg_slots_ptr, BLOCK_M)
    if slot < 0 or start >= end:
        return
    rows = start + tl.arange(0, BLOCK_M)
    ranks = tl.arange(0, BLOCK_R)
    a = a_ptr + slot.to(tl.int64) * stride_al
    acc = tl.zeros((BLOCK_M, BLOCK_R), dtype=tl.float32)
    for k0 in range(0, k, BLOCK_K):
        cols = k0 + tl.arange(0, BLOCK_K)
        x = tl.load(
            x_ptr + rows[:, None].to(tl.int64) * stride_x + cols[None, :],
            mask=(rows[:, None] < end) & (cols[None, :] < k),
            other=0.0,
        )
        w = tl.load(
            a + ranks[:, None] * stride_ar + cols[None, :],
            mask=(ranks[:, None] < rank) & (cols[None, :] < k),
            other=0.0,
        )
        if IEEE:
            acc += tl.dot(x.to(tl.float32), tl.trans(w.to(tl.float32)), input_precision="ieee")
        else:
            acc += tl.dot(x, tl.trans(w))
    tl.store(
        h_ptr + rows[:, None].to(tl.int64) * stride_h + ranks[None, :],
        acc,
        mask=(rows[:, None] < end) & (ranks[None, :] < rank),
    )


@triton.jit
def _expand_kernel(
    h_ptr,
    b_ptr,
    out_ptr,
    seg_starts_ptr,
    seg_slots_ptr,
    n,
    rank,
    stride_h,
    stride_bl,
    stride_bn,
    stride_out,
    IEEE: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_R: tl.constexpr,
):
    slot, start, end = _segment_block(seg_starts_ptr, seg_slots_ptr, BLOCK_M)
    if slot < 0 or start >= end:
        return
    rows = start + tl.arange(0, BLOCK_M)
    cols = tl.program_id(2) * BLOCK_N + tl.arange(0, BLOCK_N)
    ranks = tl.arange(0, BLOCK_R)
    h = tl.load(
        h_ptr + rows[:, None].to(tl.int64) * stride_h + ranks[None, :],
        mask=(rows[:, None] < end) & (ranks[None, :] < rank),
        other=0.0,
    )
    w = tl.load(
        b_ptr + slot.to(tl.int64) * stride_bl + cols[:, None] * stride_bn + ranks[None, :],
        mask=(cols[:, None] < n) & (ranks[None, :] < rank),
        other=0.0,
    )
    if IEEE:
        delta = tl.dot(h, tl.trans(w.to(tl.float32)), input_precision="ieee")
    else:
        delta = tl.dot(h.to(w.dtype), tl.trans(w))
    out_mask = (rows[:, None] < end) & (cols[None, :] < n)
    out = out_ptr + rows[:, None].to(tl.int64) * stride_out + cols[None, :]
    base = tl.load(out, mask=out_mask, other=0.0)
    tl.store(out, (base.to(tl.float32) + delta).to(out_ptr.dtype.element_ty), mask=out_mask)


def lora_shrink(
    x: torch.Tensor, lora_a: torch.Tensor, seg_starts: torch.Tensor, seg_slots: torch.Tensor, max_seg_len: int
) -> torch.Tensor:
    """h[t] = x[t] @ lora_a[slot of t's segment]^T, float32 [T, R]; rows of base segments stay unset.
    `lora_a` is [slots, R, K]."""
    num_tokens, k = x.shape
    rank = lora_a.shape[1]
    h = torch.empty(num_tokens, rank, dtype=torch.float32, device=x.device)
    block_k = min(128, max(16, triton.next_power_of_2(k)))
    grid = (seg_slots.shape[0], triton.cdiv(max_seg_len, _BLOCK_M))
    _shrink_kernel[grid](
        x,
        lora_a,
        h,
        seg_starts,
        seg_slots,
        k,
        rank,
        x.stride(0),
        lora_a.stride(0),
        lora_a.stride(1),
        h.stride(0),
        IEEE=x.dtype == torch.float32,
        BLOCK_M=_BLOCK_M,
        BLOCK_R=max(16, triton.next_power_of_2(rank)),
        BLOCK_K=block_k,
    )
    return h


def lora_expand(
    h: torch.Tensor,
    lora_b: torch.Tensor,
    out: torch.Tensor,
    seg_starts: torch.Tensor,
    seg_slots: torch.Tensor,
    max_seg_len: int,
) -> None:
    """out[t] += h[t] @ lora_b[slot of t's segment]^T in place, for rows of adapter segments.
    `lora_b` is [slots, N, R] (the adapter's scaling already folded in); `out` is [T, N], rows contiguous."""
    n, rank = lora_b.shape[1], lora_b.shape[2]
    block_n = 64
    grid = (seg_slots.shape[0], triton.cdiv(max_seg_len, _BLOCK_M), triton.cdiv(n, block_n))
    _expand_kernel[grid](
        h,
        lora_b,
        out,
        seg_starts,
        seg_slots,
        n,
        rank,
        h.stride(0),
        lora_b.stride(0),
        lora_b.stride(1),
        out.stride(0),
        IEEE=out.dtype == torch.float32,
        BLOCK_M=_BLOCK_M,
        BLOCK_N=block_n,
        BLOCK_R=max(16, triton.next_power_of_2(rank)),
    )
