"""The Triton paged-attention backend against the torch reference (GPU, or CPU through the interpreter)."""

from __future__ import annotations

import pytest
import torch
from attention_batches import build_batch
from kernel_env import BF16_TILES, INTERPRETED

from seekd import LLM, SamplingParams
from seekd.layers.attention import Attention, TorchAttentionBackend, TritonAttentionBackend, store_kv


@pytest.mark.triton
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(
    "query_lens,context_lens",
    [
        ([37, 1, 200, 16], [0, 50, 33, 300]),  # prefill, chunked prefill with context, mixed
        ([1] * 5, [1, 17, 900, 2047, 64]),  # pure decode: split-K
        ([1], [4095]),  # batch-1 long decode
    ],
)
@pytest.mark.parametrize("heads,kv_heads,head_dim", [(28, 4, 128), (8, 8, 64), (12, 2, 96)])
def test_triton_matches_torch_reference(kernel_device, dtype, query_lens, context_lens, heads, kv_heads, head_dim):
    device = kernel_device
    if dtype == torch.bfloat16 and INTERPRETED:
        pytest.skip(BF16_TILES)
    block_size, num_blocks = 16, 1024
    torch.manual_seed(1)
    meta = build_batch(query_lens, context_lens, block_size, num_blocks, device)
    layer = Attention(heads, head_dim, head_dim**-0.5, kv_heads)
    cache = torch.randn(num_blocks, block_size, 2, kv_heads, head_dim, device=device, dtype=dtype)
    total = sum(query_lens)
    q = torch.randn(total, heads, head_dim, device=device, dtype=dtype)
    k = torch.randn(total, kv_heads, head_dim, device=device, dtype=dtype)
    v = torch.randn(total, kv_heads, head_dim, device=device, dtype=dtype)

    layer.kv_cache = cache.clone()
    store_kv(layer.kv_cache, k, v, meta.kv.slot_mapping)
    ref = TorchAttentionBackend().attend(layer, q.float(), meta)
    triton_backend = TritonAttentionBackend(kv_heads)
    meta.backend_data = triton_backend.prepare(meta)
    layer.kv_cache = cache.clone()
    store_kv(layer.kv_cache, k, v, meta.kv.slot_mapping)
    out = triton_backend.attend(layer, q, meta)
    assert torch.isfinite(out).all()
    rel = (out.float() - ref).norm() / ref.norm()
    assert rel < (1e-5 if dtype == torch.float32 else 1e-2)
    if meta.backend_data.counters is not None:  # the merging programs leave them zeroed for the next step
        assert meta.backend_data.counters.count_nonzero() == 0


@pytest.mark.triton
def test_split_count_sized_for_a_longer_context_serves_short_ones_repeatedly(kernel_device):
    """As in a CUDA graph captured for the longest context: 64 splits baked in, contexts that need
    one to several of them, and the same merge counters reused step after step."""
    device = kernel_device
    heads, kv_heads, head_dim, block_size, num_blocks = 8, 2, 64, 16, 512
    torch.manual_seed(3)
    meta = build_batch([1] * 4, [3, 255, 256, 1500], block_size, num_blocks, device)
    layer = Attention(heads, head_dim, head_dim**-0.5, kv_heads)
    layer.kv_cache = torch.randn(num_blocks, block_size, 2, kv_heads, head_dim, device=device)
    backend = TritonAttentionBackend(kv_heads)
    meta.backend_data = backend.prepare(meta)
    meta.backend_data.num_splits = 64
    for _ in range(3):
        q = torch.randn(4, heads, head_dim, device=device)
        ref = TorchAttentionBackend().attend(layer, q, meta)
        out = backend.attend(layer, q, meta)
        assert (out - ref).abs().max() < 1e-4
        assert meta.backend_data.counters.count_nonzero() == 0


@pytest.mark.triton
def test_triton_engine_greedy_equals_torch_engine_with_prefix_hits(kernel_device, qwen2_model, data_dir):
    """The whole GPU fast path (fused rotary + cache write, paged attention, fused norms and
    activation) against the reference backend, token for token in float32."""
    prompts = [[*range(10, 58), 200 + i, 7] for i in range(4)] + [list(range(100, 113)), [7, 8, 9]]
    # 16 tokens take the 50-token prompts over a block boundary; the GPU decodes further
    params = SamplingParams(temperature=0.0, max_tokens=16 if INTERPRETED else 32, ignore_eos=True)
    outs = {}
    for backend in ("torch", "triton"):
        llm = LLM(
            str(qwen2_model[0]),
            data_dir=str(data_dir),
            num_kv_blocks=256,
            block_size=16,
            device=kernel_device,
            dtype="float32",
            attention_backend=backend,
            show_progress=False,
        )
        llm.generate(prompts[0], params)  # warm the prefix cache
        outs[backend] = [o.outputs[0].token_ids for o in llm.generate(prompts, params)]
        assert llm.engine.scheduler.kv.prefix_hits > 0
    assert outs["triton"] == outs["torch"]


@pytest.mark.gpu
@pytest.mark.parametrize("heads,kv_heads,head_dim", [(28, 4, 128), (16, 16, 128)])
def test_varlen_prefill_of_fresh_prompts_matches_torch_reference(heads, kv_heads, head_dim):
    query_lens = [37, 1, 200, 16]
    meta = build_batch(query_lens, [0] * 4, 16, 256, "cuda")
    layer = Attention(heads, head_dim, head_dim**-0.5, kv_heads)
    layer.kv_cache = torch.randn(256, 16, 2, kv_heads, head_dim, device="cuda", dtype=torch.bfloat16)
    q = torch.randn(sum(query_lens), heads, head_dim, device="cuda", dtype=torch.bfloat16)
    k, v = torch.randn(2, sum(query_lens), kv_heads, head_dim, device="cuda", dtype=torch.bfloat16)
    store_kv(layer.kv_cache, k, v, meta.kv.slot_mapping)
    ref = TorchAttentionBackend().attend(layer, q.float(), meta)
    backend = TritonAttentionBackend(kv_heads, prefill="varlen")
    meta.backend_data = backend.prepare(meta)
    out = backend.attend(layer, q, meta)
    assert (out.float() - ref).norm() / ref.norm() < 1e-2
