"""PEFT LoRA adapters (adapter_config.json + adapter_model.safetensors) read onto a model's layers.

A PEFT checkpoint names each adapted projection by its Hugging Face module path
(`base_model.model.model.layers.3.self_attn.q_proj.lora_A.weight`). The model's
`packed_modules_mapping` says where q/k/v and gate/up live in seekd's fused layers, so an adapter
maps to (seekd layer name, part index) -> (A [r, in], B [out, r] scaled by alpha / r) without any
per-model code.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn

from seekd.layers.linear import LinearBase, MergedColumnParallelLinear, QKVParallelLinear

_PREFIX = "base_model.model."
_KEY = re.compile(r"(?P<module>.+)\.lora_(?P<which>[AB])(?:\.[^.]+)?\.weight")
QKV_PARTS = ("q", "k", "v")
# architectures whose projections adapters may target (MLA included); others are refused
LORA_ARCHITECTURES = frozenset(
    {"LlamaForCausalLM", "Qwen2ForCausalLM", "DeepseekV2ForCausalLM", "DeepseekV3ForCausalLM"}
)

LayerParts = dict[int, tuple[torch.Tensor, torch.Tensor]]  # part index -> (A [r, in], B [out_part, r] scaled)


@dataclass
class LoRAAdapter:
    name: str
    path: Path
    rank: int  # the largest rank of any of its modules
    layers: dict[str, LayerParts]  # seekd layer name -> its parts' weights, on the host
    key: str = ""  # unique per load (name#count): a reloaded adapter never meets its old prefix cache


def output_parts(layer: LinearBase) -> list[int]:
    """Output rows of each part of a (fused) linear layer, this rank's share."""
    if isinstance(layer, QKVParallelLinear):
        kv = layer.num_kv_heads * layer.head_dim
        return [layer.num_heads * layer.head_dim, kv, kv]
    if isinstance(layer, MergedColumnParallelLinear):
        return [s // layer.tp_size for s in layer.output_sizes]
    return [layer.out_features]


def _pattern_value(patterns: dict, module: str, default: float) -> float:
    """PEFT's rank_pattern / alpha_pattern: a key matches a module path ending in it (as a regex)."""
    for key, value in patterns.items():
        if re.fullmatch(rf"(.*\.)?{key}", module):
            return value
    return default


def _read_config(folder: Path) -> dict:
    config_file = folder / "adapter_config.json"
    if not config_file.is_file():
        raise ValueError(f"adapter folder {folder} has no adapter_config.json (a PEFT LoRA adapter is expected)")
    config = json.loads(config_file.read_text())
    if config.get("peft_type", "LORA") != "LORA":
        raise ValueError(f"adapter {folder} is a {config['peft_type']} adapter; seekd serves LoRA adapters")
    unsupported = [
        ("bias", config.get("bias", "none") not in ("none", None)),
        ("modules_to_save", bool(config.get("modules_to_save"))),
        ("use_dora", bool(config.get("use_dora"))),
    ]
    for option, used in unsupported:
        if used:
            raise ValueError(f"adapter {folder} sets {option}; seekd serves plain LoRA adapters (train without it)")
    return config


def _read_weights(folder: Path) -> dict[str, dict[str, torch.Tensor]]:
    """HF module path -> {"A": tensor, "B": tensor}."""
    weights_file = folder / "adapter_model.safetensors"
    if not weights_file.is_file():
        raise ValueError(f"adapter folder {folder} has no adapter_model.safetensors")
    modules: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in load_file(weights_file).items():
        match = _KEY.fullmatch(key.removeprefix(_PREFIX))
        if match is None:
            raise ValueError(f"adapter {folder}: tensor {key!r} is not a LoRA A/B weight")
        modules.setdefault(match["module"], {})[match["which"]] = tensor
    return modules


def _seekd_target(model: nn.Module, module: str) -> tuple[str, int]:
    """(seekd layer name, part index) of a Hugging Face module path."""
    parent, _, leaf = module.rpartition(".")
    if ".experts." in f".{module}." and ".shared_experts." not in f".{module}.":
        raise ValueError(f"{module}: LoRA on routed experts is not served yet; train adapters without them")
    mapping = getattr(model, "packed_modules_mapping", {})
    if leaf in mapping:
        fused, shard = mapping[leaf]
        return f"{parent}.{fused}", QKV_PARTS.index(shard) if isinstance(shard, str) else shard
    return module, 0


def load_peft_adapter(name: str, folder: Path, model: nn.Module, max_rank: int) -> LoRAAdapter:
    """Read and check an adapter against the model: every target must be a LoRA layer of the model
    with matching shapes, every rank at most `max_rank` (--max-lora-rank)."""
    folder = Path(folder).expanduser()
    config = _read_config(folder)
    rank_default, alpha_default = config["r"], config.get("lora_alpha", config["r"])
    rslora = bool(config.get("use_rslora", False))
    layers_by_name = {n: m for n, m in model.named_modules() if isinstance(m, LinearBase) and m.lora is not None}
    layers: dict[str, LayerParts] = {}
    top_rank = 0
    for module, ab in _read_weights(folder).items():
        if set(ab) != {"A", "B"}:
            raise ValueError(f"adapter {folder}: {module} lacks its lora_{'B' if 'A' in ab else 'A'} weight")
        target, part = _seekd_target(model, module)
        layer = layers_by_name.get(target)
        if layer is None:
            raise ValueError(f"adapter {folder} targets {module}, which is not a projection seekd adapts")
        a, b = ab["A"], ab["B"]
        r = _pattern_value(config.get("rank_pattern") or {}, module, rank_default)
        alpha = _pattern_value(config.get("alpha_pattern") or {}, module, alpha_default)
        if a.shape[0] != r:
            raise ValueError(f"adapter {folder}: {module} has rank {a.shape[0]}, its config says {r}")
        if r > max_rank:
            raise ValueError(f"adapter {folder} has rank {r}; the server allows up to --max-lora-rank {max_rank}")
        expected = (output_parts(layer)[part], layer.in_features)
        if (b.shape[0], a.shape[1]) != expected or b.shape[1] != r:
            raise ValueError(
                f"adapter {folder}: {module} maps {a.shape[1]} -> {b.shape[0]} features; the model's is "
                f"{expected[1]} -> {expected[0]} (an adapter of another base model?)"
            )
        scaling = alpha / (math.sqrt(r) if rslora else r)
        layers.setdefault(target, {})[part] = (a.float(), b.float() * scaling)
        top_rank = max(top_rank, r)
    if not layers:
        raise ValueError(f"adapter {folder} has no LoRA weights")
    return LoRAAdapter(name, folder, top_rank, layers)
