"""What the layers of one model are built with, decided once before it is built: the weight formats
(`QuantConfig`), which layers run fused Triton kernels instead of their torch reference
(`KernelChoice`) and which routed experts live in host memory (`ExpertPlacement`). The model loader
opens the scope around the model's constructor; each layer reads it in its own constructor and keeps
the choice, so a module's `forward` runs the path it was built for and nothing flips it afterwards."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

from seekd.layers.expert_placement import ALL_ON_DEVICE, ExpertPlacement
from seekd.layers.quantization import DENSE, QuantConfig


@dataclass(frozen=True)
class KernelChoice:
    """Layers that run their fused Triton kernel; each kernel is tested against the torch reference
    that runs otherwise. `models.registry.kernel_choice` makes the choice for a model."""

    norms: bool = False  # RMSNorm, with its residual add
    activations: bool = False  # SiluAndMul
    rotary: bool = False  # RotaryEmbedding, and Attention's fused rotary + cache write
    moe: bool = False  # TopKRouter's one-launch routing and RoutedExperts' fused MoE
    mla_decode: bool = False  # MLAAttention's latent-space pure-decode kernels
    compressed_decode: bool = False  # CompressedAttention's window + compressed-entry decode kernels


REFERENCE = KernelChoice()
ALL_KERNELS = KernelChoice(norms=True, activations=True, rotary=True, moe=True, mla_decode=True, compressed_decode=True)

_building: list[tuple[QuantConfig, KernelChoice, ExpertPlacement]] = [(DENSE, REFERENCE, ALL_ON_DEVICE)]


@contextlib.contextmanager
def building_with(
    quant: QuantConfig = DENSE, kernels: KernelChoice = REFERENCE, placement: ExpertPlacement = ALL_ON_DEVICE
) -> Iterator[None]:
    """Layers constructed inside take their weight format from `quant`, their fast paths from
    `kernels` and the home of their routed experts from `placement` (the model loader's one choice
    of each)."""
    _building.append((quant, kernels, placement))
    try:
        yield
    finally:
        _building.pop()


def build_config() -> QuantConfig:
    """The QuantConfig of the model being built (dense outside `building_with`)."""
    return _building[-1][0]


def build_kernels() -> KernelChoice:
    """The KernelChoice of the model being built (the torch reference outside `building_with`)."""
    return _building[-1][1]


def build_placement() -> ExpertPlacement:
    """The ExpertPlacement of the model being built (every expert on the device outside `building_with`)."""
    return _building[-1][2]
