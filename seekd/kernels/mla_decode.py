"""MLA decode attention in latent space (DeepSeek-V2/V3, absorbed path) over the paged latent cache.

With W_UK folded into the query, every head attends to the same cached rows [c_kv | k_pe]
(kv_lora_rank + rope dims, 576 values for V3) and takes c_kv itself as the value: one shared KV
head for all heads. Each program therefore takes a block of heads of one sequence, so a cache tile
loaded once serves all of them, and keeps the key range of one split; long contexts with few
sequences split the range (flash-decoding), and the last split of each (sequence, head block) to
finish merges the partial softmaxes, as in paged attention, so no second kernel follows.
The torch path in seekd/layers/mla.py (`MLAAttention._absorbed`) is the reference.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from seekd.kernels.paged_attention import (
    decode_splits,
    online_softmax_step,
    split_counters,
    store_split_and_merge,
)

_LOG2E = 1.4426950408889634
# A latent key is 576 values read by every head of the block, far more work per key than a standard
# head's: splits pay from one key tile on (with 256 as the floor, as for paged attention, one program
# took V2-Lite's 160-key batch-1 decode: 20.5 us on an H100 against 5.3 us split 5 ways)
MLA_MIN_SPLIT_KEYS = 32


@triton.jit
def _mla_decode_kernel(
    q_ptr, cache_ptr, out_ptr, part_acc_ptr, part_ml_ptr, counters_ptr, block_tables_ptr, seq_lens_ptr,
    sm_scale_log2, num_heads,
    stride_qt, stride_qh, stride_ot, stride_oh, stride_cb, stride_ct, stride_bt,
    RANK: tl.constexpr, RANK_P: tl.constexpr, ROPE: tl.constexpr, ROPE_P: tl.constexpr,
    PAGE: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_N: tl.constexpr, NUM_SPLITS: tl.constexpr,
    MIN_SPLIT: tl.constexpr, IEEE: tl.constexpr,
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

    # NUM_SPLITS is fixed for a captured graph's longest context; a shorter one uses only as many
    # splits of at least MIN_SPLIT keys as it needs, and the rest return at once
    per_split = tl.maximum(tl.cdiv(tl.cdiv(seq_len, NUM_SPLITS), BLOCK_N) * BLOCK_N, MIN_SPLIT)
    active_splits = tl.cdiv(seq_len, per_split)
    kv_begin = split * per_split
    kv_stop = tl.minimum(seq_len, kv_begin + per_split)

    m_i = tl.full([BLOCK_H], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_H], tl.float32)
    acc = tl.zeros([BLOCK_H, RANK_P], tl.float32)
    cols = tl.arange(0, BLOCK_N)
    for start in range(kv_begin, kv_stop, BLOCK_N):
        k_pos = start + cols
        k_valid = k_pos < kv_stop
        page = tl.load(block_tables_ptr + seq * stride_bt + k_pos // PAGE, mask=k_valid, other=0)
        row = cache_ptr + page.to(tl.int64) * stride_cb + (k_pos % PAGE) * stride_ct
        latent = tl.load(row[:, None] + r[None, :], mask=k_valid[:, None] & r_valid[None, :], other=0.0)
        k_pe = tl.load(row[:, None] + RANK + p[None, :], mask=k_valid[:, None] & p_valid[None, :], other=0.0)
        if IEEE:  # float32 caches: exact products, so fp32 runs match the reference token for token
            s = tl.dot(q_nope, tl.trans(latent), input_precision="ieee")
            s += tl.dot(q_pe, tl.trans(k_pe), input_precision="ieee")
        else:
            s = tl.dot(q_nope, tl.trans(latent)) + tl.dot(q_pe, tl.trans(k_pe))
        s = tl.where(k_valid[None, :], s * sm_scale_log2, float("-inf"))
        m_i, l_i, acc = online_softmax_step(s, latent, m_i, l_i, acc, IEEE)

    out_mask = head_valid[:, None] & r_valid[None, :]
    o = out_ptr + seq * stride_ot + heads[:, None] * stride_oh + r[None, :]
    if NUM_SPLITS == 1:
        tl.store(o, (acc / tl.where(l_i == 0.0, 1.0, l_i)[:, None]).to(out_ptr.dtype.element_ty), mask=out_mask)
    elif active_splits <= 1:
        if split == 0:
            tl.store(o, (acc / tl.where(l_i == 0.0, 1.0, l_i)[:, None]).to(out_ptr.dtype.element_ty), mask=out_mask)
    elif split < active_splits:  # partials [T, H, splits, RANK_P] and [T, H, splits, 2]
        counter = counters_ptr + seq * tl.num_programs(1) + tl.program_id(1)
        store_split_and_merge(acc, m_i, l_i, part_acc_ptr, part_ml_ptr, counter,
                              (seq * num_heads + heads) * NUM_SPLITS, split, active_splits, o, head_valid, r,
                              out_mask, BLOCK_H, RANK_P)


def mla_decode_splits(num_seqs: int, num_heads: int, max_seq_len: int) -> int:
    return decode_splits(num_seqs * head_blocks(num_heads), max_seq_len, MLA_MIN_SPLIT_KEYS)


def block_heads(num_heads: int) -> int:
    return 16 if num_heads <= 16 else 32


def head_blocks(num_heads: int) -> int:
    """Programs per sequence and split: each takes a block of heads over the shared latent rows."""
    return triton.cdiv(num_heads, block_heads(num_heads))


def mla_decode(
    q: torch.Tensor,
    cache: torch.Tensor,
    block_tables: torch.Tensor,
    seq_lens: torch.Tensor,
    kv_lora_rank: int,
    scale: float,
    num_splits: int = 1,
    counters: torch.Tensor | None = None,
) -> torch.Tensor:
    """q: [B, H, kv_lora_rank + rope] absorbed queries, one per sequence (pure decode); cache:
    [num_blocks, block_size, >= kv_lora_rank + rope] latent rows -> [B, H, kv_lora_rank].
    `counters`: at least `mla_counters_needed(B, H)` int32 zeros that the split programs count on
    and leave zeroed (made here when None); persistent ones let a CUDA graph skip the memset."""
    num_seqs, num_heads, width = q.shape
    rope = width - kv_lora_rank
    assert cache.stride(-1) == 1 and q.stride(-1) == 1 and cache.shape[-1] >= width
    assert kv_lora_rank >= 16, "tl.dot needs at least 16 latent features"
    out = torch.empty((num_seqs, num_heads, kv_lora_rank), dtype=q.dtype, device=q.device)
    rank_p = triton.next_power_of_2(kv_lora_rank)
    bh, blocks = block_heads(num_heads), head_blocks(num_heads)
    if num_splits > 1:
        part_acc = torch.empty(num_seqs * num_heads * num_splits * rank_p, device=q.device, dtype=torch.float32)
        part_ml = torch.empty(num_seqs * num_heads * num_splits * 2, device=q.device, dtype=torch.float32)
        if counters is None:
            counters = split_counters(num_seqs, blocks, q.device)
        assert counters.numel() >= num_seqs * blocks
    else:
        part_acc = part_ml = counters = out  # unused
    _mla_decode_kernel[(num_seqs, blocks, num_splits)](
        q, cache, out, part_acc, part_ml, counters, block_tables, seq_lens, scale * _LOG2E, num_heads,
        q.stride(0), q.stride(1), out.stride(0), out.stride(1), cache.stride(0), cache.stride(1),
        block_tables.stride(0),
        RANK=kv_lora_rank, RANK_P=rank_p, ROPE=rope, ROPE_P=max(16, triton.next_power_of_2(rope)),
        PAGE=cache.shape[1], BLOCK_H=bh, BLOCK_N=32, NUM_SPLITS=num_splits, MIN_SPLIT=MLA_MIN_SPLIT_KEYS,
        IEEE=q.dtype == torch.float32, num_warps=4 if bh <= 16 else 8, num_stages=2,
    )
    return out


def mla_counters_needed(num_seqs: int, num_heads: int) -> int:
    """Split counters a decode of `num_seqs` sequences uses: one per (sequence, head block)."""
    return num_seqs * head_blocks(num_heads)
