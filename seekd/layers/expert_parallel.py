"""Expert parallelism: a MoE layer's routed experts placed whole on the ranks of a stage.

Placement: rank r of E ranks holds the contiguous expert ids [r * E_local, (r + 1) * E_local), with
E_local = n_routed_experts / E (expert e lives on rank e // E_local). Contiguous ranges keep a rank's
experts one slice of a packed checkpoint tensor and make the owner of a pair one integer division;
DeepSeek's group-limited routing (V3: 8 groups of 32) then keeps a token's experts on few ranks,
which the all-to-all path turns into fewer rows sent.

Every rank of a stage holds the whole batch of hidden states (attention is tensor-parallel, not data
parallel) and runs the replicated router, so each knows every (token, expert) pair. Two ways move the
tokens to their experts and back (`--expert-dispatch`):

- all_reduce: each rank runs its own experts on every token that chose them and one all-reduce sums
  the partial outputs. No dispatch at all; the combine costs what a tensor-parallel MoE's does. Best
  at small batch, and what the CPU (gloo) runs by default.
- all_to_all: each rank takes an equal share of the tokens, sends each of their pairs (hidden row,
  local expert id, weight) to the expert's rank with `all_to_all_single`, runs the experts on what it
  received, sends the weighted outputs back the same way, sums them per token, and an all-gather makes
  the outputs whole again. Rows cross the wire once per pair instead of every rank computing over the
  full batch; the split sizes are exchanged first (one small all-to-all, read on the host).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from seekd.distributed import all_gather_rows, all_to_all
from seekd.intmath import cdiv

DISPATCH_MODES = ("all_reduce", "all_to_all")

# this rank's experts on its pairs: (x [N, H], weights [N, 1], local ids [N, 1]) -> weighted outputs [N, H]
LocalExperts = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def local_expert_range(num_experts: int, ep_rank: int, ep_size: int) -> range:
    """The expert ids rank `ep_rank` holds."""
    if num_experts % ep_size:
        raise ValueError(f"n_routed_experts={num_experts} does not split evenly over {ep_size} expert-parallel ranks")
    per_rank = num_experts // ep_size
    return range(ep_rank * per_rank, (ep_rank + 1) * per_rank)


def to_local_ids(topk_ids: torch.Tensor, experts: range) -> torch.Tensor:
    """Global expert ids -> indexes into this rank's stack, -1 for pairs another rank holds."""
    local = topk_ids - experts.start
    return local.masked_fill((local < 0) | (local >= len(experts)), -1)


def all_to_all_experts(
    x: torch.Tensor,
    topk_weights: torch.Tensor,
    topk_ids: torch.Tensor,
    experts_per_rank: int,
    ep_rank: int,
    ep_size: int,
    run_local: LocalExperts,
) -> torch.Tensor:
    """The routed experts' weighted sum for every token of `x` [T, H] (the same on every rank), each
    pair computed on its expert's rank: dispatch and combine by all-to-all over this rank's share of
    the tokens, then an all-gather of the shares."""
    num_tokens, hidden = x.shape
    share = cdiv(num_tokens, ep_size)
    lo, hi = min(ep_rank * share, num_tokens), min((ep_rank + 1) * share, num_tokens)
    k = topk_ids.shape[1]
    ids, weights = topk_ids[lo:hi].flatten(), topk_weights[lo:hi].flatten()
    dest = torch.div(ids, experts_per_rank, rounding_mode="floor")
    order = torch.argsort(dest, stable=True)
    token = torch.arange(hi - lo, device=x.device).repeat_interleave(k)[order]
    send_counts = torch.bincount(dest, minlength=ep_size)
    recv_counts = torch.empty_like(send_counts)
    all_to_all(recv_counts, send_counts, [1] * ep_size, [1] * ep_size)
    sent, received = send_counts.tolist(), recv_counts.tolist()

    def exchange(rows: torch.Tensor, out_splits: list[int], in_splits: list[int]) -> torch.Tensor:
        out = rows.new_empty((sum(out_splits), *rows.shape[1:]))
        return all_to_all(out, rows, out_splits, in_splits)

    recv_x = exchange(x[lo:hi][token], received, sent)
    recv_ids = exchange(ids[order] - (dest[order] * experts_per_rank), received, sent)
    recv_weights = exchange(weights[order], received, sent)
    y = recv_x.new_zeros(recv_x.shape)
    if recv_x.shape[0]:
        y = run_local(recv_x, recv_weights.unsqueeze(1), recv_ids.unsqueeze(1))
    back = exchange(y, sent, received)
    part = x.new_zeros(share, hidden)
    part.index_add_(0, token, back.to(x.dtype))
    return torch.cat(all_gather_rows(part, ep_size))[:num_tokens]
