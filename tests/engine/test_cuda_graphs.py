"""Decode steps replayed as CUDA graphs give the same tokens as eager steps (GPU only)."""

from __future__ import annotations

import pytest

from seekd import LLM, SamplingParams
from seekd.engine.cuda_graphs import graph_batch_sizes

pytestmark = pytest.mark.gpu


def test_graph_batch_sizes_cover_every_batch_up_to_the_max():
    sizes = graph_batch_sizes(40)
    assert sizes == [1, 2, 4, 8, 16, 32, 40]
    assert all(any(s >= n for s in sizes) for n in range(1, 41))


def test_graph_replay_matches_eager_for_padded_batches(qwen2_model, data_dir):
    prompts = [[i, i + 1, i + 2] * (i % 5 + 1) for i in range(10, 15)]  # 5 sequences: padded to 8
    greedy = SamplingParams(temperature=0.0, max_tokens=40, ignore_eos=True)
    seeded = SamplingParams(temperature=0.9, top_k=50, seed=9, max_tokens=40, ignore_eos=True)
    results = {}
    for eager in (True, False):
        llm = LLM(
            str(qwen2_model[0]),
            data_dir=str(data_dir),
            num_kv_blocks=256,
            block_size=16,
            device="cuda",
            dtype="float32",
            attention_backend="triton",
            enforce_eager=eager,
            cuda_graph_max_batch=16,
            show_progress=False,
        )
        assert (llm.engine.runner.decode_graphs is None) == eager
        results[eager] = [
            [o.outputs[0].token_ids for o in llm.generate(prompts, greedy)],
            [o.outputs[0].token_ids for o in llm.generate(prompts[:1], seeded)],
        ]
    assert results[False] == results[True]
