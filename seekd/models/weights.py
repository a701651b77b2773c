"""Generic mapping of checkpoint tensors onto model parameters (fused layers, TP shards), and the
stream transforms that run before it (pairing low-bit weights with their scales, dropping MTP layers).
A parameter built low-bit receives a QuantizedWeight as it is; any other gets it dequantized."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable, Iterator

import torch
from torch import nn

from seekd.layers.pipeline import RemoteLayer
from seekd.layers.quantization import QuantizedWeight, ue8m0_bytes, ue8m0_to_float

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
    parameters that received data. Unknown names are an error: a silent miss is a wrong model;
    names under a module another pipeline stage holds are skipped."""
    params = dict(model.named_parameters())
    remote = tuple(f"{name}." for name, m in model.named_modules() if isinstance(m, RemoteLayer))
    loaded: set[str] = set()
    for name, tensor in weights:
        if name.endswith(skip_suffixes):
            continue
        target, shard_id = (remap(name) if remap else None) or _packed_target(name, packed_modules_mapping)
        param = params.get(target)
        if param is None and remote and target.startswith(remote):
            continue
        if param is None:
            raise ValueError(f"checkpoint tensor {name} matches no parameter of {type(model).__name__}")
        if isinstance(tensor, QuantizedWeight) and not getattr(param, "accepts_quantized", False):
            tensor = tensor.dequantize(param.dtype)
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


_FP8_DTYPES = (torch.float8_e4m3fn, torch.float8_e4m3fnuz)
_FP4_DTYPES = (torch.int8, torch.uint8, torch.float4_e2m1fn_x2)


def _scale_target(name: str, v4_layout: bool) -> str | None:
    """The weight a scale tensor belongs to: V3 names it `X.weight_scale_inv`, V4 `X.scale`."""
    if name.endswith(".weight_scale_inv"):
        return name.removesuffix("_scale_inv")
    if v4_layout and name.endswith(".scale"):
        return name.removesuffix(".scale") + ".weight"
    return None


def _quantized(weight: torch.Tensor, scale: torch.Tensor) -> QuantizedWeight:
    if weight.dtype in _FP8_DTYPES:  # V3 ships float32 scale_inv, V4 ue8m0 powers of two
        return QuantizedWeight(weight.view(torch.float8_e4m3fn), ue8m0_to_float(scale), "fp8_block")
    return QuantizedWeight(weight.view(torch.uint8), ue8m0_bytes(scale), "fp4")


def pair_quantized(
    weights: Iterable[tuple[str, torch.Tensor]], fp4_experts: bool = False, v4_layout: bool = False
) -> Iterator[tuple[str, torch.Tensor | QuantizedWeight]]:
    """Pair each quantized `X.weight` with its scale (in either order, possibly in different shards)
    into one QuantizedWeight named `X.weight`; other tensors pass through. float8 weights are block
    FP8; with `fp4_experts`, byte-typed weights are V4's packed FP4 experts. The parameter that
    receives it keeps it low-bit or dequantizes it (`load_named_weights`)."""
    pending_weights: dict[str, torch.Tensor] = {}
    pending_scales: dict[str, torch.Tensor] = {}
    for name, tensor in weights:
        base = _scale_target(name, v4_layout)
        if base is not None:
            if base in pending_weights:
                yield base, _quantized(pending_weights.pop(base), tensor)
            else:
                pending_scales[base] = tensor
        elif tensor.dtype in _FP8_DTYPES or (fp4_experts and tensor.dtype in _FP4_DTYPES):
            if name in pending_scales:
                yield name, _quantized(tensor, pending_scales.pop(name))
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
