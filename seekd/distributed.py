"""Tensor-parallel group helpers. With one rank (the default) every call is a no-op.

The group is the default torch.distributed process group: rank 0 is the engine core, ranks > 0
are worker processes (seekd/engine/tp_workers.py). Layers read `tp_rank()`/`tp_size()` when they
are built, so the group must exist before the model is.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from datetime import timedelta

import torch
import torch.distributed as dist

_single_rank_view = False


def _in_group() -> bool:
    return not _single_rank_view and dist.is_available() and dist.is_initialized()


def tp_rank() -> int:
    return dist.get_rank() if _in_group() else 0


def tp_size() -> int:
    return dist.get_world_size() if _in_group() else 1


@contextlib.contextmanager
def single_rank_view() -> Iterator[None]:
    """Layers built inside see one rank: the unsplit shapes (for a meta-device copy of the model)."""
    global _single_rank_view
    previous, _single_rank_view = _single_rank_view, True
    try:
        yield
    finally:
        _single_rank_view = previous


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
