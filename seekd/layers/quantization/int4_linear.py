"""A linear layer that keeps AWQ/GPTQ (or 4-bit GGUF) weights in INT4 (layout: quantization/int4.py).

Parameters: `weight` the qweight int32 [K/8, N], `weight_scale` float16 [K/G, N], `weight_zero` uint8
[K/G, N] and, for act-order checkpoints, `weight_perm` int32 [K]. Column-parallel shards and fused
parts cut output columns anywhere; row-parallel shards cut input rows on group boundaries.

Products: "triton" runs the W4A16 GEMM, or at one token the GEMV that start-up timing chose
(`gemv`); "torch" dequantizes per call (the reference, and float32 models on the CPU); "cpu" runs
torch's own int4 CPU kernel (`_weight_int4pack_mm_for_cpu`, bf16 models) on a copy packed for it
on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from seekd.layers.quantization import QuantizedWeight
from seekd.layers.quantization.int4 import PACK, Int4Weight

if TYPE_CHECKING:
    from seekd.layers.linear import LinearBase

INT4_GEMMS = ("torch", "triton", "cpu")


class Int4Linear:
    format = "int4"

    def __init__(self, gemm: str, group_size: int, act_order: bool) -> None:
        if gemm not in INT4_GEMMS:
            raise ValueError(f"INT4 products run on {', '.join(INT4_GEMMS)}, not {gemm!r}")
        self.gemm = gemm
        self.group_size = group_size  # -1: one group over all input features (GPTQ's group_size -1)
        self.act_order = act_order
        self.perm_loaded = False  # a fused layer's parts must share one input order

    def groups(self, in_features: int) -> int:
        return 1 if self.group_size <= 0 else in_features // self.group_size

    def create_weights(self, layer: LinearBase, in_features: int, out_features: int) -> None:
        groups = self.groups(in_features)
        if in_features % PACK or not groups or in_features % groups or in_features // groups % 16:
            raise ValueError(
                f"a layer of {in_features} input features cannot hold INT4 weights in groups of {self.group_size} "
                "(groups must tile the inputs and hold a multiple of 16)"
            )
        if self.gemm == "cpu" and not (
            layer.params_dtype == torch.bfloat16 and cpu_int4_supports(in_features, in_features // groups)
        ):
            self.gemm = "torch"  # the CPU kernel computes in bf16: a float32 model keeps float32 products

        def param(*shape: int, dtype: torch.dtype) -> nn.Parameter:
            p = nn.Parameter(torch.empty(*shape, dtype=dtype), requires_grad=False)
            p.low_bit_format = self.format
            return p

        layer.weight = param(in_features // PACK, out_features, dtype=torch.int32)
        layer.weight_scale = param(groups, out_features, dtype=torch.float16)
        layer.weight_zero = param(groups, out_features, dtype=torch.uint8)
        layer.weight_perm = param(in_features, dtype=torch.int32) if self.act_order else None
        layer.cpu_int4 = None  # (packed, scales and offsets) for torch's CPU kernel, made after loading

    def load(self, layer: LinearBase, loaded: torch.Tensor | QuantizedWeight, row: int, src: tuple[int, int, int]):
        """Columns [row, row + length) of the layer from the slice `src` of a checkpoint weight."""
        if not isinstance(loaded, Int4Weight):
            # the checkpoint ships this layer unquantized (AWQ's modules_to_not_convert): keep it so
            layer.become_dense()
            layer.quant_method.load(layer, loaded, row, src)
            return
        part = loaded.narrow(*src)
        cols = part.data.shape[1]
        if (
            tuple(part.scale.shape) != (layer.weight_scale.shape[0], cols)
            or part.data.shape[0] != layer.weight.shape[0]
        ):
            raise ValueError(
                f"INT4 checkpoint weight of shape {part.shape} with {part.scale.shape[0]} groups does not fit a layer "
                f"of {layer.in_features} inputs in {layer.weight_scale.shape[0]} groups"
            )
        if (part.perm is None) != (layer.weight_perm is None):
            raise ValueError("act-order (g_idx) differs between the checkpoint and the layer's quantization config")
        if part.perm is not None:
            if self.perm_loaded and not torch.equal(layer.weight_perm.data.cpu(), part.perm.cpu()):
                raise ValueError("the fused parts of an act-order layer have different input orders (g_idx)")
            layer.weight_perm.data.copy_(part.perm)
            self.perm_loaded = True
        layer.weight.data.narrow(1, row, cols).copy_(part.data)
        layer.weight_scale.data.narrow(1, row, cols).copy_(part.scale)
        layer.weight_zero.data.narrow(1, row, cols).copy_(part.zeros)
        if self.gemm == "cpu":
            layer.cpu_int4 = None

    def stored(self, layer: LinearBase) -> Int4Weight:
        group_size = layer.in_features // layer.weight_scale.shape[0]
        perm = layer.weight_perm.data if layer.weight_perm is not None else None
        return Int4Weight(layer.weight.data, layer.weight_scale.data, "int4", layer.weight_zero.data, group_size, perm)

    def apply(self, layer: LinearBase, x: torch.Tensor, bias: torch.Tensor | None, gated: bool) -> torch.Tensor:
        if gated:
            raise ValueError("INT4 layers take the activation before the product; call forward_gated")
        if self.gemm == "torch":
            return F.linear(x, self.stored(layer).dequantize(x.dtype), bias)
        if layer.weight_perm is not None:
            x = x.index_select(-1, layer.weight_perm)
        if self.gemm == "cpu":
            return cpu_int4_linear(layer, x, bias)
        shape = x.shape
        x2 = x.reshape(-1, shape[-1])
        if layer.gemv is not None and x2.shape[0] == 1:
            from seekd.kernels.int4_gemm import int4_gemv

            out = int4_gemv(x2, layer.weight, layer.weight_scale, layer.weight_zero, bias, layer.gemv)
        else:
            from seekd.kernels.int4_gemm import w4a16_matmul

            out = w4a16_matmul(x2, layer.weight, layer.weight_scale, layer.weight_zero, bias)
        return out.view(*shape[:-1], out.shape[-1])

    def weight_bytes(self, layer: LinearBase) -> int:
        extra = layer.weight_perm.nbytes if layer.weight_perm is not None else 0
        return layer.weight.nbytes + layer.weight_scale.nbytes + layer.weight_zero.nbytes + extra


CPU_INNER_K_TILES = 2  # torch's int4 CPU kernel packs K in tiles of 16 * inner_k_tiles


def cpu_int4_supports(in_features: int, group_size: int) -> bool:
    """Whether torch's int4 CPU kernel takes this shape (groups of 32..256, K in whole tiles)."""
    return group_size in (32, 64, 128, 256) and in_features % (16 * CPU_INNER_K_TILES) == 0


def cpu_int4_linear(layer: LinearBase, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """x (already in stored row order) times the layer's INT4 weight through torch's CPU kernel, whose
    weights are (q - 8) * scale + offset: our (q - z) * scale is offset = (8 - z) * scale."""
    if layer.cpu_int4 is None:
        w = Int4Linear.stored(layer.quant_method, layer)
        codes = w.codes().t().contiguous().to(torch.int32)  # [N, K]
        scale = w.scale.float()
        offset = (8.0 - w.zeros.float()) * scale
        packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(codes, CPU_INNER_K_TILES)
        params = torch.stack((scale, offset), dim=-1).to(torch.bfloat16).contiguous()  # [K/G, N, 2]
        layer.cpu_int4 = (packed, params, w.group_size)
    packed, params, group_size = layer.cpu_int4
    shape = x.shape
    out = torch.ops.aten._weight_int4pack_mm_for_cpu(
        x.reshape(-1, shape[-1]).to(torch.bfloat16), packed, group_size, params
    )
    if bias is not None:
        out = out + bias.to(out.dtype)
    return out.to(x.dtype).view(*shape[:-1], out.shape[-1])
