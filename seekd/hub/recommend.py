"""What fits this machine, per DeepSeek variant: precision, tensor-parallel size and context, and
the commands that pull and serve it.

GPU: the shipped precision first (bf16 for the distills, block FP8 / FP4 for the full-size models),
then, for bf16 checkpoints only, block FP8 quantized on load (`--quantization fp8`, half the bytes);
within a precision the smallest tensor-parallel size whose KV cache holds GOOD_CONTEXT tokens (or the
model's whole context if shorter), sized by `sizing.first_fit` under the budget rule `seekd plan`
shares (hub/sizing.py). Failing that, the layout with the longest context of at least MIN_CONTEXT.

CPU: the distills only, in bf16, and only while a token's read of all weights stays under
CPU_MAX_WEIGHT_BYTES: decode on a CPU is bound by memory bandwidth (~0.1-0.3 s a token at 16 GiB on
a server's DDR5), and the full-size models' FP8/FP4 experts are decoded per product there.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

from seekd.hub.aliases import VARIANTS, Variant
from seekd.hub.probes import Machine
from seekd.hub.sizing import (
    GOOD_CONTEXT,
    MIN_CONTEXT,
    TP_SIZES,
    Fit,
    Footprint,
    Layout,
    first_fit,
    footprint,
    pow2_floor,
)

SHORT_CONTEXT_NOTE = "context below 32K: long reasoning may be cut"
CPU_MAX_WEIGHT_BYTES = 16 * 2**30
CPU_RAM_SHARE = 0.75  # of RAM for weights + KV; the rest for the OS, the server and the page cache
MIN_SM = (8, 0)  # bf16, and the FP8/FP4 decoding in registers
# the variant recommended first, when it fits: the strongest models first
BEST_ORDER = (
    "v4-pro", "v4-flash", "v3.2", "r1", "r1-distill-70b", "r1-distill-32b",
    "r1-distill-14b", "r1-distill-7b", "r1-distill-8b", "r1-distill-1.5b",
)  # fmt: skip


@dataclass
class Recommendation:
    alias: str
    repo_id: str
    params: str
    fits: bool
    note: str
    device: str = "cuda"
    precision: str | None = None  # "bf16", "fp8 (on load)" or the shipped low-bit format
    tensor_parallel_size: int | None = None
    max_model_len: int | None = None
    kv_cache_tokens: int | None = None  # tokens the KV cache holds, all requests together
    weight_gib_per_gpu: float | None = None
    flags: list[str] = field(default_factory=list)

    @property
    def pull_command(self) -> str:
        return f"seekd pull {self.alias}"

    @property
    def serve_command(self) -> str:
        return " ".join(["seekd serve --model", self.alias, *self.flags])

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        if self.fits:
            out |= {"pull_command": self.pull_command, "serve_command": self.serve_command}
        return out


def _context(fp: Footprint, kv_budget: float, cap: int | None = None) -> tuple[int, int]:
    """(recommended --max-model-len, tokens the KV cache holds)."""
    tokens = int(max(kv_budget, 0) / fp.kv_bytes_per_token)
    limit = fp.max_position if cap is None else min(fp.max_position, cap)
    return min(limit, pow2_floor(tokens)), tokens


def _precision_label(variant: Variant, precision: str) -> str:
    return "fp8 (on load)" if precision == "fp8" else variant.precision


def recommend_gpu(variant: Variant, machine: Machine) -> Recommendation:
    base = {"alias": variant.alias, "repo_id": variant.repo_id, "params": variant.params}
    if min(g.sm for g in machine.gpus) < MIN_SM:
        return Recommendation(**base, fits=False, note="needs compute capability 8.0+ (A100, RTX 30xx or newer)")
    gpu_bytes = min(g.memory_bytes for g in machine.gpus)
    sizes = [tp for tp in TP_SIZES if tp <= len(machine.gpus)]
    precisions = ("shipped",) if variant.full_size else ("shipped", "fp8")
    fit = first_fit(variant.config, [(p, Layout(tp)) for p in precisions for tp in sizes], gpu_bytes)
    if fit is not None:
        return _gpu_fit(variant, fit, base)
    smallest = min(
        (f.weight_bytes for p in precisions if (f := footprint(variant.config, p, Layout(max(sizes)))) is not None),
        default=None,
    )
    weights = (
        f"its weights take {smallest / 2**30:.1f} GiB a GPU at tensor-parallel size {max(sizes)}, " if smallest else ""
    )
    return Recommendation(
        **base,
        fits=False,
        note=f"does not fit {len(machine.gpus)} x {gpu_bytes / 2**30:.0f} GiB: {weights}leaving no room for "
        f"{MIN_CONTEXT} tokens of context; it needs more or bigger GPUs (`seekd plan` lays it out over nodes)",
    )


def _gpu_fit(variant: Variant, fit: Fit, base: dict[str, str]) -> Recommendation:
    tp, context = fit.layout.tp, fit.context
    flags = []
    if tp > 1:
        flags.append(f"--tensor-parallel-size {tp}")
    if fit.precision == "fp8":
        flags.append("--quantization fp8")
    flags.append(f"--max-model-len {context}")
    return Recommendation(
        **base,
        fits=True,
        note="" if context >= min(fit.footprint.max_position, GOOD_CONTEXT) else SHORT_CONTEXT_NOTE,
        precision=_precision_label(variant, fit.precision),
        tensor_parallel_size=tp,
        max_model_len=context,
        kv_cache_tokens=fit.capacity.max_tokens,
        weight_gib_per_gpu=round(fit.footprint.weight_bytes / 2**30, 1),
        flags=flags,
    )


def recommend_cpu(variant: Variant, machine: Machine) -> Recommendation:
    base = {"alias": variant.alias, "repo_id": variant.repo_id, "params": variant.params, "device": "cpu"}
    if variant.full_size:
        return Recommendation(**base, fits=False, note="needs GPUs: its low-bit experts are too slow on a CPU")
    fp = footprint(variant.config, "shipped", Layout(1))
    if fp is None:
        return Recommendation(**base, fits=False, note="cannot be built")
    weights = fp.weight_bytes
    if weights > CPU_MAX_WEIGHT_BYTES:
        return Recommendation(
            **base,
            fits=False,
            note=f"{weights / 2**30:.0f} GiB of weights read per token: too slow on a CPU, use a GPU",
        )
    context, _ = _context(fp, machine.ram_bytes * CPU_RAM_SHARE - weights, cap=GOOD_CONTEXT)
    if context < MIN_CONTEXT:
        return Recommendation(**base, fits=False, note=f"{machine.ram_bytes / 2**30:.0f} GiB of RAM is too little")
    kv_gib = math.ceil(context * fp.kv_bytes_per_token / 2**30)
    return Recommendation(
        **base,
        fits=True,
        note="",
        precision="bf16",
        tensor_parallel_size=1,
        max_model_len=context,
        kv_cache_tokens=int(kv_gib * 2**30 / fp.kv_bytes_per_token),
        weight_gib_per_gpu=round(weights / 2**30, 1),
        flags=["--device cpu", "--dtype bfloat16", f"--cpu-kv-cache-gib {kv_gib}", f"--max-model-len {context}"],
    )


def recommend(machine: Machine) -> list[Recommendation]:
    """One recommendation per variant, in the alias table's order."""
    decide = recommend_gpu if machine.gpus else recommend_cpu
    return [decide(v, machine) for v in VARIANTS]


def best(recommendations: list[Recommendation]) -> Recommendation | None:
    fitting = {r.alias: r for r in recommendations if r.fits}
    return next((fitting[a] for a in BEST_ORDER if a in fitting), None)
