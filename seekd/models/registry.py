"""Architecture name (config.json `architectures[0]`) -> model class."""

from __future__ import annotations

import importlib

from torch import nn

_MODELS: dict[str, tuple[str, str]] = {
    "Qwen2ForCausalLM": ("seekd.models.qwen2", "Qwen2ForCausalLM"),
    "LlamaForCausalLM": ("seekd.models.llama", "LlamaForCausalLM"),
    "DeepseekV2ForCausalLM": ("seekd.models.deepseek_v2", "DeepseekV2ForCausalLM"),
    "DeepseekV3ForCausalLM": ("seekd.models.deepseek_v2", "DeepseekV3ForCausalLM"),
    "DeepseekV32ForCausalLM": ("seekd.models.deepseek_v32", "DeepseekV32ForCausalLM"),
    "DeepseekV4ForCausalLM": ("seekd.models.deepseek_v4", "DeepseekV4ForCausalLM"),
}


def supported_architectures() -> list[str]:
    return sorted(_MODELS)


def model_class(architecture: str) -> type[nn.Module]:
    if architecture not in _MODELS:
        raise ValueError(
            f"architecture {architecture} is not supported; seekd runs: {', '.join(supported_architectures())}"
        )
    module, name = _MODELS[architecture]
    return getattr(importlib.import_module(module), name)
