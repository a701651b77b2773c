"""Routed experts of a DeepSeek MoE layer as two grouped GEMMs, with no host synchronisation.

The reference loop (`RoutedExperts.forward`) asks the host which experts are active, which stalls
every layer and keeps MoE decode steps out of CUDA graphs. Here every size depends only on the
number of tokens:

1. `align_by_expert` (moe_align.py) sorts the (token, slot) pairs by expert on the device and pads
   each expert's run to a multiple of BLOCK_M, so that every BLOCK_M block of sorted rows belongs to
   one expert.
   The sorted buffer has its worst-case length, T*k + min(E, T*k) * (BLOCK_M - 1); blocks past the
   real end return at once.
2. `_gate_up_kernel`: per block, x rows @ that expert's gate and up rows (w13 [E, 2I, H]), then
   SwiGLU (with V4's clipping) into an [rows, I] buffer.
3. `_down_kernel`: per block, that buffer @ the expert's w2 [E, H, I], times each row's routing
   weight, written to the row's own (token, slot) place; a sum over the slots then gives the output.
   No atomics, so results are reproducible run to run.

A decode step of one token skips the sorting: `fused_moe_pairs` (moe_pairs.py) runs one GEMV per
(token, slot) pair and a down GEMV that sums the token's slots itself, two launches instead of four.

The experts come as an `ExpertWeights` (expert_weights.py): dense, DeepSeek's block FP8 or V4's FP4,
the format a constexpr of every kernel; low-bit weights are decoded tile by tile in registers. This
module is the entry point: `__all__` is the public API of the fused MoE.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import torch
import triton
import triton.language as tl

from seekd.kernels.activation import swiglu
from seekd.kernels.expert_weights import WEIGHT_FORMATS, ExpertWeights, dot_tile, scaled_dot
from seekd.kernels.moe_align import align_by_expert
from seekd.kernels.moe_pairs import PAIR_CANDIDATES, PAIR_PATH_MAX_TOKENS, PAIR_TILING, PairTiling, fused_moe_pairs

__all__ = [
    "PAIR_CANDIDATES",
    "PAIR_TILING",
    "WEIGHT_FORMATS",
    "ExpertWeights",
    "MoeTiling",
    "PairTiling",
    "fused_moe",
    "fused_moe_pairs",
    "pick_batch1_tiling",
    "pick_tiling",
]


@dataclass(frozen=True)
class MoeTiling:
    block_m: int  # sorted rows per block (one expert each); tl.dot needs at least 16
    block_n_up: int  # intermediate features per gate-up program (gate and up columns each)
    block_n_down: int  # hidden features per down program
    block_k: int  # reduction features per tile
    num_warps: int = 4
    num_stages: int = 3

    @property
    def name(self) -> str:
        return (
            f"m{self.block_m}_up{self.block_n_up}_down{self.block_n_down}_k{self.block_k}"
            f"_w{self.num_warps}_s{self.num_stages}"
        )


@lru_cache
def _streaming_multiprocessors(device: torch.device) -> int:
    return torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 1


def pick_tiling(num_pairs: int, num_experts: int, hidden: int, inter: int, device: torch.device) -> MoeTiling:
    """Blocks no taller than the average expert's share of the (token, slot) pairs (taller ones would
    mostly carry padding rows), and columns per program narrow enough that the programs of a small
    batch still cover the GPU twice: at decode each one streams its own slice of expert weights."""
    per_expert = num_pairs / num_experts
    block_m = 16 if per_expert <= 16 else 32 if per_expert <= 48 else 64
    min_blocks = min(num_experts, num_pairs)  # every expert that has pairs fills at least one block
    target = 2 * _streaming_multiprocessors(device)

    def block_n(features: int) -> int:
        return next((n for n in (64, 32) if min_blocks * triton.cdiv(features, n) >= target), 16)

    return MoeTiling(block_m, block_n(inter), block_n(hidden), block_k=128 if block_m == 16 else 64)


@triton.jit
def _gate_up_kernel(
    x_ptr,
    act_ptr,
    sorted_rows_ptr,
    block_expert_ptr,
    w_ptr,
    s_ptr,
    stride_we,
    stride_wn,
    stride_se,
    stride_sn,
    stride_sk,
    num_pairs,
    num_experts,
    hidden,
    inter,
    swiglu_limit,
    stride_xt,
    stride_am,
    TOP_K: tl.constexpr,
    HAS_LIMIT: tl.constexpr,
    FORMAT: tl.constexpr,
    IEEE: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    block = tl.program_id(0)
    expert = tl.load(block_expert_ptr + block)
    if expert >= num_experts:  # past the last expert's padded run
        return
    offs_m = block * BLOCK_M + tl.arange(0, BLOCK_M)
    rows = tl.load(sorted_rows_ptr + offs_m)
    row_valid = rows < num_pairs
    tokens = rows // TOP_K
    cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    col_valid = cols < inter
    w = w_ptr + expert.to(tl.int64) * stride_we
    s = s_ptr + expert.to(tl.int64) * stride_se
    acc_gate = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
    acc_up = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
    for start in range(0, hidden, BLOCK_K):
        ks = start + tl.arange(0, BLOCK_K)
        x = tl.load(
            x_ptr + tokens[:, None].to(tl.int64) * stride_xt + ks[None, :],
            mask=row_valid[:, None] & (ks < hidden)[None, :],
            other=0.0,
        )
        w_gate = dot_tile(
            w, s, cols, col_valid, start, hidden, stride_wn, stride_sn, stride_sk, x.dtype, FORMAT, BLOCK_N, BLOCK_K
        )
        w_up = dot_tile(
            w,
            s,
            cols + inter,
            col_valid,
            start,
            hidden,
            stride_wn,
            stride_sn,
            stride_sk,
            x.dtype,
            FORMAT,
            BLOCK_N,
            BLOCK_K,
        )
        acc_gate = scaled_dot(acc_gate, x, w_gate, s, cols, col_valid, start, stride_sn, stride_sk, FORMAT, IEEE)
        acc_up = scaled_dot(acc_up, x, w_up, s, cols + inter, col_valid, start, stride_sn, stride_sk, FORMAT, IEEE)
    out = swiglu(acc_gate, acc_up, swiglu_limit, act_ptr.dtype.element_ty, HAS_LIMIT)
    tl.store(
        act_ptr + offs_m[:, None].to(tl.int64) * stride_am + cols[None, :],
        out,
        mask=row_valid[:, None] & col_valid[None, :],
    )


@triton.jit
def _down_kernel(
    act_ptr,
    topk_weights_ptr,
    out_ptr,
    sorted_rows_ptr,
    block_expert_ptr,
    w_ptr,
    s_ptr,
    stride_we,
    stride_wn,
    stride_se,
    stride_sn,
    stride_sk,
    num_pairs,
    num_experts,
    hidden,
    inter,
    stride_am,
    stride_or,
    FORMAT: tl.constexpr,
    IEEE: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    block = tl.program_id(0)
    expert = tl.load(block_expert_ptr + block)
    if expert >= num_experts:
        return
    offs_m = block * BLOCK_M + tl.arange(0, BLOCK_M)
    rows = tl.load(sorted_rows_ptr + offs_m)
    row_valid = rows < num_pairs
    cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    col_valid = cols < hidden
    w = w_ptr + expert.to(tl.int64) * stride_we
    s = s_ptr + expert.to(tl.int64) * stride_se
    acc = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
    for start in range(0, inter, BLOCK_K):
        ks = start + tl.arange(0, BLOCK_K)
        a = tl.load(
            act_ptr + offs_m[:, None].to(tl.int64) * stride_am + ks[None, :],
            mask=row_valid[:, None] & (ks < inter)[None, :],
            other=0.0,
        )
        w_tile = dot_tile(
            w, s, cols, col_valid, start, inter, stride_wn, stride_sn, stride_sk, a.dtype, FORMAT, BLOCK_N, BLOCK_K
        )
        acc = scaled_dot(acc, a, w_tile, s, cols, col_valid, start, stride_sn, stride_sk, FORMAT, IEEE)
    weight = tl.load(topk_weights_ptr + rows, mask=row_valid, other=0.0).to(tl.float32)
    # rounded as the reference rounds it: the expert's output, then its weighted share
    y = acc.to(act_ptr.dtype.element_ty).to(tl.float32) * weight[:, None]
    tl.store(
        out_ptr + rows[:, None].to(tl.int64) * stride_or + cols[None, :],
        y.to(out_ptr.dtype.element_ty),
        mask=row_valid[:, None] & col_valid[None, :],
    )


def _check_inputs(x: torch.Tensor, experts: ExpertWeights, topk_weights: torch.Tensor, topk_ids: torch.Tensor) -> None:
    if x.dim() != 2 or x.shape[1] != experts.hidden_size:
        raise ValueError(f"x has shape {tuple(x.shape)}; these experts take [tokens, {experts.hidden_size}]")
    if experts.format == "dense" and x.dtype != experts.w13.dtype:
        raise ValueError(f"x is {x.dtype} but the dense experts are {experts.w13.dtype}")
    if x.dtype not in (torch.bfloat16, torch.float16, torch.float32):
        raise ValueError(f"x must be bf16, fp16 or fp32, not {x.dtype}")
    if topk_ids.dim() != 2 or topk_ids.shape[0] != x.shape[0] or topk_weights.shape != topk_ids.shape:
        raise ValueError(
            f"topk_weights {tuple(topk_weights.shape)} and topk_ids {tuple(topk_ids.shape)} must both be "
            f"[{x.shape[0]}, top_k]"
        )


def fused_moe(
    x: torch.Tensor,
    experts: ExpertWeights,
    topk_weights: torch.Tensor,
    topk_ids: torch.Tensor,
    swiglu_limit: float | None = None,
    tiling: MoeTiling | PairTiling | None = None,
) -> torch.Tensor:
    """x: [T, H]; topk_weights/ids: [T, k] -> [T, H] = sum over each token's experts of
    weight * w2 @ swiglu(w13 @ x), like the reference loop over the (dequantized) experts.
    A PairTiling forces the per-pair GEMVs, a MoeTiling the blocks sorted by expert; None picks by T."""
    _check_inputs(x, experts, topk_weights, topk_ids)
    num_tokens, hidden = x.shape
    num_experts, inter = experts.num_experts, experts.intermediate_size
    top_k = topk_ids.shape[1]
    num_pairs = num_tokens * top_k
    if num_pairs == 0:
        return torch.zeros_like(x)
    if isinstance(tiling, PairTiling) or (tiling is None and num_tokens <= PAIR_PATH_MAX_TOKENS):
        return fused_moe_pairs(x, experts, topk_weights, topk_ids, swiglu_limit, tiling or PAIR_TILING)
    tiling = tiling or pick_tiling(num_pairs, num_experts, hidden, inter, x.device)
    experts.check_block_k(tiling.block_k, per_tile_scale=True)
    x = x if x.stride(1) == 1 else x.contiguous()
    align = align_by_expert(topk_ids, num_experts, tiling.block_m)
    num_blocks = align.block_expert.numel()
    kernel_flags = dict(
        FORMAT=experts.format_id,
        IEEE=x.dtype == torch.float32,
        BLOCK_M=tiling.block_m,
        BLOCK_K=tiling.block_k,
        num_warps=tiling.num_warps,
        num_stages=tiling.num_stages,
    )

    act = torch.empty(align.sorted_rows.numel(), inter, dtype=x.dtype, device=x.device)
    _gate_up_kernel[(num_blocks, triton.cdiv(inter, tiling.block_n_up))](
        x,
        act,
        align.sorted_rows,
        align.block_expert,
        *experts.w13_args,
        num_pairs,
        num_experts,
        hidden,
        inter,
        float(swiglu_limit or 0.0),
        x.stride(0),
        act.stride(0),
        TOP_K=top_k,
        HAS_LIMIT=swiglu_limit is not None,
        BLOCK_N=tiling.block_n_up,
        **kernel_flags,
    )
    per_slot = torch.empty(num_pairs, hidden, dtype=x.dtype, device=x.device)
    _down_kernel[(num_blocks, triton.cdiv(hidden, tiling.block_n_down))](
        act,
        topk_weights.flatten().contiguous(),
        per_slot,
        align.sorted_rows,
        align.block_expert,
        *experts.w2_args,
        num_pairs,
        num_experts,
        hidden,
        inter,
        act.stride(0),
        per_slot.stride(0),
        BLOCK_N=tiling.block_n_down,
        **kernel_flags,
    )
    return per_slot.view(num_tokens, top_k, hidden).sum(dim=1)  # accumulates in fp32, rounds once


def pick_batch1_tiling(
    layers: list[ExpertWeights],
    top_k: int,
    swiglu_limit: float | None,
    dtype: torch.dtype | None = None,
    reps: int = 5,
) -> tuple[MoeTiling | PairTiling, dict[str, float]]:
    """The fastest way to run one token through every layer's experts of one shape (all layers in
    turn, so weights come from memory as in decode): the blocked path or a per-pair tiling, timed as
    CUDA graph replays on a fixed routing of distinct experts. `dtype` is the activations' (None: the
    dense weights' own, bf16 for low-bit ones). Returns the choice and the ms per pass of each."""
    from seekd.kernels.gemv import graph_time_ms

    first = layers[0]
    device = first.w13.device
    dtype = dtype or (first.w13.dtype if first.format == "dense" else torch.bfloat16)
    x = torch.randn(1, first.hidden_size, dtype=dtype, device=device)
    ids = torch.randperm(first.num_experts, device=device)[:top_k].view(1, top_k)
    weights = torch.full((1, top_k), 1.0 / top_k, device=device)
    blocked = pick_tiling(top_k, first.num_experts, first.hidden_size, first.intermediate_size, device)

    def one_pass(tiling: MoeTiling | PairTiling) -> None:
        for experts in layers:
            fused_moe(x, experts, weights, ids, swiglu_limit, tiling)

    timings = {t.name: graph_time_ms(lambda t=t: one_pass(t), reps) for t in (blocked, *PAIR_CANDIDATES)}
    best = min((blocked, *PAIR_CANDIDATES), key=lambda t: timings[t.name])
    return best, timings
