"""Parity of our Qwen2/Llama implementations (paged cache, torch attention) with `transformers`."""

from __future__ import annotations

import pytest
import torch

from seekd import LLM, SamplingParams

PROMPTS = [
    [5, 17, 99, 3, 200, 45, 7, 8, 9, 10, 11, 300, 301, 22, 23, 24, 25, 26, 27, 28],
    [41, 42],
    [7, 100, 250, 13, 9, 77, 81],
    list(range(30, 70)),
]


@pytest.fixture(scope="module", params=["qwen2_model", "llama_model"])
def model_pair(request, data_dir):
    folder, hf_model = request.getfixturevalue(request.param)
    llm = LLM(str(folder), data_dir=str(data_dir), num_kv_blocks=128, block_size=8, show_progress=False)
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
    batched = [o.outputs[0].token_ids for o in llm.generate(PROMPTS, params)]
    one_by_one = [llm.generate(p, params)[0].outputs[0].token_ids for p in PROMPTS]
    assert batched == expected
    assert one_by_one == expected
    assert not llm.engine.has_unfinished_requests()
