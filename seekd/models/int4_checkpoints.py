"""AWQ and GPTQ checkpoints: what config.json's quantization_config says, and the stream transform
that turns each layer's packed tensors (`X.qweight`, `X.qzeros`, `X.scales`, GPTQ's `X.g_idx`) into one
Int4Weight named `X.weight`, in seekd's INT4 layout (seekd/layers/quantization/int4.py)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import torch

from seekd.layers.quantization import QuantizedWeight
from seekd.layers.quantization.int4 import PACK, from_awq, from_gptq
from seekd.models.hf_config import HFConfig

INT4_METHODS = ("awq", "gptq")
_PARTS = ("qweight", "qzeros", "scales", "g_idx")


@dataclass(frozen=True)
class Int4Scheme:
    method: str  # "awq" or "gptq"
    group_size: int  # -1: one group over each row's input features
    act_order: bool = False  # GPTQ's desc_act: g_idx permutes the groups over the input features
    zero_offset: int = 1  # GPTQ v1 stores zero - 1; GPTQModel's gptq_v2 and AWQ store the zero itself


def int4_scheme(hf_config: HFConfig, requested: str = "auto") -> Int4Scheme | None:
    """The INT4 scheme of the checkpoint: from quantization_config, or AutoAWQ's / AutoGPTQ's defaults
    (4 bits, groups of 128) when `requested` names one and config.json has none. None: not INT4."""
    quant = hf_config.get("quantization_config") or {}
    method = str(quant.get("quant_method", "")).lower()
    if method not in INT4_METHODS:
        if requested in INT4_METHODS and not quant:
            return Int4Scheme(requested, 128, zero_offset=1 if requested == "gptq" else 0)
        if requested in INT4_METHODS:
            raise ValueError(f"--quantization {requested}, but config.json's quantization_config is {quant}")
        return None
    if requested in INT4_METHODS and requested != method:
        raise ValueError(f"--quantization {requested}, but config.json says the checkpoint is {method}")
    bits = int(quant.get("bits", quant.get("w_bit", 4)))
    if bits != 4:
        raise ValueError(f"{method} checkpoint with {bits}-bit weights; seekd loads 4-bit AWQ and GPTQ")
    group_size = int(quant.get("group_size", quant.get("q_group_size", 128)))
    if method == "awq":
        version = str(quant.get("version", "gemm")).lower()
        if version != "gemm" or not quant.get("zero_point", True):
            raise ValueError(
                f"AWQ version {version!r} (zero_point {quant.get('zero_point')}); seekd loads GEMM, zero_point"
            )
        return Int4Scheme("awq", group_size, zero_offset=0)
    v2 = str(quant.get("checkpoint_format", "gptq")).lower() == "gptq_v2"
    return Int4Scheme("gptq", group_size, bool(quant.get("desc_act", False)), zero_offset=0 if v2 else 1)


def pair_int4(
    weights: Iterable[tuple[str, torch.Tensor]], scheme: Int4Scheme
) -> Iterator[tuple[str, torch.Tensor | QuantizedWeight]]:
    """Gather each layer's packed parts (in any order, across shards) into `X.weight`; other tensors
    pass through. g_idx counts only for act-order checkpoints (without it, it is k // group_size)."""
    needed = {"qweight", "qzeros", "scales"} | ({"g_idx"} if scheme.act_order else set())
    pending: dict[str, dict[str, torch.Tensor]] = {}
    for name, tensor in weights:
        prefix, _, part = name.rpartition(".")
        if part not in _PARTS:
            yield name, tensor
            continue
        if part == "g_idx" and not scheme.act_order:
            continue
        parts = pending.setdefault(prefix, {})
        parts[part] = tensor
        if needed <= parts.keys():
            yield f"{prefix}.weight", _int4(pending.pop(prefix), scheme, prefix)
    if pending:
        lonely = [f"{p} (has {', '.join(sorted(parts))})" for p, parts in sorted(pending.items())]
        raise ValueError(f"{scheme.method} checkpoint has layers with missing parts: {lonely[:5]}")


def _int4(parts: dict[str, torch.Tensor], scheme: Int4Scheme, prefix: str) -> QuantizedWeight:
    qweight = parts["qweight"]
    in_features = qweight.shape[0] * (PACK if scheme.method == "gptq" else 1)
    group_size = scheme.group_size if scheme.group_size > 0 else in_features
    try:
        if scheme.method == "awq":
            return from_awq(qweight, parts["qzeros"], parts["scales"], group_size)
        return from_gptq(qweight, parts["qzeros"], parts["scales"], parts.get("g_idx"), group_size, scheme.zero_offset)
    except ValueError as e:
        raise ValueError(f"{prefix}: {e}") from e
