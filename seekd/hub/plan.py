"""`seekd plan`: how to lay a model out over given GPUs, and the `seekd serve` command that does it.

The layout is the fewest GPUs whose KV cache holds the target context (GOOD_CONTEXT, or the model's
own if shorter), found by the same `sizing.first_fit` as `seekd doctor`, at the checkpoint's own
precision. Layouts are tried smallest first, and among equal GPU counts with the fewest pipeline
stages: tensor parallel within a machine (a power of two dividing its GPUs), expert parallel for MoE
models whenever TP > 1 (routed experts whole on ranks; attention stays tensor-parallel), pipeline
stages when TP alone does not fit (heads that do not divide, or weights that need more GPUs than one
machine has). A layout over several machines runs on Ray (`--distributed-executor ray`); GPUs left
over serve replicas of the same layout, behind `seekd router`.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from seekd.bench.model_folder import public_shape
from seekd.hub.aliases import BY_ALIAS, VARIANTS
from seekd.hub.gpus import GPUSpec
from seekd.hub.resolve import looks_like_repo, model_folder
from seekd.hub.sizing import (
    GOOD_CONTEXT,
    TP_SIZES,
    Fit,
    Footprint,
    Layout,
    activation_bytes,
    first_fit,
    footprint,
    has_routed_experts,
    kv_budget,
    kv_by_kind,
    usable_bytes,
)
from seekd.hub.store import ModelStore
from seekd.models.hf_config import HFConfig
from seekd.models.memory_plan import shipped_quant_config

PRECISION = "shipped"
MAX_NODES = 16  # searched for the machines a model that does not fit would need
CONTEXTS = (4096, 32768, 131072)  # rows of the sequences table, with the model's own context
FORMAT_NAMES = {"dense": "bf16", "fp8_block": "block FP8 (128x128 scales)", "fp4": "FP4", "int4": "INT4"}
FIRST_PORT = 8000
RAY_PORT = 6379
RAY_JOIN = f"ray start --address HEAD_IP:{RAY_PORT}  # on each other node"
GIB = 2**30


def candidates(gpus: GPUSpec, moe: bool) -> list[Layout]:
    """Every layout the GPUs allow, fewest GPUs first, then fewest stages. Replicas tile the GPUs: a
    layout within one machine takes a divisor of its GPUs, a larger one whole machines."""
    out = []
    for tp in (t for t in TP_SIZES if gpus.per_node % t == 0):
        for pp in range(1, gpus.total // tp + 1):
            n = tp * pp
            if (n <= gpus.per_node and gpus.per_node % n == 0) or (n > gpus.per_node and n % gpus.per_node == 0):
                out += [Layout(tp, pp, True)] if moe and tp > 1 else []
                out.append(Layout(tp, pp))
    return sorted(out, key=lambda layout: (layout.gpus, layout.pp))


def precision_label(config: dict[str, Any]) -> str:
    quant = shipped_quant_config(HFConfig(config))
    linear, experts = FORMAT_NAMES[quant.linear], FORMAT_NAMES[quant.experts]
    return linear if linear == experts else f"{experts} experts, {linear} elsewhere"


@dataclass
class Plan:
    model: str  # as `seekd serve --model` takes it
    config: dict[str, Any]
    gpus: GPUSpec
    target_context: int
    fit: Fit | None
    shown: Footprint | None  # the chosen layout's, or (no fit) the largest layout's
    shown_layout: Layout | None
    nodes_needed: int | None = None  # no fit: machines of this kind that would hold it
    notes: list[str] = field(default_factory=list)

    @property
    def fits(self) -> bool:
        return self.fit is not None

    @property
    def replicas(self) -> int:
        return self.gpus.total // self.fit.layout.gpus if self.fit else 0

    @property
    def multi_node(self) -> bool:
        return self.fit is not None and self.fit.layout.gpus > self.gpus.per_node

    def serve_flags(self) -> list[str]:
        assert self.fit is not None
        layout, flags = self.fit.layout, []
        if layout.tp > 1:
            flags.append(f"--tensor-parallel-size {layout.tp}")
        if layout.pp > 1:
            flags.append(f"--pipeline-parallel-size {layout.pp}")
        if layout.ep:
            flags.append("--enable-expert-parallel")
        if self.multi_node:
            flags.append("--distributed-executor ray --ray-address auto")
        flags.append(f"--max-model-len {self.fit.context}")
        return flags

    @property
    def serve_commands(self) -> list[str]:
        """One per replica on a machine (each from its own first GPU and port); a layout over several
        machines is one command, run on the Ray head node."""
        if self.fit is None:
            return []
        base = " ".join(["seekd serve --model", self.model, *self.serve_flags()])
        per_node = max(self.gpus.per_node // self.fit.layout.gpus, 1)
        if per_node == 1:
            return [base]
        n = self.fit.layout.gpus
        return [f"{base} --device cuda:{i * n} --port {FIRST_PORT + i}" for i in range(per_node)]

    @property
    def setup_commands(self) -> list[str]:
        if not self.multi_node:
            return []
        return [f"ray start --head --port {RAY_PORT}  # on the head node", RAY_JOIN]

    def to_dict(self) -> dict[str, Any]:
        gpu = self.gpus.kind.memory_bytes
        out: dict[str, Any] = {
            "model": self.model,
            "architecture": HFConfig(self.config).architecture,
            "precision": precision_label(self.config),
            "gpus": {
                "kind": self.gpus.kind.name,
                "per_node": self.gpus.per_node,
                "nodes": self.gpus.nodes,
                "memory_gib": round(gpu / GIB, 1),
            },
            "target_context": self.target_context,
            "fits": self.fits,
            "nodes_needed": self.nodes_needed,
            "notes": self.notes,
        }
        if self.shown is not None and self.shown_layout is not None:
            out["layout"] = _layout_dict(self.shown_layout, self.replicas)
            out["per_gpu"] = _per_gpu(self.shown, gpu)
            out["stages"] = [
                {"layers": [s.layers.start, s.layers.stop - 1], "weight_gib": _gib(s.weight_bytes)}
                for s in self.shown.stages
            ]
        if self.fit is not None:
            cap = self.fit.capacity
            contexts = sorted({c for c in CONTEXTS if c < self.fit.context} | {self.fit.context})
            out["capacity"] = {
                "max_context_tokens": cap.max_tokens,
                "max_model_len": self.fit.context,
                "sequences_at_context": {str(c): cap.sequences(c) for c in contexts},
            }
        out["serve_commands"] = self.serve_commands
        out["setup_commands"] = self.setup_commands
        return out


def _gib(n: float) -> float:
    return round(n / GIB, 2)


def _layout_dict(layout: Layout, replicas: int) -> dict[str, Any]:
    return {
        "tensor_parallel_size": layout.tp,
        "pipeline_parallel_size": layout.pp,
        "expert_parallel": layout.ep,
        "gpus_per_replica": layout.gpus,
        "replicas": replicas,
    }


def _per_gpu(fp: Footprint, gpu_bytes: int) -> dict[str, Any]:
    """The GPU of the stage holding the most weights."""
    stage = fp.heaviest
    return {
        "usable_gib": _gib(usable_bytes(gpu_bytes)),
        "weights_gib": _gib(stage.weight_bytes),
        "activations_gib": _gib(activation_bytes(gpu_bytes)),
        "kv_cache_gib": _gib(max(kv_budget(gpu_bytes, stage.weight_bytes), 0)),
        "kv_bytes_per_token": round(stage.kv_bytes_per_token, 1),
        "kv_by_kind": kv_by_kind(stage),
    }


def _largest(config: dict[str, Any], layouts: list[Layout]) -> tuple[Layout, Footprint] | None:
    """The layout that spreads the weights thinnest: shown when nothing fits."""
    built = [(layout, fp) for layout in layouts if (fp := footprint(config, PRECISION, layout)) is not None]
    return min(built, key=lambda b: (b[1].weight_bytes, b[0].pp), default=None)


def nodes_needed(config: dict[str, Any], gpus: GPUSpec, target: int) -> int | None:
    moe = has_routed_experts(config)
    for nodes in range(gpus.nodes + 1, MAX_NODES + 1):
        more = GPUSpec(gpus.kind, gpus.per_node, nodes)
        options = [(PRECISION, layout) for layout in candidates(more, moe) if layout.gpus > gpus.total]
        if first_fit(config, options, gpus.kind.memory_bytes, target) is not None:
            return nodes
    return None


def make_plan(config: dict[str, Any], model: str, gpus: GPUSpec, target: int = GOOD_CONTEXT) -> Plan:
    layouts = candidates(gpus, has_routed_experts(config))
    fit = first_fit(config, [(PRECISION, layout) for layout in layouts], gpus.kind.memory_bytes, target)
    if fit is not None:
        plan = Plan(model, config, gpus, target, fit, fit.footprint, fit.layout)
        if fit.context < min(fit.footprint.max_position, target):
            plan.notes.append(f"the KV cache holds {fit.capacity.max_tokens} tokens: less than {target} of context")
        if plan.replicas > 1:
            plan.notes.append(
                f"{plan.replicas} replicas of {fit.layout.gpus} GPU(s) each; put `seekd router` in front of them"
            )
        return plan
    largest = _largest(config, layouts)
    plan = Plan(model, config, gpus, target, None, largest[1] if largest else None, largest[0] if largest else None)
    plan.nodes_needed = nodes_needed(config, gpus, target)
    why = "the model cannot be split over these GPUs"
    if largest is not None:
        layout, fp = largest
        why = (
            f"its weights take {fp.weight_bytes / GIB:.1f} GiB a GPU at tensor-parallel size {layout.tp}"
            + (f" x pipeline-parallel size {layout.pp}" if layout.pp > 1 else "")
            + f", leaving too little of {gpus.kind.name}'s {usable_bytes(gpus.kind.memory_bytes) / GIB:.1f} usable"
            " GiB for activations and the KV cache"
        )
    advice = (
        f"; it fits {plan.nodes_needed} nodes of {gpus.per_node} x {gpus.kind.name} (--nodes {plan.nodes_needed})"
        if plan.nodes_needed
        else "; it needs bigger GPUs"
    )
    plan.notes.append(f"does not fit {gpus}: {why}{advice}")
    return plan


def model_config(name: str, store: ModelStore) -> tuple[dict[str, Any], str]:
    """(config.json, what `seekd serve --model` takes) for a model folder, an alias or repository id
    of the DeepSeek family, a public benchmark shape, or a repository in the model store."""
    folder = Path(name).expanduser()
    if (folder / "config.json").is_file():
        return HFConfig.from_folder(folder).to_dict(), name
    by_repo = {v.repo_id.lower(): v for v in VARIANTS}
    variant = BY_ALIAS.get(name.lower()) or by_repo.get(name.lower()) or by_repo.get(f"deepseek-ai/{name}".lower())
    if variant is not None:
        return dict(variant.config), variant.alias
    with contextlib.suppress(FileNotFoundError, ValueError):
        return public_shape(name), "MODEL_DIR"
    if looks_like_repo(name):
        folder, _ = model_folder(name, store)
        return HFConfig.from_folder(folder).to_dict(), name
    raise ValueError(
        f"{name!r} is not a model folder with a config.json, an alias ({', '.join(BY_ALIAS)}) or a public shape"
    )
