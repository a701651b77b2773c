"""DeepSeek-V3.2's lightning indexer scores over the paged cache, for a batch of decode queries at once.

    I[b, s] = sum_h w[b, h] * relu(q[b, h] . k[s] * scale)

for every cached position s of sequence b, written into one [B, width] tensor (-inf at and past each
sequence's length), so top-k selection is one batched `torch.topk` on the GPU: no host sync and no
loop over sequences, unlike the reference (`LightningIndexer.forward`), which gathers each sequence's
keys into a dense tensor first. The indexer keys sit in the layer's cache rows after the MLA latent;
an FP8 cache holds e4m3 codes with a float32 scale per row and part, dequantized tile by tile.

Each program scores BLOCK_N positions of one sequence with all indexer heads: the query tile
[heads, head_dim] stays in registers and each key tile is read once.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from seekd.kernels.paged_attention import load_paged_rows


@triton.jit
def _indexer_scores_kernel(
    q_ptr,
    w_ptr,
    cache_ptr,
    scale_ptr,
    out_ptr,
    block_tables_ptr,
    seq_lens_ptr,
    sm_scale,
    width,
    stride_qt,
    stride_qh,
    stride_wt,
    stride_cb,
    stride_ct,
    stride_sb,
    stride_st,
    stride_bt,
    stride_ot,
    HEADS: tl.constexpr,
    HEADS_P: tl.constexpr,
    DIM: tl.constexpr,
    DIM_P: tl.constexpr,
    PAGE: tl.constexpr,
    BLOCK_N: tl.constexpr,
    IEEE: tl.constexpr,
    FP8: tl.constexpr,
):
    seq = tl.program_id(0)
    k_pos = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    seq_len = tl.load(seq_lens_ptr + seq)
    k_valid = k_pos < seq_len
    h = tl.arange(0, HEADS_P)
    d = tl.arange(0, DIM_P)
    h_valid = h < HEADS
    d_valid = d < DIM

    q = tl.load(
        q_ptr + seq * stride_qt + h[:, None] * stride_qh + d[None, :],
        mask=h_valid[:, None] & d_valid[None, :],
        other=0.0,
    )
    keys = load_paged_rows(
        cache_ptr,
        scale_ptr,
        block_tables_ptr + seq * stride_bt,
        k_pos,
        k_valid,
        d,
        d_valid,
        stride_cb,
        stride_ct,
        stride_sb,
        stride_st,
        PAGE,
        FP8,
        q.dtype,
    )
    if IEEE:  # float32 caches: exact products, so fp32 runs select what the reference selects
        s = tl.dot(q, tl.trans(keys), input_precision="ieee")
    else:
        s = tl.dot(q, tl.trans(keys))
    s = tl.maximum(s * sm_scale, 0.0)
    w = tl.load(w_ptr + seq * stride_wt + h, mask=h_valid, other=0.0).to(tl.float32)
    score = tl.sum(s * w[:, None], axis=0)
    tl.store(out_ptr + seq * stride_ot + k_pos, tl.where(k_valid, score, float("-inf")), mask=k_pos < width)


def indexer_decode_scores(
    q: torch.Tensor,
    weights: torch.Tensor,
    key_cache: torch.Tensor,
    block_tables: torch.Tensor,
    seq_lens: torch.Tensor,
    width: int,
    scale: float,
    key_scales: torch.Tensor | None = None,
) -> torch.Tensor:
    """q [B, H, D] (one decode query per sequence, roped), weights [B, H], key_cache a view
    [num_blocks, block_size, >= D] whose first D features are the indexer keys (e4m3 codes with
    `key_scales` [num_blocks, block_size, >= 1] float32 for an FP8 cache) -> float32 [B, width] scores,
    -inf at positions >= the sequence's length. `width` must cover the longest sequence."""
    num_seqs, heads, dim = q.shape
    assert q.stride(-1) == 1 and key_cache.stride(-1) == 1 and key_cache.shape[-1] >= dim
    assert weights.shape == (num_seqs, heads) and weights.stride(-1) == 1
    assert dim >= 16, "tl.dot needs at least 16 features"
    fp8 = key_scales is not None
    if fp8:
        assert key_cache.element_size() == 1 and key_scales.dtype == torch.float32
        key_cache = key_cache.view(torch.uint8)
    else:
        q = q.to(key_cache.dtype)
    out = torch.empty(num_seqs, width, dtype=torch.float32, device=q.device)
    if num_seqs == 0 or width == 0:
        return out
    block_n = 32 if heads > 32 else 64
    _indexer_scores_kernel[(num_seqs, triton.cdiv(width, block_n))](
        q,
        weights,
        key_cache,
        key_scales if fp8 else q,  # unused without FP8
        out,
        block_tables,
        seq_lens,
        scale,
        width,
        q.stride(0),
        q.stride(1),
        weights.stride(0),
        key_cache.stride(0),
        key_cache.stride(1),
        key_scales.stride(0) if fp8 else 0,
        key_scales.stride(1) if fp8 else 0,
        block_tables.stride(0),
        out.stride(0),
        HEADS=heads,
        HEADS_P=max(16, triton.next_power_of_2(heads)),
        DIM=dim,
        DIM_P=max(16, triton.next_power_of_2(dim)),
        PAGE=key_cache.shape[1],
        BLOCK_N=block_n,
        IEEE=q.dtype == torch.float32,
        FP8=fp8,
        num_warps=4,
    )
    return out


def select_top(scores: torch.Tensor, topk: int) -> torch.Tensor:
    """The best `topk` positions per row of indexer scores [B, width] -> int32 [B, min(topk, width)].
    A sequence shorter than topk also gets -inf positions at or past its length; the sparse decode
    kernel skips those, so every visible position is attended, as in the reference."""
    return scores.topk(min(topk, scores.size(1)), dim=-1).indices.to(torch.int32)
