"""Random PEFT LoRA adapters for a saved model folder, and the same adapter merged into the weights."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

DENSE_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
MLA_TARGETS = (
    "q_proj",
    "q_a_proj",
    "q_b_proj",
    "kv_a_proj_with_mqa",
    "kv_b_proj",
    "o_proj",
    "gate_proj",
    "up_proj",
    "down_proj",
)


def _base_weights(base: Path) -> dict[str, torch.Tensor]:
    weights: dict[str, torch.Tensor] = {}
    for file in sorted(base.glob("*.safetensors")):
        weights.update(load_file(file))
    return weights


def _targets(weights: dict[str, torch.Tensor], targets: tuple[str, ...]) -> list[str]:
    """Module paths of the adapted projections: decoder-layer linears named in `targets`, routed
    experts excepted (seekd refuses those)."""
    modules = []
    for key in weights:
        module, _, leaf = key.rpartition(".")
        if leaf != "weight" or ".layers." not in key or module.rpartition(".")[2] not in targets:
            continue
        if ".experts." in module and ".shared_experts." not in module:
            continue
        modules.append(module)
    return sorted(modules)


def write_random_adapter(
    base: Path,
    out: Path,
    seed: int,
    rank: int = 4,
    alpha: int = 8,
    targets: tuple[str, ...] = DENSE_TARGETS,
    scale: float = 1.0,
) -> Path:
    """A PEFT-format adapter (adapter_config.json + adapter_model.safetensors) with random A and B
    (PEFT starts B at zero; random B makes every adapter change the outputs)."""
    weights = _base_weights(base)
    generator = torch.Generator().manual_seed(seed)
    tensors = {}
    modules = _targets(weights, targets)
    for module in modules:
        out_features, in_features = weights[f"{module}.weight"].shape
        a = torch.randn(rank, in_features, generator=generator) / in_features**0.5
        b = torch.randn(out_features, rank, generator=generator) * (scale / rank**0.5)
        tensors[f"base_model.model.{module}.lora_A.weight"] = a.contiguous()
        tensors[f"base_model.model.{module}.lora_B.weight"] = b.contiguous()
    out.mkdir(parents=True, exist_ok=True)
    save_file(tensors, out / "adapter_model.safetensors")
    leaves = sorted({m.rpartition(".")[2] for m in modules})
    config = {"peft_type": "LORA", "r": rank, "lora_alpha": alpha, "target_modules": leaves, "bias": "none"}
    (out / "adapter_config.json").write_text(json.dumps(config))
    return out


def write_merged_model(base: Path, adapter: Path, out: Path) -> Path:
    """A copy of the model folder with W + (alpha / r) B A in every adapted weight (float32)."""
    shutil.copytree(base, out)
    config = json.loads((adapter / "adapter_config.json").read_text())
    scaling = config["lora_alpha"] / config["r"]
    lora = load_file(adapter / "adapter_model.safetensors")
    for file in sorted(out.glob("*.safetensors")):
        weights = load_file(file)
        for key in list(weights):
            module = key.removesuffix(".weight")
            a = lora.get(f"base_model.model.{module}.lora_A.weight")
            if a is not None:
                b = lora[f"base_model.model.{module}.lora_B.weight"]
                weights[key] = (weights[key].float() + scaling * (b.float() @ a.float())).to(weights[key].dtype)
        save_file(weights, file, metadata={"format": "pt"})
    return out
