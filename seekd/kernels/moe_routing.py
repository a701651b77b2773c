"""DeepSeek MoE routing (score, group-limit, top-k, normalise, scale) as one kernel per step.

The reference `TopKRouter.forward` is a chain of torch ops: at batch-1 decode on an H100 the fp32
cast, the cuBLAS GEMV (two kernels), softmax, topk (two kernels) and the scaling took some 18 us of
kernels and launch gaps per MoE layer, more than the routed experts' own down projection. Here the
gate logits come from the Triton GEMV at one token (cuBLAS otherwise), and one program per token
does everything after them in registers: the expert lanes fit a single vector even for V3's 256.
`TopKRouter.forward` stays the reference; tests compare the two.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from seekd.kernels.gemv import GemvConfig, gemv

SCORING_CODES = {"softmax": 0, "sigmoid": 1, "sqrtsoftplus": 2}
METHOD_CODES = {"greedy": 0, "group_limited_greedy": 1, "noaux_tc": 2}

# The gate is a few hundred fp32 rows: two rows per program keeps V2-Lite's 64 experts on 32 programs
ROUTER_GEMV = GemvConfig(2, 1024, 4)


@triton.jit
def _softplus(x):
    """log(1 + e^x) as torch computes it (x past 20 passes through), with log1p accuracy for small
    e^x: log(u) * y / (u - 1) cancels the rounding of u = 1 + y (Goldberg)."""
    y = tl.exp(tl.minimum(x, 20.0))
    u = 1.0 + y
    log1p = tl.where(u == 1.0, y, tl.log(u) * y / (u - 1.0))
    return tl.where(x > 20.0, x, log1p)


@triton.jit
def _route_kernel(
    logits_ptr,
    bias_ptr,
    weights_ptr,
    ids_ptr,
    num_experts,
    group_size,
    num_groups,
    scale,
    stride_lt,
    E_P: tl.constexpr,
    G_P: tl.constexpr,
    TOP_K: tl.constexpr,
    TOPK_GROUP: tl.constexpr,
    SCORING: tl.constexpr,
    METHOD: tl.constexpr,
    NORM: tl.constexpr,
):
    token = tl.program_id(0)
    e = tl.arange(0, E_P)
    valid = e < num_experts
    logit = tl.load(logits_ptr + token * stride_lt + e, mask=valid, other=float("-inf")).to(tl.float32)
    if SCORING == 0:
        p = tl.where(valid, tl.exp(logit - tl.max(logit, axis=0)), 0.0)
        scores = p / tl.sum(p, axis=0)
    elif SCORING == 1:
        scores = 1.0 / (1.0 + tl.exp(-logit))
    else:
        scores = tl.sqrt(_softplus(logit))
    choice = scores
    if METHOD == 2:  # noaux_tc chooses by the biased score and weights by the plain one
        choice += tl.load(bias_ptr + e, mask=valid, other=0.0).to(tl.float32)
    # Only padding lanes and experts already taken are -inf; NaN scores (a diverged hidden state) and
    # experts of dropped groups sit just above, so each pick is a distinct, valid expert id
    choice = tl.where(valid, tl.where(choice == choice, choice, -1.0e38), float("-inf"))

    if METHOD != 0:  # keep the TOPK_GROUP best groups of experts, mask the others
        g = tl.arange(0, G_P)
        member = ((e[None, :] // group_size) == g[:, None]) & valid[None, :]
        grouped = tl.where(member, choice[None, :], float("-inf"))
        first = tl.max(grouped, axis=1)
        if METHOD == 2:  # a group ranks by the sum of its two best biased scores
            first_at = tl.argmax(grouped, axis=1)
            second = tl.max(tl.where(e[None, :] == first_at[:, None], float("-inf"), grouped), axis=1)
            group_score = first + second
        else:
            group_score = first
        group_score = tl.where(g < num_groups, group_score, float("-inf"))
        kept = tl.zeros([G_P], tl.int32)
        for _ in tl.static_range(TOPK_GROUP):
            best = tl.argmax(group_score, axis=0)
            kept = tl.where(g == best, 1, kept)
            group_score = tl.where(g == best, float("-inf"), group_score)
        in_kept = tl.sum(tl.where(member & (kept[:, None] == 1), 1, 0), axis=0) > 0
        choice = tl.where(in_kept | ~valid, choice, -2.0e38)

    rank = tl.full([E_P], TOP_K, tl.int32)  # TOP_K: not chosen
    for i in tl.static_range(TOP_K):  # best first, as torch.topk orders them
        best = tl.argmax(choice, axis=0)
        rank = tl.where(e == best, i, rank)
        choice = tl.where(e == best, float("-inf"), choice)
    chosen = rank < TOP_K
    weight = tl.where(chosen, scores, 0.0)
    if NORM:
        weight = weight / (tl.sum(weight, axis=0) + 1e-20)
    out = token * TOP_K + rank
    tl.store(weights_ptr + out, weight * scale, mask=chosen)
    tl.store(ids_ptr + out, e.to(tl.int64), mask=chosen)


def router_logits(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """[T, hidden] -> fp32 [T, experts] gate logits: the Triton GEMV for one token (it reads the
    model-dtype row and the fp32 gate directly; cuBLAS needed a cast kernel and two of its own),
    F.linear in fp32 for more."""
    if x.shape[0] != 1:
        return F.linear(x.float(), weight.float())
    return gemv(x, weight, None, ROUTER_GEMV, out_dtype=torch.float32)


def route_topk(
    logits: torch.Tensor,
    top_k: int,
    *,
    scoring_func: str,
    topk_method: str,
    n_group: int = 1,
    topk_group: int = 1,
    norm_topk_prob: bool = False,
    routed_scaling_factor: float = 1.0,
    correction_bias: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """fp32 logits [T, E] -> (topk_weights [T, top_k] fp32, topk_ids [T, top_k] int64), the choice
    `TopKRouter` makes from the same logits."""
    num_tokens, num_experts = logits.shape
    weights = torch.empty(num_tokens, top_k, dtype=torch.float32, device=logits.device)
    ids = torch.empty(num_tokens, top_k, dtype=torch.int64, device=logits.device)
    if num_tokens == 0:
        return weights, ids
    method = METHOD_CODES[topk_method]
    if method == 2 and correction_bias is None:
        raise ValueError("noaux_tc routing needs e_score_correction_bias")
    _route_kernel[(num_tokens,)](
        logits,
        correction_bias if correction_bias is not None else logits,
        weights,
        ids,
        num_experts,
        num_experts // n_group,
        n_group,
        float(routed_scaling_factor),
        logits.stride(0),
        E_P=triton.next_power_of_2(num_experts),
        G_P=triton.next_power_of_2(n_group),
        TOP_K=top_k,
        TOPK_GROUP=topk_group if method else 1,
        SCORING=SCORING_CODES[scoring_func],
        METHOD=method,
        NORM=norm_topk_prob and top_k > 1,
        num_warps=4 if num_experts > 64 else 2,
    )
    return weights, ids
