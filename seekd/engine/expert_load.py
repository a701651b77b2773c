"""Per-expert load of expert-parallel MoE layers: how many (token, expert) pairs each routed expert
received, per layer, since the engine started.

Each expert-parallel layer counts its pairs on the device (`RoutedExperts.expert_load`, by global
expert id; every rank of a stage counts the same, the router being replicated). Rank 0 reads its own
layers directly; with pipeline stages the other stages' layers live in other processes, so every rank
joins an elementwise max over the world every few steps (the runner flags those steps to all ranks):
a stage's rows are zero elsewhere, and the counts only grow.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from seekd.distributed import all_reduce_max_world, ep_size

SYNC_EVERY_STEPS = 16  # with pipeline stages: how often every rank joins the sync (a world all-reduce of [L, E])


class ExpertLoadTable:
    def __init__(self, model: nn.Module, device: torch.device) -> None:
        self.layers = [m for m in model.modules() if isinstance(getattr(m, "expert_load", None), torch.Tensor)]
        config = getattr(model, "config", None)
        # a pipeline stage may hold no MoE layer of its own and still report the others'
        self.tracked = ep_size() > 1 and config is not None and bool(config.get("n_routed_experts"))
        self.device = device
        self._synced: torch.Tensor | None = None
        if self.tracked:
            self.shape = (int(config.num_hidden_layers), int(config.n_routed_experts))

    def _local(self) -> torch.Tensor:
        table = torch.zeros(self.shape, dtype=torch.int64, device=self.device)
        for layer in self.layers:
            table[layer.layer] = layer.expert_load
        return table

    def sync(self) -> None:
        """Every rank calls this at the same step: the world's table lands on each."""
        self._synced = all_reduce_max_world(self._local())

    def snapshot(self) -> np.ndarray | None:
        """[num_layers, n_routed_experts] pairs per expert (zero rows: dense layers), or None when no
        layer is expert-parallel. Other stages' rows are as of the last sync."""
        if not self.tracked:
            return None
        table = self._local()
        if self._synced is not None:
            table = torch.maximum(table, self._synced)
        return table.cpu().numpy()
