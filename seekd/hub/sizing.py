"""Memory of one variant at one precision and tensor-parallel size, per GPU: weights counted by the
model planner (`models/memory_plan.py`, rank 0's shard built on the meta device) and the KV cache
bytes each token of context adds, from the same layers' cache specs and the engine's page layout."""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

from seekd.engine.kv_cache_layout import KVCacheLayout, page_bytes_per_token
from seekd.hub.aliases import BY_ALIAS
from seekd.layers.quantization import QuantConfig
from seekd.models.hf_config import HFConfig
from seekd.models.loader import checkpoint_quant_config
from seekd.models.memory_plan import meta_model, model_bytes, shipped_quant_config

PRECISIONS = ("shipped", "fp8")  # the checkpoint's own (`--quantization auto`), or bf16 -> block FP8
BLOCK_SIZE = 16  # CacheConfig's default


@dataclass(frozen=True)
class Footprint:
    weight_bytes: int  # on the largest rank
    kv_bytes_per_token: float  # on each rank, whole pages counted
    max_position: int


def quant_config(hf_config: HFConfig, precision: str) -> QuantConfig:
    if precision == "fp8":
        return checkpoint_quant_config(hf_config, "w8a8", online=True)
    return shipped_quant_config(hf_config)


@functools.cache
def footprint(alias: str, precision: str, tp_size: int, dtype: str = "bfloat16") -> Footprint | None:
    """None where the model cannot be split `tp_size` ways (heads or experts do not divide)."""
    hf_config = HFConfig(BY_ALIAS[alias].config)
    torch_dtype = getattr(torch, dtype)
    try:
        model = meta_model(hf_config, quant_config(hf_config, precision), tp_size, torch_dtype)
    except (ValueError, AssertionError):
        return None
    layout = KVCacheLayout(model.attention_layers(), torch_dtype, BLOCK_SIZE)
    return Footprint(model_bytes(model), page_bytes_per_token(layout), hf_config.max_position_embeddings)
