"""DeepSeek-V3.2's decode kernels: the lightning indexer's batched scores over the paged cache and the
MLA decode kernel over each sequence's selected positions, against the same math on gathered tensors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from kernel_env import BF16_TILES, INTERPRETED
from paged_cache import paged_latents

from seekd.kernels.indexer_scores import indexer_decode_scores, select_top
from seekd.kernels.mla_decode import mla_decode
from seekd.layers.attention import gather_kv
from seekd.layers.kv_quant import dequantize, quantize

pytestmark = pytest.mark.triton


def reference_scores(q, weights, keys, scale):
    """LightningIndexer.index_scores for one query: q [H, D], weights [H], keys [S, D] -> [S]."""
    return weights.float() @ F.relu(q.float() @ keys.float().T * scale)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("heads,dim", [(4, 32), (64, 128)])
@pytest.mark.parametrize("fp8", [False, True], ids=["model_dtype", "fp8"])
def test_indexer_scores_match_the_gathered_keys(kernel_device, dtype, heads, dim, fp8):
    if INTERPRETED and dtype == torch.bfloat16:
        pytest.skip(BF16_TILES)
    torch.manual_seed(0)
    seq_lens = [1, 17, 300] if INTERPRETED else [1, 17, 300, 4100]
    offset = 24  # the keys sit after other row features, as after the MLA latent
    cache, block_tables, lens = paged_latents(seq_lens, offset + dim, dtype, kernel_device)
    key_view, key_scales = cache[..., offset:], None
    if fp8:
        codes, scales = quantize(key_view)
        key_view, key_scales = codes, scales
    q = torch.randn(len(seq_lens), heads, dim, device=kernel_device, dtype=dtype)
    weights = torch.randn(len(seq_lens), heads, device=kernel_device)
    width = max(seq_lens) + 5  # a wider buffer than any sequence: the tail stays -inf
    scale = dim**-0.5

    scores = indexer_decode_scores(q, weights, key_view, block_tables, lens, width, scale, key_scales)
    assert scores.shape == (len(seq_lens), width) and scores.dtype == torch.float32
    for i, n in enumerate(seq_lens):
        keys = gather_kv(key_view, block_tables[i], n)
        if fp8:
            keys = dequantize(keys, gather_kv(key_scales, block_tables[i], n), torch.float32)
        ref = reference_scores(q[i], weights[i], keys, scale)
        tol = 1e-5 if dtype == torch.float32 else 3e-2
        torch.testing.assert_close(scores[i, :n], ref, atol=tol * ref.abs().max().item(), rtol=tol)
        assert torch.isneginf(scores[i, n:]).all()


def sparse_reference(q, cache, block_tables, seq_lens, selected, rank, scale):
    """Per sequence, softmax over the selected positions that exist only."""
    out = []
    for i, seq_len in enumerate(seq_lens.tolist()):
        picks = selected[i].long()
        picks = picks[picks < seq_len]
        rows = gather_kv(cache, block_tables[i], seq_len)[picks][:, : q.shape[-1]].float()
        s = torch.einsum("hd,nd->hn", q[i].float(), rows) * scale
        out.append(torch.softmax(s, dim=-1) @ rows[:, :rank])
    return torch.stack(out)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("splits", [1, 4])
def test_sparse_decode_attends_to_the_selected_positions_only(kernel_device, dtype, splits):
    if INTERPRETED and dtype == torch.bfloat16:
        pytest.skip(BF16_TILES)
    torch.manual_seed(1)
    heads, rank, rope, topk = 20, 64, 16, 48
    seq_lens = [5, 48, 300, 900]  # shorter than, equal to and longer than top-k
    cache, block_tables, lens = paged_latents(seq_lens, rank + rope, dtype, kernel_device)
    q = torch.randn(len(seq_lens), heads, rank + rope, device=kernel_device, dtype=dtype)
    scores = torch.randn(len(seq_lens), max(seq_lens), device=kernel_device)
    scores[torch.arange(max(seq_lens), device=kernel_device) >= lens[:, None]] = float("-inf")
    selected = select_top(scores, topk)
    assert selected.shape == (len(seq_lens), topk) and selected.dtype == torch.int32
    scale = (rank + rope) ** -0.5

    out = mla_decode(q, cache, block_tables, lens, rank, scale, splits, selected=selected)
    ref = sparse_reference(q, cache, block_tables, lens, selected, rank, scale)
    rel = (out.float() - ref).norm() / ref.norm()
    assert rel < (1e-5 if dtype == torch.float32 else 1e-2)
    # a sequence no longer than top-k sees all of its context: the dense kernel's result
    dense = mla_decode(q[:2], cache, block_tables[:2], lens[:2], rank, scale, splits)
    torch.testing.assert_close(out[:2].float(), dense.float(), atol=1e-5 if dtype == torch.float32 else 2e-2, rtol=0)
    # and the selection matters for the longer ones
    assert (
        out[2:].float() - mla_decode(q[2:], cache, block_tables[2:], lens[2:], rank, scale).float()
    ).abs().max() > 1e-3


def test_sparse_decode_over_an_fp8_cache_matches_the_dequantized_rows(kernel_device):
    torch.manual_seed(2)
    heads, rank, rope, topk = 16, 32, 16, 32
    seq_lens = [7, 200]
    cache, block_tables, lens = paged_latents(seq_lens, rank + rope, torch.float32, kernel_device)
    codes, scales = quantize(cache, (rank, rope))
    q = torch.randn(len(seq_lens), heads, rank + rope, device=kernel_device)
    scores = torch.randn(len(seq_lens), max(seq_lens), device=kernel_device)
    scores[torch.arange(max(seq_lens), device=kernel_device) >= lens[:, None]] = float("-inf")
    selected = select_top(scores, topk)

    out = mla_decode(q, codes, block_tables, lens, rank, 0.1, 1, scales, selected)
    ref = sparse_reference(
        q, dequantize(codes, scales, torch.float32, (rank, rope)), block_tables, lens, selected, rank, 0.1
    )
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
