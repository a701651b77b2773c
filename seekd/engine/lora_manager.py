"""The engine's LoRA adapters: which are known, which sit in device slots, and each step's map.

Adapters load onto the host when registered (start-up `--lora-modules` or the admin API) and into
one of `max_loras` device slots when a step first needs them, evicting the least recently used
adapter that the step does not use. The scheduler keeps the distinct adapters of running requests
within `max_loras`, so a step always finds a slot for each of its adapters. Adapters are keyed by
load (name#count), so unloading or replacing one refuses it to new requests at once while requests
already in the engine finish on the weights they started with.
"""

from __future__ import annotations

import logging
import re
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch
from torch import nn

from seekd.config import LoRAConfig
from seekd.distributed import tp_size
from seekd.engine.request import Request
from seekd.layers.linear import LinearBase
from seekd.layers.lora import LoRABatch, LoRAState, LoRAWeights
from seekd.models.lora_adapter import LORA_ARCHITECTURES, LoRAAdapter, load_peft_adapter, output_parts

logger = logging.getLogger(__name__)

ADAPTER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
NO_ADAPTER = -1


def attach_lora_layers(model: nn.Module, state: LoRAState, config: LoRAConfig, device: torch.device) -> int:
    """Give every projection of the decoder layers its stacked adapter buffers; returns how many.
    Their batch-1 GEMV shortcuts are dropped: those fold a norm or an activation into the product,
    where the delta needs the plain input."""
    count = 0
    for name, layer in model.named_modules():
        if not isinstance(layer, LinearBase) or ".layers." not in f".{name}":
            continue
        layer.gemv = layer.normed_gemv = None
        layer.lora = LoRAWeights(
            state,
            config.max_loras,
            layer.in_features,
            output_parts(layer),
            config.max_lora_rank,
            layer.params_dtype,
            device,
            per_sequence=name.endswith("kv_b_proj"),
        )
        count += 1
    return count


class LoRAManager:
    def __init__(self, model: nn.Module, config: LoRAConfig, device: torch.device) -> None:
        architecture = type(model).__name__
        if architecture not in LORA_ARCHITECTURES:
            raise ValueError(
                f"LoRA adapters are served for {', '.join(sorted(LORA_ARCHITECTURES))}, not {architecture}"
            )
        if tp_size() > 1:
            raise ValueError("LoRA adapters are served at tensor-parallel size 1 for now")
        self.model = model
        self.config = config
        self.device = device
        self.state = LoRAState(use_kernel=device.type == "cuda")
        self.layers = {n: m for n, m in model.named_modules() if isinstance(m, LinearBase)}
        num_layers = attach_lora_layers(model, self.state, config, device)
        self.adapters: dict[str, LoRAAdapter] = {}  # by name, registered: new requests may use them
        self.live: dict[str, LoRAAdapter] = {}  # by key: registered ones and unloaded ones still in use
        self.resident: OrderedDict[str, int] = OrderedDict()  # adapter key -> device slot, least recent first
        self.free_slots = list(range(config.max_loras))
        self.num_loads = 0
        self._graph_slots: torch.Tensor | None = None  # CUDA-graph decode: slot of each padded row
        self._graph_starts: torch.Tensor | None = None
        logger.info(
            "LoRA: %d projections adaptable, %d device slots, rank up to %d",
            num_layers,
            config.max_loras,
            config.max_lora_rank,
        )

    # -- registry -------------------------------------------------------------------------------
    def load(self, name: str, path: str | Path) -> LoRAAdapter:
        """Register adapter `name` from a PEFT folder (replacing one of that name for new requests;
        requests already running keep the old one); raises ValueError if it does not fit the model."""
        if not ADAPTER_NAME.fullmatch(name):
            raise ValueError(f"adapter name {name!r}: use letters, digits, '.', '_' or '-' (at most 64)")
        adapter = load_peft_adapter(name, Path(path), self.model, self.config.max_lora_rank)
        self.num_loads += 1
        adapter.key = f"{name}#{self.num_loads}"
        self.adapters[name] = adapter
        self.live[adapter.key] = adapter
        logger.info(
            "LoRA adapter %s loaded from %s (rank %d, %d layers)", name, path, adapter.rank, len(adapter.layers)
        )
        return adapter

    def unload(self, name: str) -> None:
        """New requests for `name` are refused from now on; requests in the engine finish on it, and
        its weights go once they have (`collect`)."""
        if self.adapters.pop(name, None) is None:
            raise KeyError(name)
        logger.info("LoRA adapter %s unloaded", name)

    def collect(self, in_use: set[str]) -> None:
        """Forget unloaded adapters whose key no request in the engine uses any more."""
        registered = {a.key for a in self.adapters.values()}
        for key in [k for k in self.live if k not in registered and k not in in_use]:
            del self.live[key]
            self._drop_slot(key)

    def names(self) -> list[str]:
        return sorted(self.adapters)

    def cache_key(self, name: str) -> str:
        """The prefix-cache key of a new request for `name`; ValueError if no such adapter is loaded."""
        adapter = self.adapters.get(name)
        if adapter is None:
            raise ValueError(f"unknown LoRA adapter {name!r}; loaded: {', '.join(self.names()) or 'none'}")
        return adapter.key

    # -- device slots and the step's map ----------------------------------------------------------
    @property
    def graph_safe(self) -> bool:
        """Decode steps can replay CUDA graphs: the kernels run (CUDA) and no layer needs the
        per-sequence host loop (an MLA kv_b_proj with adapters decodes on the naive path)."""
        return self.state.use_kernel and not any(m.lora.per_sequence for m in self.layers.values() if m.lora)

    def graph_batch(self, num_rows: int) -> LoRABatch:
        """The map of a captured decode graph: one row per segment, slots read from a persistent
        buffer that `fill_graph_slots` rewrites before each replay."""
        if self._graph_slots is None or self._graph_slots.shape[0] < num_rows:
            self._graph_slots = torch.full((num_rows,), NO_ADAPTER, dtype=torch.int32, device=self.device)
            self._graph_starts = torch.arange(num_rows + 1, dtype=torch.int32, device=self.device)
        return LoRABatch(self._graph_starts[: num_rows + 1], self._graph_slots[:num_rows], 1, num_rows, graph=True)

    def fill_graph_slots(self, seq_slots: np.ndarray | None) -> None:
        """The slots of a replayed decode step's rows; padded rows and base rows get -1."""
        assert self._graph_slots is not None, "graph_batch makes the buffer at capture"
        host = np.full(self._graph_slots.shape[0], NO_ADAPTER, dtype=np.int32)
        if seq_slots is not None:
            host[: len(seq_slots)] = seq_slots
        self._graph_slots.copy_(torch.from_numpy(host), non_blocking=True)

    def step_slots(self, requests: list[Request]) -> np.ndarray | None:
        """The slot of each request of a step (-1 = base), loading adapters into slots as needed;
        None when no request uses an adapter."""
        keys = {r.lora_key for r in requests if r.lora_key is not None}
        if not keys:
            return None
        slots = {key: self._slot(key, keys) for key in keys}
        return np.asarray([slots.get(r.lora_key, NO_ADAPTER) for r in requests], dtype=np.int32)

    def set_batch(self, seq_slots: np.ndarray | None, query_lens: list[int]) -> None:
        """Tell the LoRA layers which rows of the step use which slot: consecutive sequences of one
        slot make one segment."""
        if seq_slots is None or not (seq_slots >= 0).any():
            self.state.batch = None
            return
        starts, slots = [0], []
        for slot, n in zip(seq_slots.tolist(), query_lens):
            if slots and slots[-1] == slot:
                starts[-1] += n
            else:
                slots.append(slot)
                starts.append(starts[-1] + n)
        bounds = list(zip(starts[:-1], starts[1:], slots))
        segments = [(a, b, s) for a, b, s in bounds if s >= 0]
        self.state.batch = LoRABatch(
            seg_starts=torch.tensor(starts, dtype=torch.int32).to(self.device, non_blocking=True),
            seg_slots=torch.tensor(slots, dtype=torch.int32).to(self.device, non_blocking=True),
            max_seg_len=max(b - a for a, b, _ in bounds),
            num_rows=starts[-1],
            segments=segments,
            seq_slots=seq_slots.tolist(),
            slots=frozenset(s for _, _, s in segments),
        )

    def _slot(self, key: str, needed: set[str]) -> int:
        if key in self.resident:
            self.resident.move_to_end(key)
            return self.resident[key]
        adapter = self.live.get(key)
        if adapter is None:
            raise RuntimeError(f"LoRA adapter {key!r} is not loaded")
        if not self.free_slots:
            victim = next((n for n in self.resident if n not in needed), None)
            if victim is None:
                raise RuntimeError(f"a step uses more than max_loras={self.config.max_loras} adapters")
            self._drop_slot(victim)
        slot = self.free_slots.pop(0)
        for layer_name, layer in self.layers.items():
            if layer.lora is not None:
                layer.lora.set_slot(slot, adapter.layers.get(layer_name, {}))
        self.resident[key] = slot
        return slot

    def _drop_slot(self, key: str) -> None:
        slot = self.resident.pop(key, None)
        if slot is None:
            return
        for layer in self.layers.values():
            if layer.lora is not None:
                layer.lora.targeted_slots.discard(slot)
        self.free_slots.append(slot)
