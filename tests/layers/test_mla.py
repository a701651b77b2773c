"""MLA caches only the compressed latent, and its absorbed path equals the naive reference."""

from __future__ import annotations

import torch

from seekd.layers.attention import Attention
from seekd.layers.forward_context import AttentionMetadata, CacheGroupMetadata, ForwardContext
from seekd.layers.mla import MLAAttention
from seekd.layers.rotary import RotaryEmbedding


def make_mla(
    q_lora_rank: int | None = 48,
    kv_lora_rank: int = 32,
    rope_dim: int = 8,
    heads: int = 4,
    hidden: int = 64,
    nope: int = 16,
    v: int = 24,
) -> MLAAttention:
    rope = RotaryEmbedding(rope_dim, rope_dim, 4096, 10000.0, interleaved=True)
    return MLAAttention(hidden, heads, q_lora_rank, kv_lora_rank, nope, rope_dim, v, rope, (nope + rope_dim) ** -0.5)


def test_mla_caches_576_values_per_token_and_layer_far_below_gqa():
    """DeepSeek-V3 (61 layers) against Llama-3.1-405B (126 layers, GQA with 8 KV heads of 128), bf16."""
    with torch.device("meta"):
        mla = make_mla(q_lora_rank=1536, kv_lora_rank=512, rope_dim=64, heads=128, hidden=7168, nope=128, v=128)
    gqa = Attention(num_heads=128, head_dim=128, scale=1.0, num_kv_heads=8)
    mla_spec, gqa_spec = mla.kv_cache_spec(torch.bfloat16), gqa.kv_cache_spec(torch.bfloat16)
    assert mla_spec.entry_shape == (576,)
    v3_bytes = 61 * mla_spec.bytes_per_block(1)
    gqa_bytes = 126 * gqa_spec.bytes_per_block(1)
    print(
        f"\nKV cache per token (bf16): DeepSeek-V3 MLA {v3_bytes / 1024:.1f} KiB, "
        f"Llama-3.1-405B GQA {gqa_bytes / 1024:.1f} KiB ({gqa_bytes / v3_bytes:.1f}x more)"
    )
    assert v3_bytes == 61 * 576 * 2
    assert gqa_bytes > 7 * v3_bytes


def metadata(cached: list[int], new: list[int], block_size: int = 4) -> tuple[AttentionMetadata, torch.Tensor]:
    """Sequences that already hold `cached[i]` tokens and now add `new[i]`, each in its own blocks."""
    blocks_per_seq = 8
    tables, slots, positions = [], [], []
    for i, (c, n) in enumerate(zip(cached, new)):
        table = list(range(1 + i * blocks_per_seq, 1 + (i + 1) * blocks_per_seq))
        tables.append(table)
        for p in range(c, c + n):
            slots.append(table[p // block_size] * block_size + p % block_size)
            positions.append(p)
    seq_lens = [c + n for c, n in zip(cached, new)]
    meta = AttentionMetadata(
        query_start_loc=torch.tensor([0, *torch.tensor(new).cumsum(0).tolist()]),
        seq_lens=torch.tensor(seq_lens),
        max_query_len=max(new),
        max_seq_len=max(seq_lens),
        query_lens_cpu=new,
        seq_lens_cpu=seq_lens,
        groups={"kv": CacheGroupMetadata(torch.tensor(tables, dtype=torch.int32), torch.tensor(slots), block_size)},
    )
    return meta, torch.tensor(positions)


def test_absorbed_mla_equals_naive_on_a_batch_of_chunked_prefill_and_decode():
    torch.manual_seed(0)
    mla = make_mla(q_lora_rank=None)
    for p in mla.parameters():
        p.data.normal_(0.0, 0.2)
    mla.kv_cache = torch.zeros(1 + 3 * 8, 4, 32 + 8)
    prefill, prefill_pos = metadata([0, 0, 0], [9, 5, 13])
    mla(prefill_pos, torch.randn(27, 64), ForwardContext(prefill))  # fill the cache
    step, positions = metadata([9, 5, 13], [1, 6, 1])  # decode, a prefill chunk after cached context, decode
    x = torch.randn(8, 64)
    outputs = {}
    for mode in ("naive", "absorbed"):
        mla.mode = mode
        outputs[mode] = mla(positions, x, ForwardContext(step))
    torch.testing.assert_close(outputs["absorbed"], outputs["naive"], rtol=1e-4, atol=1e-5)
