"""The fused MoE on low-bit experts (DeepSeek V3's block FP8, V4's packed FP4), decoded in registers,
against the reference loop over the same experts dequantized to float32 by seekd's loader functions:
both paths (blocks sorted by expert, per-pair GEMVs with every tiling start-up timing may pick), odd
shapes, idle experts, V4's clipping, checkpoint-like weights and scales. The interpreter runs them in
float32; the GPU runs bf16 at DeepSeek-V3 and V4-Flash sizes."""

from __future__ import annotations

from functools import cache

import pytest
import torch
from kernel_env import INTERPRETED
from lowbit_weights import dequantized_moe, quantize_experts

from seekd.kernels.fused_moe import PAIR_CANDIDATES, PAIR_TILING, ExpertWeights, MoeTiling, PairTiling, fused_moe

pytestmark = pytest.mark.triton

FORMATS = ["fp8_block", "fp4"]
# the interpreter checks the indexing of each loop form (per slot and flat) once; a GPU runs every tiling
ONE_TOKEN_CANDIDATES = (
    [t for t in PAIR_CANDIDATES if t.name in ("pairs_n2_k512_w4", "pairs_n2_k512_w4_flat")]
    if INTERPRETED
    else PAIR_CANDIDATES
)
# a hidden size that is no multiple of 128 for each format: FP4 needs whole 32-column scale groups
ODD_HIDDEN = {"fp8_block": 200, "fp4": 320}


def make_experts(
    fmt: str, num_experts: int, hidden: int, inter: int, device: str, seed: int = 0, std: float = 0.02
) -> ExpertWeights:
    """N(0, std) weights quantized as DeepSeek's checkpoints are."""
    gen = torch.Generator(device).manual_seed(seed)
    w13 = torch.randn(num_experts, 2 * inter, hidden, generator=gen, device=device) * std
    w2 = torch.randn(num_experts, hidden, inter, generator=gen, device=device) * std
    return quantize_experts(w13, w2, fmt)


def routing(num_tokens: int, num_experts: int, top_k: int, device: str, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Distinct random experts per token, random weights."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.stack([torch.randperm(num_experts, generator=gen)[:top_k] for _ in range(num_tokens)])
    return torch.rand(num_tokens, top_k, generator=gen).to(device), ids.to(device)


def assert_matches_reference(out: torch.Tensor, ref: torch.Tensor) -> None:
    """float32 kernel against float32 reference: only summation order differs."""
    assert out.dtype == ref.dtype and out.shape == ref.shape
    scale = ref.abs().max().item()
    assert scale > 0
    torch.testing.assert_close(out, ref, atol=2e-5 * scale, rtol=1e-4)


# tokens, experts, top-k, intermediate, swiglu_limit (hidden: ODD_HIDDEN)
CASES = {
    "one_token": (1, 8, 2, 128, None),
    "one_token_clipped": (1, 16, 6, 256, 0.3),
    "idle_experts": (3, 16, 2, 128, None),
    "odd_intermediate": (5, 8, 3, 96, 0.3),
    "300_tokens": (300, 16, 6, 256, 0.3),
}


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("case", list(CASES))
def test_lowbit_experts_equal_the_dequantized_reference_on_both_paths(kernel_device, fmt, case):
    num_tokens, num_experts, top_k, inter, limit = CASES[case]
    seed = list(CASES).index(case)
    hidden = ODD_HIDDEN[fmt]
    experts = make_experts(fmt, num_experts, hidden, inter, kernel_device, seed)
    x = torch.randn(num_tokens, hidden, generator=torch.Generator().manual_seed(seed)).to(kernel_device)
    weights, ids = routing(num_tokens, num_experts, top_k, kernel_device, seed)
    ref = dequantized_moe(x, experts, weights, ids, limit, torch.float32)
    assert_matches_reference(fused_moe(x, experts, weights, ids, limit), ref)  # the path fused_moe picks
    if num_tokens == 1:  # and the other one; the per-pair GEMVs launch a program per pair and row tile,
        assert_matches_reference(fused_moe(x, experts, weights, ids, limit, MoeTiling(16, 32, 32, 64)), ref)
    elif num_tokens <= 5:  # which the interpreter runs slowly: small batches only
        assert_matches_reference(fused_moe(x, experts, weights, ids, limit, PAIR_TILING), ref)
    if limit is not None:  # the clipping must matter here, or the case would not pin it
        unclipped = dequantized_moe(x, experts, weights, ids, None, torch.float32)
        assert (unclipped - ref).abs().max() > 1e-3 * ref.abs().max()


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("tiling", ONE_TOKEN_CANDIDATES, ids=lambda t: t.name)
def test_every_one_token_candidate_equals_the_reference(kernel_device, fmt, tiling):
    """Start-up timing may pick any of these for a one-token decode step."""
    hidden, inter = ODD_HIDDEN[fmt], 128
    experts = make_experts(fmt, 12, hidden, inter, kernel_device, seed=7)
    x = torch.randn(1, hidden, generator=torch.Generator().manual_seed(7)).to(kernel_device)
    weights, ids = routing(1, 12, 4, kernel_device, seed=7)
    ref = dequantized_moe(x, experts, weights, ids, 0.3, torch.float32)
    assert_matches_reference(fused_moe(x, experts, weights, ids, 0.3, tiling), ref)


OVERHANGING = [
    MoeTiling(16, 16, 32, 32),
    MoeTiling(32, 64, 16, 128),
    MoeTiling(64, 32, 64, 64),
    # a program per pair and row tile: the interpreter takes wider tiles (still overhanging the odd sizes)
    PairTiling(16, 64, flat_down=True) if INTERPRETED else PairTiling(8, 32, flat_down=True),
]


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("tiling", OVERHANGING, ids=lambda t: t.name)
def test_tiles_that_overhang_every_shape_give_the_reference_and_repeat_bit_for_bit(kernel_device, fmt, tiling):
    hidden = ODD_HIDDEN[fmt]
    num_tokens = 2 if isinstance(tiling, PairTiling) else 11  # a program per pair and row tile: few pairs
    experts = make_experts(fmt, 6, hidden, 96, kernel_device, seed=11)
    x = torch.randn(num_tokens, hidden, generator=torch.Generator().manual_seed(11)).to(kernel_device)
    weights, ids = routing(num_tokens, 6, 2, kernel_device, seed=11)
    out = fused_moe(x, experts, weights, ids, 0.3, tiling)
    assert_matches_reference(out, dequantized_moe(x, experts, weights, ids, 0.3, torch.float32))
    assert torch.equal(out, fused_moe(x, experts, weights, ids, 0.3, tiling))


def test_fp4_scales_may_come_as_e8m0_and_nibbles_are_read_low_first(kernel_device):
    experts = make_experts("fp4", 4, 64, 32, kernel_device, seed=3)
    x = torch.randn(2, 64, generator=torch.Generator().manual_seed(3)).to(kernel_device)
    weights, ids = routing(2, 4, 2, kernel_device, seed=3)
    out = fused_moe(x, experts, weights, ids)
    e8m0 = ExpertWeights(
        experts.w13.view(torch.int8),
        experts.w2.view(torch.int8),
        experts.w13_scale.view(torch.float8_e8m0fnu),
        experts.w2_scale.view(torch.float8_e8m0fnu),
        "fp4",
    )
    assert torch.equal(fused_moe(x, e8m0, weights, ids), out)
    swapped = ExpertWeights(
        (experts.w13 >> 4) | (experts.w13 << 4), experts.w2, experts.w13_scale, experts.w2_scale, "fp4"
    )
    assert (fused_moe(x, swapped, weights, ids) - out).abs().max() > 1e-2 * out.abs().max()


def test_expert_weights_derive_their_sizes_and_refuse_inconsistent_tensors():
    fp8 = make_experts("fp8_block", 3, 200, 128, "cpu")
    assert (fp8.num_experts, fp8.hidden_size, fp8.intermediate_size) == (3, 200, 128)
    assert fp8.bytes_per_expert == 3 * 200 * 128 + 4 * (2 * 2 + 2 * 1)  # codes, then 2x2 and 2x1 scale blocks
    fp4 = make_experts("fp4", 3, 320, 96, "cpu")
    assert (fp4.num_experts, fp4.hidden_size, fp4.intermediate_size) == (3, 320, 96)
    assert fp4.bytes_per_expert == 3 * 320 * 96 // 2 + (2 * 96 * 10 + 320 * 3)
    dense = ExpertWeights(torch.zeros(3, 8, 32), torch.zeros(3, 32, 4))
    assert (dense.hidden_size, dense.intermediate_size, dense.format_id) == (32, 4, 0)

    with pytest.raises(ValueError, match="format must be one of"):
        ExpertWeights(fp8.w13, fp8.w2, fp8.w13_scale, fp8.w2_scale, "int4")
    with pytest.raises(ValueError, match=r"w13_scale of shape \(3, 2, 2\)"):
        ExpertWeights(fp8.w13, fp8.w2, fp8.w13_scale[:, :, :1], fp8.w2_scale, "fp8_block")
    with pytest.raises(ValueError, match=r"w2_scale .* got none"):
        ExpertWeights(fp8.w13, fp8.w2, fp8.w13_scale, None, "fp8_block")
    with pytest.raises(ValueError, match=r"among torch\.float8_e4m3fn; got torch\.uint8"):
        ExpertWeights(fp4.w13, fp4.w2, fp4.w13_scale, fp4.w2_scale, "fp8_block")
    with pytest.raises(ValueError, match=r"w2 has shape \(3, 320, 96\)"):
        ExpertWeights(fp4.w13, torch.zeros(3, 320, 96, dtype=torch.uint8), fp4.w13_scale, fp4.w2_scale, "fp4")
    with pytest.raises(ValueError, match="multiples of 32"):
        ExpertWeights(torch.zeros(1, 4, 8, dtype=torch.uint8), torch.zeros(1, 16, 1, dtype=torch.uint8), format="fp4")
    with pytest.raises(ValueError, match="take no scales"):
        ExpertWeights(dense.w13, dense.w2, fp8.w13_scale)


def test_fused_moe_refuses_inputs_and_tiles_that_do_not_fit_the_experts(kernel_device):
    fp8 = make_experts("fp8_block", 4, 200, 128, kernel_device)
    fp4 = make_experts("fp4", 4, 64, 32, kernel_device)
    weights, ids = routing(3, 4, 2, kernel_device, seed=0)
    x = torch.randn(3, 200, device=kernel_device)
    with pytest.raises(ValueError, match=r"these experts take \[tokens, 64\]"):
        fused_moe(x, fp4, weights, ids)
    with pytest.raises(ValueError, match="block_k <= 128"):
        fused_moe(x, fp8, weights, ids, tiling=MoeTiling(16, 32, 32, 256))
    with pytest.raises(ValueError, match="block_k >= 32"):
        fused_moe(x[:, :64], fp4, weights, ids, tiling=PairTiling(2, 16))
    dense = ExpertWeights(torch.zeros(4, 8, 200, device=kernel_device), torch.zeros(4, 200, 4, device=kernel_device))
    with pytest.raises(ValueError, match=r"x is torch\.bfloat16 but the dense experts are torch\.float32"):
        fused_moe(x.bfloat16(), dense, weights, ids)
    assert torch.equal(fused_moe(x[:0], fp8, weights[:0], ids[:0]), x[:0])


# GPU, bf16 activations, full-size experts: (format, experts, top-k, hidden, intermediate, swiglu_limit)
FULL_SIZE = {
    "v3_fp8": ("fp8_block", 256, 8, 7168, 2048, None),
    "v4_flash_fp4": ("fp4", 256, 6, 4096, 2048, 10.0),
}


@cache
def full_size_experts(name: str) -> ExpertWeights:
    fmt, num_experts, _, hidden, inter, _ = FULL_SIZE[name]
    w13, w2, scales13, scales2 = [], [], [], []
    for expert in range(num_experts):  # one expert at a time: the float32 originals would not fit
        one = make_experts(fmt, 1, hidden, inter, "cuda", seed=expert)
        w13.append(one.w13[0])
        w2.append(one.w2[0])
        scales13.append(one.w13_scale[0])
        scales2.append(one.w2_scale[0])
    return ExpertWeights(*(torch.stack(t) for t in (w13, w2, scales13, scales2)), fmt)


@pytest.mark.gpu
@pytest.mark.parametrize("name", list(FULL_SIZE))
@pytest.mark.parametrize("num_tokens", [1, 64, 300])
def test_bf16_kernel_is_as_close_to_float32_as_the_dequantized_bf16_loop_at_full_size(name, num_tokens):
    """The kernel (bf16 activations, weights decoded exactly, fp32 accumulation) is no further from a
    float32 evaluation of the dequantized experts than seekd's dequantize-on-load bf16 loop is."""
    _, num_experts, top_k, hidden, _, limit = FULL_SIZE[name]
    experts = full_size_experts(name)
    x = torch.randn(num_tokens, hidden, generator=torch.Generator().manual_seed(num_tokens)).cuda().bfloat16()
    weights, ids = routing(num_tokens, num_experts, top_k, "cuda", seed=num_tokens)
    out = fused_moe(x, experts, weights, ids, limit).float()
    ref = dequantized_moe(x, experts, weights, ids, limit, torch.float32)
    loop = dequantized_moe(x, experts, weights, ids, limit, torch.bfloat16).float()
    scale = ref.abs().max()
    assert (out - ref).abs().max() <= 2 * (loop - ref).abs().max() + 1e-3 * scale
    torch.testing.assert_close(out, loop, atol=3e-2 * scale.item(), rtol=3e-2)


@pytest.mark.gpu
@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("num_tokens", [1, 8])  # the per-pair path and the blocks
def test_lowbit_kernel_never_syncs_and_replays_in_a_cuda_graph_with_new_routings(fmt, num_tokens):
    experts = make_experts(fmt, 16, 256, 128, "cuda", seed=6)
    x = torch.randn(num_tokens, 256, device="cuda", dtype=torch.bfloat16)
    weights, ids = routing(num_tokens, 16, 4, "cuda", seed=6)
    fused_moe(x, experts, weights, ids, 0.8)  # compile outside capture
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        fused_moe(x, experts, weights, ids, 0.8)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = fused_moe(x, experts, weights, ids, 0.8)
    for seed in range(3):
        new_weights, new_ids = routing(num_tokens, 16, 4, "cuda", seed=100 + seed)
        x.copy_(torch.randn_like(x))
        weights.copy_(new_weights)
        ids.copy_(new_ids)
        graph.replay()
        ref = dequantized_moe(x, experts, weights, ids, 0.8, torch.float32)
        torch.testing.assert_close(out.float(), ref, atol=3e-2 * ref.abs().max().item(), rtol=3e-2)


@pytest.mark.skipif(INTERPRETED, reason="Triton's interpreter computes bfloat16 wrongly")
@pytest.mark.parametrize("fmt", FORMATS)
def test_bf16_activations_on_small_lowbit_experts(kernel_device, fmt):
    hidden = ODD_HIDDEN[fmt]
    experts = make_experts(fmt, 16, hidden, 256, kernel_device, seed=9)
    x = torch.randn(40, hidden, generator=torch.Generator().manual_seed(9)).to(kernel_device, torch.bfloat16)
    weights, ids = routing(40, 16, 6, kernel_device, seed=9)
    ref = dequantized_moe(x, experts, weights, ids, 0.3, torch.float32)
    loop = dequantized_moe(x, experts, weights, ids, 0.3, torch.bfloat16).float()
    scale = ref.abs().max()
    for tiling in (None, PAIR_TILING):
        out = fused_moe(x, experts, weights, ids, 0.3, tiling).float()
        assert (out - ref).abs().max() <= 2 * (loop - ref).abs().max() + 1e-3 * scale
