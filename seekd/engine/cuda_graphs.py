"""CUDA-graph replay of pure-decode steps.

A decode step of a 7B model launches hundreds of small kernels; replaying them as one captured
graph removes the per-launch CPU cost that otherwise dominates batch-1 latency. Graphs are captured
once per padded batch size over persistent input buffers; a step copies its inputs into the
buffers, replays the graph of the next size up, and reads the first rows of the output.
Padded rows attend to one token in the null block 0, which no request owns.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from torch import nn

from seekd.engine.kv_cache_layout import CacheGroup
from seekd.engine.lora_manager import LoRAManager
from seekd.intmath import cdiv
from seekd.layers.attention import AttentionBackend, TritonAttentionBackend, TritonStepData
from seekd.layers.forward_context import AttentionMetadata, CacheGroupMetadata, ForwardContext

logger = logging.getLogger(__name__)


def graph_batch_sizes(max_batch: int) -> list[int]:
    sizes = [b for b in (1, 2, 4, 8) if b <= max_batch]
    sizes += list(range(16, max_batch + 1, 16))
    if sizes[-1] != max_batch:
        sizes.append(max_batch)
    return sizes


@dataclass
class _Graph:
    graph: torch.cuda.CUDAGraph
    hidden: torch.Tensor
    ctx: ForwardContext  # holds the buffers made for the capture (split counters) that replays use


@dataclass
class _GroupBuffers:
    """A cache group's persistent inputs: block tables and, for a kind of one entry per token, slots."""

    group: CacheGroup
    block_tables: torch.Tensor  # [max batch, most blocks of a sequence]
    slot_mapping: torch.Tensor | None  # [max batch]

    def metadata(self, bs: int) -> dict[str, CacheGroupMetadata]:
        slots = None if self.slot_mapping is None else self.slot_mapping[:bs]
        return self.group.step_metadata(self.block_tables[:bs], slots)

    def copy_from(self, meta: AttentionMetadata, n: int, bs: int) -> None:
        """The step's n sequences, then bs - n padded rows that read the null block."""
        # the group's kinds share its tables; a kind of one entry per token also has the slots
        kind = max(self.group.kinds.items(), key=lambda item: item[1].tokens_per_entry == 1)[0]
        step = meta.groups[kind]
        self.block_tables[:n, : step.block_tables.shape[1]].copy_(step.block_tables)
        if self.slot_mapping is not None:
            self.slot_mapping[:n].copy_(step.slot_mapping)
        if bs > n:
            self.block_tables[n:bs, 0].zero_()
            if self.slot_mapping is not None:
                self.slot_mapping[n:bs].zero_()


class DecodeGraphs:
    def __init__(
        self,
        model: nn.Module,
        backend: AttentionBackend,
        device: torch.device,
        max_batch: int,
        max_seq_len: int,
        groups: list[CacheGroup],
        lora: LoRAManager | None = None,
    ) -> None:
        """`lora`: the graphs include the adapters' kernels, reading slots the runner fills per replay."""
        if not isinstance(backend, TritonAttentionBackend):
            raise ValueError("decode CUDA graphs need the triton attention backend")
        self.model = model
        self.backend = backend
        self.lora = lora
        self.max_seq_len = max_seq_len
        self.sizes = graph_batch_sizes(max_batch)
        n = self.sizes[-1]
        i32 = dict(dtype=torch.int32, device=device)
        self.input_ids = torch.zeros(n, dtype=torch.int64, device=device)
        self.positions = torch.zeros(n, dtype=torch.int64, device=device)
        self.seq_lens = torch.ones(n, **i32)
        self.query_start_loc = torch.arange(n + 1, **i32)
        self.groups = [
            _GroupBuffers(
                group,
                torch.zeros(n, cdiv(max_seq_len, group.shape.block_tokens), **i32),
                torch.zeros(n, dtype=torch.int64, device=device) if group.has_token_slots else None,
            )
            for group in groups
        ]
        self.qblock_seq = torch.arange(n, **i32)
        self.qblock_start = torch.zeros(n, **i32)
        self.graphs: dict[int, _Graph] = {}

    def _metadata(self, bs: int) -> AttentionMetadata:
        meta = AttentionMetadata(
            query_start_loc=self.query_start_loc[: bs + 1],
            seq_lens=self.seq_lens[:bs],
            max_query_len=1,
            max_seq_len=self.max_seq_len,
            query_lens_cpu=[1] * bs,
            seq_lens_cpu=[1] * bs,
        )
        for buffers in self.groups:
            meta.groups.update(buffers.metadata(bs))
        # splits sized for the longest context; shorter ones leave the extra programs idle
        data = self.backend.prepare(meta)
        meta.backend_data = TritonStepData(
            self.qblock_seq[:bs], self.qblock_start[:bs], 1, data.num_splits, data.counters
        )
        return meta

    @torch.inference_mode()
    def capture(self) -> None:
        pool = torch.cuda.graph_pool_handle()
        for bs in reversed(self.sizes):  # largest first, so smaller graphs reuse its memory
            ctx = ForwardContext(attn=self._metadata(bs))
            ids, pos = self.input_ids[:bs], self.positions[:bs]
            if self.lora is not None:
                self.lora.state.batch = self.lora.graph_batch(bs)
            self.model(ids, pos, ctx)  # warm-up outside the graph: compiles and autotunes
            torch.cuda.synchronize()
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=pool):
                hidden = self.model(ids, pos, ctx)
            self.graphs[bs] = _Graph(graph, hidden, ctx)
        if self.lora is not None:
            self.lora.state.batch = None
        torch.cuda.synchronize()
        logger.info("captured decode CUDA graphs for batch sizes %s", self.sizes)

    def can_run(self, meta: AttentionMetadata) -> bool:
        return meta.is_pure_decode and meta.num_seqs <= self.sizes[-1]

    def run(self, input_ids: torch.Tensor, positions: torch.Tensor, meta: AttentionMetadata) -> torch.Tensor:
        n = meta.num_seqs
        bs = next(b for b in self.sizes if b >= n)
        self.input_ids[:n].copy_(input_ids)
        self.positions[:n].copy_(positions)
        self.seq_lens[:n].copy_(meta.seq_lens)
        if bs > n:  # padded rows: one token at slot 0 of the null block
            self.seq_lens[n:bs].fill_(1)
        for buffers in self.groups:
            buffers.copy_from(meta, n, bs)
        entry = self.graphs[bs]
        entry.graph.replay()
        return entry.hidden[:n]
