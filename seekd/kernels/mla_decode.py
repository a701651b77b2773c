"""MLA decode attention in latent space (DeepSeek-V2/V3, absorbed path) over the paged latent cache.

With W_UK folded into the query, every head attends to the same cached rows [c_kv | k_pe]
(kv_lora_rank + rope dims, 576 values for V3) and takes c_kv itself as the value: one shared KV
head for all heads. Each program therefore takes a block of heads of one sequence, so a cache tile
loaded once serves all of them, and keeps the key range of one split; long contexts with few
sequences split the range (flash-decoding) and merge partial softmaxes as paged attention does.
Unlike paged attention, the merge stays a second kernel: a program's partial is [heads, 512] fp32
here, and the last split pulling every split's partial through one multiprocessor took 12.7 us of
V2-Lite's batch-1 decode on an H100, against 5.3 + 1.9 us for the kernel and a merge spread over
heads (benchmarks/results/timeline_bs1_deepseek-v2-lite_h100_*.json).
An FP8 cache (e4m3 codes read as uint8, float32 scales [num_blocks, block_size, >= 2] for c_kv and
k_pe) is dequantized tile by tile in registers into the query's dtype.
Sparse MLA (DeepSeek-V3.2) runs the same kernel over a list of context positions per sequence (the
indexer's top-k) instead of the whole range, so a decode step reads index_topk rows whatever the
context length; positions at or past the sequence's length (top-k's picks among masked scores) are
skipped.
The torch paths in seekd/layers/mla.py (`MLAAttention._absorbed`) and seekd/layers/sparse_mla.py
(`SparseMLAAttention._sparse_absorbed`) are the references.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from seekd.kernels.paged_attention import decode_splits, dequantize_tile, merge_splits, online_softmax_step

_LOG2E = 1.4426950408889634


@triton.jit
def _mla_decode_kernel(
    q_ptr,
    cache_ptr,
    scale_ptr,
    out_ptr,
    part_acc_ptr,
    part_ml_ptr,
    block_tables_ptr,
    seq_lens_ptr,
    idx_ptr,
    sm_scale_log2,
    num_heads,
    num_idx,
    stride_qt,
    stride_qh,
    stride_ot,
    stride_oh,
    stride_cb,
    stride_ct,
    stride_sb,
    stride_st,
    stride_bt,
    stride_ix,
    RANK: tl.constexpr,
    RANK_P: tl.constexpr,
    ROPE: tl.constexpr,
    ROPE_P: tl.constexpr,
    PAGE: tl.constexpr,
    BLOCK_H: tl.constexpr,
    BLOCK_N: tl.constexpr,
    NUM_SPLITS: tl.constexpr,
    IEEE: tl.constexpr,
    FP8: tl.constexpr,
    SPARSE: tl.constexpr,
):
    seq = tl.program_id(0)
    heads = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    split = tl.program_id(2)
    head_valid = heads < num_heads
    seq_len = tl.load(seq_lens_ptr + seq)

    r = tl.arange(0, RANK_P)
    p = tl.arange(0, ROPE_P)
    r_valid = r < RANK
    p_valid = p < ROPE
    q_row = q_ptr + seq * stride_qt + heads[:, None] * stride_qh
    q_nope = tl.load(q_row + r[None, :], mask=head_valid[:, None] & r_valid[None, :], other=0.0)
    q_pe = tl.load(q_row + RANK + p[None, :], mask=head_valid[:, None] & p_valid[None, :], other=0.0)

    span = num_idx if SPARSE else seq_len  # the split range covers list entries or positions
    per_split = tl.cdiv(tl.cdiv(span, NUM_SPLITS), BLOCK_N) * BLOCK_N
    kv_begin = split * per_split
    kv_stop = tl.minimum(span, kv_begin + per_split)

    m_i = tl.full([BLOCK_H], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_H], tl.float32)
    acc = tl.zeros([BLOCK_H, RANK_P], tl.float32)
    cols = tl.arange(0, BLOCK_N)
    for start in range(kv_begin, kv_stop, BLOCK_N):
        if SPARSE:
            listed = start + cols < kv_stop
            k_pos = tl.load(idx_ptr + seq * stride_ix + start + cols, mask=listed, other=0)
            k_valid = listed & (k_pos >= 0) & (k_pos < seq_len)
            k_pos = tl.where(k_valid, k_pos, 0)
        else:
            k_pos = start + cols
            k_valid = k_pos < kv_stop
        page = tl.load(block_tables_ptr + seq * stride_bt + k_pos // PAGE, mask=k_valid, other=0)
        row = cache_ptr + page.to(tl.int64) * stride_cb + (k_pos % PAGE) * stride_ct
        latent = tl.load(row[:, None] + r[None, :], mask=k_valid[:, None] & r_valid[None, :], other=0)
        k_pe = tl.load(row[:, None] + RANK + p[None, :], mask=k_valid[:, None] & p_valid[None, :], other=0)
        if FP8:
            scales = scale_ptr + page.to(tl.int64) * stride_sb + (k_pos % PAGE) * stride_st
            latent = dequantize_tile(latent, scales, k_valid).to(q_nope.dtype)
            k_pe = dequantize_tile(k_pe, scales + 1, k_valid).to(q_nope.dtype)
        if IEEE:  # float32 caches: exact products, so fp32 runs match the reference token for token
            s = tl.dot(q_nope, tl.trans(latent), input_precision="ieee")
            s += tl.dot(q_pe, tl.trans(k_pe), input_precision="ieee")
        else:
            s = tl.dot(q_nope, tl.trans(latent)) + tl.dot(q_pe, tl.trans(k_pe))
        s = tl.where(k_valid[None, :], s * sm_scale_log2, float("-inf"))
        m_i, l_i, acc = online_softmax_step(s, latent, m_i, l_i, acc, IEEE)

    out_mask = head_valid[:, None] & r_valid[None, :]
    if NUM_SPLITS == 1:
        out = acc / tl.where(l_i == 0.0, 1.0, l_i)[:, None]
        o = out_ptr + seq * stride_ot + heads[:, None] * stride_oh + r[None, :]
        tl.store(o, out.to(out_ptr.dtype.element_ty), mask=out_mask)
    else:  # partials in merge_splits' layout: [T, H, splits, RANK_P] and [T, H, splits, 2]
        part = (seq * num_heads + heads) * NUM_SPLITS + split
        tl.store(part_acc_ptr + part[:, None] * RANK_P + r[None, :], acc, mask=out_mask)
        tl.store(part_ml_ptr + part * 2, m_i, mask=head_valid)
        tl.store(part_ml_ptr + part * 2 + 1, l_i, mask=head_valid)


def mla_decode_splits(num_seqs: int, num_heads: int, max_seq_len: int) -> int:
    return decode_splits(num_seqs * triton.cdiv(num_heads, block_heads(num_heads)), max_seq_len)


def block_heads(num_heads: int) -> int:
    return 16 if num_heads <= 16 else 32


def mla_decode(
    q: torch.Tensor,
    cache: torch.Tensor,
    block_tables: torch.Tensor,
    seq_lens: torch.Tensor,
    kv_lora_rank: int,
    scale: float,
    num_splits: int = 1,
    cache_scales: torch.Tensor | None = None,
    selected: torch.Tensor | None = None,
) -> torch.Tensor:
    """q: [B, H, kv_lora_rank + rope] absorbed queries, one per sequence (pure decode); cache:
    [num_blocks, block_size, >= kv_lora_rank + rope] latent rows -> [B, H, kv_lora_rank]. With
    `cache_scales` ([num_blocks, block_size, >= 2] float32: c_kv's, then k_pe's) the cache is FP8.
    With `selected` ([B, K] integer context positions) each query attends to those positions only."""
    num_seqs, num_heads, width = q.shape
    rope = width - kv_lora_rank
    assert cache.stride(-1) == 1 and q.stride(-1) == 1 and cache.shape[-1] >= width
    assert kv_lora_rank >= 16, "tl.dot needs at least 16 latent features"
    out = torch.empty((num_seqs, num_heads, kv_lora_rank), dtype=q.dtype, device=q.device)
    rank_p = triton.next_power_of_2(kv_lora_rank)
    if num_splits > 1:
        part_acc = torch.empty(num_seqs * num_heads * num_splits * rank_p, device=q.device, dtype=torch.float32)
        part_ml = torch.empty(num_seqs * num_heads * num_splits * 2, device=q.device, dtype=torch.float32)
    else:
        part_acc = part_ml = out  # unused
    fp8 = cache_scales is not None
    if fp8:
        assert cache.element_size() == 1 and cache_scales.dtype == torch.float32 and cache_scales.stride(-1) == 1
        cache = cache.view(torch.uint8)
    if selected is not None:
        assert selected.dim() == 2 and selected.size(0) == num_seqs and selected.stride(-1) == 1
    bh = block_heads(num_heads)
    _mla_decode_kernel[(num_seqs, triton.cdiv(num_heads, bh), num_splits)](
        q,
        cache,
        cache_scales if fp8 else q,  # unused without FP8
        out,
        part_acc,
        part_ml,
        block_tables,
        seq_lens,
        selected if selected is not None else seq_lens,  # unused when dense
        scale * _LOG2E,
        num_heads,
        selected.size(1) if selected is not None else 0,
        q.stride(0),
        q.stride(1),
        out.stride(0),
        out.stride(1),
        cache.stride(0),
        cache.stride(1),
        cache_scales.stride(0) if fp8 else 0,
        cache_scales.stride(1) if fp8 else 0,
        block_tables.stride(0),
        selected.stride(0) if selected is not None else 0,
        RANK=kv_lora_rank,
        RANK_P=rank_p,
        ROPE=rope,
        ROPE_P=max(16, triton.next_power_of_2(rope)),
        PAGE=cache.shape[1],
        BLOCK_H=bh,
        BLOCK_N=32,
        NUM_SPLITS=num_splits,
        IEEE=q.dtype == torch.float32,
        FP8=fp8,
        SPARSE=selected is not None,
        num_warps=4 if bh <= 16 else 8,
        num_stages=2,
    )
    if num_splits > 1:
        merge_splits(part_acc, part_ml, out, num_splits)
    return out
