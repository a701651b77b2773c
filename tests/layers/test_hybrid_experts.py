"""A hybrid MoE layer (some routed experts in host memory, run on the CPU) against the same layer with
every expert on one device: the same sum for dense, block-FP8 and FP4 experts, whatever the split."""

from __future__ import annotations

import pytest
import torch
from lowbit_weights import quantize_experts

from seekd.kernels.expert_weights import ExpertWeights
from seekd.layers.build_scope import KernelChoice, building_with
from seekd.layers.expert_placement import ExpertPlacement
from seekd.layers.moe import RoutedExperts
from seekd.layers.quantization import QuantConfig, QuantizedWeight

LAYER = 3
SHAPES = {"dense": (8, 48, 32), "fp8_block": (6, 128, 128), "fp4": (8, 64, 64)}  # experts, hidden, inter


def checkpoint_experts(fmt: str, seed: int = 0) -> ExpertWeights:
    num_experts, hidden, inter = SHAPES[fmt]
    gen = torch.Generator().manual_seed(seed)
    w13 = torch.randn(num_experts, 2 * inter, hidden, generator=gen) * hidden**-0.5
    w2 = torch.randn(num_experts, hidden, inter, generator=gen) * inter**-0.5
    return quantize_experts(w13, w2, fmt)


def expert_matrices(weights: ExpertWeights, expert: int) -> dict[str, torch.Tensor | QuantizedWeight]:
    """One expert's gate, up and down matrices as the checkpoint loader hands them over."""
    inter = weights.intermediate_size

    def matrix(w: torch.Tensor, scale: torch.Tensor | None, rows: slice) -> torch.Tensor | QuantizedWeight:
        if weights.format == "dense":
            return w[expert, rows]
        scale_rows = slice(rows.start // 128, rows.stop // 128) if weights.format == "fp8_block" else rows
        return QuantizedWeight(w[expert, rows], scale[expert, scale_rows], weights.format)

    return {
        "gate_proj": matrix(weights.w13, weights.w13_scale, slice(0, inter)),
        "up_proj": matrix(weights.w13, weights.w13_scale, slice(inter, 2 * inter)),
        "down_proj": matrix(weights.w2, weights.w2_scale, slice(0, weights.hidden_size)),
    }


def built_layer(
    weights: ExpertWeights, host_ids: set[int], host_format: str = "checkpoint", use_kernel: bool = False
) -> RoutedExperts:
    placement = ExpertPlacement({LAYER: frozenset(host_ids)}, host_format)
    quant = QuantConfig(experts=weights.format)
    with building_with(quant, KernelChoice(moe=use_kernel), placement):
        layer = RoutedExperts(weights.num_experts, weights.hidden_size, weights.intermediate_size, layer=LAYER)
    for expert in range(weights.num_experts):
        for part, matrix in expert_matrices(weights, expert).items():
            param = layer.w2_weight if part == "down_proj" else layer.w13_weight
            layer.weight_loader(param, matrix, (expert, part))
    return layer


def routing(num_tokens: int, num_experts: int, top_k: int = 2, avoid: tuple[int, ...] = (), seed: int = 1):
    gen = torch.Generator().manual_seed(seed)
    allowed = torch.tensor([e for e in range(num_experts) if e not in avoid])
    ids = torch.stack([allowed[torch.randperm(len(allowed), generator=gen)[:top_k]] for _ in range(num_tokens)])
    return torch.rand(num_tokens, top_k, generator=gen), ids


@pytest.mark.parametrize("fmt", ["dense", "fp8_block", "fp4"])
@pytest.mark.parametrize("num_tokens", [1, 7])
@pytest.mark.parametrize("split", ["some", "all", "none"])
def test_hybrid_layer_sums_like_the_layer_on_one_device(fmt, num_tokens, split):
    weights = checkpoint_experts(fmt)
    num_experts = weights.num_experts
    host_ids = {"some": {1, 2, num_experts - 1}, "all": set(range(num_experts)), "none": set()}[split]
    reference, hybrid = built_layer(weights, set()), built_layer(weights, host_ids)
    assert hybrid.w13_weight.shape[0] == num_experts - len(host_ids)
    assert (hybrid.host is None) == (not host_ids)
    x = torch.randn(num_tokens, weights.hidden_size, generator=torch.Generator().manual_seed(2))
    topk_weights, topk_ids = routing(num_tokens, num_experts)
    torch.testing.assert_close(hybrid(x, topk_weights, topk_ids), reference(x, topk_weights, topk_ids))


def test_experts_without_tokens_and_a_side_without_pairs_add_nothing():
    weights = checkpoint_experts("fp8_block")
    reference, hybrid = built_layer(weights, set()), built_layer(weights, {0, 4})
    x = torch.randn(5, weights.hidden_size)
    # no token reaches the host experts: the host side gets only -1 ids
    topk_weights, topk_ids = routing(5, weights.num_experts, avoid=(0, 4))
    torch.testing.assert_close(hybrid(x, topk_weights, topk_ids), reference(x, topk_weights, topk_ids))
    # every token on the host experts alone
    topk_ids = torch.tensor([[0, 4]] * 5)
    torch.testing.assert_close(hybrid(x, topk_weights, topk_ids), reference(x, topk_weights, topk_ids))
    empty = torch.empty(0, weights.hidden_size)
    assert hybrid(empty, topk_weights[:0], topk_ids[:0]).shape == (0, weights.hidden_size)


def test_host_experts_hold_the_checkpoint_codes_in_host_memory():
    weights = checkpoint_experts("fp4")
    hybrid = built_layer(weights, {2, 5})
    assert hybrid.host.w13_weight.device.type == "cpu" and hybrid.host.format == "fp4"
    assert torch.equal(hybrid.host.w13_weight[1], weights.w13[5])  # host stack index 1 is expert 5
    assert torch.equal(hybrid.w13_weight[2], weights.w13[3])  # device stack index 2 is expert 3
    assert not hybrid.graph_safe


@pytest.mark.parametrize("fmt", ["dense", "fp8_block", "fp4"])
def test_int8_host_experts_agree_with_the_checkpoint_to_int8_precision(fmt):
    weights = checkpoint_experts(fmt)
    host_ids = set(range(0, weights.num_experts, 2))
    reference, hybrid = built_layer(weights, set()), built_layer(weights, host_ids, host_format="int8")
    assert hybrid.host.w13_weight.dtype == torch.int8
    for num_tokens in (3, 40):
        x = torch.randn(num_tokens, weights.hidden_size, generator=torch.Generator().manual_seed(num_tokens))
        topk_weights, topk_ids = routing(num_tokens, weights.num_experts, seed=num_tokens)
        want = reference(x, topk_weights, topk_ids)
        error = (hybrid(x, topk_weights, topk_ids) - want).norm() / want.norm()
        assert error < 0.02, error


def test_packed_checkpoint_layout_loads_into_both_stacks():
    num_experts, hidden, inter = 6, 16, 8
    gate_up, down = torch.randn(num_experts, 2 * inter, hidden), torch.randn(num_experts, hidden, inter)
    layers = []
    for host_ids, host_format in ((set(), "checkpoint"), ({1, 4}, "checkpoint"), ({1, 4}, "int8")):
        with building_with(placement=ExpertPlacement({LAYER: frozenset(host_ids)}, host_format)):
            layer = RoutedExperts(num_experts, hidden, inter, layer=LAYER)
        layer.weight_loader(layer.w13_weight, gate_up)
        layer.weight_loader(layer.w2_weight, down)
        layers.append(layer)
    x, (topk_weights, topk_ids) = torch.randn(9, hidden), routing(9, num_experts)
    want = layers[0](x, topk_weights, topk_ids)
    torch.testing.assert_close(layers[1](x, topk_weights, topk_ids), want)
    assert ((layers[2](x, topk_weights, topk_ids) - want).norm() / want.norm()) < 0.02


@pytest.mark.gpu
@pytest.mark.parametrize("fmt", ["dense", "fp8_block", "fp4"])
def test_gpu_hybrid_layer_with_the_fused_kernel_matches_the_all_gpu_layer(fmt):
    """The real split: device experts through the fused Triton kernel on the GPU, host experts in pinned
    memory on the CPU, the same sum as every expert on the GPU."""
    weights = checkpoint_experts(fmt)
    with torch.device("cuda"):
        reference = built_layer(weights, set(), use_kernel=True)
        hybrid = built_layer(weights, {0, 3, weights.num_experts - 1}, use_kernel=True)
    assert hybrid.w13_weight.is_cuda and hybrid.host.w13_weight.is_pinned()
    for num_tokens in (1, 8, 300):
        x = torch.randn(num_tokens, weights.hidden_size, device="cuda")
        topk_weights, topk_ids = (t.cuda() for t in routing(num_tokens, weights.num_experts, seed=num_tokens))
        want = reference(x, topk_weights, topk_ids)
        got = hybrid(x, topk_weights, topk_ids)
        assert got.is_cuda
        torch.testing.assert_close(got, want, rtol=2e-3, atol=2e-3)
