"""Pipeline stages: which decoder layers this rank's stage holds, and placeholders for the rest.

A model split into `pp_size()` stages keeps its module tree (so checkpoint names still match), but a
layer another stage runs is a `RemoteLayer` with no weights. The KV cache is planned from every
layer's cache kinds, identically on every stage (the scheduler on rank 0 hands out one set of block
ids for all of them), so a remote decoder layer keeps a meta-device copy of itself, outside the
module tree, whose attention declares those kinds; only the stage's own layers get cache memory.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from seekd.distributed import pp_rank, pp_size

StageTensors = dict[str, torch.Tensor]  # what one stage hands the next (hidden states, residual, streams)
StageSpecs = dict[str, tuple[tuple[int, ...], torch.dtype]]  # their shapes and dtypes, for the receiver


def stage_layer_range(num_layers: int, stage: int, num_stages: int) -> range:
    """The layers stage `stage` runs: an even split, the first `num_layers % num_stages` stages one
    more (the last stage also computes the logits)."""
    base, extra = divmod(num_layers, num_stages)
    start = stage * base + min(stage, extra)
    return range(start, start + base + (stage < extra))


class RemoteLayer(nn.Module):
    """A module another pipeline stage holds. `shadow` is its meta-device copy (not a submodule:
    no parameters, never run), kept where the KV cache plan needs the layer's cache kinds."""

    def __init__(self, shadow: nn.Module | None = None) -> None:
        super().__init__()
        object.__setattr__(self, "shadow", shadow)
        if shadow is not None:
            for module in shadow.modules():
                module.pipeline_remote = True

    def forward(self, *args: object, **kwargs: object) -> None:
        raise RuntimeError("this module runs on another pipeline stage")


def stage_layers(num_layers: int, build: Callable[[int], nn.Module]) -> tuple[nn.ModuleList, range]:
    """(every decoder layer, this stage's own ones built for real and the others as RemoteLayers
    around a meta copy; the range of this stage's layers)."""
    own = stage_layer_range(num_layers, pp_rank(), pp_size())
    layers = []
    for i in range(num_layers):
        if i in own:
            layers.append(build(i))
        else:
            with torch.device("meta"):
                layers.append(RemoteLayer(build(i)))
    return nn.ModuleList(layers), own


def held(layer: nn.Module) -> nn.Module:
    """The layer, or a remote layer's meta copy (for its attention's cache kinds)."""
    return layer.shadow if isinstance(layer, RemoteLayer) else layer


def on_stage(held_here: bool, build: Callable[[], nn.Module]) -> nn.Module:
    """`build()` on the stage that holds the module (embedding: first; final norm and head: last), a
    weightless RemoteLayer elsewhere."""
    return build() if held_here else RemoteLayer()


def is_remote(module: nn.Module) -> bool:
    """A layer whose cache kinds count in the plan but whose cache another stage allocates."""
    return getattr(module, "pipeline_remote", False)
