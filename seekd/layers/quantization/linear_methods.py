"""The weight formats of a linear layer: how its weight is allocated, filled from a checkpoint shard,
and multiplied. A layer gets one of these when it is built and keeps it."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from seekd.intmath import cdiv
from seekd.layers.quantization import FP8_BLOCK, QuantConfig, QuantizedWeight, quantize_fp8_blocks
from seekd.layers.quantization.int4_linear import Int4Linear
from seekd.layers.quantization.int8_rows import dequantize_int8_rows, int8_rows_linear, quantize_int8_rows

if TYPE_CHECKING:
    from seekd.layers.linear import LinearBase


class DenseLinear:
    """Weights in the model dtype; low-bit checkpoint tensors are dequantized on the way in (the
    reference every low-bit path is compared with)."""

    format = "dense"

    def create_weights(self, layer: LinearBase, in_features: int, out_features: int) -> None:
        layer.weight = nn.Parameter(torch.empty(out_features, in_features), requires_grad=False)

    def adopt(self, layer: LinearBase) -> None:
        """Turn a layer built low-bit into a dense one in place (the checkpoint holds it in full precision)."""
        weight = layer.weight
        shape = (layer.out_features, layer.in_features)
        weight.data = torch.empty(shape, dtype=layer.params_dtype, device=weight.device)
        del weight.low_bit_format
        for name, param in list(layer.named_parameters(recurse=False)):
            if name != "weight" and getattr(param, "low_bit_format", None):
                delattr(layer, name)

    def load(self, layer: LinearBase, loaded: torch.Tensor | QuantizedWeight, row: int, src: tuple[int, int, int]):
        """Copy the slice `src` (dim, start, length) of the checkpoint tensor into the weight from `row` on."""
        dim, start, length = src
        if isinstance(loaded, QuantizedWeight) and loaded.splits_at(dim, start, length):
            loaded = loaded.narrow(dim, start, length).dequantize(layer.weight.dtype)
        elif isinstance(loaded, QuantizedWeight):  # a shard inside a scale block: widen, then cut
            loaded = loaded.dequantize(layer.weight.dtype).narrow(dim, start, length)
        else:
            loaded = loaded.narrow(dim, start, length)
        rows = loaded.shape[0]
        _copy_checked(layer.weight.data.narrow(0, row, rows), loaded)

    def apply(self, layer: LinearBase, x: torch.Tensor, bias: torch.Tensor | None, gated: bool) -> torch.Tensor:
        config = layer.gemv
        if config is not None and x.dim() == 2 and x.shape[0] == 1:
            from seekd.kernels.gemv import gemv

            return gemv(x, layer.weight, bias, config, gated)
        if gated:
            raise ValueError("a gated product needs the batch-1 GEMV; call forward_gated")
        return F.linear(x, layer.weight, bias)

    def weight_bytes(self, layer: LinearBase) -> int:
        return layer.weight.nbytes


class Fp8BlockLinear:
    """DeepSeek's block FP8 kept as FP8: weight [out, in] float8_e4m3fn and weight_scale_inv
    [ceil(out/128), ceil(in/128)] float32, multiplied by the Triton block-scaled GEMMs (W8A8 on sm_89+,
    W8A16 elsewhere) or, on the CPU, by dequantizing per call. bf16 checkpoint tensors are quantized
    as they load (online FP8)."""

    format = "fp8_block"

    def __init__(self, gemm: str, online: bool) -> None:
        self.gemm = gemm
        self.online = online

    def create_weights(self, layer: LinearBase, in_features: int, out_features: int) -> None:
        layer.weight = nn.Parameter(
            torch.empty(out_features, in_features, dtype=torch.float8_e4m3fn), requires_grad=False
        )
        layer.weight_scale_inv = nn.Parameter(
            torch.empty(cdiv(out_features, FP8_BLOCK), cdiv(in_features, FP8_BLOCK), dtype=torch.float32),
            requires_grad=False,
        )
        layer.weight_scale_inv.weight_loader = layer.weight_loader
        layer.weight.low_bit_format = layer.weight_scale_inv.low_bit_format = self.format

    def load(self, layer: LinearBase, loaded: torch.Tensor | QuantizedWeight, row: int, src: tuple[int, int, int]):
        dim, start, length = src
        if not isinstance(loaded, QuantizedWeight) and not self.online:
            # the checkpoint ships this layer in full precision: keep it so (the first part decides)
            layer.become_dense()
            layer.quant_method.load(layer, loaded, row, src)
            return
        if isinstance(loaded, QuantizedWeight):
            if loaded.format != self.format:
                loaded = quantize_fp8_blocks(loaded.dequantize(torch.float32))
            part = loaded.narrow(dim, start, length)
        else:
            part = quantize_fp8_blocks(loaded.narrow(dim, start, length).to(layer.weight.device))
        if row % FP8_BLOCK:
            raise ValueError(f"an FP8 shard must start on a {FP8_BLOCK}-row boundary, not at row {row}")
        rows = part.data.shape[0]
        _copy_checked(layer.weight.data.narrow(0, row, rows), part.data)
        _copy_checked(layer.weight_scale_inv.data.narrow(0, row // FP8_BLOCK, part.scale.shape[0]), part.scale)

    def apply(self, layer: LinearBase, x: torch.Tensor, bias: torch.Tensor | None, gated: bool) -> torch.Tensor:
        if gated:
            raise ValueError("FP8 layers take the activation before the product; call forward_gated")
        if self.gemm == "torch":
            weight = QuantizedWeight(layer.weight, layer.weight_scale_inv, self.format).dequantize(x.dtype)
            return F.linear(x, weight, bias)
        shape = x.shape
        x2 = x.reshape(-1, shape[-1])
        if layer.gemv is not None and x2.shape[0] == 1:
            from seekd.kernels.fp8_gemm import block_fp8_gemv

            out = block_fp8_gemv(x2, layer.weight, layer.weight_scale_inv, bias, layer.gemv)
        else:
            from seekd.kernels.fp8_gemm import block_fp8_matmul

            out = block_fp8_matmul(x2, layer.weight, layer.weight_scale_inv, bias, mode=self.gemm)
        return out.view(*shape[:-1], out.shape[-1])

    def weight_bytes(self, layer: LinearBase) -> int:
        return layer.weight.nbytes + layer.weight_scale_inv.nbytes


class Int8RowsLinear:
    """Weight-only int8 with one float32 scale per output row (quantization/int8_rows.py), quantized
    from the checkpoint's weights as they load (`--quantization int8`): the CPU tier, where torch's
    int8 kernel multiplies bf16 activations by them without widening the weight."""

    format = "int8"

    def create_weights(self, layer: LinearBase, in_features: int, out_features: int) -> None:
        layer.weight = nn.Parameter(torch.empty(out_features, in_features, dtype=torch.int8), requires_grad=False)
        layer.weight_scale = nn.Parameter(torch.empty(out_features, dtype=torch.float32), requires_grad=False)
        layer.weight.low_bit_format = layer.weight_scale.low_bit_format = self.format

    def load(self, layer: LinearBase, loaded: torch.Tensor | QuantizedWeight, row: int, src: tuple[int, int, int]):
        dim, start, length = src
        if isinstance(loaded, QuantizedWeight):
            loaded = loaded.dequantize(torch.float32)
        codes, scale = quantize_int8_rows(loaded.narrow(dim, start, length))
        _copy_checked(layer.weight.data.narrow(0, row, codes.shape[0]), codes)
        _copy_checked(layer.weight_scale.data.narrow(0, row, codes.shape[0]), scale)

    def apply(self, layer: LinearBase, x: torch.Tensor, bias: torch.Tensor | None, gated: bool) -> torch.Tensor:
        if gated:
            raise ValueError("int8 layers take the activation before the product; call forward_gated")
        if layer.weight.device.type != "cpu":  # torch's int8 kernel is a CPU one
            out = F.linear(x, dequantize_int8_rows(layer.weight, layer.weight_scale, x.dtype))
        else:
            out = int8_rows_linear(x.reshape(-1, x.shape[-1]), layer.weight, layer.weight_scale).view(
                *x.shape[:-1], layer.out_features
            )
        return out if bias is None else out + bias

    def weight_bytes(self, layer: LinearBase) -> int:
        return layer.weight.nbytes + layer.weight_scale.nbytes


LinearMethod = DenseLinear | Fp8BlockLinear | Int4Linear | Int8RowsLinear


def linear_method(config: QuantConfig, out_parts: list[int], quantizable: bool) -> LinearMethod:
    """The format a linear layer is built with: the model's when the layer may be low-bit (MLA's
    kv_b_proj is folded into attention as a dense matrix, so it stays dense); block FP8 only where
    every fused part starts on a 128-row boundary (a scale block never straddles two parts). INT4 and
    int8 rows keep their scales per output column, so fused parts may start anywhere."""
    if not quantizable:
        return DenseLinear()
    if config.linear == "fp8_block" and all(p % FP8_BLOCK == 0 for p in out_parts[:-1]):
        return Fp8BlockLinear(config.fp8_gemm, config.online)
    if config.linear == "int4":
        return Int4Linear(config.int4_gemm, config.group_size, config.act_order)
    if config.linear == "int8":
        return Int8RowsLinear()
    return DenseLinear()


def _copy_checked(dst: torch.Tensor, src: torch.Tensor) -> None:
    if dst.shape != src.shape:
        raise ValueError(f"checkpoint tensor has shape {tuple(src.shape)}, expected {tuple(dst.shape)}")
    dst.copy_(src)
