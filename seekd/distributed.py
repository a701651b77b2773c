"""Tensor-parallel group helpers. With one rank (the default) every call is a no-op.

The group is the default torch.distributed process group: rank 0 is the engine core, ranks > 0
are worker processes (seekd/engine/executor/tp_workers.py). Layers read `tp_rank()`/`tp_size()` when they
are built, so the group must exist before the model is.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from datetime import timedelta

import torch
import torch.distributed as dist

_rank_view: tuple[int, int] | None = None  # (rank, size) layers see instead of the process group's


def _in_group() -> bool:
    return dist.is_available() and dist.is_initialized()


def tp_rank() -> int:
    if _rank_view is not None:
        return _rank_view[0]
    return dist.get_rank() if _in_group() else 0


def tp_size() -> int:
    if _rank_view is not None:
        return _rank_view[1]
    return dist.get_world_size() if _in_group() else 1


@contextlib.contextmanager
def rank_view(rank: int, size: int) -> Iterator[None]:
    """Layers built inside see rank `rank` of `size`: a meta-device copy of one rank's shard of the
    model, for memory plans, without any process group."""
    global _rank_view
    previous, _rank_view = _rank_view, (rank, size)
    try:
        yield
    finally:
        _rank_view = previous


def single_rank_view() -> contextlib.AbstractContextManager[None]:
    """Layers built inside see one rank: the unsplit shapes (for a meta-device copy of the model)."""
    return rank_view(0, 1)


def all_reduce(x: torch.Tensor, world_size: int) -> torch.Tensor:
    """Sum x over the group a layer was built for: `world_size` is its tp_size() at build time, so a
    one-rank model stays free of collectives even while some group exists in the process."""
    if world_size > 1:
        dist.all_reduce(x)
    return x


def create_store(port: int = 0) -> dist.TCPStore:
    """The group's rendezvous on loopback. Rank 0 hosts it (port 0: the kernel picks a free one,
    read back as `store.port`, so there is no race for a port); workers connect to that port."""
    return dist.TCPStore("127.0.0.1", port, is_master=port == 0, wait_for_workers=False, timeout=timedelta(seconds=300))


def init_tensor_parallel(rank: int, world_size: int, store: dist.TCPStore, device: str) -> None:
    """Join the group: NCCL on CUDA (each rank on its own device), gloo on the CPU."""
    if device.startswith("cuda"):
        torch.cuda.set_device(torch.device(device))
        dist.init_process_group("nccl", store=store, rank=rank, world_size=world_size, device_id=torch.device(device))
    else:
        dist.init_process_group("gloo", store=store, rank=rank, world_size=world_size)


def destroy_tensor_parallel() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_min(value: int, device: torch.device) -> int:
    """The smallest of every rank's `value` (one rank's choice must hold on all of them)."""
    if tp_size() == 1:
        return value
    t = torch.tensor([value], dtype=torch.int64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return int(t.item())


def broadcast_from_driver(x: torch.Tensor) -> torch.Tensor:
    """Rank 0's `x` into every rank's `x` (same shape and dtype on all ranks)."""
    if tp_size() > 1:
        dist.broadcast(x, src=0)
    return x
