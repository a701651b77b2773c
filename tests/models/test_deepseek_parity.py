"""Parity of our DeepSeek-V2/V3 (MLA over the latent cache, DeepSeekMoE) with `transformers`."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from seekd import LLM, SamplingParams

PROMPTS = [
    [5, 17, 99, 3, 200, 45, 7, 8, 9, 10, 11, 300, 301, 22, 23, 24, 25, 26, 27, 28],
    [41, 42],
    [7, 100, 250, 13, 9, 77, 81],
    list(range(30, 70)),
]

COMMON = dict(
    vocab_size=384, hidden_size=64, intermediate_size=128, moe_intermediate_size=32, num_hidden_layers=3,
    num_attention_heads=4, num_key_value_heads=4, kv_lora_rank=32, qk_nope_head_dim=16, qk_rope_head_dim=8,
    v_head_dim=24, max_position_embeddings=1024, rms_norm_eps=1e-6, tie_word_embeddings=False,
    bos_token_id=0, eos_token_id=1, n_routed_experts=8, num_experts_per_tok=2, first_k_dense_replace=1,
)

VARIANTS = {
    # V2-Lite: no q compression, softmax scores, plain top-k over all experts
    "v2_lite": ("DeepseekV2", dict(q_lora_rank=None, n_shared_experts=2, topk_method="greedy")),
    # V2: group-limited routing, scaled weights, YaRN with mscale != mscale_all_dim
    "v2_group_limited": ("DeepseekV2", dict(
        q_lora_rank=48, n_shared_experts=1, topk_method="group_limited_greedy", n_group=4, topk_group=2,
        routed_scaling_factor=16.0,
        rope_parameters={"rope_type": "yarn", "factor": 8.0, "original_max_position_embeddings": 128,
                         "mscale": 0.9, "mscale_all_dim": 0.707, "beta_fast": 32, "beta_slow": 1,
                         "rope_theta": 10000.0},
    )),
    # V3/R1: sigmoid + bias-corrected group routing, q compression, dense first layer, YaRN
    "v3": ("DeepseekV3", dict(
        q_lora_rank=48, n_shared_experts=1, topk_method="noaux_tc", scoring_func="sigmoid", n_group=4,
        topk_group=2, norm_topk_prob=True, routed_scaling_factor=2.5,
        rope_parameters={"rope_type": "yarn", "factor": 40.0, "original_max_position_embeddings": 64,
                         "mscale": 1.0, "mscale_all_dim": 1.0, "beta_fast": 32, "beta_slow": 1,
                         "rope_theta": 10000.0},
    )),
}


def save_tiny_deepseek(variant: str, folder: Path) -> torch.nn.Module:
    """A tiny random transformers DeepSeek model saved to `folder`; every weight random (norms and the
    routing bias included) so that any mismatch shows up."""
    import transformers

    family, overrides = VARIANTS[variant]
    config = getattr(transformers, f"{family}Config")(**{**COMMON, **overrides})
    torch.manual_seed(1234)
    model = getattr(transformers, f"{family}ForCausalLM")(config).float().eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 1:
                p.copy_(1.0 + 0.2 * torch.randn_like(p))
            else:
                p.normal_(0.0, 0.15 if "embed" in name else 0.1)
        for name, b in model.named_buffers():
            if name.endswith("e_score_correction_bias"):
                b.copy_(0.1 * torch.randn_like(b))
    model.save_pretrained(folder)
    return model


@pytest.fixture(scope="module", params=list(VARIANTS))
def model_pair(request, tmp_path_factory):
    folder = tmp_path_factory.mktemp(request.param)
    hf_model = save_tiny_deepseek(request.param, folder)
    llm = LLM(str(folder), data_dir=str(folder / "data"), num_kv_blocks=96, block_size=8, show_progress=False)
    return llm, hf_model


def hf_greedy(hf_model, prompt: list[int], n: int) -> list[int]:
    """HF greedy decoding that, like ignore_eos, neither stops at nor suppresses EOS."""
    hf_model.generation_config.eos_token_id = None
    with torch.no_grad():
        out = hf_model.generate(
            torch.tensor([prompt]), max_new_tokens=n, do_sample=False,
            attention_mask=torch.ones(1, len(prompt), dtype=torch.long), pad_token_id=0,
        )
    return out[0, len(prompt):].tolist()


def set_mla_mode(llm: LLM, mode: str) -> None:
    for layer in llm.engine.runner.model.attention_layers():
        layer.mode = mode


def test_prefill_logits_match_transformers(model_pair):
    llm, hf_model = model_pair
    for prompt in PROMPTS:
        ours = llm.engine.runner.prefill_logits(prompt)
        with torch.no_grad():
            ref = hf_model(torch.tensor([prompt])).logits[0]
        assert (ours - ref).abs().max().item() < 1e-4


def test_greedy_batch_and_one_by_one_match_transformers_generate(model_pair):
    llm, hf_model = model_pair
    params = SamplingParams(temperature=0.0, max_tokens=32, ignore_eos=True)
    expected = [hf_greedy(hf_model, p, 32) for p in PROMPTS]
    assert len({tuple(e) for e in expected}) == len(PROMPTS)  # the model is not degenerate
    batched = [o.outputs[0].token_ids for o in llm.generate(PROMPTS, params)]
    one_by_one = [llm.generate(p, params)[0].outputs[0].token_ids for p in PROMPTS]
    assert batched == expected
    assert one_by_one == expected


@pytest.mark.parametrize("mode", ["naive", "absorbed"])
def test_absorbed_and_naive_mla_agree_with_transformers(model_pair, mode):
    """Each MLA path alone, for prefill and for decode (the default picks absorbed only for decode)."""
    llm, hf_model = model_pair
    set_mla_mode(llm, mode)
    try:
        prompt = PROMPTS[0]
        with torch.no_grad():
            ref = hf_model(torch.tensor([prompt])).logits[0]
        assert (llm.engine.runner.prefill_logits(prompt) - ref).abs().max().item() < 1e-4
        params = SamplingParams(temperature=0.0, max_tokens=16, ignore_eos=True)
        outs = [o.outputs[0].token_ids for o in llm.generate(PROMPTS[:3], params)]
        assert outs == [hf_greedy(hf_model, p, 16) for p in PROMPTS[:3]]
    finally:
        set_mla_mode(llm, "auto")
