"""FP8 KV cache for GQA/MHA layers: the in-kernel e4m3 encoder against torch's cast, the fused rotary +
cache write against the reference quantizer, and paged attention over an FP8 cache against the torch
reference that dequantizes the cache and attends (GPU, or CPU through the interpreter)."""

from __future__ import annotations

import pytest
import torch
import triton
import triton.language as tl
from attention_batches import build_batch
from kernel_env import BF16_TILES, INTERPRETED, assert_fp8_codes_close

from seekd.layers.attention import Attention, TorchAttentionBackend, TritonAttentionBackend, store_kv
from seekd.layers.kv_quant import FP8, dequantize, quantize
from seekd.layers.rotary import RotaryEmbedding

pytestmark = pytest.mark.triton


@triton.jit
def _encode(x_ptr, codes_ptr, N: tl.constexpr):
    from seekd.kernels.kv_fp8 import f32_to_e4m3

    i = tl.arange(0, N)
    tl.store(codes_ptr + i, f32_to_e4m3(tl.load(x_ptr + i)))


def test_encoder_rounds_every_value_as_torch_casts_it(kernel_device):
    """Every finite code's value, every midpoint between neighbours (ties go to the even code),
    subnormals, signed zeros and random values over e4m3's whole range."""
    values = torch.arange(256, dtype=torch.int32).to(torch.uint8).view(FP8).float()
    exact = values[~values.isnan()].sort().values
    torch.manual_seed(0)
    spread = torch.randn(3000) * torch.exp(torch.randn(3000) * 4)
    x = torch.cat(
        [
            exact,
            (exact[1:] + exact[:-1]) / 2,
            torch.rand(3000) * 896 - 448,
            spread.clamp(-448, 448),
            torch.tensor([0.0, -0.0, 2**-10, -(2**-10), 3 * 2**-11, 1e-30, 447.9, -448.0]),
        ]
    )
    n = triton.next_power_of_2(x.numel())
    padded = torch.zeros(n)
    padded[: x.numel()] = x
    codes = torch.zeros(n, dtype=torch.uint8, device=kernel_device)
    _encode[(1,)](padded.to(kernel_device), codes, N=n)
    assert torch.equal(codes.cpu(), padded.to(FP8).view(torch.uint8))


def test_reference_quantizer_round_trips_within_e4m3_precision():
    torch.manual_seed(0)
    x = torch.randn(50, 3, 40) * torch.exp(torch.randn(50, 3, 1) * 3)  # magnitudes over orders of ten
    x[7, 1] = 0.0
    codes, scales = quantize(x, (32, 8))
    assert codes.dtype == FP8 and scales.shape == (50, 3, 2)
    assert scales[7, 1].eq(0).all() and codes[7, 1].float().eq(0).all()
    back = dequantize(codes, scales, torch.float32, (32, 8))
    bound = torch.cat([scales[..., :1].expand(-1, -1, 32), scales[..., 1:].expand(-1, -1, 8)], -1) * 448 / 16
    assert ((back - x).abs() <= bound + 1e-30).all()  # half an ulp of 3 mantissa bits at the segment's amax


def fp8_cache(num_blocks: int, block_size: int, kv_heads: int, head_dim: int, device: str):
    """A random FP8 cache whose tokens have magnitudes spread over orders of ten: (codes, scales)."""
    values = torch.randn(num_blocks, block_size, 2, kv_heads, head_dim, device=device)
    values *= torch.exp(torch.randn(num_blocks, block_size, 2, kv_heads, 1, device=device))
    return quantize(values)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(
    "query_lens,context_lens",
    [
        ([37, 1, 200, 16], [0, 50, 33, 300]),  # prefill, chunked prefill with context, mixed
        ([1] * 5, [1, 17, 900, 2047, 64]),  # pure decode: split-K
        ([1], [0]),  # one token
    ],
)
@pytest.mark.parametrize("heads,kv_heads,head_dim", [(8, 2, 64), (12, 2, 96)])
def test_paged_attention_over_fp8_cache_matches_dequantized_reference(
    kernel_device, dtype, query_lens, context_lens, heads, kv_heads, head_dim
):
    if dtype == torch.bfloat16 and INTERPRETED:
        pytest.skip(BF16_TILES)
    device, block_size, num_blocks = kernel_device, 16, 512
    torch.manual_seed(1)
    meta = build_batch(query_lens, context_lens, block_size, num_blocks, device)
    layer = Attention(heads, head_dim, head_dim**-0.5, kv_heads)
    codes, scales = fp8_cache(num_blocks, block_size, kv_heads, head_dim, device)
    total = sum(query_lens)
    q = torch.randn(total, heads, head_dim, device=device, dtype=dtype)
    k, v = torch.randn(2, total, kv_heads, head_dim, device=device, dtype=dtype)
    layer.kv_cache, layer.kv_scales = codes, scales
    store_kv(layer.kv_cache, k, v, meta.kv.slot_mapping, layer.kv_scales)

    ref = TorchAttentionBackend().attend(layer, q.float(), meta)
    backend = TritonAttentionBackend(kv_heads)
    meta.backend_data = backend.prepare(meta)
    out = backend.attend(layer, q, meta)
    assert torch.isfinite(out).all()
    assert (out.float() - ref).norm() / ref.norm() < (1e-5 if dtype == torch.float32 else 1e-2)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("heads,kv_heads,head_dim,rotary_dim", [(28, 4, 128, 128), (6, 2, 96, 64), (3, 3, 16, 16)])
def test_fused_rope_and_fp8_store_writes_the_reference_codes(
    kernel_device, dtype, heads, kv_heads, head_dim, rotary_dim
):
    """The FP8 write quantizes exactly the keys and values the model-dtype write stores; slots it
    does not write keep their codes and scales."""
    from seekd.kernels.rope_kv_store import rope_and_store_kv

    torch.manual_seed(0)
    device, tokens, block_size, num_blocks = kernel_device, 7, 4, 9
    rope = RotaryEmbedding(head_dim, rotary_dim, 512, 10000.0).to(device)
    qkv = torch.randn(tokens, (heads + 2 * kv_heads) * head_dim, device=device, dtype=dtype)
    qkv[:, heads * head_dim :] *= torch.exp(2 * torch.randn(tokens, 1, device=device, dtype=dtype))
    positions = torch.tensor([0, 3, 17, 200, 201, 5, 511], device=device)
    slots = torch.randperm(num_blocks * block_size, device=device)[:tokens]
    args = (qkv, positions, rope.cos_sin_cache, rotary_dim)
    plain = torch.zeros(num_blocks, block_size, 2, kv_heads, head_dim, device=device, dtype=dtype)
    ref_q = rope_and_store_kv(*args, plain, slots, heads, kv_heads, head_dim)
    ref_codes, ref_scales = fp8_cache(num_blocks, block_size, kv_heads, head_dim, device)
    codes, scales = ref_codes.clone(), ref_scales.clone()
    ref_codes.view(-1, 2, kv_heads, head_dim)[slots], ref_scales.view(-1, 2, kv_heads, 1)[slots] = quantize(
        plain.view(-1, 2, kv_heads, head_dim)[slots]
    )

    q = rope_and_store_kv(*args, codes, slots, heads, kv_heads, head_dim, scales)
    assert torch.equal(q, ref_q)
    assert_fp8_codes_close(codes, ref_codes)
    torch.testing.assert_close(scales, ref_scales, atol=0, rtol=1e-6)


@pytest.mark.gpu
def test_varlen_prefill_reads_the_fp8_cache():
    heads, kv_heads, head_dim, query_lens = 28, 4, 128, [37, 1, 200, 16]
    meta = build_batch(query_lens, [0] * 4, 16, 256, "cuda")
    layer = Attention(heads, head_dim, head_dim**-0.5, kv_heads)
    layer.kv_cache, layer.kv_scales = fp8_cache(256, 16, kv_heads, head_dim, "cuda")
    q = torch.randn(sum(query_lens), heads, head_dim, device="cuda", dtype=torch.bfloat16)
    k, v = torch.randn(2, sum(query_lens), kv_heads, head_dim, device="cuda", dtype=torch.bfloat16)
    store_kv(layer.kv_cache, k, v, meta.kv.slot_mapping, layer.kv_scales)
    ref = TorchAttentionBackend().attend(layer, q.float(), meta)
    backend = TritonAttentionBackend(kv_heads, prefill="varlen")
    meta.backend_data = backend.prepare(meta)
    assert meta.backend_data.varlen
    out = backend.attend(layer, q, meta)
    assert (out.float() - ref).norm() / ref.norm() < 1e-2
