"""Generic mapping of checkpoint tensors onto model parameters (fused layers, TP shards), and the
stream transforms that run before it (block-FP8 dequantisation, dropping MTP layers)."""

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


def dequantize_block_fp8(weight: torch.Tensor, scale_inv: torch.Tensor, block: tuple[int, int],
                         dtype: torch.dtype) -> torch.Tensor:
    """weight [out, in] in float8 times its per-block scale_inv [ceil(out/bo), ceil(in/bi)]."""
    rows, cols = weight.shape
    expected = (-(-rows // block[0]), -(-cols // block[1]))
    if tuple(scale_inv.shape) != expected:
        raise ValueError(f"block scales of shape {tuple(scale_inv.shape)} for a {rows}x{cols} weight with "
                         f"{block[0]}x{block[1]} blocks; expected {expected}")
    scale = scale_inv.float().repeat_interleave(block[0], 0)[:rows].repeat_interleave(block[1], 1)[:, :cols]
    return (weight.float() * scale).to(dtype)


def dequantize_fp8_blocks(
    weights: Iterable[tuple[str, torch.Tensor]], block: tuple[int, int], dtype: torch.dtype
) -> Iterator[tuple[str, torch.Tensor]]:
    """Pair each float8 `X.weight` with its `X.weight_scale_inv` (in either order, possibly in
    different shards) and yield the dequantised `X.weight`; other tensors pass through."""
    pending_weights: dict[str, torch.Tensor] = {}
    pending_scales: dict[str, torch.Tensor] = {}
    for name, tensor in weights:
        if name.endswith(".weight_scale_inv"):
            base = name.removesuffix("_scale_inv")
            if base in pending_weights:
                yield base, dequantize_block_fp8(pending_weights.pop(base), tensor, block, dtype)
            else:
                pending_scales[base] = tensor
        elif tensor.dtype in (torch.float8_e4m3fn, torch.float8_e4m3fnuz):
            if name in pending_scales:
                yield name, dequantize_block_fp8(tensor, pending_scales.pop(name), block, dtype)
            else:
                pending_weights[name] = tensor
        else:
            yield name, tensor
    if pending_weights or pending_scales:
        lonely = sorted(pending_weights) + sorted(n + "_scale_inv" for n in pending_scales)
        raise ValueError(f"FP8 checkpoint has weights without block scales or scales without weights: {lonely[:5]}")


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
