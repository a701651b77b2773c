"""Tiny random transformers DeepSeek models (V2-Lite, V2, V3 flavours) saved like real checkpoints."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from parity import randomize_weights

COMMON = dict(
    vocab_size=384,
    hidden_size=64,
    intermediate_size=128,
    moe_intermediate_size=32,
    num_hidden_layers=3,
    num_attention_heads=4,
    num_key_value_heads=4,
    kv_lora_rank=32,
    qk_nope_head_dim=16,
    qk_rope_head_dim=8,
    v_head_dim=24,
    max_position_embeddings=1024,
    rms_norm_eps=1e-6,
    tie_word_embeddings=False,
    bos_token_id=0,
    eos_token_id=1,
    n_routed_experts=8,
    num_experts_per_tok=2,
    first_k_dense_replace=1,
)

VARIANTS = {
    # V2-Lite: no q compression, softmax scores, plain top-k over all experts
    "v2_lite": ("DeepseekV2", dict(q_lora_rank=None, n_shared_experts=2, topk_method="greedy")),
    # V2: group-limited routing, scaled weights, YaRN with mscale != mscale_all_dim
    "v2_group_limited": (
        "DeepseekV2",
        dict(
            q_lora_rank=48,
            n_shared_experts=1,
            topk_method="group_limited_greedy",
            n_group=4,
            topk_group=2,
            routed_scaling_factor=16.0,
            rope_parameters={
                "rope_type": "yarn",
                "factor": 8.0,
                "original_max_position_embeddings": 128,
                "mscale": 0.9,
                "mscale_all_dim": 0.707,
                "beta_fast": 32,
                "beta_slow": 1,
                "rope_theta": 10000.0,
            },
        ),
    ),
    # V3/R1: sigmoid + bias-corrected group routing, q compression, dense first layer, YaRN
    "v3": (
        "DeepseekV3",
        dict(
            q_lora_rank=48,
            n_shared_experts=1,
            topk_method="noaux_tc",
            scoring_func="sigmoid",
            n_group=4,
            topk_group=2,
            norm_topk_prob=True,
            routed_scaling_factor=2.5,
            rope_parameters={
                "rope_type": "yarn",
                "factor": 40.0,
                "original_max_position_embeddings": 64,
                "mscale": 1.0,
                "mscale_all_dim": 1.0,
                "beta_fast": 32,
                "beta_slow": 1,
                "rope_theta": 10000.0,
            },
        ),
    ),
}
# V3 at dimensions where every projection and expert falls on 128-row FP8 scale blocks, so a block-FP8
# checkpoint stays FP8 throughout (experts and fused gate/up included) when kept low-bit
VARIANTS["v3_aligned"] = (
    "DeepseekV3",
    {
        **VARIANTS["v3"][1],
        "hidden_size": 256,
        "intermediate_size": 256,
        "moe_intermediate_size": 128,
        "q_lora_rank": 128,
    },
)


def save_tiny_deepseek(variant: str, folder: Path) -> torch.nn.Module:
    """A tiny random transformers DeepSeek model saved to `folder`; every weight random (norms and the
    routing bias included) so that any mismatch shows up."""
    import transformers

    family, overrides = VARIANTS[variant]
    config = getattr(transformers, f"{family}Config")(**{**COMMON, **overrides})
    torch.manual_seed(1234)
    model = getattr(transformers, f"{family}ForCausalLM")(config).float().eval()
    randomize_weights(model)
    model.save_pretrained(folder)
    return model


@pytest.fixture(scope="session")
def tiny_deepseek() -> Callable[[str, Path], torch.nn.Module]:
    return save_tiny_deepseek
