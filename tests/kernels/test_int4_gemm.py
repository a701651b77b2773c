"""The W4A16 GEMM and batch-1 GEMV against F.linear on the dequantized INT4 weight (Int4Weight.dequantize,
the reference the CPU path runs), for group sizes of AWQ/GPTQ (128, the whole row) and GGUF (32), with
and without bias, and on act-order weights through the permuted activations."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from kernel_env import BF16_TILES, INTERPRETED

from seekd.kernels.int4_gemm import (
    INT4_GEMV_CANDIDATES,
    Int4GemmConfig,
    int4_gemv,
    pick_int4_gemm_config,
    pick_int4_gemv,
    w4a16_matmul,
)
from seekd.layers.quantization.int4 import Int4Weight, int4_weight

pytestmark = pytest.mark.triton

DTYPES = [
    torch.float32,
    pytest.param(torch.bfloat16, marks=pytest.mark.skipif(INTERPRETED, reason=BF16_TILES)),
]


def random_int4(n: int, k: int, group_size: int, device: str, act_order: bool = False, seed: int = 0) -> Int4Weight:
    gen = torch.Generator().manual_seed(seed)
    codes = torch.randint(0, 16, (k, n), generator=gen, dtype=torch.uint8)
    scales = torch.rand(k // group_size, n, generator=gen) * 0.01 + 0.001
    zeros = torch.randint(0, 16, (k // group_size, n), generator=gen, dtype=torch.uint8)
    g_idx = None
    if act_order:
        g_idx = (torch.arange(k) // group_size)[torch.randperm(k, generator=gen)]
    w = int4_weight(codes, scales, zeros, group_size, g_idx)
    moved = [t.to(device) if t is not None else None for t in (w.data, w.scale, w.zeros, w.perm)]
    return Int4Weight(moved[0], moved[1], "int4", moved[2], group_size, moved[3])


def product(x: torch.Tensor, w: Int4Weight, bias: torch.Tensor | None, config=None) -> torch.Tensor:
    if w.perm is not None:
        x = x.index_select(-1, w.perm)
    if config is None:
        return w4a16_matmul(x, w.data, w.scale, w.zeros, bias)
    return int4_gemv(x, w.data, w.scale, w.zeros, bias, config)


def assert_close(out: torch.Tensor, ref: torch.Tensor, dtype: torch.dtype) -> None:
    assert not out.isnan().any()
    err = (out.float() - ref).norm() / ref.norm()
    assert err < (1e-5 if dtype == torch.float32 else 1e-2), err


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("m", "n", "k", "group_size"), [(1, 96, 256, 128), (5, 200, 256, 32), (40, 64, 512, 512)])
@pytest.mark.parametrize("with_bias", [False, True])
def test_gemm_matches_the_dequantized_weight(kernel_device, dtype, m, n, k, group_size, with_bias):
    w = random_int4(n, k, group_size, kernel_device)
    x = torch.randn(m, k, device=kernel_device).to(dtype)
    bias = torch.randn(n, device=kernel_device).to(dtype) if with_bias else None
    ref = F.linear(x.float(), w.dequantize(torch.float32), bias.float() if with_bias else None)
    out = product(x, w, bias)
    assert out.dtype == dtype and out.shape == (m, n)
    assert_close(out, ref, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("config", INT4_GEMV_CANDIDATES[:3], ids=lambda c: c.name)
@pytest.mark.parametrize(("n", "k", "group_size"), [(96, 256, 128), (200, 384, 32), (64, 128, 128)])
def test_gemv_matches_the_dequantized_weight(kernel_device, dtype, config, n, k, group_size):
    w = random_int4(n, k, group_size, kernel_device, seed=1)
    x = torch.randn(1, k, device=kernel_device).to(dtype)
    bias = torch.randn(n, device=kernel_device).to(dtype)
    ref = F.linear(x.float(), w.dequantize(torch.float32), bias.float())
    assert_close(product(x, w, bias, config), ref, dtype)


@pytest.mark.parametrize("batch", [1, 3])
def test_act_order_weights_multiply_through_the_permuted_activations(kernel_device, batch):
    w = random_int4(64, 256, 32, kernel_device, act_order=True, seed=2)
    assert w.perm is not None
    x = torch.randn(batch, 256, device=kernel_device)
    ref = F.linear(x, w.dequantize(torch.float32))
    assert_close(product(x, w, None), ref, torch.float32)
    if batch == 1:
        assert_close(product(x, w, None, INT4_GEMV_CANDIDATES[0]), ref, torch.float32)


def test_gemm_rejects_a_tile_that_straddles_groups(kernel_device):
    w = random_int4(64, 256, 32, kernel_device)
    x = torch.randn(2, 256, device=kernel_device)
    with pytest.raises(ValueError, match="must divide the group size"):
        w4a16_matmul(x, w.data, w.scale, w.zeros, config=Int4GemmConfig(16, 64, 64))


def test_gemm_tiles_divide_every_supported_group_size():
    for group_size in (32, 64, 128, 4096):
        for m in (1, 32, 512):
            assert group_size % pick_int4_gemm_config(m, 4096, group_size).block_k == 0


@pytest.mark.gpu
def test_pick_int4_gemv_times_the_gemm_and_every_candidate():
    layers = []
    for seed in range(3):
        w = random_int4(3584, 3584, 128, "cuda", seed=seed)
        layers.append((w.data, w.scale.to(torch.float16), w.zeros, None))
    choice, timings = pick_int4_gemv(layers)
    assert set(timings) == {"w4a16_matmul", *(c.name for c in INT4_GEMV_CANDIDATES)}
    assert all(t > 0 for t in timings.values())
    assert choice is None or timings[choice.name] < timings["w4a16_matmul"]
