"""Decode attention of DeepSeek-V4's layers: a sliding window of per-token keys, plus compressed entries
(all of them for heavily compressed attention, the indexer's top-k for compressed sparse attention),
with a learned sink logit per head in the softmax denominator.

One shared KV head serves every query head and the key is also the value, as in MLA's latent space:
each program takes a block of heads of one sequence, so a key tile loaded once serves all of them.
The window comes from its own paged cache (positions seq_len - window .. seq_len - 1; blocks that slid
out are never read) and the entries from theirs (entry e pools tokens e*rate .. (e+1)*rate - 1, so a
decode query sees the first seq_len // rate). An FP8 cache holds e4m3 codes with a float32 scale per
row (and per part for entries: attention part first); tiles are dequantized in registers.

The torch path (`CompressedAttention._attend` over `_context`'s keys and mask) is the reference.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from seekd.kernels.paged_attention import load_paged_rows, online_softmax_step

_LOG2E = 1.4426950408889634


@triton.jit
def _scores(q, keys, valid, sm_scale_log2, IEEE: tl.constexpr):
    if IEEE:  # float32 caches: exact products, so fp32 runs match the reference token for token
        s = tl.dot(q, tl.trans(keys), input_precision="ieee")
    else:
        s = tl.dot(q, tl.trans(keys))
    return tl.where(valid[None, :], s * sm_scale_log2, float("-inf"))


@triton.jit
def _compressed_decode_kernel(
    q_ptr,
    out_ptr,
    sink_ptr,
    seq_lens_ptr,
    win_ptr,
    win_scale_ptr,
    win_tables_ptr,
    ent_ptr,
    ent_scale_ptr,
    ent_tables_ptr,
    idx_ptr,
    sm_scale_log2,
    num_heads,
    num_idx,
    stride_qt,
    stride_qh,
    stride_ot,
    stride_oh,
    stride_wb,
    stride_wt,
    stride_wsb,
    stride_wst,
    stride_wtab,
    stride_eb,
    stride_et,
    stride_esb,
    stride_est,
    stride_etab,
    stride_ix,
    WINDOW: tl.constexpr,
    RATE: tl.constexpr,
    D: tl.constexpr,
    D_P: tl.constexpr,
    WPAGE: tl.constexpr,
    EPAGE: tl.constexpr,
    BLOCK_H: tl.constexpr,
    BLOCK_N: tl.constexpr,
    FP8: tl.constexpr,
    SELECTED: tl.constexpr,
    IEEE: tl.constexpr,
):
    seq = tl.program_id(0)
    heads = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    head_valid = heads < num_heads
    seq_len = tl.load(seq_lens_ptr + seq)
    d = tl.arange(0, D_P)
    d_valid = d < D
    q = tl.load(
        q_ptr + seq * stride_qt + heads[:, None] * stride_qh + d[None, :],
        mask=head_valid[:, None] & d_valid[None, :],
        other=0.0,
    )
    m_i = tl.full([BLOCK_H], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_H], tl.float32)
    acc = tl.zeros([BLOCK_H, D_P], tl.float32)
    cols = tl.arange(0, BLOCK_N)

    win_table = win_tables_ptr + seq * stride_wtab
    for start in range(0, WINDOW, BLOCK_N):
        j = start + cols
        pos = seq_len - WINDOW + j
        valid = (j < WINDOW) & (pos >= 0)
        pos = tl.where(valid, pos, 0)
        keys = load_paged_rows(
            win_ptr,
            win_scale_ptr,
            win_table,
            pos,
            valid,
            d,
            d_valid,
            stride_wb,
            stride_wt,
            stride_wsb,
            stride_wst,
            WPAGE,
            FP8,
            q.dtype,
        )
        s = _scores(q, keys, valid, sm_scale_log2, IEEE)
        m_i, l_i, acc = online_softmax_step(s, keys, m_i, l_i, acc, IEEE)

    if RATE > 0:
        num_entries = seq_len // RATE
        ent_table = ent_tables_ptr + seq * stride_etab
        span = num_idx if SELECTED else num_entries
        for start in range(0, span, BLOCK_N):
            j = start + cols
            if SELECTED:
                entry = tl.load(idx_ptr + seq * stride_ix + j, mask=j < num_idx, other=-1)
                valid = (entry >= 0) & (entry < num_entries)
            else:
                entry = j
                valid = j < num_entries
            entry = tl.where(valid, entry, 0)
            keys = load_paged_rows(
                ent_ptr,
                ent_scale_ptr,
                ent_table,
                entry,
                valid,
                d,
                d_valid,
                stride_eb,
                stride_et,
                stride_esb,
                stride_est,
                EPAGE,
                FP8,
                q.dtype,
            )
            s = _scores(q, keys, valid, sm_scale_log2, IEEE)
            m_i, l_i, acc = online_softmax_step(s, keys, m_i, l_i, acc, IEEE)

    # the sink joins the denominator only: softmax over [scores | sink], its value column dropped
    sink = tl.load(sink_ptr + heads, mask=head_valid, other=0.0).to(tl.float32) * 1.4426950408889634
    m_new = tl.maximum(m_i, sink)
    alpha = tl.exp2(m_i - m_new)
    denom = l_i * alpha + tl.exp2(sink - m_new)
    out = acc * (alpha / denom)[:, None]
    o = out_ptr + seq * stride_ot + heads[:, None] * stride_oh + d[None, :]
    tl.store(o, out.to(out_ptr.dtype.element_ty), mask=head_valid[:, None] & d_valid[None, :])


def compressed_attention_decode(
    q: torch.Tensor,
    sink: torch.Tensor,
    seq_lens: torch.Tensor,
    window: int,
    window_cache: torch.Tensor,
    window_tables: torch.Tensor,
    scale: float,
    window_scales: torch.Tensor | None = None,
    rate: int = 0,
    entry_cache: torch.Tensor | None = None,
    entry_tables: torch.Tensor | None = None,
    entry_scales: torch.Tensor | None = None,
    selected: torch.Tensor | None = None,
) -> torch.Tensor:
    """q [B, H, D] (one roped decode query per sequence), sink [H] logits, seq_lens [B] int32 ->
    [B, H, D] in q's dtype. window_cache [blocks, per_block, >= D] holds one key per position, found
    through window_tables [B, max_blocks]; with `rate` > 0, entry_cache / entry_tables hold the
    compressed entries (attention part in the first D features) and `selected` [B, K] (optional)
    names the entries to attend to (values outside 0 .. seq_len // rate - 1 mean none). The *_scales
    ([blocks, per_block, >= 1] float32, first part used) make the caches FP8; both or neither."""
    num_seqs, num_heads, dim = q.shape
    assert q.stride(-1) == 1 and window_cache.stride(-1) == 1 and window_cache.shape[-1] >= dim
    assert dim >= 16, "tl.dot needs at least 16 features"
    fp8 = window_scales is not None
    if rate > 0:
        assert entry_cache is not None and entry_tables is not None and entry_cache.stride(-1) == 1
        assert (entry_scales is not None) == fp8, "the window and entry caches share one dtype"
    else:
        entry_cache, entry_tables, entry_scales, selected = window_cache, window_tables, window_scales, None
    if fp8:
        window_cache, entry_cache = window_cache.view(torch.uint8), entry_cache.view(torch.uint8)
    if selected is not None:
        assert selected.dim() == 2 and selected.size(0) == num_seqs and selected.stride(-1) == 1
    out = torch.empty_like(q)
    if num_seqs == 0:
        return out
    block_h = 16
    unused = seq_lens
    _compressed_decode_kernel[(num_seqs, triton.cdiv(num_heads, block_h))](
        q,
        out,
        sink,
        seq_lens,
        window_cache,
        window_scales if fp8 else unused,
        window_tables,
        entry_cache,
        entry_scales if fp8 else unused,
        entry_tables,
        selected if selected is not None else unused,
        scale * _LOG2E,
        num_heads,
        selected.size(1) if selected is not None else 0,
        q.stride(0),
        q.stride(1),
        out.stride(0),
        out.stride(1),
        window_cache.stride(0),
        window_cache.stride(1),
        window_scales.stride(0) if fp8 else 0,
        window_scales.stride(1) if fp8 else 0,
        window_tables.stride(0),
        entry_cache.stride(0),
        entry_cache.stride(1),
        entry_scales.stride(0) if fp8 else 0,
        entry_scales.stride(1) if fp8 else 0,
        entry_tables.stride(0),
        selected.stride(0) if selected is not None else 0,
        WINDOW=window,
        RATE=rate,
        D=dim,
        D_P=max(16, triton.next_power_of_2(dim)),
        WPAGE=window_cache.shape[1],
        EPAGE=entry_cache.shape[1],
        BLOCK_H=block_h,
        BLOCK_N=32,
        FP8=fp8,
        SELECTED=selected is not None,
        IEEE=q.dtype == torch.float32,
        num_warps=4 if dim <= 256 else 8,
        num_stages=2,
    )
    return out
