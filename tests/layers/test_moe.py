"""DeepSeekMoE routing rules and the reference expert computation."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from seekd.layers.moe import RoutedExperts, TopKRouter, expert_weight_target


def test_noaux_tc_bias_steers_the_choice_but_not_the_weights():
    torch.manual_seed(0)
    router = TopKRouter(
        16,
        8,
        2,
        scoring_func="sigmoid",
        topk_method="noaux_tc",
        n_group=1,
        topk_group=1,
        norm_topk_prob=False,
        routed_scaling_factor=2.0,
    )
    router.weight.data.normal_()
    router.e_score_correction_bias.data.zero_()
    router.e_score_correction_bias.data[5] = 100.0
    x = torch.randn(10, 16)
    weights, ids = router(x)
    assert (ids == 5).any(dim=-1).all()
    scores = F.linear(x, router.weight).sigmoid()
    torch.testing.assert_close(weights, 2.0 * scores.gather(1, ids))


def test_group_limited_routing_picks_experts_only_from_the_best_groups():
    # groups of two experts; expert 3 has the top score, expert 6 the second, expert 2 a poor one
    x = torch.tensor([[0.0, 0.0, -5.0, 9.0, 0.0, 0.0, 8.0, 0.0]])
    limited = TopKRouter(8, 8, 2, topk_method="group_limited_greedy", n_group=4, topk_group=1)
    greedy = TopKRouter(8, 8, 2)
    for router in (limited, greedy):
        router.weight.data = torch.eye(8)  # router logits = x
    assert sorted(greedy(x)[1][0].tolist()) == [3, 6]
    weights, ids = limited(x)
    assert sorted(ids[0].tolist()) == [2, 3]  # only group 1 is allowed
    torch.testing.assert_close(weights, x.softmax(-1).gather(1, ids))


def test_routed_experts_equal_a_per_token_sum_and_load_both_layouts():
    torch.manual_seed(0)
    num_experts, hidden, inter = 6, 16, 8
    gate_up = torch.randn(num_experts, 2 * inter, hidden)
    down = torch.randn(num_experts, hidden, inter)
    packed = RoutedExperts(num_experts, hidden, inter)
    packed.weight_loader(packed.w13_weight, gate_up)
    packed.weight_loader(packed.w2_weight, down)
    per_expert = RoutedExperts(num_experts, hidden, inter)
    for e in range(num_experts):
        for part, tensor in (
            ("gate_proj", gate_up[e, :inter]),
            ("up_proj", gate_up[e, inter:]),
            ("down_proj", down[e]),
        ):
            name, shard = expert_weight_target(f"model.layers.1.mlp.experts.{e}.{part}.weight")
            assert name == "model.layers.1.mlp.experts." + ("w2_weight" if part == "down_proj" else "w13_weight")
            per_expert.weight_loader(getattr(per_expert, name.rsplit(".", 1)[1]), tensor, shard)
    assert torch.equal(packed.w13_weight, per_expert.w13_weight) and torch.equal(packed.w2_weight, per_expert.w2_weight)

    x = torch.randn(5, hidden)
    ids = torch.randint(0, num_experts, (5, 3))
    weights = torch.rand(5, 3)
    expected = torch.zeros(5, hidden)
    for t in range(5):
        for k in range(3):
            e = ids[t, k]
            h = F.silu(x[t] @ gate_up[e, :inter].T) * (x[t] @ gate_up[e, inter:].T)
            expected[t] += weights[t, k] * (h @ down[e].T)
    torch.testing.assert_close(packed(x, weights, ids), expected, rtol=1e-4, atol=1e-4)
