"""Memory of a model on each GPU of a parallel layout, and what the rest of the GPU holds.

Weights are counted by the model planner (`models/memory_plan.py`: rank 0's shard built on the meta
device with the layers and QuantConfig a real load uses); the KV cache is the engine's own layout
(`engine/kv_cache_layout.py`) of the layers' cache specs, so MLA latents, V3.2's indexer keys and
V4's compressed and sliding caches are sized as the engine pages them. `seekd doctor` and `seekd
plan` both size from here, under one budget rule: weights and KV share `gpu_memory_utilization` of a
GPU, less ACTIVATION_SHARE of it reserved for activations and workspace (the engine measures the
real peak at start-up; a tenth covers a full-budget prefill step, logits and sampling).

A layout is TP x PP with optional expert parallelism: each pipeline stage holds a run of decoder
layers (`stage_layers`), its first the embedding and its last the final norm and LM head; with EP the
routed experts of each MoE layer are placed whole, num_experts / tp_size on each rank of the stage,
while attention, dense and shared MLPs stay tensor-parallel.
"""

from __future__ import annotations

import functools
import json
import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from seekd.engine.kv_cache_layout import KVCacheLayout, bytes_per_token_by_kind, page_bytes_per_token
from seekd.hub.gpus import GOOD_CONTEXT
from seekd.layers.embedding import ParallelLMHead, VocabParallelEmbedding
from seekd.layers.quantization import QuantConfig
from seekd.models.expert_placement import count_split
from seekd.models.hf_config import HFConfig
from seekd.models.loader import checkpoint_quant_config
from seekd.models.memory_plan import meta_model, shipped_quant_config

PRECISIONS = ("shipped", "fp8")  # the checkpoint's own (`--quantization auto`), or bf16 -> block FP8
BLOCK_SIZE = 16  # CacheConfig's default
CHUNK_TOKENS = 8192  # SchedulerConfig's max_num_batched_tokens default: a long prompt's prefill chunk
GPU_MEMORY_UTILIZATION = 0.9  # CacheConfig's default
ACTIVATION_SHARE = 0.1  # of the usable memory, kept for activations and workspace
MIN_CONTEXT = 8192
TP_SIZES = (1, 2, 4, 8)


@dataclass(frozen=True)
class Layout:
    tp: int
    pp: int = 1
    ep: bool = False  # routed experts placed whole on the ranks of a stage

    @property
    def gpus(self) -> int:
        return self.tp * self.pp


@dataclass(frozen=True)
class Stage:
    layers: range  # decoder layer indices
    weight_bytes: int  # on the stage's rank 0, the largest
    kv: KVCacheLayout  # the stage's layers' cache as the engine lays it out (no blocks bound)

    @property
    def kv_bytes_per_token(self) -> float:
        return page_bytes_per_token(self.kv)


@dataclass(frozen=True)
class Capacity:
    """What the KV cache of a layout holds on GPUs of one size: pages per rank of each stage."""

    stages: tuple[Stage, ...]
    kv_bytes: tuple[float, ...]  # per GPU of each stage, for the KV cache
    num_blocks: tuple[int, ...]  # pages of each stage's pool (block 0 is the null block)

    @property
    def max_tokens(self) -> int:
        """Longest sequence the cache holds alone, its prompt prefilled in CHUNK_TOKENS chunks."""
        return min(s.kv.max_tokens(max(n - 1, 0), CHUNK_TOKENS) for s, n in zip(self.stages, self.num_blocks))

    def sequences(self, context: int) -> int:
        """Sequences of `context` tokens held at once while decoding (sliding windows at one token a step)."""
        return min(max(n - 1, 0) // s.kv.blocks_for_tokens(context, 1) for s, n in zip(self.stages, self.num_blocks))


@dataclass(frozen=True)
class Footprint:
    stages: tuple[Stage, ...]
    max_position: int

    @property
    def weight_bytes(self) -> int:
        """On the GPU that holds the most."""
        return max(s.weight_bytes for s in self.stages)

    @property
    def kv_bytes_per_token(self) -> float:
        """On each GPU of the stage whose layers cache the most, whole pages counted."""
        return max(s.kv_bytes_per_token for s in self.stages)

    @property
    def heaviest(self) -> Stage:
        return max(self.stages, key=lambda s: s.weight_bytes)

    def capacity(self, gpu_bytes: int) -> Capacity:
        budgets = tuple(max(kv_budget(gpu_bytes, s.weight_bytes), 0.0) for s in self.stages)
        blocks = tuple(int(b // s.kv.page_bytes) for b, s in zip(budgets, self.stages))
        return Capacity(self.stages, budgets, blocks)


def usable_bytes(gpu_bytes: int) -> float:
    return gpu_bytes * GPU_MEMORY_UTILIZATION


def activation_bytes(gpu_bytes: int) -> float:
    return usable_bytes(gpu_bytes) * ACTIVATION_SHARE


def kv_budget(gpu_bytes: int, weight_bytes: int) -> float:
    """Bytes left for the KV cache on a GPU of `gpu_bytes` holding `weight_bytes` of weights."""
    return usable_bytes(gpu_bytes) - activation_bytes(gpu_bytes) - weight_bytes


def pow2_floor(n: float) -> int:
    return 2 ** int(math.log2(n)) if n >= 1 else 0


def stage_layers(num_layers: int, pp: int) -> list[range]:
    """Equal runs of layers; the remainder goes one each to the stages before the last, which also
    holds the final norm and LM head (vLLM's split)."""
    sizes = [num_layers // pp] * pp
    for i in range(num_layers % pp):
        sizes[-2 - i] += 1
    starts = [sum(sizes[:i]) for i in range(pp)]
    return [range(a, a + n) for a, n in zip(starts, sizes)]


def quant_config(hf_config: HFConfig, precision: str) -> QuantConfig:
    if precision == "fp8":
        return checkpoint_quant_config(hf_config, "w8a8", online=True)
    return shipped_quant_config(hf_config)


def _tensors(*modules: nn.Module) -> dict[int, torch.Tensor]:
    return {id(t): t for m in modules for t in (*m.parameters(), *m.buffers())}


def _nbytes(tensors: dict[int, torch.Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in tensors.values())


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    return next(m.layers for m in model.modules() if isinstance(getattr(m, "layers", None), nn.ModuleList))


def _stage_weight_bytes(model: nn.Module, stages: list[range], expert_delta: dict[int, int]) -> list[int]:
    """Bytes of each stage's tensors: its layers' (plus `expert_delta` of each layer, the change
    expert parallelism makes), the embedding on the first, everything else outside the layers on
    the last (an LM head tied to the embedding on both)."""
    layers = decoder_layers(model)
    embeddings = _tensors(*(m for m in model.modules() if type(m) is VocabParallelEmbedding))
    heads = _tensors(*(m for m in model.modules() if isinstance(m, ParallelLMHead)))
    in_layers = _tensors(layers)
    rest = {k: t for k, t in _tensors(model).items() if k not in in_layers and k not in embeddings}
    out = []
    for i, run in enumerate(stages):
        tensors = _tensors(*(layers[j] for j in run))
        if i == 0:
            tensors |= embeddings
        if i == len(stages) - 1:
            tensors |= rest | heads
        out.append(_nbytes(tensors) + sum(expert_delta.get(j, 0) for j in run))
    return out


@functools.cache
def _meta(config_json: str, precision: str, tp: int, dtype: str) -> nn.Module | None:
    hf_config = HFConfig(json.loads(config_json))
    try:
        return meta_model(hf_config, quant_config(hf_config, precision), tp, getattr(torch, dtype))
    except (ValueError, AssertionError):
        return None  # heads or experts do not divide by tp


def _expert_delta(config_json: str, precision: str, tp: int, dtype: str, model: nn.Module) -> dict[int, int] | None:
    """Per MoE layer, the bytes EP adds over TP on a rank: num_experts / tp whole experts instead of
    a 1/tp slice of each. None where the experts do not divide evenly over the ranks."""
    whole = _meta(config_json, precision, 1, dtype)
    assert whole is not None
    sliced = {m.layer: m for m in count_split(model).moe_layers}
    delta = {}
    for m in count_split(whole).moe_layers:
        if m.num_experts % tp:
            return None
        delta[m.layer] = m.num_experts // tp * m.expert_bytes - m.num_experts * sliced[m.layer].expert_bytes
    return delta


def has_routed_experts(config: dict[str, Any], precision: str = "shipped", dtype: str = "bfloat16") -> bool:
    model = _meta(json.dumps(config, sort_keys=True), precision, 1, dtype)
    return model is not None and bool(count_split(model).moe_layers)


@functools.cache
def _footprint(config_json: str, precision: str, layout: Layout, dtype: str) -> Footprint | None:
    model = _meta(config_json, precision, layout.tp, dtype)
    num_layers = len(decoder_layers(model)) if model is not None else 0
    if model is None or layout.pp > num_layers:
        return None
    delta: dict[int, int] | None = {}
    if layout.ep:
        delta = _expert_delta(config_json, precision, layout.tp, dtype, model)
        if delta is None:
            return None
    runs = stage_layers(num_layers, layout.pp)
    attention = model.attention_layers()
    torch_dtype = getattr(torch, dtype)
    stages = tuple(
        Stage(run, weights, KVCacheLayout([attention[j] for j in run], torch_dtype, BLOCK_SIZE))
        for run, weights in zip(runs, _stage_weight_bytes(model, runs, delta))
    )
    return Footprint(stages, HFConfig(json.loads(config_json)).context_length)


def footprint(config: dict[str, Any], precision: str, layout: Layout, dtype: str = "bfloat16") -> Footprint | None:
    """None where the model cannot be laid out so (heads or experts do not divide, fewer layers
    than stages)."""
    return _footprint(json.dumps(config, sort_keys=True), precision, layout, dtype)


def kv_by_kind(stage: Stage) -> dict[str, dict[str, Any]]:
    """The stage's cache per kind, summed over its layers (engine/kv_cache_layout.py's report)."""
    return bytes_per_token_by_kind(stage.kv)


@dataclass(frozen=True)
class Fit:
    precision: str
    layout: Layout
    footprint: Footprint
    capacity: Capacity

    @property
    def context(self) -> int:
        """The --max-model-len to serve with: the model's own, or the power of two the cache holds."""
        return min(self.footprint.max_position, pow2_floor(self.capacity.max_tokens))


def first_fit(
    config: dict[str, Any], options: list[tuple[str, Layout]], gpu_bytes: int, target: int = GOOD_CONTEXT
) -> Fit | None:
    """The first (precision, layout) of `options` whose KV cache holds `target` tokens (or the
    model's whole context if shorter); failing that, the one holding the longest context of at
    least MIN_CONTEXT; None if none does."""
    fallback: Fit | None = None
    for precision, layout in options:
        fp = footprint(config, precision, layout)
        if fp is None or kv_budget(gpu_bytes, fp.weight_bytes) <= 0:
            continue
        fit = Fit(precision, layout, fp, fp.capacity(gpu_bytes))
        if fit.context >= min(fp.max_position, target):
            return fit
        if fit.context >= MIN_CONTEXT and (fallback is None or fit.context > fallback.context):
            fallback = fit
    return fallback
