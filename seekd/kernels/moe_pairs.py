"""The fused MoE for a decode step of a token or so: one GEMV per (token, slot) pair for the gate and
up projections, and a down GEMV that sums each token's slots itself. Two launches, no sorting by
expert; each pair streams its own expert's weights (in any ExpertWeights format, decoded in
registers), so at one token, whose experts are distinct, every weight is read once."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from seekd.kernels.activation import swiglu
from seekd.kernels.expert_weights import ExpertWeights, expert_products


@dataclass(frozen=True)
class PairTiling:
    block_n: int  # output features per program (gate and up rows each for the gate-up pass)
    block_k: int  # reduction features per tile
    num_warps: int = 4
    flat_down: bool = False  # the down pass as one loop over (slot, tile) rather than a loop per slot

    @property
    def name(self) -> str:
        return f"pairs_n{self.block_n}_k{self.block_k}_w{self.num_warps}{'_flat' if self.flat_down else ''}"


# Up to this many tokens the per-pair GEMVs beat sorting by expert: a token's experts are distinct,
# so at one token no weight is read twice, and the alignment and the sum over slots cost a launch each
# (on an H100 pairs won at one token for V2-Lite and V3 shapes and lost from two on:
# benchmarks/results/fused_moe_h100.json)
PAIR_PATH_MAX_TOKENS = 1
PAIR_TILING = PairTiling(4, 512)
# What `pick_batch1_tiling` tries: the best differed by shape on an H100 (2x512 for V2-Lite's short
# rows, 4x1024 for V3's 7168-wide ones)
PAIR_CANDIDATES = (
    PairTiling(2, 512),
    PairTiling(4, 512),
    PairTiling(4, 1024),
    PairTiling(8, 512),
    PairTiling(2, 1024),
    PairTiling(2, 512, flat_down=True),
    PairTiling(4, 1024, flat_down=True),
)


@triton.jit
def _pair_gate_up_kernel(
    x_ptr,
    act_ptr,
    ids_ptr,
    w_ptr,
    s_ptr,
    stride_we,
    stride_wn,
    stride_se,
    stride_sn,
    stride_sk,
    hidden,
    inter,
    swiglu_limit,
    stride_xt,
    stride_ap,
    TOP_K: tl.constexpr,
    HAS_LIMIT: tl.constexpr,
    FORMAT: tl.constexpr,
    BLOCK_N: tl.constexpr,
    GROUPS: tl.constexpr,
    GROUP_W: tl.constexpr,
):
    pair = tl.program_id(0)
    expert = tl.load(ids_ptr + pair).to(tl.int64)
    x_row = x_ptr + (pair // TOP_K).to(tl.int64) * stride_xt
    rows = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    row_valid = rows < inter
    w = w_ptr + expert * stride_we
    s = s_ptr + expert * stride_se
    cols = tl.arange(0, GROUPS)[:, None] * GROUP_W + tl.arange(0, GROUP_W)[None, :]
    acc_gate = tl.zeros([BLOCK_N, GROUPS, GROUP_W], tl.float32)
    acc_up = tl.zeros([BLOCK_N, GROUPS, GROUP_W], tl.float32)
    for start in range(0, hidden, GROUPS * GROUP_W):
        x = tl.load(x_row + start + cols, mask=start + cols < hidden, other=0.0).to(tl.float32)
        acc_gate += expert_products(
            x, w, s, rows, row_valid, start, hidden, stride_wn, stride_sn, stride_sk, FORMAT, BLOCK_N, GROUPS, GROUP_W
        )
        acc_up += expert_products(
            x,
            w,
            s,
            rows + inter,
            row_valid,
            start,
            hidden,
            stride_wn,
            stride_sn,
            stride_sk,
            FORMAT,
            BLOCK_N,
            GROUPS,
            GROUP_W,
        )
    gate = tl.sum(tl.sum(acc_gate, axis=2), axis=1)
    up = tl.sum(tl.sum(acc_up, axis=2), axis=1)
    out = swiglu(gate, up, swiglu_limit, act_ptr.dtype.element_ty, HAS_LIMIT)
    tl.store(act_ptr + pair.to(tl.int64) * stride_ap + rows, out, mask=row_valid)


@triton.jit
def _pair_down_kernel(
    act_ptr,
    topk_weights_ptr,
    ids_ptr,
    out_ptr,
    w_ptr,
    s_ptr,
    stride_we,
    stride_wn,
    stride_se,
    stride_sn,
    stride_sk,
    hidden,
    inter,
    stride_ap,
    stride_ot,
    TOP_K: tl.constexpr,
    TOP_K_P: tl.constexpr,
    FLAT: tl.constexpr,
    FORMAT: tl.constexpr,
    BLOCK_N: tl.constexpr,
    GROUPS: tl.constexpr,
    GROUP_W: tl.constexpr,
):
    token = tl.program_id(0)
    rows = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    row_valid = rows < hidden
    dtype = act_ptr.dtype.element_ty
    slots = tl.arange(0, TOP_K_P)
    cols = tl.arange(0, GROUPS)[:, None] * GROUP_W + tl.arange(0, GROUP_W)[None, :]
    per_slot = tl.zeros([TOP_K_P, BLOCK_N], tl.float32)  # each expert's output, before its weight
    if FLAT:  # one loop over (slot, chunk), which the compiler pipelines across the slots
        chunks = tl.cdiv(inter, GROUPS * GROUP_W)
        for it in range(0, TOP_K * chunks):
            slot = it // chunks
            pair = token * TOP_K + slot
            expert = tl.load(ids_ptr + pair).to(tl.int64)
            start = (it - slot * chunks) * (GROUPS * GROUP_W)
            a = tl.load(act_ptr + pair.to(tl.int64) * stride_ap + start + cols, mask=start + cols < inter, other=0.0)
            products = expert_products(
                a.to(tl.float32),
                w_ptr + expert * stride_we,
                s_ptr + expert * stride_se,
                rows,
                row_valid,
                start,
                inter,
                stride_wn,
                stride_sn,
                stride_sk,
                FORMAT,
                BLOCK_N,
                GROUPS,
                GROUP_W,
            )
            y = tl.sum(tl.sum(products, axis=2), axis=1)
            per_slot += tl.where(slots[:, None] == slot, y[None, :], 0.0)
    else:
        for slot in range(TOP_K):
            pair = token * TOP_K + slot
            expert = tl.load(ids_ptr + pair).to(tl.int64)
            a_row = act_ptr + pair.to(tl.int64) * stride_ap
            w = w_ptr + expert * stride_we
            s = s_ptr + expert * stride_se
            acc = tl.zeros([BLOCK_N, GROUPS, GROUP_W], tl.float32)
            for start in range(0, inter, GROUPS * GROUP_W):
                a = tl.load(a_row + start + cols, mask=start + cols < inter, other=0.0).to(tl.float32)
                acc += expert_products(
                    a,
                    w,
                    s,
                    rows,
                    row_valid,
                    start,
                    inter,
                    stride_wn,
                    stride_sn,
                    stride_sk,
                    FORMAT,
                    BLOCK_N,
                    GROUPS,
                    GROUP_W,
                )
            per_slot += tl.where(slots[:, None] == slot, tl.sum(tl.sum(acc, axis=2), axis=1)[None, :], 0.0)
    weight = tl.load(topk_weights_ptr + token * TOP_K + slots, mask=slots < TOP_K, other=0.0).to(tl.float32)
    # rounded as the blocked path rounds: each expert's output, its weighted share, then the sum
    shares = (per_slot.to(dtype).to(tl.float32) * weight[:, None]).to(dtype).to(tl.float32)
    tl.store(out_ptr + token.to(tl.int64) * stride_ot + rows, tl.sum(shares, axis=0).to(dtype), mask=row_valid)


def fused_moe_pairs(
    x: torch.Tensor,
    experts: ExpertWeights,
    topk_weights: torch.Tensor,
    topk_ids: torch.Tensor,
    swiglu_limit: float | None = None,
    tiling: PairTiling = PAIR_TILING,
) -> torch.Tensor:
    """`fused_moe` as one GEMV per (token, slot) pair and a down GEMV that sums each token's slots:
    two launches in all, no alignment, for decode batches of a token or so (each pair streams its
    own expert's weights, so experts shared by several tokens would be read once per token).
    Takes the inputs `fused_moe` has checked."""
    num_tokens, hidden = x.shape
    top_k = topk_ids.shape[1]
    inter = experts.intermediate_size
    experts.check_block_k(tiling.block_k, per_tile_scale=False)
    x = x if x.stride(1) == 1 else x.contiguous()
    ids = topk_ids.contiguous()
    act = torch.empty(num_tokens * top_k, inter, dtype=x.dtype, device=x.device)
    up_groups, up_width = experts.product_groups(min(tiling.block_k, triton.next_power_of_2(hidden)))
    _pair_gate_up_kernel[(num_tokens * top_k, triton.cdiv(inter, tiling.block_n))](
        x,
        act,
        ids,
        *experts.w13_args,
        hidden,
        inter,
        float(swiglu_limit or 0.0),
        x.stride(0),
        act.stride(0),
        TOP_K=top_k,
        HAS_LIMIT=swiglu_limit is not None,
        FORMAT=experts.format_id,
        BLOCK_N=tiling.block_n,
        GROUPS=up_groups,
        GROUP_W=up_width,
        num_warps=tiling.num_warps,
    )
    out = torch.empty_like(x)
    down_groups, down_width = experts.product_groups(min(tiling.block_k, triton.next_power_of_2(inter)))
    _pair_down_kernel[(num_tokens, triton.cdiv(hidden, tiling.block_n))](
        act,
        topk_weights.contiguous(),
        ids,
        out,
        *experts.w2_args,
        hidden,
        inter,
        act.stride(0),
        out.stride(0),
        TOP_K=top_k,
        TOP_K_P=triton.next_power_of_2(top_k),
        FLAT=tiling.flat_down,
        FORMAT=experts.format_id,
        BLOCK_N=tiling.block_n,
        GROUPS=down_groups,
        GROUP_W=down_width,
        num_warps=tiling.num_warps,
    )
    return out
