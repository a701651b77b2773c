"""The core engine behaviours on DeepSeek-V3 (MLA latent cache + MoE): prefix caching, preemption
and chunked prefill each give the greedy output of a roomy run, and every block comes back."""

from __future__ import annotations

import pytest
from parity import assert_all_blocks_free

from seekd import LLM, SamplingParams

GREEDY = SamplingParams(temperature=0.0, max_tokens=20, ignore_eos=True)
SHARED = list(range(10, 42))  # 32-token shared prefix = 4 blocks of 8
PROMPTS = [[*SHARED, 200 + i, 201, 202 + i] for i in range(4)] + [list(range(100, 113)), [7, 8, 9]]


@pytest.fixture(scope="module")
def v3_folder(tmp_path_factory, tiny_deepseek):
    folder = tmp_path_factory.mktemp("v3-engine")
    tiny_deepseek("v3", folder)
    return folder


def make_llm(folder, **overrides) -> LLM:
    base = dict(data_dir=str(folder / "data"), block_size=8, num_kv_blocks=128, show_progress=False)
    return LLM(str(folder), **{**base, **overrides})


@pytest.fixture(scope="module")
def reference(v3_folder):
    llm = make_llm(v3_folder, enable_prefix_caching=False)
    return [o.outputs[0].token_ids for o in llm.generate(PROMPTS, GREEDY)]


def test_prefix_cache_hits_keep_v3_output(v3_folder, reference):
    llm = make_llm(v3_folder)
    llm.generate(PROMPTS[0], GREEDY)
    outs = llm.generate(PROMPTS, GREEDY)
    assert [o.outputs[0].token_ids for o in outs] == reference
    assert all(o.num_cached_tokens == 32 for o in outs[:4])
    assert_all_blocks_free(llm)


def test_preemption_keeps_v3_output(v3_folder, reference):
    llm = make_llm(v3_folder, num_kv_blocks=12, enable_prefix_caching=False)
    assert [o.outputs[0].token_ids for o in llm.generate(PROMPTS, GREEDY)] == reference
    assert llm.engine.scheduler.num_preemptions > 0
    assert_all_blocks_free(llm)


def test_chunked_prefill_keeps_v3_output(v3_folder, reference):
    llm = make_llm(v3_folder, max_num_batched_tokens=7, enable_prefix_caching=False)
    assert [o.outputs[0].token_ids for o in llm.generate(PROMPTS, GREEDY)] == reference
    assert_all_blocks_free(llm)
