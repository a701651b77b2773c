"""Triton attention over the paged KV cache: one kernel for prefill, chunked prefill and decode.

Each program takes BLOCK_Q query tokens of one sequence times the GROUP query heads that share one
KV head (GQA), so a K/V tile loaded once serves all of them. Keys come from the block table a tile
of BLOCK_N at a time (a tile may span several pages). Decode batches with little parallelism split
the key range over NUM_SPLITS programs (flash-decoding); the last of them to finish merges the
partial softmaxes, so no second kernel (and no launch gap) follows.

Cache layout: [num_blocks, block_size, 2, num_kv_heads, head_dim] (K at index 0, V at 1). An FP8 cache
holds e4m3 codes (read as uint8) with a float32 scale per token, K/V and head beside it ([num_blocks,
block_size, 2, num_kv_heads, 1]); each tile is dequantized in registers into the query's dtype, so the
math after the loads is the model-dtype kernel's.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from seekd.kernels.lowbit import E4M3_DECODE_FACTOR, e4m3_to_f16

_LOG2E = 1.4426950408889634


@triton.jit
def online_softmax_step(s, v, m_i, l_i, acc, IEEE: tl.constexpr):
    """Fold one tile of base-2 scores s [M, N] (-inf where masked) and its values v [N, D] into the
    running max m_i, denominator l_i and accumulator acc; rows with nothing visible yet stay 0."""
    m_new = tl.maximum(m_i, tl.max(s, axis=1))
    m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
    p = tl.exp2(s - m_safe[:, None])
    alpha = tl.exp2(m_i - m_safe)
    l_i = l_i * alpha + tl.sum(p, axis=1)
    if IEEE:  # float32 caches: exact products, so fp32 runs can match the reference token for token
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision="ieee")
    else:
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
    return m_new, l_i, acc


@triton.jit
def dequantize_tile(codes, scale_ptrs, valid):
    """uint8 e4m3 codes [N, D] and the pointers of their rows' scales [N] -> float32 values [N, D]."""
    scales = tl.load(scale_ptrs, mask=valid, other=0.0) * E4M3_DECODE_FACTOR
    return e4m3_to_f16(codes).to(tl.float32) * scales[:, None]


@triton.jit
def load_paged_rows(
    cache_ptr,
    scale_ptr,
    table_ptr,
    pos,
    valid,
    d,
    d_valid,
    stride_cb,
    stride_ct,
    stride_sb,
    stride_st,
    PAGE: tl.constexpr,
    FP8: tl.constexpr,
    dtype,
):
    """Rows at logical positions `pos` [N] of one sequence's paged cache -> [N, D_P] in `dtype`."""
    page = tl.load(table_ptr + pos // PAGE, mask=valid, other=0)
    row = cache_ptr + page.to(tl.int64) * stride_cb + (pos % PAGE) * stride_ct
    rows = tl.load(row[:, None] + d[None, :], mask=valid[:, None] & d_valid[None, :], other=0)
    if FP8:
        scales = scale_ptr + page.to(tl.int64) * stride_sb + (pos % PAGE) * stride_st
        rows = dequantize_tile(rows, scales, valid)
    return rows.to(dtype)


@triton.jit
def _paged_attention_kernel(
    q_ptr,
    kv_ptr,
    scale_ptr,
    out_ptr,
    part_acc_ptr,
    part_ml_ptr,
    counters_ptr,
    block_tables_ptr,
    seq_lens_ptr,
    query_start_ptr,
    qblock_seq_ptr,
    qblock_start_ptr,
    sm_scale_log2,
    stride_qt,
    stride_qh,
    stride_ot,
    stride_oh,
    stride_kb,
    stride_kt,
    stride_kkv,
    stride_kh,
    stride_sb,
    stride_st,
    stride_skv,
    stride_sh,
    stride_bt,
    PAGE: tl.constexpr,
    GROUP: tl.constexpr,
    GROUP_P: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    HEAD_DIM_P: tl.constexpr,
    BLOCK_Q: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    NUM_SPLITS: tl.constexpr,
    MIN_SPLIT: tl.constexpr,
    IEEE: tl.constexpr,
    FP8: tl.constexpr,
):
    qb = tl.program_id(0)
    kv_head = tl.program_id(1)
    split = tl.program_id(2)

    seq = tl.load(qblock_seq_ptr + qb)
    q_block_start = tl.load(qblock_start_ptr + qb)  # index of the block's first query within its sequence
    q_begin = tl.load(query_start_ptr + seq)
    q_len = tl.load(query_start_ptr + seq + 1) - q_begin
    seq_len = tl.load(seq_lens_ptr + seq)
    context_len = seq_len - q_len

    rows = tl.arange(0, BLOCK_M)
    q_idx = q_block_start + rows // GROUP_P  # query position within this step's chunk
    head_in_group = rows % GROUP_P
    row_valid = (q_idx < q_len) & (head_in_group < GROUP) & (rows < BLOCK_Q * GROUP_P)
    head = kv_head * GROUP + head_in_group
    dims = tl.arange(0, HEAD_DIM_P)
    dim_valid = dims < HEAD_DIM

    q_offsets = (q_begin + q_idx)[:, None] * stride_qt + head[:, None] * stride_qh + dims[None, :]
    q = tl.load(q_ptr + q_offsets, mask=row_valid[:, None] & dim_valid[None, :], other=0.0)

    # keys this block may see: up to the causal limit of its last query
    last_q = tl.minimum(q_block_start + BLOCK_Q, q_len)
    kv_end = context_len + last_q
    # NUM_SPLITS is fixed for a captured graph's longest context; a shorter one uses only as many
    # splits of at least MIN_SPLIT keys as it needs, and the rest return at once
    per_split = tl.maximum(tl.cdiv(tl.cdiv(kv_end, NUM_SPLITS), BLOCK_N) * BLOCK_N, MIN_SPLIT)
    active_splits = tl.cdiv(kv_end, per_split)
    kv_begin = split * per_split
    kv_stop = tl.minimum(kv_end, kv_begin + per_split)
    q_pos = context_len + q_idx

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM_P], tl.float32)
    cols = tl.arange(0, BLOCK_N)
    for start in range(kv_begin, kv_stop, BLOCK_N):
        k_pos = start + cols
        k_valid = k_pos < kv_stop
        page = tl.load(block_tables_ptr + seq * stride_bt + k_pos // PAGE, mask=k_valid, other=0)
        base = page.to(tl.int64) * stride_kb + (k_pos % PAGE) * stride_kt + kv_head * stride_kh
        kv_mask = k_valid[:, None] & dim_valid[None, :]
        k = tl.load(kv_ptr + base[:, None] + dims[None, :], mask=kv_mask, other=0)
        v = tl.load(kv_ptr + stride_kkv + base[:, None] + dims[None, :], mask=kv_mask, other=0)
        if FP8:
            s_rows = scale_ptr + page.to(tl.int64) * stride_sb + (k_pos % PAGE) * stride_st + kv_head * stride_sh
            k = dequantize_tile(k, s_rows, k_valid).to(q.dtype)
            v = dequantize_tile(v, s_rows + stride_skv, k_valid).to(q.dtype)
        if IEEE:  # float32 caches: exact products, so fp32 runs can match the reference token for token
            s = tl.dot(q, tl.trans(k), input_precision="ieee") * sm_scale_log2
        else:
            s = tl.dot(q, tl.trans(k)) * sm_scale_log2
        visible = (k_pos[None, :] <= q_pos[:, None]) & k_valid[None, :]
        s = tl.where(visible, s, float("-inf"))
        m_i, l_i, acc = online_softmax_step(s, v, m_i, l_i, acc, IEEE)

    out_mask = row_valid[:, None] & dim_valid[None, :]
    o_offsets = (q_begin + q_idx)[:, None] * stride_ot + head[:, None] * stride_oh + dims[None, :]
    if NUM_SPLITS == 1:
        out = acc / tl.where(l_i == 0.0, 1.0, l_i)[:, None]
        tl.store(out_ptr + o_offsets, out.to(out_ptr.dtype.element_ty), mask=out_mask)
    elif active_splits <= 1:
        if split == 0:
            out = acc / tl.where(l_i == 0.0, 1.0, l_i)[:, None]
            tl.store(out_ptr + o_offsets, out.to(out_ptr.dtype.element_ty), mask=out_mask)
    elif split < active_splits:
        # partials of decode rows: [tokens, heads, splits, head_dim] and [tokens, heads, splits, 2];
        # the last split of a (sequence, KV head) to finish merges them, so no second kernel runs
        token = q_begin + q_idx
        n_heads = tl.num_programs(1) * GROUP
        first = (token * n_heads + head) * NUM_SPLITS
        part = first + split
        tl.store(part_acc_ptr + part[:, None] * HEAD_DIM_P + dims[None, :], acc, mask=out_mask)
        tl.store(part_ml_ptr + part * 2, m_i, mask=row_valid)
        tl.store(part_ml_ptr + part * 2 + 1, l_i, mask=row_valid)
        # acq_rel: this program's partials are visible before its count, and the others' before the
        # last one reads them
        counter = counters_ptr + qb * tl.num_programs(1) + kv_head
        if tl.atomic_add(counter, 1) == active_splits - 1:
            m_all = tl.full([BLOCK_M], float("-inf"), tl.float32)
            l_all = tl.zeros([BLOCK_M], tl.float32)
            acc_all = tl.zeros([BLOCK_M, HEAD_DIM_P], tl.float32)
            for s in range(0, active_splits):
                m_s = tl.load(part_ml_ptr + (first + s) * 2, mask=row_valid, other=float("-inf"), cache_modifier=".cg")
                l_s = tl.load(part_ml_ptr + (first + s) * 2 + 1, mask=row_valid, other=0.0, cache_modifier=".cg")
                acc_s = tl.load(
                    part_acc_ptr + (first + s)[:, None] * HEAD_DIM_P + dims[None, :],
                    mask=out_mask,
                    other=0.0,
                    cache_modifier=".cg",
                )
                m_new = tl.maximum(m_all, m_s)
                m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
                old_w = tl.exp2(m_all - m_safe)
                new_w = tl.exp2(m_s - m_safe)
                l_all = l_all * old_w + l_s * new_w
                acc_all = acc_all * old_w[:, None] + acc_s * new_w[:, None]
                m_all = m_new
            out = acc_all / tl.where(l_all == 0.0, 1.0, l_all)[:, None]
            tl.store(out_ptr + o_offsets, out.to(out_ptr.dtype.element_ty), mask=out_mask)
            tl.atomic_xchg(counter, 0)  # ready for the next step (and the next graph replay)


@triton.jit
def _merge_splits_kernel(
    part_acc_ptr,
    part_ml_ptr,
    out_ptr,
    stride_ot,
    stride_oh,
    num_heads,
    HEAD_DIM: tl.constexpr,
    HEAD_DIM_P: tl.constexpr,
    NUM_SPLITS: tl.constexpr,
):
    token = tl.program_id(0)
    head = tl.program_id(1)
    splits = tl.arange(0, NUM_SPLITS)
    dims = tl.arange(0, HEAD_DIM_P)
    part = (token * num_heads + head) * NUM_SPLITS + splits
    m = tl.load(part_ml_ptr + part * 2)
    denom = tl.load(part_ml_ptr + part * 2 + 1)
    m_max = tl.max(m, axis=0)
    w = tl.where(m == float("-inf"), 0.0, tl.exp2(m - m_max))
    acc = tl.load(part_acc_ptr + part[:, None] * HEAD_DIM_P + dims[None, :])
    total = tl.sum(acc * w[:, None], axis=0) / tl.sum(denom * w, axis=0)
    tl.store(
        out_ptr + token * stride_ot + head * stride_oh + dims, total.to(out_ptr.dtype.element_ty), mask=dims < HEAD_DIM
    )


# Shortest key range a decode split takes: below it, one program reads the keys faster than a
# second one could start and merge.
MIN_SPLIT_KEYS = 256


def decode_splits(programs: int, max_seq_len: int, target_programs: int = 264) -> int:
    """How many pieces to split each decode sequence's key range into (flash-decoding): double
    until there are about two programs per multiprocessor of an H100, never into pieces shorter
    than MIN_SPLIT_KEYS. Host-side sizes only, so a captured graph bakes in the split count of its
    longest context; shorter contexts use fewer of them (see the kernel)."""
    splits = 1
    while programs * splits < target_programs and max_seq_len // (splits * 2) >= MIN_SPLIT_KEYS:
        splits *= 2
    return splits


def query_blocks(query_lens: list[int], block_q: int) -> tuple[list[int], list[int]]:
    """(sequence index, first query index) of every BLOCK_Q-sized block of queries."""
    seqs, starts = [], []
    for i, n in enumerate(query_lens):
        for s in range(0, n, block_q):
            seqs.append(i)
            starts.append(s)
    return seqs, starts


def paged_attention(
    q: torch.Tensor,
    kv_cache: torch.Tensor,
    block_tables: torch.Tensor,
    seq_lens: torch.Tensor,
    query_start_loc: torch.Tensor,
    qblock_seq: torch.Tensor,
    qblock_start: torch.Tensor,
    scale: float,
    block_q: int,
    num_splits: int = 1,
    out: torch.Tensor | None = None,
    counters: torch.Tensor | None = None,
    kv_scales: torch.Tensor | None = None,
) -> torch.Tensor:
    """q: [T, H, D] -> out [T, H, D]. `qblock_seq/qblock_start` come from `query_blocks(.., block_q)`;
    num_splits > 1 only for decode (block_q == 1). `counters`: int32 zeros, one per (query block,
    KV head), which the split programs count on and leave zeroed; persistent ones let a CUDA graph
    skip the memset. `kv_scales`: an FP8 cache's scales [num_blocks, block_size, 2, kv_heads, 1]."""
    num_tokens, num_heads, head_dim = q.shape
    num_kv_heads = kv_cache.shape[3]
    group = num_heads // num_kv_heads
    group_p = triton.next_power_of_2(group)
    head_dim_p = triton.next_power_of_2(head_dim)
    block_m = max(16, block_q * group_p)
    if out is None:
        out = torch.empty_like(q)
    if num_splits > 1:
        assert block_q == 1, "split-K is for decode batches"
        part_acc = torch.empty(num_tokens * num_heads * num_splits * head_dim_p, device=q.device, dtype=torch.float32)
        part_ml = torch.empty(num_tokens * num_heads * num_splits * 2, device=q.device, dtype=torch.float32)
        if counters is None:
            counters = split_counters(qblock_seq.numel(), num_kv_heads, q.device)
    else:
        part_acc = part_ml = counters = out  # unused
    fp8 = kv_scales is not None
    if fp8:
        assert kv_cache.element_size() == 1 and kv_scales.dtype == torch.float32
        kv_cache = kv_cache.view(torch.uint8)
    scales = kv_scales if fp8 else q  # unused without FP8
    scale_strides = kv_scales.stride()[:4] if fp8 else (0, 0, 0, 0)
    grid = (qblock_seq.numel(), num_kv_heads, num_splits)
    _paged_attention_kernel[grid](
        q,
        kv_cache,
        scales,
        out,
        part_acc,
        part_ml,
        counters,
        block_tables,
        seq_lens,
        query_start_loc,
        qblock_seq,
        qblock_start,
        scale * _LOG2E,
        q.stride(0),
        q.stride(1),
        out.stride(0),
        out.stride(1),
        kv_cache.stride(0),
        kv_cache.stride(1),
        kv_cache.stride(2),
        kv_cache.stride(3),
        *scale_strides,
        block_tables.stride(0),
        PAGE=kv_cache.shape[1],
        GROUP=group,
        GROUP_P=group_p,
        HEAD_DIM=head_dim,
        HEAD_DIM_P=head_dim_p,
        BLOCK_Q=block_q,
        BLOCK_M=block_m,
        BLOCK_N=64 if head_dim_p <= 128 else 32,
        NUM_SPLITS=num_splits,
        MIN_SPLIT=MIN_SPLIT_KEYS,
        IEEE=q.dtype == torch.float32,
        FP8=fp8,
        num_warps=4,
        num_stages=2,
    )
    return out


def split_counters(num_qblocks: int, num_kv_heads: int, device: torch.device) -> torch.Tensor:
    return torch.zeros(num_qblocks * num_kv_heads, dtype=torch.int32, device=device)


def merge_splits(part_acc: torch.Tensor, part_ml: torch.Tensor, out: torch.Tensor, num_splits: int) -> None:
    """out[t, h] = the softmax-weighted merge of the NUM_SPLITS partial results of (t, h): partial
    accumulators [T, H, splits, next_pow2(D)] and (running max, denominator) pairs [T, H, splits, 2]."""
    num_tokens, num_heads, head_dim = out.shape
    _merge_splits_kernel[(num_tokens, num_heads)](
        part_acc,
        part_ml,
        out,
        out.stride(0),
        out.stride(1),
        num_heads,
        HEAD_DIM=head_dim,
        HEAD_DIM_P=triton.next_power_of_2(head_dim),
        NUM_SPLITS=num_splits,
    )
