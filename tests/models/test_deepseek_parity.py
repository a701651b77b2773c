"""Parity of our DeepSeek-V2/V3 (MLA over the latent cache, DeepSeekMoE) with `transformers`."""

from __future__ import annotations

import pytest
import torch
from parity import assert_greedy_matches, assert_prefill_logits_match, hf_greedy

from seekd import LLM, SamplingParams

PROMPTS = [
    [5, 17, 99, 3, 200, 45, 7, 8, 9, 10, 11, 300, 301, 22, 23, 24, 25, 26, 27, 28],
    [41, 42],
    [7, 100, 250, 13, 9, 77, 81],
    list(range(30, 70)),
]


@pytest.fixture(scope="module", params=["v2_lite", "v2_group_limited", "v3"])
def model_pair(request, tmp_path_factory, tiny_deepseek):
    folder = tmp_path_factory.mktemp(request.param)
    hf_model = tiny_deepseek(request.param, folder)
    llm = LLM(str(folder), data_dir=str(folder / "data"), num_kv_blocks=96, block_size=8, show_progress=False)
    return llm, hf_model


def set_mla_mode(llm: LLM, mode: str) -> None:
    for layer in llm.engine.runner.model.attention_layers():
        layer.mode = mode


def test_prefill_logits_match_transformers(model_pair):
    llm, hf_model = model_pair
    assert_prefill_logits_match(llm, hf_model, PROMPTS)


def test_greedy_batch_and_one_by_one_match_transformers_generate(model_pair):
    llm, hf_model = model_pair
    assert_greedy_matches(llm, hf_model, PROMPTS)


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
