"""Async scheduling (step N+1 scheduled while step N runs) gives exactly the tokens of synchronous
scheduling, through preemption, chunked prefill, prefix hits, stops, n > 1, logprobs and penalties."""

from __future__ import annotations

import pytest
from parity import assert_all_blocks_free

from seekd import LLM, SamplingParams
from seekd.engine.request import PENDING_TOKEN

SHARED = list(range(40, 72))


def _workload(stop_token: int) -> tuple[list[list[int]], list[SamplingParams]]:
    prompts, params = [], []
    for i in range(10):
        prompts.append([*SHARED[: 8 + 3 * i], 300 + i, 7 * i % 50 + 2])
        params.append(SamplingParams(temperature=0.0, max_tokens=6 + 3 * i, ignore_eos=True))
    prompts += [list(range(100, 160)), [5, 6, 7], [*SHARED, 9], [11, 12, 13, 14], [20, 21]]
    params += [
        SamplingParams(temperature=0.9, top_p=0.9, seed=7, max_tokens=25, ignore_eos=True),
        SamplingParams(temperature=0.0, max_tokens=30, logprobs=3, ignore_eos=True),
        SamplingParams(temperature=0.0, max_tokens=40, stop_token_ids=[stop_token], ignore_eos=True),
        SamplingParams(temperature=1.0, seed=3, n=2, max_tokens=20, min_tokens=5, ignore_eos=True),
        SamplingParams(temperature=0.8, seed=5, presence_penalty=0.5, frequency_penalty=0.2, max_tokens=18),
    ]
    return prompts, params


def _run(folder, mode: str, prompts, params):
    llm = LLM(
        str(folder),
        device="cpu",
        dtype="float32",
        show_progress=False,
        async_scheduling=mode,
        num_kv_blocks=40,
        block_size=4,
        max_num_batched_tokens=48,
        max_num_seqs=8,
    )
    outs = llm.generate(prompts, params)
    assert_all_blocks_free(llm)
    assert not llm.engine.has_unfinished_requests()
    return llm, [[_choice(c) for c in o.outputs] for o in outs]


def _choice(c) -> tuple:
    return c.token_ids, c.finish_reason, c.stop_reason, _logprobs(c.logprobs)


def _logprobs(logprobs) -> list | None:
    """Ids exact, values to float32 noise: a different batch mix may round the last bit."""
    if logprobs is None:
        return None
    return [(lp.token_id, lp.rank, lp.top_token_ids, pytest.approx(lp.logprob, abs=1e-5)) for lp in logprobs]


@pytest.fixture(scope="module")
def stop_token(qwen2_model) -> int:
    """A token the greedy continuation of the stop-token prompt reaches after a few steps."""
    llm = LLM(str(qwen2_model[0]), device="cpu", dtype="float32", show_progress=False, num_kv_blocks=64)
    tokens = llm.generate([[*SHARED, 9]], SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True))
    return tokens[0].outputs[0].token_ids[7]


def test_async_scheduling_matches_sync_token_for_token(qwen2_model, stop_token):
    prompts, params = _workload(stop_token)
    sync_llm, sync = _run(qwen2_model[0], "off", prompts, params)
    async_llm, overlapped = _run(qwen2_model[0], "on", prompts, params)
    assert not sync_llm.engine.async_scheduling and async_llm.engine.async_scheduling
    assert overlapped == sync
    stopped = sync[12][0]
    assert stopped[1] == "stop" and stopped[2] == stop_token and len(stopped[0]) < 40
    # the small cache and token budget made both runs preempt and chunk
    assert sync_llm.engine.scheduler.num_preemptions > 0
    assert async_llm.engine.scheduler.num_preemptions > 0
    assert all(PENDING_TOKEN not in choice[0] for out in overlapped for choice in out)


def test_async_step_queues_the_next_step_before_resolving(qwen2_model):
    """While a step's tokens are unresolved the next step is already launched, and its pending
    input rows read the previous step's sampled ids."""
    llm = LLM(
        str(qwen2_model[0]), device="cpu", dtype="float32", show_progress=False, async_scheduling="on", num_kv_blocks=64
    )
    from seekd.engine.request import EngineCoreRequest

    engine = llm.engine
    params = SamplingParams(temperature=0.0, max_tokens=5, ignore_eos=True)
    engine.add_request(EngineCoreRequest(request_id="a", prompt_token_ids=[3, 4, 5], sampling_params=params))
    tokens = []
    first = engine.step()
    tokens += first[0].new_token_ids
    inflight = engine._inflight
    assert inflight is not None and inflight.plan.requests[0].num_pending_tokens == 1
    while engine.has_unfinished_requests():
        for out in engine.step():
            tokens += out.new_token_ids
    reference = LLM(str(qwen2_model[0]), device="cpu", dtype="float32", show_progress=False, num_kv_blocks=64)
    expected = reference.generate([[3, 4, 5]], params)[0].outputs[0].token_ids
    assert tokens == expected and len(tokens) == 5


def test_async_scheduling_matches_sync_on_the_v4_demo(data_dir):
    """Every V4 cache kind (sliding window, compressed, indexer) under async steps, preemption and
    chunked prefill: prompts run past the 16-token window and several compression blocks."""
    prompts = [[1000 + (7 * i + j) % 3000 for j in range(20 + 23 * i)] for i in range(6)]
    params = [SamplingParams(temperature=0.0, max_tokens=10 + 4 * i, ignore_eos=True) for i in range(5)]
    params.append(SamplingParams(temperature=1.0, seed=9, max_tokens=24, ignore_eos=True))
    runs = []
    for mode in ("off", "on"):
        llm = LLM(
            data_dir=str(data_dir),
            show_progress=False,
            async_scheduling=mode,
            num_kv_blocks=20,
            max_num_batched_tokens=64,
            max_num_seqs=6,
        )
        runs.append([o.outputs[0].token_ids for o in llm.generate(prompts, params)])
        assert_all_blocks_free(llm)
        assert llm.engine.scheduler.num_preemptions > 0
    assert runs[0] == runs[1]
