"""Fused Triton kernels (RMSNorm + residual, SiLU-and-mul, rotary) against the layers' reference code."""

from __future__ import annotations

import pytest
import torch
from kernel_env import INTERPRETED

from seekd.layers.activation import SiluAndMul
from seekd.layers.norms import RMSNorm
from seekd.layers.rotary import RotaryEmbedding

pytestmark = pytest.mark.triton

DTYPES = [torch.float32, torch.bfloat16]


# Triton's CPU interpreter rounds float32 to bfloat16 toward zero, not to nearest as the GPU does:
# bfloat16 results there are off by up to one unit in the last place.
BF16_REL = 1.6e-2 if INTERPRETED else 8e-3


def close(out: torch.Tensor, ref: torch.Tensor, dtype: torch.dtype) -> bool:
    rel = (out.float() - ref.float()).norm() / ref.float().norm()
    return bool(torch.isfinite(out).all()) and rel < (1e-6 if dtype == torch.float32 else BF16_REL)


def same_rounding(out: torch.Tensor, ref: torch.Tensor) -> bool:
    """Bit-equal on the GPU; within one bfloat16 unit in the last place under the interpreter."""
    if INTERPRETED and out.dtype == torch.bfloat16:
        return torch.allclose(out.float(), ref.float(), rtol=2**-7, atol=0)
    return torch.equal(out, ref)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("hidden", [64, 3584, 5120])
def test_rms_norm_with_and_without_residual(kernel_device, dtype, hidden):
    torch.manual_seed(0)
    norm = RMSNorm(hidden, 1e-6).to(kernel_device).to(dtype)
    norm.weight.data.normal_(1.0, 0.1)
    x = torch.randn(37, hidden, device=kernel_device, dtype=dtype)
    residual = torch.randn_like(x)
    ref, ref_res = norm(x, residual)
    ref_plain = norm(x)
    fused = RMSNorm(hidden, 1e-6, use_kernel=True).to(kernel_device).to(dtype)
    fused.load_state_dict(norm.state_dict())
    out, out_res = fused(x, residual)
    assert close(out, ref, dtype) and same_rounding(out_res, ref_res)
    assert close(fused(x), ref_plain, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("d", [160, 18944])
def test_silu_and_mul(kernel_device, dtype, d):
    x = torch.randn(19, 2 * d, device=kernel_device, dtype=dtype)
    ref = SiluAndMul()(x)
    assert close(SiluAndMul(use_kernel=True)(x), ref, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("heads,kv_heads,head_dim,rotary_dim", [(28, 4, 128, 128), (16, 16, 192, 64), (4, 2, 16, 16)])
def test_rotary_on_strided_views(kernel_device, dtype, heads, kv_heads, head_dim, rotary_dim):
    rope = RotaryEmbedding(head_dim, rotary_dim, 4096, 10000.0).to(kernel_device)
    fused = RotaryEmbedding(head_dim, rotary_dim, 4096, 10000.0, use_kernel=True).to(kernel_device)
    tokens = 45
    qkv = torch.randn(tokens, (heads + 2 * kv_heads) * head_dim, device=kernel_device, dtype=dtype)
    q = qkv[:, : heads * head_dim].view(tokens, heads, head_dim)  # strided, like the model's split
    k = qkv[:, heads * head_dim : (heads + kv_heads) * head_dim].view(tokens, kv_heads, head_dim)
    positions = torch.randint(0, 4096, (tokens,), device=kernel_device)
    ref_q, ref_k = rope(positions, q, k)
    out_q, out_k = fused(positions, q, k)
    assert close(out_q, ref_q, dtype) and close(out_k, ref_k, dtype)
