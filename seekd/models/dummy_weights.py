"""Random weights of a model's real shapes and precision (`load_format=dummy`), for benchmarks,
tests and the demo model.

`init_dummy_weights` seeds each parameter by name, so a tensor-parallel shard filled the same way
would hold other numbers than the matching slice of the unsplit model, and TP=2 would serve a
different model than TP=1. `init_sharded_dummy_weights` therefore draws the full tensor on each rank
exactly as one rank would and hands it to the parameter's weight loader, which keeps this rank's
slice, as it does for a checkpoint tensor.
"""

from __future__ import annotations

import torch
from torch import nn

from seekd.distributed import single_rank_view
from seekd.layers.linear import MergedColumnParallelLinear, QKVParallelLinear
from seekd.models.hf_config import HFConfig


def init_dummy_weights(model: nn.Module, seed: int) -> None:
    """Random weights of the real shapes and precision: norms at 1, the rest small and seeded
    (reproducible); low-bit codes random, with scales that make the weights about N(0, 0.02)."""
    for name, param in model.named_parameters():
        gen = torch.Generator(device=param.device).manual_seed(seed + hash_name(name))
        if getattr(param, "low_bit_format", None):
            init_dummy_low_bit(param, name, gen)
        elif param.dim() == 1 and "norm" in name:
            param.data.fill_(1.0)
        elif param.dtype.is_floating_point:
            param.data.normal_(0.0, 0.02, generator=gen)
    init_dummy_hash_tables(model, seed)


def init_dummy_low_bit(param: nn.Parameter, name: str, gen: torch.Generator) -> None:
    """FP8 codes ~ N(0, 32) under scales of 0.02/32; FP4 codes uniform (mean magnitude ~2.6) under
    scales of 2**-7. Filled a slice at a time: no float32 copy of a whole expert stack."""
    data = param.data
    if param.low_bit_format == "int4":  # codes uniform over 0..15 around zero points of 8
        if name.endswith("_zero"):
            data.fill_(8)
        elif name.endswith("_perm"):
            data.copy_(torch.arange(data.shape[0], device=data.device))
        elif data.is_floating_point():
            data.fill_(0.02 / 4.6)  # uniform codes minus 8 have a standard deviation of 4.6
        else:
            data.copy_(torch.randint(-(2**31), 2**31, data.shape, generator=gen, device=data.device))
        return
    is_scale = name.endswith(("_scale_inv", "_scale"))
    if is_scale:
        data.fill_(0.02 / 32 if data.dtype == torch.float32 else 127 - 7)
        return
    for chunk in data.view(-1, data.shape[-1]).split(4096):
        if chunk.dtype == torch.float8_e4m3fn:
            noise = torch.empty(chunk.shape, device=chunk.device).normal_(0.0, 32.0, generator=gen)
            chunk.copy_(noise.clamp_(-448, 448).to(chunk.dtype))
        else:
            chunk.copy_(torch.randint(0, 256, chunk.shape, generator=gen, device=chunk.device, dtype=torch.int32))


def init_dummy_hash_tables(model: nn.Module, seed: int) -> None:
    for name, module in model.named_modules():
        table = getattr(module, "tid2eid", None)
        if isinstance(table, torch.Tensor):  # hash routing: a random choice of distinct experts per token
            gen = torch.Generator(device=table.device).manual_seed(seed + hash_name(name))
            choice = torch.rand(table.shape[0], module.weight.shape[0], generator=gen, device=table.device)
            table.data.copy_(choice.argsort(dim=-1)[:, : table.shape[1]])


def hash_name(name: str) -> int:
    """Stable (process-independent) small integer from a parameter name."""
    h = 0
    for ch in name.encode():
        h = (h * 131 + ch) % 1_000_003
    return h


def init_sharded_dummy_weights(model: nn.Module, build: type[nn.Module], hf_config: HFConfig, seed: int) -> None:
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
