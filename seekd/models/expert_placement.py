"""Which routed experts of a model live in host memory (`--cpu-experts`, `--expert-placement`,
`--routing-profile`), decided before the model is built.

- `N`: the N experts of every MoE layer that a routing profile shows least used (without a profile,
  the N highest ids) go to the host.
- `auto`: the GPU gets everything but the routed experts, then routed experts until the weight budget
  of the memory plan is spent, the most-used first (by the profile's share of each layer's routing,
  else the lowest ids, spread evenly over the layers); the rest go to the host.
- a placement file names the host experts of each layer outright: {"layers": {"3": [0, 5, 17]}}.

A routing profile counts how often each expert of each MoE layer was chosen:
{"layers": {"3": [count of expert 0, count of expert 1, ...]}}.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from seekd.layers.expert_placement import ALL_ON_DEVICE, ExpertPlacement
from seekd.layers.moe import RoutedExperts
from seekd.layers.quantization import QuantConfig
from seekd.models.hf_config import HFConfig
from seekd.models.memory_plan import meta_model

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class MoELayerSize:
    layer: int  # the decoder layer's index
    num_experts: int
    expert_bytes: int  # one routed expert's weights on the GPU, codes and scales


@dataclass(frozen=True)
class ModelSplit:
    """A model's weight bytes on one GPU, routed experts apart from the rest."""

    moe_layers: tuple[MoELayerSize, ...]
    other_bytes: int  # attention, dense and shared MLPs, routers, embeddings, norms

    @property
    def expert_bytes(self) -> int:
        return sum(m.num_experts * m.expert_bytes for m in self.moe_layers)


def model_split(hf_config: HFConfig, quant: QuantConfig, tp_size: int, dtype: torch.dtype) -> ModelSplit:
    """Counted on a meta build of rank 0's shard, like the memory plan."""
    return count_split(meta_model(hf_config, quant, tp_size, dtype))


def count_split(model: nn.Module) -> ModelSplit:
    """The split of a built model (rank 0's shard on the meta device, for plans)."""
    layers, expert_ids = [], set()
    for module in model.modules():
        if isinstance(module, RoutedExperts) and module.layer is not None:
            stack = list(module.parameters())
            expert_ids.update(id(t) for t in stack)
            per_expert = sum(t.numel() * t.element_size() for t in stack) // module.w13_weight.shape[0]
            layers.append(MoELayerSize(module.layer, module.w13_weight.shape[0], per_expert))
    tensors = {id(t): t for t in (*model.parameters(), *model.buffers()) if id(t) not in expert_ids}
    other = sum(t.numel() * t.element_size() for t in tensors.values())
    return ModelSplit(tuple(sorted(layers, key=lambda m: m.layer)), other)


def experts_by_use(split: ModelSplit, profile: dict[int, list[float]] | None) -> list[tuple[int, int]]:
    """Every (layer, expert), most used first: by the expert's share of its layer's routing in the
    profile, ties (and no profile) by expert id then layer, which spreads a budget evenly over layers."""
    pairs = [(m.layer, e) for m in split.moe_layers for e in range(m.num_experts)]
    if profile is None:
        return sorted(pairs, key=lambda p: (p[1], p[0]))
    totals = {layer: sum(counts) or 1.0 for layer, counts in profile.items()}

    def share(pair: tuple[int, int]) -> float:
        counts = profile.get(pair[0])
        return counts[pair[1]] / totals[pair[0]] if counts else 0.0

    return sorted(pairs, key=lambda p: (-share(p), p[1], p[0]))


def host_experts_per_layer(
    split: ModelSplit, count: int, profile: dict[int, list[float]] | None
) -> dict[int, frozenset[int]]:
    """The `count` least-used experts of every MoE layer."""
    by_use = experts_by_use(split, profile)
    out = {}
    for m in split.moe_layers:
        if count > m.num_experts:
            raise ValueError(f"--cpu-experts {count}: layer {m.layer} has only {m.num_experts} routed experts")
        ranked = [e for layer, e in by_use if layer == m.layer]
        out[m.layer] = frozenset(ranked[m.num_experts - count :])
    return out


def host_experts_within_budget(
    split: ModelSplit, budget: float, profile: dict[int, list[float]] | None
) -> dict[int, frozenset[int]]:
    """Fill `budget` bytes of GPU with the rest of the model, then with the most-used experts."""
    room = budget - split.other_bytes
    if room < 0:
        raise ValueError(
            f"even with every routed expert in host memory the model needs {split.other_bytes / 2**30:.1f} GiB of "
            f"weights on the GPU, and its weight budget is {budget / 2**30:.1f} GiB; use more GPUs"
        )
    sizes = {m.layer: m.expert_bytes for m in split.moe_layers}
    host: dict[int, set[int]] = {m.layer: set() for m in split.moe_layers}
    for layer, expert in experts_by_use(split, profile):
        if sizes[layer] <= room:
            room -= sizes[layer]
        else:
            host[layer].add(expert)
    return {layer: frozenset(ids) for layer, ids in host.items()}


def read_layer_lists(path: str | Path, what: str, split: ModelSplit) -> dict[int, list]:
    """{"layers": {"<decoder layer>": [...]}} from a JSON file, every layer an MoE layer of the model."""
    data = json.loads(Path(path).expanduser().read_text())
    layers = data.get("layers") if isinstance(data, dict) else None
    if not isinstance(layers, dict):
        raise ValueError(f'{what} {path} must hold {{"layers": {{"<layer index>": [...]}}}}')
    known = {m.layer: m.num_experts for m in split.moe_layers}
    out = {}
    for key, values in layers.items():
        if not str(key).isdigit() or int(key) not in known or not isinstance(values, list):
            raise ValueError(f"{what} {path}: {key!r} is not an MoE layer of this model (those are {sorted(known)})")
        out[int(key)] = values
    return out


def read_routing_profile(path: str | Path, split: ModelSplit) -> dict[int, list[float]]:
    sizes = {m.layer: m.num_experts for m in split.moe_layers}
    profile = read_layer_lists(path, "routing profile", split)
    for layer, counts in profile.items():
        if len(counts) != sizes[layer] or any(not isinstance(c, (int, float)) or c < 0 for c in counts):
            raise ValueError(f"routing profile {path}: layer {layer} needs {sizes[layer]} non-negative counts")
    return {layer: [float(c) for c in counts] for layer, counts in profile.items()}


def read_placement_file(path: str | Path, split: ModelSplit) -> dict[int, frozenset[int]]:
    sizes = {m.layer: m.num_experts for m in split.moe_layers}
    placement = read_layer_lists(path, "expert placement", split)
    for layer, ids in placement.items():
        if any(not isinstance(e, int) or not 0 <= e < sizes[layer] for e in ids):
            raise ValueError(f"expert placement {path}: layer {layer} has experts 0..{sizes[layer] - 1}, got {ids}")
    return {layer: frozenset(ids) for layer, ids in placement.items()}


def host_format_for(requested: str, quant: QuantConfig) -> str:
    """auto: int8 rows for low-bit checkpoints (the CPU has no fast kernel for FP8 or FP4 codes), the
    checkpoint's own values otherwise (exact)."""
    if requested != "auto":
        return requested
    return "int8" if quant.experts != "dense" else "checkpoint"


def plan_expert_placement(
    split: ModelSplit,
    *,
    cpu_experts: str,
    host_format: str,
    placement_file: str | None = None,
    routing_profile: str | None = None,
    gpu_weight_budget: float | None = None,
) -> ExpertPlacement:
    """`gpu_weight_budget` (bytes) is needed by `auto` only; None means there is no GPU to fill."""
    if placement_file:
        host = read_placement_file(placement_file, split)
    elif cpu_experts == "0" or not split.moe_layers:
        return ALL_ON_DEVICE
    else:
        profile = read_routing_profile(routing_profile, split) if routing_profile else None
        if cpu_experts != "auto":
            host = host_experts_per_layer(split, int(cpu_experts), profile)
        elif gpu_weight_budget is None:
            logger.info("--cpu-experts auto: no GPU to fill, every routed expert stays with the model")
            return ALL_ON_DEVICE
        else:
            host = host_experts_within_budget(split, gpu_weight_budget, profile)
    placement = ExpertPlacement({layer: ids for layer, ids in host.items() if ids}, host_format)
    total = sum(m.num_experts for m in split.moe_layers)
    host_bytes = sum(len(host.get(m.layer, ())) * m.expert_bytes for m in split.moe_layers)
    logger.info(
        "routed experts in host memory: %d of %d (%.1f GiB in the checkpoint's format; host format %s)",
        placement.num_host_experts,
        total,
        host_bytes / 2**30,
        host_format,
    )
    return placement
