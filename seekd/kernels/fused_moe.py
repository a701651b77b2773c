"""Routed experts of a DeepSeek MoE layer as two grouped GEMMs, with no host synchronisation.

The reference loop (`RoutedExperts.forward`) asks the host which experts are active, which stalls
every layer and keeps MoE decode steps out of CUDA graphs. Here every size depends only on the
number of tokens:

1. `align_by_expert` sorts the (token, slot) pairs by expert on the device and pads each expert's
   run to a multiple of BLOCK_M, so that every BLOCK_M block of sorted rows belongs to one expert.
   The sorted buffer has its worst-case length, T*k + min(E, T*k) * (BLOCK_M - 1); blocks past the
   real end return at once.
2. `_gate_up_kernel`: per block, x rows @ that expert's gate and up rows (w13 [E, 2I, H]), then
   SwiGLU (with V4's clipping) into an [rows, I] buffer.
3. `_down_kernel`: per block, that buffer @ the expert's w2 [E, H, I], times each row's routing
   weight, written to the row's own (token, slot) place; a sum over the slots then gives the output.
   No atomics, so results are reproducible run to run.

A decode step of one token skips the sorting: `fused_moe_pairs` runs one GEMV per (token, slot) pair
and a down GEMV that sums the token's slots itself, two launches instead of four.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import torch
import triton
import triton.language as tl


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


@dataclass
class ExpertAlignment:
    sorted_rows: torch.Tensor  # [num_padded] int32: flat (token * k + slot) index, or T*k for padding
    block_expert: torch.Tensor  # [num_padded // block_m] int32: expert of each block, E past the end
    block_m: int


def _alignment_size(num_pairs: int, num_experts: int, block_m: int) -> int:
    """Blocks in the sorted buffer: only experts with pairs get padding, and at most num_pairs have any."""
    return triton.cdiv(num_pairs + min(num_experts, num_pairs) * (block_m - 1), block_m)


def align_by_expert(topk_ids: torch.Tensor, num_experts: int, block_m: int) -> ExpertAlignment:
    """Group the flattened (token, slot) pairs by expert (in pair order within an expert), each group
    padded to a multiple of block_m, without reading a value back to the host. One Triton program
    does it in a single launch for decode-sized batches; larger ones take the torch ops, whose sort
    runs in parallel."""
    if topk_ids.numel() <= ALIGN_KERNEL_MAX_PAIRS:
        return align_by_expert_kernel(topk_ids, num_experts, block_m)
    return align_by_expert_torch(topk_ids, num_experts, block_m)


def align_by_expert_torch(topk_ids: torch.Tensor, num_experts: int, block_m: int) -> ExpertAlignment:
    """The reference alignment, in torch ops (some twenty launches)."""
    flat = topk_ids.flatten().long()
    num_pairs = flat.numel()
    device = flat.device
    # scatter_add rather than bincount: CUDA bincount reads the maximum back to size its output
    counts = torch.zeros(num_experts, dtype=torch.int64, device=device)
    counts.scatter_add_(0, flat, torch.ones_like(flat))
    padded = (counts + block_m - 1) // block_m * block_m
    padded_end = padded.cumsum(0)
    padded_start = padded_end - padded
    run_start = counts.cumsum(0) - counts  # where each expert's pairs start in sorted order
    order = torch.argsort(flat, stable=True)
    sorted_expert = flat[order]
    dest = padded_start[sorted_expert] + torch.arange(num_pairs, device=device) - run_start[sorted_expert]

    num_blocks = _alignment_size(num_pairs, num_experts, block_m)
    sorted_rows = torch.full((num_blocks * block_m,), num_pairs, dtype=torch.int32, device=device)
    sorted_rows.scatter_(0, dest, order.to(torch.int32))
    block_start = torch.arange(num_blocks, device=device) * block_m
    block_expert = torch.searchsorted(padded_end, block_start, right=True).to(torch.int32)
    return ExpertAlignment(sorted_rows, block_expert, block_m)


# Up to here one program's sequential pass over the pairs (CHUNK at a time) beats the torch ops' launches
ALIGN_KERNEL_MAX_PAIRS = 2048


@triton.jit
def _align_kernel(
    ids_ptr,
    sorted_rows_ptr,
    block_expert_ptr,
    cursor_ptr,
    num_pairs,
    num_experts,
    num_blocks,
    BLOCK_M: tl.constexpr,
    E_P: tl.constexpr,
    CHUNK: tl.constexpr,
    BLOCK_CHUNK: tl.constexpr,
):
    experts = tl.arange(0, E_P)
    spare = E_P - 1  # a bin no expert uses (E_P > num_experts): masked-off pairs count there
    counts = tl.zeros([E_P], tl.int32)
    for start in range(0, num_pairs, CHUNK):
        offs = start + tl.arange(0, CHUNK)
        e = tl.load(ids_ptr + offs, mask=offs < num_pairs, other=spare).to(tl.int32)
        counts += tl.histogram(e, E_P)
    counts = tl.where(experts < num_experts, counts, 0)
    padded = (counts + BLOCK_M - 1) // BLOCK_M * BLOCK_M
    padded_end = tl.cumsum(padded, 0)
    tl.store(cursor_ptr + experts, padded_end - padded)  # next free row of each expert's run
    for start in range(0, num_blocks * BLOCK_M, CHUNK):
        offs = start + tl.arange(0, CHUNK)
        tl.store(sorted_rows_ptr + offs, num_pairs, mask=offs < num_blocks * BLOCK_M)
    for start in range(0, num_blocks, BLOCK_CHUNK):
        blocks = start + tl.arange(0, BLOCK_CHUNK)
        # a block belongs to the first expert whose run ends after its first row; E past the last run
        before = tl.sum((padded_end[None, :] <= blocks[:, None] * BLOCK_M).to(tl.int32), axis=1)
        tl.store(block_expert_ptr + blocks, tl.minimum(before, num_experts), mask=blocks < num_blocks)
    tl.debug_barrier()  # the padding fill and the cursors are in memory before any pair lands
    for start in range(0, num_pairs, CHUNK):
        offs = start + tl.arange(0, CHUNK)
        valid = offs < num_pairs
        e = tl.load(ids_ptr + offs, mask=valid, other=spare).to(tl.int32)
        # rank among this chunk's earlier pairs of the same expert: pair order, as a stable sort gives
        earlier = (e[None, :] == e[:, None]) & (offs[None, :] < offs[:, None])
        rank = tl.sum(earlier.to(tl.int32), axis=1)
        # volatile: the cursors were written by other threads of this program, after the barrier
        base = tl.load(cursor_ptr + e, mask=valid, other=0, volatile=True)
        tl.store(sorted_rows_ptr + base + rank, offs, mask=valid)
        tl.debug_barrier()
        tl.store(cursor_ptr + experts, tl.load(cursor_ptr + experts, volatile=True) + tl.histogram(e, E_P))
        tl.debug_barrier()


def align_by_expert_kernel(topk_ids: torch.Tensor, num_experts: int, block_m: int) -> ExpertAlignment:
    """`align_by_expert_torch` in one launch of one program (for a few thousand pairs at most)."""
    topk_ids = topk_ids.contiguous()
    num_pairs = topk_ids.numel()
    device = topk_ids.device
    num_blocks = _alignment_size(num_pairs, num_experts, block_m)
    experts_p = triton.next_power_of_2(num_experts + 1)
    sorted_rows = torch.empty(num_blocks * block_m, dtype=torch.int32, device=device)
    block_expert = torch.empty(num_blocks, dtype=torch.int32, device=device)
    cursor = torch.empty(experts_p, dtype=torch.int32, device=device)
    _align_kernel[(1,)](
        topk_ids,
        sorted_rows,
        block_expert,
        cursor,
        num_pairs,
        num_experts,
        num_blocks,
        BLOCK_M=block_m,
        E_P=experts_p,
        CHUNK=128,
        BLOCK_CHUNK=max(1, min(64, 8192 // experts_p)),
        num_warps=4,
    )
    return ExpertAlignment(sorted_rows, block_expert, block_m)


@triton.jit
def _swiglu(acc_gate, acc_up, swiglu_limit, dtype: tl.constexpr, HAS_LIMIT: tl.constexpr):
    """silu(gate) * up from fp32 accumulators, rounded as the reference rounds: the projections in
    the model dtype, then silu, then the product (with V4's clipping in between)."""
    gate = acc_gate.to(dtype).to(tl.float32)
    up = acc_up.to(dtype).to(tl.float32)
    if HAS_LIMIT:
        gate = tl.minimum(gate, swiglu_limit)
        up = tl.minimum(tl.maximum(up, -swiglu_limit), swiglu_limit)
    silu = (gate / (1.0 + tl.exp(-gate))).to(dtype).to(tl.float32)
    return (silu * up).to(dtype)


@triton.jit
def _gate_up_kernel(
    x_ptr,
    w_ptr,
    act_ptr,
    sorted_rows_ptr,
    block_expert_ptr,
    num_pairs,
    num_experts,
    hidden,
    inter,
    swiglu_limit,
    stride_xt,
    stride_we,
    stride_wn,
    stride_am,
    TOP_K: tl.constexpr,
    HAS_LIMIT: tl.constexpr,
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
    w_gate = w_ptr + expert.to(tl.int64) * stride_we + cols[None, :] * stride_wn
    w_up = w_gate + inter * stride_wn
    acc_gate = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
    acc_up = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
    for start in range(0, hidden, BLOCK_K):
        ks = start + tl.arange(0, BLOCK_K)
        k_valid = ks < hidden
        x = tl.load(
            x_ptr + tokens[:, None].to(tl.int64) * stride_xt + ks[None, :],
            mask=row_valid[:, None] & k_valid[None, :],
            other=0.0,
        )
        w_mask = k_valid[:, None] & col_valid[None, :]
        g = tl.load(w_gate + ks[:, None], mask=w_mask, other=0.0)
        u = tl.load(w_up + ks[:, None], mask=w_mask, other=0.0)
        if IEEE:  # float32 weights: exact products, so fp32 runs match the reference loop closely
            acc_gate = tl.dot(x, g, acc_gate, input_precision="ieee")
            acc_up = tl.dot(x, u, acc_up, input_precision="ieee")
        else:
            acc_gate = tl.dot(x, g, acc_gate)
            acc_up = tl.dot(x, u, acc_up)
    out = _swiglu(acc_gate, acc_up, swiglu_limit, act_ptr.dtype.element_ty, HAS_LIMIT)
    tl.store(
        act_ptr + offs_m[:, None].to(tl.int64) * stride_am + cols[None, :],
        out,
        mask=row_valid[:, None] & col_valid[None, :],
    )


@triton.jit
def _down_kernel(
    act_ptr,
    w_ptr,
    topk_weights_ptr,
    out_ptr,
    sorted_rows_ptr,
    block_expert_ptr,
    num_pairs,
    num_experts,
    hidden,
    inter,
    stride_am,
    stride_we,
    stride_wn,
    stride_or,
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
    w_base = w_ptr + expert.to(tl.int64) * stride_we + cols[None, :] * stride_wn
    acc = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
    for start in range(0, inter, BLOCK_K):
        ks = start + tl.arange(0, BLOCK_K)
        k_valid = ks < inter
        a = tl.load(
            act_ptr + offs_m[:, None].to(tl.int64) * stride_am + ks[None, :],
            mask=row_valid[:, None] & k_valid[None, :],
            other=0.0,
        )
        w = tl.load(w_base + ks[:, None], mask=k_valid[:, None] & col_valid[None, :], other=0.0)
        if IEEE:
            acc = tl.dot(a, w, acc, input_precision="ieee")
        else:
            acc = tl.dot(a, w, acc)
    weight = tl.load(topk_weights_ptr + rows, mask=row_valid, other=0.0).to(tl.float32)
    # rounded as the reference rounds it: the expert's output, then its weighted share
    y = acc.to(act_ptr.dtype.element_ty).to(tl.float32) * weight[:, None]
    tl.store(
        out_ptr + rows[:, None].to(tl.int64) * stride_or + cols[None, :],
        y.to(out_ptr.dtype.element_ty),
        mask=row_valid[:, None] & col_valid[None, :],
    )


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
    w_ptr,
    act_ptr,
    ids_ptr,
    hidden,
    inter,
    swiglu_limit,
    stride_xt,
    stride_we,
    stride_wn,
    stride_ap,
    TOP_K: tl.constexpr,
    HAS_LIMIT: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    pair = tl.program_id(0)
    expert = tl.load(ids_ptr + pair).to(tl.int64)
    x_row = x_ptr + (pair // TOP_K).to(tl.int64) * stride_xt
    rows = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    row_valid = rows < inter
    w_gate = w_ptr + expert * stride_we + rows[:, None] * stride_wn
    w_up = w_gate + inter * stride_wn
    acc_gate = tl.zeros([BLOCK_N, BLOCK_K], tl.float32)
    acc_up = tl.zeros([BLOCK_N, BLOCK_K], tl.float32)
    for start in range(0, hidden, BLOCK_K):
        ks = start + tl.arange(0, BLOCK_K)
        k_valid = ks < hidden
        x = tl.load(x_row + ks, mask=k_valid, other=0.0).to(tl.float32)[None, :]
        w_mask = row_valid[:, None] & k_valid[None, :]
        acc_gate += tl.load(w_gate + ks[None, :], mask=w_mask, other=0.0).to(tl.float32) * x
        acc_up += tl.load(w_up + ks[None, :], mask=w_mask, other=0.0).to(tl.float32) * x
    out = _swiglu(tl.sum(acc_gate, axis=1), tl.sum(acc_up, axis=1), swiglu_limit, act_ptr.dtype.element_ty, HAS_LIMIT)
    tl.store(act_ptr + pair.to(tl.int64) * stride_ap + rows, out, mask=row_valid)


@triton.jit
def _pair_down_kernel(
    act_ptr,
    w_ptr,
    topk_weights_ptr,
    ids_ptr,
    out_ptr,
    hidden,
    inter,
    stride_ap,
    stride_we,
    stride_wn,
    stride_ot,
    TOP_K: tl.constexpr,
    TOP_K_P: tl.constexpr,
    FLAT: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    token = tl.program_id(0)
    rows = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    row_valid = rows < hidden
    dtype = act_ptr.dtype.element_ty
    slots = tl.arange(0, TOP_K_P)
    per_slot = tl.zeros([TOP_K_P, BLOCK_N], tl.float32)  # each expert's output, before its weight
    if FLAT:  # one loop over (slot, chunk), which the compiler pipelines across the slots
        chunks = tl.cdiv(inter, BLOCK_K)
        for it in range(0, TOP_K * chunks):
            slot = it // chunks
            pair = token * TOP_K + slot
            expert = tl.load(ids_ptr + pair).to(tl.int64)
            ks = (it - slot * chunks) * BLOCK_K + tl.arange(0, BLOCK_K)
            k_valid = ks < inter
            a = tl.load(act_ptr + pair.to(tl.int64) * stride_ap + ks, mask=k_valid, other=0.0).to(tl.float32)
            w = tl.load(
                w_ptr + expert * stride_we + rows[:, None] * stride_wn + ks[None, :],
                mask=row_valid[:, None] & k_valid[None, :],
                other=0.0,
            ).to(tl.float32)
            per_slot += tl.where(slots[:, None] == slot, tl.sum(w * a[None, :], axis=1)[None, :], 0.0)
    else:
        for slot in range(TOP_K):
            pair = token * TOP_K + slot
            expert = tl.load(ids_ptr + pair).to(tl.int64)
            a_row = act_ptr + pair.to(tl.int64) * stride_ap
            w_base = w_ptr + expert * stride_we + rows[:, None] * stride_wn
            acc = tl.zeros([BLOCK_N, BLOCK_K], tl.float32)
            for start in range(0, inter, BLOCK_K):
                ks = start + tl.arange(0, BLOCK_K)
                k_valid = ks < inter
                a = tl.load(a_row + ks, mask=k_valid, other=0.0).to(tl.float32)
                acc += (
                    tl.load(w_base + ks[None, :], mask=row_valid[:, None] & k_valid[None, :], other=0.0).to(tl.float32)
                    * a[None, :]
                )
            per_slot += tl.where(slots[:, None] == slot, tl.sum(acc, axis=1)[None, :], 0.0)
    weight = tl.load(topk_weights_ptr + token * TOP_K + slots, mask=slots < TOP_K, other=0.0).to(tl.float32)
    # rounded as the blocked path rounds: each expert's output, its weighted share, then the sum
    shares = (per_slot.to(dtype).to(tl.float32) * weight[:, None]).to(dtype).to(tl.float32)
    tl.store(out_ptr + token.to(tl.int64) * stride_ot + rows, tl.sum(shares, axis=0).to(dtype), mask=row_valid)


def fused_moe_pairs(
    x: torch.Tensor,
    w13: torch.Tensor,
    w2: torch.Tensor,
    topk_weights: torch.Tensor,
    topk_ids: torch.Tensor,
    swiglu_limit: float | None = None,
    tiling: PairTiling = PAIR_TILING,
) -> torch.Tensor:
    """`fused_moe` as one GEMV per (token, slot) pair and a down GEMV that sums each token's slots:
    two launches in all, no alignment, for decode batches of a token or so (each pair streams its
    own expert's weights, so experts shared by several tokens would be read once per token)."""
    num_tokens, hidden = x.shape
    top_k = topk_ids.shape[1]
    inter = w13.shape[1] // 2
    x = x if x.stride(1) == 1 else x.contiguous()
    ids = topk_ids.contiguous()
    act = torch.empty(num_tokens * top_k, inter, dtype=x.dtype, device=x.device)
    block_k_up, block_k_down = (min(tiling.block_k, triton.next_power_of_2(n)) for n in (hidden, inter))
    _pair_gate_up_kernel[(num_tokens * top_k, triton.cdiv(inter, tiling.block_n))](
        x,
        w13,
        act,
        ids,
        hidden,
        inter,
        float(swiglu_limit or 0.0),
        x.stride(0),
        w13.stride(0),
        w13.stride(1),
        act.stride(0),
        TOP_K=top_k,
        HAS_LIMIT=swiglu_limit is not None,
        BLOCK_N=tiling.block_n,
        BLOCK_K=block_k_up,
        num_warps=tiling.num_warps,
    )
    out = torch.empty_like(x)
    _pair_down_kernel[(num_tokens, triton.cdiv(hidden, tiling.block_n))](
        act,
        w2,
        topk_weights.contiguous(),
        ids,
        out,
        hidden,
        inter,
        act.stride(0),
        w2.stride(0),
        w2.stride(1),
        out.stride(0),
        TOP_K=top_k,
        TOP_K_P=triton.next_power_of_2(top_k),
        FLAT=tiling.flat_down,
        BLOCK_N=tiling.block_n,
        BLOCK_K=block_k_down,
        num_warps=tiling.num_warps,
    )
    return out


def fused_moe(
    x: torch.Tensor,
    w13: torch.Tensor,
    w2: torch.Tensor,
    topk_weights: torch.Tensor,
    topk_ids: torch.Tensor,
    swiglu_limit: float | None = None,
    tiling: MoeTiling | PairTiling | None = None,
) -> torch.Tensor:
    """x: [T, H]; w13: [E, 2I, H] (gate rows, then up rows); w2: [E, H, I]; topk_weights/ids: [T, k]
    -> [T, H] = sum over each token's experts of weight * w2 @ swiglu(w13 @ x), like the reference loop.
    A PairTiling forces the per-pair GEMVs, a MoeTiling the blocks sorted by expert; None picks by T."""
    num_tokens, hidden = x.shape
    num_experts, two_inter, _ = w13.shape
    inter = two_inter // 2
    top_k = topk_ids.shape[1]
    assert w13.shape[2] == hidden and w2.shape == (num_experts, hidden, inter)
    assert w13.dtype == w2.dtype == x.dtype and w13.stride(2) == 1 and w2.stride(2) == 1
    num_pairs = num_tokens * top_k
    if num_pairs == 0:
        return torch.zeros_like(x)
    if isinstance(tiling, PairTiling) or (tiling is None and num_tokens <= PAIR_PATH_MAX_TOKENS):
        return fused_moe_pairs(x, w13, w2, topk_weights, topk_ids, swiglu_limit, tiling or PAIR_TILING)
    tiling = tiling or pick_tiling(num_pairs, num_experts, hidden, inter, x.device)
    x = x if x.stride(1) == 1 else x.contiguous()
    align = align_by_expert(topk_ids, num_experts, tiling.block_m)
    num_blocks = align.block_expert.numel()
    ieee = x.dtype == torch.float32
    launch = dict(num_warps=tiling.num_warps, num_stages=tiling.num_stages)

    act = torch.empty(align.sorted_rows.numel(), inter, dtype=x.dtype, device=x.device)
    _gate_up_kernel[(num_blocks, triton.cdiv(inter, tiling.block_n_up))](
        x,
        w13,
        act,
        align.sorted_rows,
        align.block_expert,
        num_pairs,
        num_experts,
        hidden,
        inter,
        float(swiglu_limit or 0.0),
        x.stride(0),
        w13.stride(0),
        w13.stride(1),
        act.stride(0),
        TOP_K=top_k,
        HAS_LIMIT=swiglu_limit is not None,
        IEEE=ieee,
        BLOCK_M=tiling.block_m,
        BLOCK_N=tiling.block_n_up,
        BLOCK_K=tiling.block_k,
        **launch,
    )
    per_slot = torch.empty(num_pairs, hidden, dtype=x.dtype, device=x.device)
    _down_kernel[(num_blocks, triton.cdiv(hidden, tiling.block_n_down))](
        act,
        w2,
        topk_weights.flatten().contiguous(),
        per_slot,
        align.sorted_rows,
        align.block_expert,
        num_pairs,
        num_experts,
        hidden,
        inter,
        act.stride(0),
        w2.stride(0),
        w2.stride(1),
        per_slot.stride(0),
        IEEE=ieee,
        BLOCK_M=tiling.block_m,
        BLOCK_N=tiling.block_n_down,
        BLOCK_K=tiling.block_k,
        **launch,
    )
    return per_slot.view(num_tokens, top_k, hidden).sum(dim=1)  # accumulates in fp32, rounds once


def pick_batch1_tiling(
    w13s: list[torch.Tensor],
    w2s: list[torch.Tensor],
    top_k: int,
    swiglu_limit: float | None,
    reps: int = 5,
) -> tuple[MoeTiling | PairTiling, dict[str, float]]:
    """The fastest way to run one token through every layer's experts of one shape (all layers in
    turn, so weights come from memory as in decode): the blocked path or a per-pair tiling, timed as
    CUDA graph replays on a fixed routing of distinct experts. Returns it and the ms per pass of each."""
    from seekd.kernels.gemv import graph_time_ms

    num_experts, two_inter, hidden = w13s[0].shape
    device, dtype = w13s[0].device, w13s[0].dtype
    x = torch.randn(1, hidden, dtype=dtype, device=device)
    ids = torch.randperm(num_experts, device=device)[:top_k].view(1, top_k)
    weights = torch.full((1, top_k), 1.0 / top_k, device=device)
    blocked = pick_tiling(top_k, num_experts, hidden, two_inter // 2, device)

    def one_pass(tiling: MoeTiling | PairTiling) -> None:
        for w13, w2 in zip(w13s, w2s):
            fused_moe(x, w13, w2, weights, ids, swiglu_limit, tiling)

    timings = {t.name: graph_time_ms(lambda t=t: one_pass(t), reps) for t in (blocked, *PAIR_CANDIDATES)}
    best = min((blocked, *PAIR_CANDIDATES), key=lambda t: timings[t.name])
    return best, timings
