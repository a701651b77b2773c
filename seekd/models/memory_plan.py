"""How many bytes of weights one GPU holds for a model at a precision and tensor-parallel size.

Counted, not estimated: rank 0's shard of the model is built on the meta device with the same layer
classes and QuantConfig a real load uses, so the plan changes whenever a layer's format does. The
"does not fit" error and the README's table of full-size DeepSeeks come from here.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from seekd.distributed import rank_view
from seekd.layers.build_scope import building_with
from seekd.layers.expert_placement import ALL_ON_DEVICE, ExpertPlacement
from seekd.layers.quantization import DENSE, QuantConfig
from seekd.models.hf_config import HFConfig
from seekd.models.loader import checkpoint_quant_config, host_tensors
from seekd.models.registry import model_class

TP_SIZES = (1, 2, 4, 8)
WEIGHT_SHARE = 0.9  # of the usable GPU memory for weights; the rest for activations and KV cache


@dataclass(frozen=True)
class WeightPlan:
    precision: str  # "shipped" (the checkpoint's low-bit formats kept) or "bf16" (all dequantized)
    tp_size: int
    bytes_per_gpu: int

    @property
    def gib_per_gpu(self) -> float:
        return self.bytes_per_gpu / 2**30


def shipped_quant_config(hf_config: HFConfig) -> QuantConfig:
    """The formats `--quantization auto` keeps on a GPU for this checkpoint (W8A8 products)."""
    return checkpoint_quant_config(hf_config, "w8a8")


def meta_model(
    hf_config: HFConfig,
    quant: QuantConfig,
    tp_size: int,
    dtype: torch.dtype = torch.bfloat16,
    placement: ExpertPlacement = ALL_ON_DEVICE,
) -> nn.Module:
    """Rank 0's shard of the model at `tp_size`, on the meta device (no memory): what a real load
    builds, for counting its weights and its KV cache entries."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with rank_view(0, tp_size), building_with(quant, placement=placement), torch.device("meta"):
            return model_class(hf_config.architecture)(hf_config)
    finally:
        torch.set_default_dtype(previous)


def model_bytes(model: nn.Module) -> int:
    """Bytes of a model's parameters and buffers on its device, each tensor counted once; routed
    experts kept in host memory are not counted."""
    host = {id(t) for t in host_tensors(model)}
    tensors = {id(t): t for t in (*model.parameters(), *model.buffers()) if id(t) not in host}
    return sum(t.numel() * t.element_size() for t in tensors.values())


def weight_bytes_per_gpu(
    hf_config: HFConfig,
    quant: QuantConfig,
    tp_size: int,
    dtype: torch.dtype = torch.bfloat16,
    placement: ExpertPlacement = ALL_ON_DEVICE,
) -> int:
    """Bytes of parameters and buffers on rank 0 of `tp_size` (the largest rank: it holds every
    replicated layer and the first vocabulary shard), less the routed experts `placement` keeps in
    host memory."""
    return model_bytes(meta_model(hf_config, quant, tp_size, dtype, placement))


def weight_budget(gpu_bytes: int, usable_fraction: float) -> float:
    """Bytes of weights a GPU of `gpu_bytes` takes while leaving room for activations and a KV cache."""
    return gpu_bytes * usable_fraction * WEIGHT_SHARE


def plan(hf_config: HFConfig, tp_sizes: tuple[int, ...] = TP_SIZES) -> list[WeightPlan]:
    """Bytes per GPU at each TP size, in the checkpoint's precision and fully dequantized to bf16."""
    shipped = shipped_quant_config(hf_config)
    plans = []
    for tp in tp_sizes:
        plans.append(WeightPlan("shipped", tp, weight_bytes_per_gpu(hf_config, shipped, tp)))
        if shipped.low_bit:
            plans.append(WeightPlan("bf16", tp, weight_bytes_per_gpu(hf_config, DENSE, tp)))
    return plans


def fitting_advice(hf_config: HFConfig, gpu_bytes: int, usable_fraction: float) -> str:
    """Which precision and tensor-parallel sizes leave room for a KV cache on GPUs of `gpu_bytes`
    (weights within `usable_fraction` of each GPU, less a tenth for activations and cache)."""
    budget = weight_budget(gpu_bytes, usable_fraction)
    fits = [p for p in plan(hf_config) if p.bytes_per_gpu <= budget]
    if not fits:
        largest = max(TP_SIZES)
        need = min(p.bytes_per_gpu for p in plan(hf_config, (largest,)))
        return (
            f"even at tensor-parallel size {largest} in its shipped precision it needs {need / 2**30:.0f} GiB "
            f"of weights per GPU; it needs more GPUs (pipeline parallel across nodes) or bigger ones"
        )
    best = min(fits, key=lambda p: (p.tp_size, p.precision != "shipped"))
    return (
        f"it fits with --tensor-parallel-size {best.tp_size} in {best.precision} precision "
        f"({best.gib_per_gpu:.1f} GiB of weights per GPU)"
    )
