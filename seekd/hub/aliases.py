"""Short names for the DeepSeek family (`seekd pull r1-distill-7b`, `seekd serve --model v4-flash`),
each with its repository, size and the precision its checkpoint ships in. The config shapes are the
published ones (`models/published_configs.py`); `seekd doctor` sizes each variant from them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from seekd.models.published_configs import DISTILL, V3, V3_2, V4_FLASH, V4_PRO


@dataclass(frozen=True)
class Variant:
    alias: str
    repo_id: str  # the same id on Hugging Face and ModelScope
    params: str  # parameter count as the model card gives it
    precision: str  # of the published checkpoint
    config: dict[str, Any]

    @property
    def full_size(self) -> bool:
        """Full-size models ship low-bit weights and run on GPUs only; distills are bf16."""
        return self.precision != "bf16"


FP8 = "FP8 (128x128 blocks)"
FP4 = "FP4 experts, FP8 elsewhere"

VARIANTS = (
    Variant(
        "r1-distill-1.5b",
        "deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B",
        "1.8B",
        "bf16",
        DISTILL["DeepSeek-R1-Distill-Qwen-1.5B"],
    ),
    Variant(
        "r1-distill-7b",
        "deepseek-ai/DeepSeek-R1-Distill-Qwen-7B",
        "7.6B",
        "bf16",
        DISTILL["DeepSeek-R1-Distill-Qwen-7B"],
    ),
    Variant(
        "r1-distill-8b",
        "deepseek-ai/DeepSeek-R1-Distill-Llama-8B",
        "8.0B",
        "bf16",
        DISTILL["DeepSeek-R1-Distill-Llama-8B"],
    ),
    Variant(
        "r1-distill-14b",
        "deepseek-ai/DeepSeek-R1-Distill-Qwen-14B",
        "14.8B",
        "bf16",
        DISTILL["DeepSeek-R1-Distill-Qwen-14B"],
    ),
    Variant(
        "r1-distill-32b",
        "deepseek-ai/DeepSeek-R1-Distill-Qwen-32B",
        "32.8B",
        "bf16",
        DISTILL["DeepSeek-R1-Distill-Qwen-32B"],
    ),
    Variant(
        "r1-distill-70b",
        "deepseek-ai/DeepSeek-R1-Distill-Llama-70B",
        "70.6B",
        "bf16",
        DISTILL["DeepSeek-R1-Distill-Llama-70B"],
    ),
    Variant("r1", "deepseek-ai/DeepSeek-R1-0528", "671B", FP8, V3),
    Variant("v3.1", "deepseek-ai/DeepSeek-V3.1", "671B", FP8, V3),
    Variant("v3.2", "deepseek-ai/DeepSeek-V3.2", "671B", FP8, V3_2),
    Variant("v4-flash", "deepseek-ai/DeepSeek-V4-Flash", "284B", FP4, V4_FLASH),
    Variant("v4-pro", "deepseek-ai/DeepSeek-V4-Pro", "1.6T", FP4, V4_PRO),
)
BY_ALIAS = {v.alias: v for v in VARIANTS}


def resolve_alias(name: str) -> str:
    """An alias's repository id (with any @revision kept); anything else unchanged."""
    alias, at, revision = name.partition("@")
    variant = BY_ALIAS.get(alias.lower())
    return variant.repo_id + at + revision if variant else name
