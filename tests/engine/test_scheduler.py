"""Scheduler + KV cache behaviour through the real engine on a tiny Qwen2: prefix caching,
preemption by recompute, chunked prefill — each must give the same greedy output as a roomy run."""

from __future__ import annotations

import pytest
from parity import assert_all_blocks_free

from seekd import LLM, SamplingParams
from seekd.config import CacheConfig, SchedulerConfig
from seekd.engine.request import Request
from seekd.engine.scheduler import Scheduler

GREEDY = SamplingParams(temperature=0.0, max_tokens=24, ignore_eos=True)
SHARED = list(range(10, 58))  # 48-token shared prefix = 6 blocks of 8
PROMPTS = [[*SHARED, 200 + i, 201, 202 + i] for i in range(6)] + [list(range(100, 113)), [7, 8, 9]]


def make_llm(folder, data_dir, **overrides) -> LLM:
    base = dict(data_dir=str(data_dir), block_size=8, num_kv_blocks=256, show_progress=False)
    base.update(overrides)
    return LLM(str(folder), **base)


@pytest.fixture(scope="module")
def reference(qwen2_model, data_dir):
    folder, _ = qwen2_model
    llm = make_llm(folder, data_dir, enable_prefix_caching=False)
    return [o.outputs[0].token_ids for o in llm.generate(PROMPTS, GREEDY)]


def test_prefix_cache_hits_reuse_blocks_and_keep_outputs(qwen2_model, data_dir, reference):
    llm = make_llm(qwen2_model[0], data_dir)
    first = llm.generate(PROMPTS[0], GREEDY)[0]
    assert first.num_cached_tokens == 0
    outs = llm.generate(PROMPTS, GREEDY)
    assert [o.outputs[0].token_ids for o in outs] == reference
    assert all(o.num_cached_tokens == 48 for o in outs[:6])
    assert llm.engine.scheduler.kv.prefix_hits >= 6 * 48
    assert_all_blocks_free(llm)


def test_preemption_under_tiny_block_budget_completes_with_identical_output(qwen2_model, data_dir, reference):
    # 14 usable blocks of 8 tokens: far fewer than 8 requests of ~75 tokens need at once
    llm = make_llm(qwen2_model[0], data_dir, num_kv_blocks=15, enable_prefix_caching=False)
    outs = llm.generate(PROMPTS, GREEDY)
    assert [o.outputs[0].token_ids for o in outs] == reference
    assert llm.engine.scheduler.num_preemptions > 0
    assert_all_blocks_free(llm)


def test_preemption_with_prefix_caching_on_keeps_output(qwen2_model, data_dir, reference):
    llm = make_llm(qwen2_model[0], data_dir, num_kv_blocks=15)
    outs = llm.generate(PROMPTS, GREEDY)
    assert [o.outputs[0].token_ids for o in outs] == reference
    assert llm.engine.scheduler.num_preemptions > 0
    assert_all_blocks_free(llm)


def test_chunked_prefill_with_small_token_budget_keeps_output(qwen2_model, data_dir, reference):
    llm = make_llm(qwen2_model[0], data_dir, max_num_batched_tokens=5, enable_prefix_caching=False)
    outs = llm.generate(PROMPTS, GREEDY)
    assert [o.outputs[0].token_ids for o in outs] == reference
    assert_all_blocks_free(llm)


def test_max_num_seqs_limits_the_running_batch(qwen2_model, data_dir, reference):
    llm = make_llm(qwen2_model[0], data_dir, max_num_seqs=2)
    seen = []
    for prompt in PROMPTS:
        llm.engine.add_request(_core_request(f"r{len(seen)}", prompt))
        seen.append(prompt)
    while llm.engine.has_unfinished_requests():
        llm.engine.step()
        assert llm.engine.scheduler.num_running <= 2
    assert_all_blocks_free(llm)


def _core_request(rid: str, prompt: list[int]):
    from seekd.engine.request import EngineCoreRequest

    return EngineCoreRequest(request_id=rid, prompt_token_ids=prompt, sampling_params=GREEDY)


def test_decodes_are_scheduled_before_new_prefills():
    sched = Scheduler(SchedulerConfig(max_num_batched_tokens=10), CacheConfig(block_size=4), 64, 256)
    old = Request("old", list(range(9)), GREEDY, max_output_tokens=10)
    sched.add_request(old)
    first = sched.schedule()
    assert first.num_scheduled_tokens == {"old": 9}
    sched.update(first, {"old": 5})
    sched.add_request(Request("new", list(range(20)), GREEDY, max_output_tokens=10))
    second = sched.schedule()
    assert [r.request_id for r in second.requests] == ["old", "new"]
    assert second.num_scheduled_tokens == {"old": 1, "new": 9}  # decode first, prefill chunked to budget


def test_lowest_priority_newest_request_is_preempted_first():
    sched = Scheduler(SchedulerConfig(), CacheConfig(block_size=4, enable_prefix_caching=False), 7, 256)
    reqs = [
        Request("important", list(range(8)), GREEDY, max_output_tokens=10, priority=0, arrival_time=3.0),
        Request("old-low", list(range(8)), GREEDY, max_output_tokens=10, priority=5, arrival_time=1.0),
        Request("new-low", list(range(8)), GREEDY, max_output_tokens=10, priority=5, arrival_time=2.0),
    ]
    for r in reqs:
        sched.add_request(r)
    plan = sched.schedule()  # 6 usable blocks, 2 each: all three fit
    sched.update(plan, {r.request_id: 1 for r in reqs})
    plan = sched.schedule()  # each needs a third block now: someone has to go
    assert plan.preempted == ["new-low"]
    assert {r.request_id for r in plan.requests} == {"important", "old-low"}


def test_prompt_longer_than_context_is_rejected_with_both_numbers():
    sched = Scheduler(SchedulerConfig(), CacheConfig(block_size=4), 64, 16)
    with pytest.raises(ValueError, match="20 tokens; this model's context is 16"):
        sched.add_request(Request("x", list(range(20)), GREEDY, max_output_tokens=4))


def test_abort_frees_blocks_of_running_and_waiting_requests(qwen2_model, data_dir):
    llm = make_llm(qwen2_model[0], data_dir, max_num_seqs=1)
    llm.engine.add_request(_core_request("a", PROMPTS[0]))
    llm.engine.add_request(_core_request("b", PROMPTS[1]))
    llm.engine.step()
    outs = llm.engine.abort_requests(["a", "b", "missing"])
    assert sorted(o.request_id for o in outs) == ["a", "b"]
    assert all(o.finish_reason == "abort" for o in outs)
    assert not llm.engine.has_unfinished_requests()
    assert_all_blocks_free(llm)


def test_a_request_waiting_for_blocks_is_counted_as_one_prefix_query():
    sched = Scheduler(SchedulerConfig(), CacheConfig(block_size=4), 5, 64)  # 4 usable blocks
    first = Request("first", list(range(12)), GREEDY, max_output_tokens=3)  # 3 blocks, a 4th to decode
    second = Request("second", list(range(100, 108)), GREEDY, max_output_tokens=1)  # 2 blocks: must wait
    sched.add_request(first)
    sched.add_request(second)
    steps = 0
    while sched.has_unfinished_requests():
        plan = sched.schedule()
        sched.update(plan, {r.request_id: 7 for r in plan.requests})
        steps += 1
    assert steps > 3  # second waited while first decoded
    assert sched.kv.prefix_queries == 12 + 8
