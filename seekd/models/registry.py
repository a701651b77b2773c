"""Architecture name (config.json `architectures[0]`) -> model class."""

from __future__ import annotations

import importlib

from torch import nn

from seekd.layers.build_scope import ALL_KERNELS, REFERENCE, KernelChoice

_MODELS: dict[str, tuple[str, str]] = {
    "Qwen2ForCausalLM": ("seekd.models.qwen2", "Qwen2ForCausalLM"),
    "LlamaForCausalLM": ("seekd.models.llama", "LlamaForCausalLM"),
    "DeepseekV2ForCausalLM": ("seekd.models.deepseek_v2", "DeepseekV2ForCausalLM"),
    "DeepseekV3ForCausalLM": ("seekd.models.deepseek_v2", "DeepseekV3ForCausalLM"),
    "DeepseekV32ForCausalLM": ("seekd.models.deepseek_v32", "DeepseekV32ForCausalLM"),
    "DeepseekV4ForCausalLM": ("seekd.models.deepseek_v4", "DeepseekV4ForCausalLM"),
    "DeepseekVLForConditionalGeneration": ("seekd.models.deepseek_vl", "DeepseekVLForConditionalGeneration"),
    "DeepseekOcr2ForConditionalGeneration": ("seekd.models.deepseek_ocr2", "DeepseekOcr2ForConditionalGeneration"),
    "DeepseekVLHybridForConditionalGeneration": (
        "seekd.models.deepseek_vl",
        "DeepseekVLHybridForConditionalGeneration",
    ),
}


# Architectures whose attention layers run on the selected attention backend. V4's attention has its
# own decode kernels (the triton backend turns them on); the rest of that model stays on the torch
# reference for now.
_ON_ATTENTION_BACKEND = frozenset(_MODELS) - {"DeepseekV4ForCausalLM"}
_V4_KERNELS = KernelChoice(compressed_decode=True)


def kernel_choice(architecture: str, attention_backend: str, fused_kernels: str = "auto") -> KernelChoice:
    """The one decision of which layers of a model run fused Triton kernels, made before it is built.
    `auto`: all of them on the triton attention backend (the GPU fast path), none on the torch one
    (the reference); `none`: none; `moe`: only the MoE routing and experts (to isolate a kernel)."""
    if fused_kernels == "none":
        return REFERENCE
    if fused_kernels == "moe":
        return KernelChoice(moe=True)
    if attention_backend != "triton":
        return REFERENCE
    if architecture in _ON_ATTENTION_BACKEND:
        return ALL_KERNELS
    return _V4_KERNELS if architecture == "DeepseekV4ForCausalLM" else REFERENCE


def supported_architectures() -> list[str]:
    return sorted(_MODELS)


def model_class(architecture: str) -> type[nn.Module]:
    if architecture not in _MODELS:
        raise ValueError(
            f"architecture {architecture} is not supported; seekd runs: {', '.join(supported_architectures())}"
        )
    module, name = _MODELS[architecture]
    return getattr(importlib.import_module(module), name)
