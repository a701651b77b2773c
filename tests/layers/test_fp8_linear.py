"""Block-FP8 linear layers: checkpoint codes and scales land in the right rows and blocks of every
fused and tensor-parallel layout, and the product equals the dequantized layer's."""

from __future__ import annotations

import pytest
import torch

from seekd.distributed import rank_view
from seekd.layers.build_scope import building_with
from seekd.layers.linear import (
    MergedColumnParallelLinear,
    QKVParallelLinear,
    ReplicatedLinear,
    RowParallelLinear,
)
from seekd.layers.quantization import DENSE, QuantConfig, QuantizedWeight, quantize_fp8_blocks
from seekd.layers.quantization.linear_methods import DenseLinear, Fp8BlockLinear

FP8_TORCH = QuantConfig(linear="fp8_block", fp8_gemm="torch")


def checkpoint(rows: int, cols: int, seed: int) -> QuantizedWeight:
    gen = torch.Generator().manual_seed(seed)
    return quantize_fp8_blocks(torch.randn(rows, cols, generator=gen) * 0.02)


def held(layer) -> torch.Tensor:
    """The layer's weight at full precision, whatever its format."""
    if isinstance(layer.quant_method, Fp8BlockLinear):
        return QuantizedWeight(layer.weight, layer.weight_scale_inv, "fp8_block").dequantize(torch.float32)
    return layer.weight.float()


def build(cls, config: QuantConfig, rank: int, size: int, *args):
    with rank_view(rank, size), building_with(config):
        return cls(*args)


@pytest.mark.parametrize("rank,size", [(0, 1), (0, 2), (1, 2)])
def test_fused_and_sharded_layouts_hold_the_dequantized_checkpoint_slices(rank, size):
    parts = {"gate": checkpoint(384, 300, 1), "up": checkpoint(384, 300, 2)}
    q, k, v = checkpoint(4 * 128, 300, 3), checkpoint(2 * 128, 300, 4), checkpoint(2 * 128, 300, 5)
    down = checkpoint(200, 512, 6)
    for config in (FP8_TORCH, DENSE):
        merged = build(MergedColumnParallelLinear, config, rank, size, 300, [384, 384])
        qkv = build(QKVParallelLinear, config, rank, size, 300, 128, 4, 2)
        row = build(RowParallelLinear, config, rank, size, 512, 200)
        expected_format = Fp8BlockLinear if config is FP8_TORCH and size == 1 else None
        if expected_format:
            assert all(isinstance(m.quant_method, Fp8BlockLinear) for m in (merged, qkv, row))
        for i, part in enumerate(parts.values()):
            merged.weight_loader(merged.weight, part, i)
        for shard_id, part in zip("qkv", (q, k, v)):
            qkv.weight_loader(qkv.weight, part, shard_id)
        row.weight_loader(row.weight, down)

        rows = 384 // size
        gate, up = (p.dequantize(torch.float32)[rank * rows : (rank + 1) * rows] for p in parts.values())
        torch.testing.assert_close(held(merged), torch.cat([gate, up]), rtol=0, atol=0)
        heads = 4 // size * 128
        kv = 2 // size * 128
        want = [
            q.dequantize(torch.float32)[rank * heads : (rank + 1) * heads],
            k.dequantize(torch.float32)[rank * kv : (rank + 1) * kv],
            v.dequantize(torch.float32)[rank * kv : (rank + 1) * kv],
        ]
        torch.testing.assert_close(held(qkv), torch.cat(want), rtol=0, atol=0)
        cols = 512 // size
        torch.testing.assert_close(held(row), down.dequantize(torch.float32)[:, rank * cols : (rank + 1) * cols])


def test_parts_off_the_128_row_grid_build_dense():
    """A scale block may not straddle two fused parts: such a layer is built dense, not wrong."""
    merged = build(MergedColumnParallelLinear, FP8_TORCH, 0, 1, 64, [100, 100])
    assert isinstance(merged.quant_method, DenseLinear)
    assert isinstance(build(ReplicatedLinear, FP8_TORCH, 0, 1, 64, 100).quant_method, Fp8BlockLinear)


def test_a_split_inside_a_scale_block_is_refused_with_advice():
    row = build(RowParallelLinear, FP8_TORCH, 1, 2, 200, 64)  # rank 1 starts at column 100
    with pytest.raises(ValueError, match="--quantization none"):
        row.weight_loader(row.weight, checkpoint(64, 200, 7))


def test_full_precision_tensors_stay_dense_unless_quantizing_online():
    weight = torch.randn(256, 128) * 0.02
    kept = build(ReplicatedLinear, FP8_TORCH, 0, 1, 128, 256)
    kept.weight_loader(kept.weight, weight)
    assert isinstance(kept.quant_method, DenseLinear) and torch.equal(kept.weight, weight)
    assert not hasattr(kept, "weight_scale_inv")
    online = build(ReplicatedLinear, QuantConfig(linear="fp8_block", fp8_gemm="torch", online=True), 0, 1, 128, 256)
    online.weight_loader(online.weight, weight)
    assert online.weight.dtype == torch.float8_e4m3fn
    assert (held(online) - weight).abs().max() <= weight.abs().max() / 16  # e4m3: 3 mantissa bits


@pytest.mark.triton
@pytest.mark.parametrize("tokens", [1, 5, 130])
def test_w8a16_kernel_product_equals_the_dequantized_product(kernel_device, tokens):
    """The Triton W8A16 path (the one every GPU can run; W8A8 needs sm_89 and is tested there) against
    the torch reference of the same layer."""
    config = QuantConfig(linear="fp8_block", fp8_gemm="w8a16")
    with torch.device(kernel_device):
        layer = build(ReplicatedLinear, config, 0, 1, 300, 260, True)
        reference = build(ReplicatedLinear, FP8_TORCH, 0, 1, 300, 260, True)
    for m in (layer, reference):
        m.weight_loader(m.weight, checkpoint(260, 300, 8))
        m.bias.data.copy_(torch.linspace(-1, 1, 260))
    x = torch.randn(tokens, 300, device=kernel_device)
    torch.testing.assert_close(layer(x), reference(x), rtol=1e-4, atol=1e-4)
