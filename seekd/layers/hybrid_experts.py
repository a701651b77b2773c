"""How one step's (token, expert) pairs split between the device and the host in a hybrid MoE layer.

Each routed expert of a layer has one home: the device stack or the host stack, at a local index
there (`ExpertHomes`). A step's pairs become two [T, k] id tensors in local indexes, -1 where the pair
belongs to the other side; each side sums its own experts' weighted outputs in ascending expert
order (the reference loop's order), and the layer adds the two sums.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class ExpertHomes:
    """on_host [E] bool and local [E] int64 (the index in its side's stack), on the CPU: the split runs
    on the host, where the host experts' work starts."""

    on_host: torch.Tensor
    local: torch.Tensor

    @classmethod
    def of(cls, num_experts: int, host_ids: Collection[int]) -> ExpertHomes:
        on_host = torch.zeros(num_experts, dtype=torch.bool, device="cpu")
        if host_ids:
            on_host[torch.tensor(sorted(host_ids), device="cpu")] = True
        local = torch.empty(num_experts, dtype=torch.int64, device="cpu")
        for mask in (on_host, ~on_host):
            local[mask] = torch.arange(int(mask.sum()), device="cpu")
        return cls(on_host, local)

    def device_ids(self) -> list[int]:
        return (~self.on_host).nonzero().flatten().tolist()

    def host_ids(self) -> list[int]:
        return self.on_host.nonzero().flatten().tolist()

    def home(self, expert: int) -> tuple[bool, int]:
        """(on the host, local index) of one expert."""
        return bool(self.on_host[expert]), int(self.local[expert])

    def split(self, topk_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """topk_ids [T, k] (on the CPU) -> (device local ids, host local ids), each -1 where the pair is
        the other side's."""
        on_host, local = self.on_host[topk_ids], self.local[topk_ids]
        return local.masked_fill(on_host, -1), local.masked_fill(~on_host, -1)
