"""Parallel group helpers: tensor, pipeline and expert parallelism. With one rank (the default)
every call is a no-op.

The world is `pipeline_parallel_size` stages of `tensor_parallel_size` ranks each, stage-major:
global rank = stage * tp + tp_rank, so rank 0 (the engine core, which schedules and samples) is the
first rank of the first stage, and ranks > 0 are worker processes (seekd/engine/executor/tp_workers.py).
Each stage has its own tensor-parallel group; expert parallelism reuses it (a stage's ranks hold
whole experts instead of a slice of each), so it adds no group of its own. Layers read
`tp_rank()`/`tp_size()`/`pp_rank()`/`ep_size()` when they are built, so the groups must exist
before the model is.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class ParallelRanks:
    """Where this process sits in the world, and its stage's tensor-parallel group."""

    tp_rank: int
    tp_size: int
    pp_rank: int
    pp_size: int
    expert_parallel: bool
    tp_group: dist.ProcessGroup | None  # None: the default group (one stage)
    expert_dispatch: str = "all_reduce"  # how expert-parallel layers move tokens (layers/expert_parallel.py)

    def global_rank(self, pp_rank: int, tp_rank: int) -> int:
        return pp_rank * self.tp_size + tp_rank


_SINGLE = ParallelRanks(0, 1, 0, 1, False, None)
_ranks: ParallelRanks = _SINGLE
_rank_view: tuple[int, int] | None = None  # (rank, size) layers see instead of the process group's


def _in_group() -> bool:
    return dist.is_available() and dist.is_initialized()


def _view() -> ParallelRanks:
    """What layers see: a rank view is one stage of `size` tensor-parallel ranks, no experts split."""
    if _rank_view is not None:
        return ParallelRanks(_rank_view[0], _rank_view[1], 0, 1, False, None)
    return _ranks


def tp_rank() -> int:
    return _view().tp_rank


def tp_size() -> int:
    return _view().tp_size


def pp_rank() -> int:
    return _view().pp_rank


def pp_size() -> int:
    return _view().pp_size


def ep_rank() -> int:
    """This rank's place among the stage's expert holders (0 without expert parallelism)."""
    view = _view()
    return view.tp_rank if view.expert_parallel else 0


def ep_size() -> int:
    """Ranks that share a MoE layer's routed experts whole: the stage's tensor-parallel ranks with
    expert parallelism, else 1 (every rank holds a slice of every expert)."""
    view = _view()
    return view.tp_size if view.expert_parallel else 1


def ep_dispatch() -> str:
    return _view().expert_dispatch


def world_size() -> int:
    return dist.get_world_size() if _in_group() and _rank_view is None else 1


def parallel_ranks() -> ParallelRanks:
    return _view()


@contextlib.contextmanager
def rank_view(rank: int, size: int) -> Iterator[None]:
    """Layers built inside see rank `rank` of `size` (one stage, experts sliced): a meta-device copy
    of one rank's shard of the model, for memory plans, without any process group."""
    global _rank_view
    previous, _rank_view = _rank_view, (rank, size)
    try:
        yield
    finally:
        _rank_view = previous


def single_rank_view() -> contextlib.AbstractContextManager[None]:
    """Layers built inside see one rank: the unsplit shapes (for a meta-device copy of the model)."""
    return rank_view(0, 1)


def _tp_group() -> dist.ProcessGroup | None:
    return _ranks.tp_group


def all_reduce(x: torch.Tensor, world_size: int) -> torch.Tensor:
    """Sum x over the tensor-parallel group a layer was built for: `world_size` is its tp_size() at
    build time, so a one-rank model stays free of collectives even while some group exists."""
    if world_size > 1:
        dist.all_reduce(x, group=_tp_group())
    return x


def all_gather_rows(x: torch.Tensor, world_size: int) -> list[torch.Tensor]:
    """Every tensor-parallel rank's `x` (same shape on all), in rank order."""
    if world_size == 1:
        return [x]
    parts = [torch.empty_like(x) for _ in range(world_size)]
    dist.all_gather(parts, x.contiguous(), group=_tp_group())
    return parts


def all_to_all(out: torch.Tensor, x: torch.Tensor, out_splits: list[int], in_splits: list[int]) -> torch.Tensor:
    """Rows of `x` cut by `in_splits` go to the tensor-parallel ranks in order; `out` receives
    `out_splits[r]` rows from rank r (NCCL and gloo both run all_to_all_single with uneven splits)."""
    dist.all_to_all_single(out, x.contiguous(), out_splits, in_splits, group=_tp_group())
    return out


def create_store(port: int = 0) -> dist.TCPStore:
    """The group's rendezvous on loopback. Rank 0 hosts it (port 0: the kernel picks a free one,
    read back as `store.port`, so there is no race for a port); workers connect to that port."""
    return dist.TCPStore("127.0.0.1", port, is_master=port == 0, wait_for_workers=False, timeout=timedelta(seconds=300))


def init_parallel(
    rank: int,
    world: int,
    store: dist.TCPStore,
    device: str,
    pipeline_parallel_size: int = 1,
    expert_parallel: bool = False,
    expert_dispatch: str = "all_reduce",
) -> None:
    """Join the world (NCCL on CUDA, each rank on its own device; gloo on the CPU), then every rank
    creates every stage's tensor-parallel group, in stage order, as torch requires."""
    global _ranks
    if world % pipeline_parallel_size:
        raise ValueError(f"{world} ranks do not split into {pipeline_parallel_size} pipeline stages")
    if device.startswith("cuda"):
        torch.cuda.set_device(torch.device(device))
        dist.init_process_group("nccl", store=store, rank=rank, world_size=world, device_id=torch.device(device))
    else:
        dist.init_process_group("gloo", store=store, rank=rank, world_size=world)
    tp = world // pipeline_parallel_size
    group = None
    if pipeline_parallel_size > 1:
        for stage in range(pipeline_parallel_size):
            stage_group = dist.new_group(list(range(stage * tp, (stage + 1) * tp)))
            if stage == rank // tp:
                group = stage_group
    _ranks = ParallelRanks(rank % tp, tp, rank // tp, pipeline_parallel_size, expert_parallel, group, expert_dispatch)


def destroy_parallel() -> None:
    global _ranks
    _ranks = _SINGLE
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_min(value: int, device: torch.device) -> int:
    """The smallest of every rank's `value` (one rank's choice must hold on all of them)."""
    if world_size() == 1:
        return value
    t = torch.tensor([value], dtype=torch.int64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return int(t.item())


def all_reduce_max_world(x: torch.Tensor) -> torch.Tensor:
    """The elementwise largest of every rank's `x`, over the whole world."""
    if world_size() > 1:
        dist.all_reduce(x, op=dist.ReduceOp.MAX)
    return x


def broadcast_from_driver(x: torch.Tensor) -> torch.Tensor:
    """Rank 0's `x` into every rank's `x` (same shape and dtype on all ranks)."""
    if world_size() > 1:
        dist.broadcast(x, src=0)
    return x


# -- pipeline stages --------------------------------------------------------------------------
def is_first_stage() -> bool:
    return pp_rank() == 0


def is_last_stage() -> bool:
    return pp_rank() == pp_size() - 1


def send_to_next_stage(tensors: dict[str, torch.Tensor]) -> None:
    """This stage's outputs to the rank of the same tensor-parallel place in the next stage (every
    rank of a stage holds them whole), in name order."""
    dst = _ranks.global_rank(_ranks.pp_rank + 1, _ranks.tp_rank)
    for name in sorted(tensors):
        dist.send(tensors[name].contiguous(), dst)


def recv_from_previous_stage(specs: dict[str, tuple[tuple[int, ...], torch.dtype]], device: torch.device) -> dict:
    """The previous stage's outputs, allocated from `specs` (name -> (shape, dtype))."""
    src = _ranks.global_rank(_ranks.pp_rank - 1, _ranks.tp_rank)
    out = {}
    for name in sorted(specs):
        shape, dtype = specs[name]
        out[name] = torch.empty(shape, dtype=dtype, device=device)
        dist.recv(out[name], src)
    return out


def last_stage_driver_rank() -> int:
    """The rank that hands the logits to rank 0: the first tensor-parallel rank of the last stage."""
    return _ranks.global_rank(_ranks.pp_size - 1, 0)


def send_logits_to_driver(logits: torch.Tensor) -> None:
    if _ranks.tp_rank == 0:
        dist.send(logits.contiguous(), 0)


def recv_logits_from_last_stage(shape: tuple[int, int], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    logits = torch.empty(shape, dtype=dtype, device=device)
    dist.recv(logits, last_stage_driver_rank())
    return logits
