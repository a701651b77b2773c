"""DeepSeek-V4's decode attention kernel (sliding window + compressed entries, all or selected, with a
sink per head) against softmax over [scores | sink] on the gathered keys, as CompressedAttention._attend."""

from __future__ import annotations

import pytest
import torch
from kernel_env import BF16_TILES, INTERPRETED
from paged_cache import paged_latents

from seekd.kernels.compressed_attention import compressed_attention_decode
from seekd.layers.attention import gather_kv
from seekd.layers.kv_quant import dequantize, quantize

pytestmark = pytest.mark.triton


def sink_attention(q, keys, sink, scale):
    """q [H, D], keys [K, D] (also the values), sink [H] -> [H, D]."""
    scores = (q.float() @ keys.float().T) * scale
    probs = torch.softmax(torch.cat([scores, sink.float()[:, None]], dim=-1), dim=-1)[:, :-1]
    return probs @ keys.float()


def reference(q, sink, lens, window, win_cache, win_tables, scale, rate=0, ent_cache=None, ent_tables=None, picks=None):
    out = []
    for i, n in enumerate(lens.tolist()):
        keys = gather_kv(win_cache, win_tables[i], n)[max(0, n - window) :, : q.shape[-1]]
        if rate:
            entries = gather_kv(ent_cache, ent_tables[i], n // rate)[:, : q.shape[-1]]
            if picks is not None:
                chosen = picks[i].long()
                entries = entries[chosen[(chosen >= 0) & (chosen < n // rate)]]
            keys = torch.cat([keys, entries])
        out.append(sink_attention(q[i], keys, sink, scale))
    return torch.stack(out)


CASES = {  # seq lens, window, rate, top-k (None: every entry)
    "window_only": ([1, 9, 40, 300], 32, 0, None),
    "heavily_compressed": ([3, 64, 129, 700], 32, 16, None),
    "compressed_sparse": ([5, 70, 400], 16, 4, 24),
}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("case", list(CASES))
def test_decode_kernel_matches_sink_softmax_over_window_and_entries(kernel_device, dtype, case):
    if INTERPRETED and dtype == torch.bfloat16:
        pytest.skip(BF16_TILES)
    seq_lens, window, rate, topk = CASES[case]
    torch.manual_seed(list(CASES).index(case))
    heads, dim = 20, 48  # 20 heads: a partial head block; 48 features: padded to 64
    win_cache, win_tables, lens = paged_latents(seq_lens, dim, dtype, kernel_device)
    ent_cache = ent_tables = picks = None
    if rate:
        ent_cache, ent_tables, _ = paged_latents([max(1, n // rate) for n in seq_lens], dim + 8, dtype, kernel_device)
    if topk:
        num_entries = (lens // rate).long()
        scores = torch.randn(len(seq_lens), int(num_entries.max()), device=kernel_device)
        scores[torch.arange(scores.size(1), device=kernel_device) >= num_entries[:, None]] = float("-inf")
        picks = scores.topk(min(topk, scores.size(1)), dim=-1).indices.to(torch.int32)
    q = torch.randn(len(seq_lens), heads, dim, device=kernel_device, dtype=dtype)
    sink = torch.randn(heads, device=kernel_device)
    scale = dim**-0.5

    out = compressed_attention_decode(
        q, sink, lens, window, win_cache, win_tables, scale, None, rate, ent_cache, ent_tables, None, picks
    )
    ref = reference(q, sink, lens, window, win_cache, win_tables, scale, rate, ent_cache, ent_tables, picks)
    assert out.shape == q.shape and out.dtype == dtype
    rel = (out.float() - ref).norm() / ref.norm()
    assert rel < (1e-5 if dtype == torch.float32 else 1e-2)
    if topk:  # the selection matters: attending to every entry gives another answer
        every = compressed_attention_decode(
            q, sink, lens, window, win_cache, win_tables, scale, None, rate, ent_cache, ent_tables
        )
        assert (every.float() - out.float()).abs().max() > 1e-3


def test_a_sink_above_every_score_takes_the_mass_and_fp8_caches_read_as_dequantized(kernel_device):
    torch.manual_seed(5)
    heads, dim, window, rate = 16, 32, 16, 8
    seq_lens = [6, 100]
    win_cache, win_tables, lens = paged_latents(seq_lens, dim, torch.float32, kernel_device)
    ent_cache, ent_tables, _ = paged_latents([n // rate or 1 for n in seq_lens], dim, torch.float32, kernel_device)
    win_codes, win_scales = quantize(win_cache)
    ent_codes, ent_scales = quantize(ent_cache)
    q = torch.randn(len(seq_lens), heads, dim, device=kernel_device)
    sink = torch.randn(heads, device=kernel_device)

    out = compressed_attention_decode(
        q, sink, lens, window, win_codes, win_tables, 0.2, win_scales, rate, ent_codes, ent_tables, ent_scales
    )
    win_ref, ent_ref = (
        dequantize(win_codes, win_scales, torch.float32),
        dequantize(ent_codes, ent_scales, torch.float32),
    )
    ref = reference(q, sink, lens, window, win_ref, win_tables, 0.2, rate, ent_ref, ent_tables)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    # a huge sink: the softmax's mass goes to it, so the output shrinks towards zero
    drowned = compressed_attention_decode(
        q,
        torch.full_like(sink, 60.0),
        lens,
        window,
        win_codes,
        win_tables,
        0.2,
        win_scales,
        rate,
        ent_codes,
        ent_tables,
        ent_scales,
    )
    assert drowned.abs().max() < 1e-12 * out.abs().max() + 1e-20
