"""Sorting a MoE layer's (token, slot) pairs by expert on the device, for the blocked grouped GEMMs
of `fused_moe`: each expert's run is padded to a multiple of BLOCK_M, so that every BLOCK_M block of
sorted rows belongs to one expert, and every size depends only on the number of pairs (no host read).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl


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
