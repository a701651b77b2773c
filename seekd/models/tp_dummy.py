"""Random weights for a tensor-parallel rank that are its shard of the one-rank random model.

`init_dummy_weights` seeds each parameter by name, so a shard filled the same way would hold other
numbers than the matching slice of the unsplit model, and TP=2 would serve a different model than
TP=1. Here each rank draws the full tensor exactly as one rank would and hands it to the parameter's
weight loader, which keeps this rank's slice, as it does for a checkpoint tensor.
"""

from __future__ import annotations

import torch
from torch import nn

from seekd.distributed import single_rank_view
from seekd.layers.linear import MergedColumnParallelLinear, QKVParallelLinear
from seekd.models.hf_config import HFConfig


def init_sharded_dummy_weights(model: nn.Module, build: type[nn.Module], hf_config: HFConfig, seed: int) -> None:
    from seekd.models.loader import hash_name, init_dummy_hash_tables

    with single_rank_view(), torch.device("meta"):
        full_shapes = {name: p.shape for name, p in build(hf_config).named_parameters()}
    modules = dict(model.named_modules())
    for name, param in model.named_parameters():
        if param.dim() == 1 and "norm" in name:
            param.data.fill_(1.0)
            continue
        if not param.dtype.is_floating_point:
            continue
        gen = torch.Generator(device=param.device).manual_seed(seed + hash_name(name))
        full = torch.empty(full_shapes[name], dtype=param.dtype, device=param.device).normal_(0.0, 0.02, generator=gen)
        owner = modules[name.rpartition(".")[0]]
        loader = getattr(param, "weight_loader", None)
        if loader is None:
            param.data.copy_(full)
        elif isinstance(owner, MergedColumnParallelLinear):
            for i, part in enumerate(full.split(owner.output_sizes, dim=0)):
                loader(param, part, i)
        elif isinstance(owner, QKVParallelLinear):
            q_size = owner.num_heads * owner.tp_size * owner.head_dim
            kv_size = (full.shape[0] - q_size) // 2
            for shard_id, part in zip("qkv", full.split([q_size, kv_size, kv_size], dim=0)):
                loader(param, part, shard_id)
        else:
            loader(param, full)
    init_dummy_hash_tables(model, seed)
