"""The Triton MLA decode kernel against attention computed directly from the gathered latents,
and the MLA layer's kernel path against its torch absorbed path."""

from __future__ import annotations

import pytest
import torch
from kernel_env import BF16_TILES, INTERPRETED
from paged_cache import paged_latents

from seekd.layers.attention import gather_kv
from seekd.layers.kv_quant import dequantize, quantize

pytestmark = pytest.mark.triton


def reference(q, cache, block_tables, seq_lens, rank, scale):
    out = []
    for i, seq_len in enumerate(seq_lens.tolist()):
        rows = gather_kv(cache, block_tables[i], seq_len)[:, : q.shape[-1]].float()
        s = torch.einsum("hd,nd->hn", q[i].float(), rows) * scale
        out.append(torch.softmax(s, dim=-1) @ rows[:, :rank])
    return torch.stack(out)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("heads,rank,rope,extra", [(4, 32, 16, 0), (20, 64, 16, 8), (128, 512, 64, 0)])
@pytest.mark.parametrize("seq_lens,splits", [([1, 17, 300], 1), ([5, 700], 4), ([1000], 8)])
def test_kernel_matches_attention_over_gathered_latents(
    kernel_device, dtype, heads, rank, rope, extra, seq_lens, splits
):
    from seekd.kernels.mla_decode import mla_decode

    if INTERPRETED and dtype == torch.bfloat16:
        pytest.skip(BF16_TILES)
    torch.manual_seed(0)
    # cache rows may carry more than the latent (extra columns are never read)
    cache, block_tables, lens = paged_latents(seq_lens, rank + rope + extra, dtype, kernel_device)
    q = torch.randn(len(seq_lens), heads, rank + rope, device=kernel_device, dtype=dtype)
    scale = (rank + rope) ** -0.5

    out = mla_decode(q, cache, block_tables, lens, rank, scale, splits)
    ref = reference(q, cache, block_tables, lens, rank, scale)
    assert out.shape == (len(seq_lens), heads, rank)
    rel = (out.float() - ref).norm() / ref.norm()
    assert rel < (1e-5 if dtype == torch.float32 else 1e-2)


def test_split_merge_repeats_bit_for_bit_and_agrees_with_one_split(kernel_device):
    """Splits of short and long sequences (empty splits included) merge to the single-split result,
    and the same call gives the same bits again."""
    from seekd.kernels.mla_decode import mla_decode

    torch.manual_seed(1)
    heads, rank, rope, seq_lens = 40, 32, 16, [3, 900, 513, 260]  # 40 heads: 2 head blocks of 32
    cache, block_tables, lens = paged_latents(seq_lens, rank + rope, torch.float32, kernel_device)
    q = torch.randn(len(seq_lens), heads, rank + rope, device=kernel_device)
    first = mla_decode(q, cache, block_tables, lens, rank, 0.125, 4)
    assert torch.equal(first, mla_decode(q, cache, block_tables, lens, rank, 0.125, 4))
    ref = reference(q, cache, block_tables, lens, rank, 0.125)
    torch.testing.assert_close(first, ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(first, mla_decode(q, cache, block_tables, lens, rank, 0.125, 1), atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("seq_lens,splits", [([1, 17, 300], 1), ([5, 700], 4), ([1], 1)])
def test_kernel_over_fp8_latents_matches_attention_over_dequantized_latents(kernel_device, dtype, seq_lens, splits):
    """FP8 rows [c_kv | k_pe | extra] with a scale per segment; k_pe far smaller than c_kv and token
    magnitudes spread over orders of ten, as the per-segment scales must handle."""
    from seekd.kernels.mla_decode import mla_decode

    if INTERPRETED and dtype == torch.bfloat16:
        pytest.skip(BF16_TILES)
    torch.manual_seed(0)
    heads, rank, rope, extra = 20, 64, 16, 8
    rows, block_tables, lens = paged_latents(seq_lens, rank + rope + extra, torch.float32, kernel_device)
    rows[..., rank : rank + rope] *= 0.01
    rows *= torch.exp(torch.randn(*rows.shape[:2], 1, device=kernel_device))
    codes, scales = quantize(rows, (rank, rope, extra))
    q = torch.randn(len(seq_lens), heads, rank + rope, device=kernel_device, dtype=dtype)
    scale = (rank + rope) ** -0.5

    out = mla_decode(q, codes, block_tables, lens, rank, scale, splits, scales)
    ref = reference(q, dequantize(codes, scales, dtype, (rank, rope, extra)), block_tables, lens, rank, scale)
    assert (out.float() - ref).norm() / ref.norm() < (1e-5 if dtype == torch.float32 else 1e-2)
