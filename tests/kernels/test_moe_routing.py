"""The one-launch routing kernel against TopKRouter's torch ops: every scoring function and top-k
method DeepSeek uses (V2-Lite greedy softmax, V2 group-limited, V3 noaux_tc with its correction bias,
V4's sqrt-softplus), group sizes that are not powers of two, one token and many."""

from __future__ import annotations

import pytest
import torch

from seekd.layers.moe import TopKRouter

pytestmark = pytest.mark.triton

# name: (experts, top_k, scoring, method, n_group, topk_group, norm, scale)
ROUTERS = {
    "v2_lite": (64, 6, "softmax", "greedy", 1, 1, False, 1.0),
    "v2": (160, 6, "softmax", "group_limited_greedy", 8, 3, False, 16.0),
    "v3": (256, 8, "sigmoid", "noaux_tc", 8, 4, True, 2.5),
    "v4": (256, 6, "sqrtsoftplus", "noaux_tc", 1, 1, True, 1.5),
    "odd_groups": (12, 3, "softmax", "group_limited_greedy", 4, 2, True, 1.0),
    "top1_sigmoid": (10, 1, "sigmoid", "greedy", 1, 1, True, 1.0),
}


def make_router(name: str, hidden: int, device: str, use_kernel: bool = False) -> TopKRouter:
    experts, top_k, scoring, method, n_group, topk_group, norm, scale = ROUTERS[name]
    router = TopKRouter(
        hidden,
        experts,
        top_k,
        scoring_func=scoring,
        topk_method=method,
        n_group=n_group,
        topk_group=topk_group,
        norm_topk_prob=norm,
        routed_scaling_factor=scale,
        use_kernel=use_kernel,
    )
    router.weight.data.normal_(0.0, 1.0)  # spread logits: sqrt-softplus sees large and small ones
    if method == "noaux_tc":
        router.e_score_correction_bias.data.normal_(0.0, 0.3)
    return router.to(device)


@pytest.mark.parametrize("num_tokens", [1, 9])
@pytest.mark.parametrize("name", list(ROUTERS))
def test_routing_kernel_makes_the_reference_choice(kernel_device, name, num_tokens):
    torch.manual_seed(list(ROUTERS).index(name) * 10 + num_tokens)
    hidden = 48
    router = make_router(name, hidden, kernel_device)
    x = torch.randn(num_tokens, hidden, device=kernel_device) * 0.5
    ref_weights, ref_ids = router(x)
    fused = make_router(name, hidden, kernel_device, use_kernel=True)
    fused.load_state_dict(router.state_dict())
    weights, ids = fused(x)
    assert ids.dtype == torch.int64 and weights.dtype == torch.float32 and ids.shape == ref_ids.shape
    assert torch.equal(ids, ref_ids)  # the same experts, best first as torch.topk orders them
    torch.testing.assert_close(weights, ref_weights, atol=1e-6, rtol=1e-5)


def test_group_limit_excludes_the_best_expert_of_a_losing_group(kernel_device):
    """Pins the group step: without it the top-1 of a plain top-k would be expert 0."""
    from seekd.kernels.moe_routing import route_topk

    # groups of 4: group 0 = one huge logit + three tiny ones; groups 1 and 2 have two good ones each
    logits = torch.tensor([[9.0, -9, -8, -7, 5, 5, 0, 0, 4, 4, 0, 0]], device=kernel_device)
    bias = torch.zeros(12, device=kernel_device)
    _, ids = route_topk(
        logits, 2, scoring_func="sigmoid", topk_method="noaux_tc", n_group=3, topk_group=2, correction_bias=bias
    )
    # noaux_tc ranks groups by the sum of their top two: 5+5 and 4+4 beat sigmoid(9)+sigmoid(-9)
    assert ids.tolist() == [[4, 5]]
    _, ids = route_topk(logits, 2, scoring_func="sigmoid", topk_method="group_limited_greedy", n_group=3, topk_group=1)
    assert ids.tolist() == [[0, 3]]  # group-limited greedy ranks groups by their max: group 0 alone


def test_router_logits_gemv_equals_fp32_linear(kernel_device):
    from seekd.kernels.moe_routing import router_logits

    torch.manual_seed(1)
    weight = torch.randn(64, 200, device=kernel_device)  # rows and features the tiles overhang
    x = torch.randn(1, 200, device=kernel_device)
    out = router_logits(x, weight)
    assert out.dtype == torch.float32 and out.shape == (1, 64)
    torch.testing.assert_close(out, x @ weight.T, atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize("method", ["greedy", "noaux_tc"])
def test_nan_logits_still_give_valid_expert_ids(kernel_device, method):
    """A diverged hidden state must not make the kernel index past the expert weights."""
    from seekd.kernels.moe_routing import route_topk

    logits = torch.full((3, 20), float("nan"), device=kernel_device)
    logits[1, 5] = 1.0  # one real score among NaNs
    logits[2] = torch.randn(20)
    _, ids = route_topk(
        logits,
        4,
        scoring_func="sigmoid",
        topk_method=method,
        n_group=4,
        topk_group=2,
        correction_bias=torch.zeros(20, device=kernel_device),
    )
    assert ((ids >= 0) & (ids < 20)).all()
    assert all(len(set(row)) == 4 for row in ids.tolist())  # distinct, as the weighted sum assumes
