"""Start-up choice, per weight shape, between cuBLAS and the Triton GEMV for batch-1 products, and
between the MoE kernel's two one-token paths (blocks sorted by expert, or per-pair GEMV tilings).

Batch-1 decode is bound by reading weights; which kernel reads them fastest depends on the shape
and the GPU, so it is measured on the model's own weights (every layer's weight of a shape in turn,
which defeats the L2 cache as decode does) rather than assumed. Runs on the GPU fast path only,
before CUDA graphs are captured, so the graphs hold the chosen kernels.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from typing import TYPE_CHECKING

import torch
from torch import nn

from seekd.layers.embedding import ParallelLMHead
from seekd.layers.linear import LinearBase
from seekd.layers.moe import RoutedExperts
from seekd.layers.quantization.int4_linear import Int4Linear
from seekd.layers.quantization.linear_methods import Fp8BlockLinear

if TYPE_CHECKING:
    from seekd.kernels.fused_moe import MoeTiling, PairTiling
    from seekd.kernels.gemv import GemvConfig

logger = logging.getLogger(__name__)


def tune_batch1_gemv(model: nn.Module) -> dict[str, dict]:
    """Set `gemv` on every plain bf16/fp16 linear layer where the Triton GEMV wins; returns, per
    shape, the choice and the timings (ms per pass over that shape's weights) behind it."""
    from seekd.kernels.activation import silu_and_mul
    from seekd.kernels.gemv import pick_gemv, pick_normed_gemv

    groups: dict[tuple, list[LinearBase | ParallelLMHead]] = defaultdict(list)
    for module in model.modules():
        if (
            isinstance(module, (LinearBase, ParallelLMHead))
            and module.weight.dtype in (torch.bfloat16, torch.float16)
            and module.weight.dim() == 2
            and module.weight.is_cuda
        ):
            bias, gated = getattr(module, "bias", None), getattr(module, "gated_input", False)  # no LM head has them
            normed = getattr(module, "normed_input", False)
            key = (tuple(module.weight.shape), module.weight.dtype, bias is not None, gated, normed)
            groups[key].append(module)
    report = {}
    for (shape, _, _, gated, normed), modules in groups.items():
        baseline = silu_and_mul if gated else (lambda x: x)  # what the reference path launches first
        try:
            biases = [getattr(m, "bias", None) for m in modules]
            choice, timings = pick_gemv([m.weight for m in modules], biases, gated, baseline)
        except Exception:  # an optional speed-up must not stop the server from starting
            logger.exception("timing the batch-1 GEMV for %s failed; keeping cuBLAS", shape)
            choice, timings = None, {}
        for module in modules:
            module.gemv = choice
        name = f"{shape[0]}x{shape[1]}{' gated' if gated else ''}"
        _record(report, name, modules, choice, timings)
        if normed:
            name += " normed"
            try:
                folded, timings = pick_normed_gemv([m.weight for m in modules], biases, choice)
            except Exception:
                logger.exception("timing the normed GEMV for %s failed; keeping the norm kernel", shape)
                folded, timings = None, {}
            for module in modules:
                module.normed_gemv = folded
            _record(report, name, modules, folded, timings)
    tune_batch1_fp8(model, report)
    tune_batch1_int4(model, report)
    tune_batch1_experts(model, report)
    return report


def tune_batch1_int4(model: nn.Module, report: dict[str, dict]) -> None:
    """Set `gemv` on INT4 linear layers where the INT4 GEMV beats the W4A16 GEMM at one token."""
    from seekd.kernels.int4_gemm import pick_int4_gemv

    groups: dict[tuple, list[LinearBase]] = defaultdict(list)
    for module in model.modules():
        method = getattr(module, "quant_method", None)
        if isinstance(method, Int4Linear) and method.gemm == "triton" and module.weight.is_cuda:
            key = (tuple(module.weight.shape), tuple(module.weight_scale.shape), module.bias is not None)
            groups[key].append(module)
    for (shape, _, _), modules in groups.items():
        try:
            layers = [(m.weight, m.weight_scale, m.weight_zero, m.bias) for m in modules]
            choice, timings = pick_int4_gemv(layers, dtype=modules[0].params_dtype)
        except Exception:  # an optional speed-up must not stop the server from starting
            logger.exception("timing the INT4 GEMV for %s failed; keeping the W4A16 GEMM", shape)
            continue
        for module in modules:
            module.gemv = choice
        _record(report, f"{shape[1]}x{shape[0] * 8} int4", modules, choice, timings)


def tune_batch1_fp8(model: nn.Module, report: dict[str, dict]) -> None:
    """Set `gemv` on block-FP8 linear layers where the one-byte-a-weight GEMV beats the block-FP8 GEMM
    at one token, timed per weight shape over every layer of that shape."""
    from seekd.kernels.fp8_gemm import block_fp8_matmul, gemv_supports, pick_fp8_gemv

    groups: dict[tuple, list[LinearBase]] = defaultdict(list)
    for module in model.modules():
        method = getattr(module, "quant_method", None)
        if isinstance(method, Fp8BlockLinear) and method.gemm != "torch" and module.weight.is_cuda:
            groups[(tuple(module.weight.shape), method.gemm, module.bias is not None)].append(module)
    for (shape, gemm, _), modules in groups.items():
        if not gemv_supports(modules[0].weight):
            continue
        try:
            choice, timings = pick_fp8_gemv(
                [m.weight for m in modules],
                [m.weight_scale_inv for m in modules],
                [m.bias for m in modules],
                lambda x, w, s, b, gemm=gemm: block_fp8_matmul(x, w, s, b, mode=gemm),
                baseline_name=f"block_fp8_matmul {gemm}",
            )
        except Exception:  # an optional speed-up must not stop the server from starting
            logger.exception("timing the FP8 GEMV for %s failed; keeping the block-FP8 GEMM", shape)
            continue
        for module in modules:
            module.gemv = choice
        _record(report, f"{shape[0]}x{shape[1]} fp8", modules, choice, timings)


def tune_batch1_experts(model: nn.Module, report: dict[str, dict]) -> None:
    """Set `batch1_tiling` on the routed experts of each shape (and top-k) to the fastest one-token
    path, timed over every layer's experts of that shape."""
    from seekd.kernels.fused_moe import pick_batch1_tiling

    groups: dict[tuple, list[RoutedExperts]] = defaultdict(list)
    for module in model.modules():
        experts, gate = getattr(module, "experts", None), getattr(module, "gate", None)
        if (
            isinstance(experts, RoutedExperts)
            and hasattr(gate, "top_k")
            and experts.use_kernel
            and experts.w13_weight.is_cuda
        ):
            key = (tuple(experts.w13_weight.shape), experts.w13_weight.dtype, gate.top_k, experts.swiglu_limit)
            groups[key].append(experts)
    for (shape, _, top_k, limit), members in groups.items():
        try:
            layers = [m.expert_weights() for m in members]
            choice, timings = pick_batch1_tiling(layers, top_k, limit)
        except Exception:  # an optional speed-up must not stop the server from starting
            logger.exception("timing the one-token MoE paths for experts %s failed; keeping the default", shape)
            continue
        for member in members:
            member.batch1_tiling = choice
        _record(report, f"experts {'x'.join(map(str, shape))} top{top_k}", members, choice, timings)


def _record(
    report: dict[str, dict],
    name: str,
    modules: list,
    choice: GemvConfig | MoeTiling | PairTiling | None,
    timings: dict[str, float],
) -> None:
    """The choice is named as timed; the first timing is the baseline's (what runs without a GEMV)."""
    chosen = choice.name if choice is not None else next(iter(timings), "baseline")
    report[name] = {"layers": len(modules), "choice": chosen, "ms_per_pass": timings}
    logger.info(
        "batch-1 kernel for %s over %d layers: %s (%s)",
        name,
        len(modules),
        chosen,
        ", ".join(f"{k} {v:.3f} ms" for k, v in timings.items()),
    )
