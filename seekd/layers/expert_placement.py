"""Which routed experts of each MoE layer live in host memory and run on the CPU.

Decided once before a model is built (`models.expert_placement` plans it from `--cpu-experts`, a
placement file or a routing profile) and handed to the layers through `layers.build_scope`: a
RoutedExperts reads its layer's host experts in its constructor and allocates them in host memory
from the start, so a checkpoint larger than the GPU is never materialized on it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

# How host experts are stored: "checkpoint" keeps the codes as the checkpoint ships them (dequantized
# per expert per step: exact, slow); "int8" requantizes each output row to int8 while loading and runs
# torch's weight-only int8 CPU matmul (fast; benchmarks/results/cpu_expert_kernels.json).
HOST_FORMATS = ("checkpoint", "int8")


@dataclass(frozen=True)
class ExpertPlacement:
    """host_experts: MoE layer index (the decoder layer's) -> ids of its routed experts kept on the host."""

    host_experts: Mapping[int, frozenset[int]] = field(default_factory=dict)
    host_format: str = "checkpoint"

    def __post_init__(self) -> None:
        if self.host_format not in HOST_FORMATS:
            raise ValueError(f"host expert format must be one of {', '.join(HOST_FORMATS)}, not {self.host_format!r}")

    def on_host(self, layer: int | None) -> frozenset[int]:
        """The host experts of decoder layer `layer` (none for a layer built without an index)."""
        return frozenset() if layer is None else self.host_experts.get(layer, frozenset())

    @property
    def num_host_experts(self) -> int:
        return sum(len(ids) for ids in self.host_experts.values())


ALL_ON_DEVICE = ExpertPlacement()
