"""Generic mapping of checkpoint tensors onto model parameters (fused layers, TP shards), and the
stream transforms that run before it (block-FP8 and V4 FP4 dequantisation, dropping MTP layers)."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable, Iterator

import torch
from torch import nn

logger = logging.getLogger(__name__)

# checkpoint name -> (parameter name, shard id), or None to fall back to packed_modules_mapping
NameRemap = Callable[[str], tuple[str, object] | None]


def load_named_weights(
    model: nn.Module,
    weights: Iterable[tuple[str, torch.Tensor]],
    packed_modules_mapping: dict[str, tuple[str, object]],
    skip_suffixes: tuple[str, ...] = (),
    remap: NameRemap | None = None,
) -> set[str]:
    """Copy each (name, tensor) into the parameter it belongs to; returns the names of the
    parameters that received data. Unknown names are an error: a silent miss is a wrong model."""
    params = dict(model.named_parameters())
    loaded: set[str] = set()
    for name, tensor in weights:
        if name.endswith(skip_suffixes):
            continue
        target, shard_id = (remap(name) if remap else None) or _packed_target(name, packed_modules_mapping)
        param = params.get(target)
        if param is None:
            raise ValueError(f"checkpoint tensor {name} matches no parameter of {type(model).__name__}")
        loader = getattr(param, "weight_loader", None)
        if loader is None:
            if param.shape != tensor.shape:
                raise ValueError(f"{name}: checkpoint shape {tuple(tensor.shape)}, expected {tuple(param.shape)}")
            param.data.copy_(tensor)
        elif shard_id is None:
            loader(param, tensor)
        else:
            loader(param, tensor, shard_id)
        loaded.add(target)
    return loaded


def _packed_target(name: str, packed_modules_mapping: dict[str, tuple[str, object]]) -> tuple[str, object]:
    for part, (fused, sid) in packed_modules_mapping.items():
        if f".{part}." in name:
            return name.replace(f".{part}.", f".{fused}."), sid
    return name, None


def dequantize_block_fp8(
    weight: torch.Tensor, scale_inv: torch.Tensor, block: tuple[int, int], dtype: torch.dtype
) -> torch.Tensor:
    """weight [out, in] in float8 times its per-block scale_inv [ceil(out/bo), ceil(in/bi)]."""
    rows, cols = weight.shape
    expected = (-(-rows // block[0]), -(-cols // block[1]))
    if tuple(scale_inv.shape) != expected:
        raise ValueError(
            f"block scales of shape {tuple(scale_inv.shape)} for a {rows}x{cols} weight with "
            f"{block[0]}x{block[1]} blocks; expected {expected}"
        )
    scale = scale_inv.float().repeat_interleave(block[0], 0)[:rows].repeat_interleave(block[1], 1)[:, :cols]
    return (weight.float() * scale).to(dtype)


# e2m1 code -> value; bit 3 is the sign (DeepSeek's FP4_TABLE, the OCP MX FP4 element format)
FP4_E2M1_VALUES = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0)
FP4_BLOCK = 32  # values along the input dimension that share one power-of-two scale
_FP8_DTYPES = (torch.float8_e4m3fn, torch.float8_e4m3fnuz)
_FP4_DTYPES = (torch.int8, torch.uint8, torch.float4_e2m1fn_x2)


def dequantize_fp4(packed: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """DeepSeek-V4's FP4 expert weights: packed [out, in/2] bytes holding two e2m1 codes each (the
    low nibble is the even column), times scale [out, in/32] (ue8m0, i.e. powers of two)."""
    codes = packed.view(torch.uint8)
    rows, cols = codes.shape[0], codes.shape[1] * 2
    if tuple(scale.shape) != (rows, cols // FP4_BLOCK):
        raise ValueError(
            f"FP4 scales of shape {tuple(scale.shape)} for a {rows}x{cols} weight; "
            f"expected {(rows, cols // FP4_BLOCK)} (one per {FP4_BLOCK} values of a row)"
        )
    table = torch.tensor(FP4_E2M1_VALUES, dtype=torch.float32, device=packed.device)
    values = table[torch.stack((codes & 0x0F, codes >> 4), dim=-1).flatten(-2).long()]
    return (values * scale.float().repeat_interleave(FP4_BLOCK, dim=1)).to(dtype)


def _scale_target(name: str, v4_layout: bool) -> str | None:
    """The weight a scale tensor belongs to: V3 names it `X.weight_scale_inv`, V4 `X.scale`."""
    if name.endswith(".weight_scale_inv"):
        return name.removesuffix("_scale_inv")
    if v4_layout and name.endswith(".scale"):
        return name.removesuffix(".scale") + ".weight"
    return None


def dequantize_fp8_blocks(
    weights: Iterable[tuple[str, torch.Tensor]],
    block: tuple[int, int],
    dtype: torch.dtype,
    fp4_experts: bool = False,
    v4_layout: bool = False,
) -> Iterator[tuple[str, torch.Tensor]]:
    """Pair each quantized `X.weight` with its scale (in either order, possibly in different shards)
    and yield the dequantised `X.weight`; other tensors pass through. float8 weights are block FP8;
    with `fp4_experts`, byte-typed weights are V4's packed FP4 experts."""
    pending_weights: dict[str, torch.Tensor] = {}
    pending_scales: dict[str, torch.Tensor] = {}

    def dequantize(weight: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        if weight.dtype in _FP8_DTYPES:
            return dequantize_block_fp8(weight, scale, block, dtype)
        return dequantize_fp4(weight, scale, dtype)

    for name, tensor in weights:
        base = _scale_target(name, v4_layout)
        if base is not None:
            if base in pending_weights:
                yield base, dequantize(pending_weights.pop(base), tensor)
            else:
                pending_scales[base] = tensor
        elif tensor.dtype in _FP8_DTYPES or (fp4_experts and tensor.dtype in _FP4_DTYPES):
            if name in pending_scales:
                yield name, dequantize(tensor, pending_scales.pop(name))
            else:
                pending_weights[name] = tensor
        else:
            yield name, tensor
    if pending_weights or pending_scales:
        lonely = sorted(pending_weights) + sorted(n + " (scale)" for n in pending_scales)
        raise ValueError(f"quantized checkpoint has weights without scales or scales without weights: {lonely[:5]}")


_LAYER_INDEX = re.compile(r"^model\.layers\.(\d+)\.")


def skip_layers_from(
    weights: Iterable[tuple[str, torch.Tensor]], first: int, count: int
) -> Iterator[tuple[str, torch.Tensor]]:
    """Drop `model.layers.{first}` .. `{first + count - 1}`: DeepSeek-V3 ships its multi-token
    prediction module as extra layers after the last decoder layer, which plain decoding never runs."""
    skipped = 0
    for name, tensor in weights:
        m = _LAYER_INDEX.match(name)
        if m and first <= int(m[1]) < first + count:
            skipped += 1
            continue
        yield name, tensor
    if skipped:
        logger.info("skipped %d tensors of the multi-token-prediction layer(s)", skipped)
