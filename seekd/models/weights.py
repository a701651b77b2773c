"""Generic mapping of checkpoint tensors onto model parameters (fused layers, TP shards)."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn


def load_named_weights(
    model: nn.Module,
    weights: Iterable[tuple[str, torch.Tensor]],
    packed_modules_mapping: dict[str, tuple[str, object]],
    skip_suffixes: tuple[str, ...] = (),
) -> set[str]:
    """Copy each (name, tensor) into the parameter it belongs to; returns the names of the
    parameters that received data. Unknown names are an error: a silent miss is a wrong model."""
    params = dict(model.named_parameters())
    loaded: set[str] = set()
    for name, tensor in weights:
        if name.endswith(skip_suffixes):
            continue
        target, shard_id = name, None
        for part, (fused, sid) in packed_modules_mapping.items():
            if f".{part}." in name:
                target, shard_id = name.replace(f".{part}.", f".{fused}."), sid
                break
        param = params.get(target)
        if param is None:
            raise ValueError(f"checkpoint tensor {name} matches no parameter of {type(model).__name__}")
        loader = getattr(param, "weight_loader", None)
        if loader is None:
            if param.shape != tensor.shape:
                raise ValueError(f"{name}: checkpoint shape {tuple(tensor.shape)}, expected {tuple(param.shape)}")
            param.data.copy_(tensor)
        elif shard_id is None:
            loader(param, tensor)
        else:
            loader(param, tensor, shard_id)
        loaded.add(target)
    return loaded
