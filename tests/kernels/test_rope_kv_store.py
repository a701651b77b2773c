"""The fused rotary + KV-cache write against the reference (rotary layer, then store_kv)."""

from __future__ import annotations

import pytest
import torch

from seekd.layers.attention import store_kv
from seekd.layers.rotary import RotaryEmbedding

pytestmark = pytest.mark.triton


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("heads,kv_heads,head_dim,rotary_dim", [(28, 4, 128, 128), (6, 2, 96, 64), (3, 3, 16, 16)])
def test_fused_rope_and_store_equals_the_reference(kernel_device, dtype, heads, kv_heads, head_dim, rotary_dim):
    from seekd.kernels.rope_kv_store import rope_and_store_kv

    torch.manual_seed(0)
    device, tokens, block_size, num_blocks = kernel_device, 7, 4, 9
    rope = RotaryEmbedding(head_dim, rotary_dim, 512, 10000.0).to(device)
    qkv = torch.randn(tokens, (heads + 2 * kv_heads) * head_dim, device=device, dtype=dtype)
    positions = torch.tensor([0, 3, 17, 200, 201, 5, 511], device=device)
    slots = torch.randperm(num_blocks * block_size, device=device)[:tokens]
    cache = torch.randn(num_blocks, block_size, 2, kv_heads, head_dim, device=device, dtype=dtype)

    q, k, v = qkv.split([heads * head_dim, kv_heads * head_dim, kv_heads * head_dim], dim=-1)
    ref_q, ref_k = rope(positions, q.view(tokens, heads, head_dim), k.view(tokens, kv_heads, head_dim))
    ref_cache = cache.clone()
    store_kv(ref_cache, ref_k, v.view(tokens, kv_heads, head_dim), slots)

    out_q = rope_and_store_kv(qkv, positions, rope.cos_sin_cache, rotary_dim, cache, slots, heads, kv_heads, head_dim)
    tol = {"atol": 1e-6, "rtol": 1e-6} if dtype == torch.float32 else {"atol": 2e-2, "rtol": 2e-2}
    torch.testing.assert_close(out_q, ref_q, **tol)
    torch.testing.assert_close(cache, ref_cache, **tol)  # written slots equal, every other slot untouched
