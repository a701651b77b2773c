"""Vocabulary-parallel embedding and LM head: each rank holds a slice of the vocabulary."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from seekd.distributed import all_gather_rows, all_reduce, tp_rank, tp_size
from seekd.intmath import cdiv
from seekd.layers.linear import linear_product

if TYPE_CHECKING:
    from seekd.kernels.gemv import GemvConfig


class VocabParallelEmbedding(nn.Module):
    def __init__(self, vocab_size: int, hidden_size: int) -> None:
        super().__init__()
        self.tp_size = tp_size()
        self.vocab_size = vocab_size
        self.shard_size = cdiv(vocab_size, self.tp_size)
        self.vocab_start = tp_rank() * self.shard_size
        self.weight = nn.Parameter(torch.empty(self.shard_size, hidden_size), requires_grad=False)
        self.weight.weight_loader = self.weight_loader

    def weight_loader(self, param: nn.Parameter, loaded: torch.Tensor, shard_id=None) -> None:
        shard = loaded[self.vocab_start : self.vocab_start + self.shard_size]
        param.data.zero_()
        param.data[: shard.size(0)].copy_(shard)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        if self.tp_size == 1:
            return F.embedding(input_ids, self.weight)
        local = input_ids - self.vocab_start
        mask = (local >= 0) & (local < self.shard_size)
        out = F.embedding(local.clamp(0, self.shard_size - 1), self.weight) * mask.unsqueeze(-1)
        return all_reduce(out, self.tp_size)


class ParallelLMHead(VocabParallelEmbedding):
    def __init__(self, vocab_size: int, hidden_size: int) -> None:
        super().__init__(vocab_size, hidden_size)
        self.gemv: GemvConfig | None = None  # as LinearBase.gemv: set by start-up timing

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        logits = linear_product(hidden, self.weight, None, self.gemv)
        if self.tp_size > 1:
            logits = torch.cat(all_gather_rows(logits, self.tp_size), dim=-1)
        return logits[..., : self.vocab_size]
