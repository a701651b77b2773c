"""One step's model inputs as rank 0 sends them to every tensor-parallel rank, and the link it
sends them through. Both sit below the runner and the executor, so neither imports the other."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np


@dataclass
class FlatStep:
    """One step's model inputs on the host, flat: everything a tensor-parallel rank needs to run the
    same forward as rank 0 (and nothing of the requests, which only rank 0 knows)."""

    input_ids: np.ndarray  # [T] int64; pending rows hold PENDING_TOKEN until `pending` fills them
    positions: np.ndarray  # [T] int64
    query_lens: list[int]
    seq_lens: list[int]
    block_tables: list[np.ndarray]  # per cache group, [B, max_blocks] int32 padded with the null block 0
    slot_mapping: list[np.ndarray | None]  # per cache group, [T] int64; None for groups of compressed entries
    logits_indices: np.ndarray  # [S] int64: rows of the hidden states whose next token is sampled
    pending: np.ndarray  # [P, 2] int64: (input row, row of the previous step's sampled ids)
    lora_slots: np.ndarray | None = None  # [B] int32 LoRA adapter slot per sequence (-1 base); None = no adapter
    share_sampled: bool = False  # rank 0 broadcasts this step's sampled ids (the next may read them)
    sync_expert_load: bool = False  # every rank joins the expert-load sync after this step (engine/expert_load.py)


class StepSender(Protocol):
    """Rank 0's link to its tensor-parallel workers (the executor's `TPDriver`): the runner hands it
    each step before running its own shard, so that every rank runs the same collectives."""

    share_sampled: bool  # the next step may read sampled ids on the device: broadcast them

    def send_step(self, step: FlatStep) -> None: ...
