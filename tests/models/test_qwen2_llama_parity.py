"""Parity of our Qwen2/Llama implementations (paged cache, torch attention) with `transformers`."""

from __future__ import annotations

import pytest
from parity import assert_greedy_matches, assert_prefill_logits_match

from seekd import LLM

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


def test_prefill_logits_match_transformers(model_pair):
    llm, hf_model = model_pair
    assert_prefill_logits_match(llm, hf_model, PROMPTS)


def test_greedy_batch_and_one_by_one_match_transformers_generate(model_pair):
    llm, hf_model = model_pair
    assert_greedy_matches(llm, hf_model, PROMPTS)
