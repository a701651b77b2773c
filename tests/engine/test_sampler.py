from __future__ import annotations

import math

import pytest
import torch

from seekd import LLM, SamplingParams
from seekd.engine.request import Request
from seekd.engine.sampler import Sampler, SamplingBatch, apply_top_k_top_p_min_p

VOCAB = 8


def batch_for(*params: SamplingParams, outputs: list[list[int]] | None = None) -> SamplingBatch:
    requests = []
    for i, p in enumerate(params):
        r = Request(f"r{i}", [0, 1], p, max_output_tokens=16)
        for t in (outputs or [[]] * len(params))[i]:
            r.append_output_token(t)
        requests.append(r)
    return SamplingBatch.from_requests(requests, VOCAB, torch.device("cpu"))


def test_top_k_keeps_exactly_k_tokens():
    logits = torch.tensor([[0.0, 5.0, 1.0, 4.0, 2.0, 3.0, -1.0, 0.5]])
    out = apply_top_k_top_p_min_p(logits, torch.tensor([3]), None, None)
    assert torch.isfinite(out).nonzero()[:, 1].tolist() == [1, 3, 5]


def test_top_p_keeps_the_smallest_set_reaching_p():
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    out = apply_top_k_top_p_min_p(probs.log(), None, torch.tensor([0.7]), None)
    assert torch.isfinite(out).nonzero()[:, 1].tolist() == [0, 1]


def test_min_p_drops_tokens_below_fraction_of_the_best():
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    out = apply_top_k_top_p_min_p(probs.log(), None, None, torch.tensor([0.25]))
    assert torch.isfinite(out).nonzero()[:, 1].tolist() == [0, 1, 2]


def test_greedy_rows_take_argmax_within_a_sampled_batch():
    logits = torch.randn(2, VOCAB)
    batch = batch_for(SamplingParams(temperature=0.0), SamplingParams(temperature=1.0, seed=3))
    tokens, _ = Sampler(torch.device("cpu"))(logits, batch)
    assert tokens[0] == logits[0].argmax().item()


def test_sampling_follows_the_distribution():
    probs = torch.tensor([0.6, 0.3, 0.1, 0, 0, 0, 0, 0])
    logits = probs.clamp(min=1e-12).log().expand(4000, VOCAB)
    batch = batch_for(*[SamplingParams(temperature=1.0)] * 4000)
    tokens, _ = Sampler(torch.device("cpu"), seed=7)(logits.clone(), batch)
    freq = torch.bincount(torch.tensor(tokens), minlength=VOCAB).float() / 4000
    assert torch.allclose(freq[:3], probs[:3], atol=0.03)
    assert freq[3:].sum() == 0


def test_penalties_push_down_repeated_tokens():
    logits = torch.full((3, VOCAB), 0.5)
    logits[:, 2] = 1.0  # the best token, until penalised
    params = [
        SamplingParams(temperature=0.0, frequency_penalty=2.0),
        SamplingParams(temperature=0.0, presence_penalty=2.0),
        SamplingParams(temperature=0.0, repetition_penalty=3.0),
    ]
    batch = batch_for(*params, outputs=[[2, 2], [2], [2]])
    tokens, _ = Sampler(torch.device("cpu"))(logits, batch)
    assert all(t != 2 for t in tokens)


def test_logit_bias_applies_to_its_own_row_only_greedy_and_sampled():
    logits = torch.zeros(4, VOCAB)
    logits[:, 1] = 5.0
    params = [
        SamplingParams(temperature=0.0, logit_bias={1: -100.0, 6: 3.0}),  # bans the best, prefers 6
        SamplingParams(temperature=0.0),  # no bias: row 0's must not leak here
        SamplingParams(temperature=1.0, seed=3, logit_bias={4: 100.0}),  # sampled: forced
        SamplingParams(temperature=0.0, logit_bias={1: -3.0, 7: 2.5}),  # additive: 5 - 3 < 0 + 2.5
    ]
    batch = batch_for(*params)
    tokens, _ = Sampler(torch.device("cpu"))(logits, batch)
    assert tokens == [6, 1, 4, 7]


def test_logit_bias_is_validated():
    with pytest.raises(ValueError, match="logit_bias values"):
        SamplingParams(logit_bias={3: 100.5})
    with pytest.raises(ValueError, match="non-negative"):
        SamplingParams(logit_bias={-1: 1.0})


def test_logprobs_report_chosen_token_rank_and_top_alternatives():
    logits = torch.tensor([[0.0, 3.0, 1.0, 2.0, -1.0, -2.0, -3.0, -4.0]])
    batch = batch_for(SamplingParams(temperature=0.0, logprobs=2))
    tokens, lps = Sampler(torch.device("cpu"))(logits, batch)
    lp = lps[0]
    ref = torch.log_softmax(logits[0], -1)
    assert tokens == [1] and lp.rank == 1
    assert math.isclose(lp.logprob, ref[1].item(), rel_tol=1e-6)
    assert lp.top_token_ids == [1, 3]


@pytest.fixture(scope="module")
def llm(qwen2_model, data_dir):
    return LLM(str(qwen2_model[0]), data_dir=str(data_dir), num_kv_blocks=256, block_size=8, show_progress=False)


def test_seeded_request_is_identical_alone_and_inside_a_batch_of_eight_others(llm):
    seeded = SamplingParams(temperature=1.0, top_p=0.9, seed=42, max_tokens=32, ignore_eos=True)
    prompt = [3, 14, 15, 92, 65, 35]
    alone = llm.generate(prompt, seeded)[0].outputs[0].token_ids
    others = [[i, i + 1, i + 2] * (i + 1) for i in range(20, 28)]
    noisy = [SamplingParams(temperature=1.3, max_tokens=40, ignore_eos=True, seed=None)] * 8
    outs = llm.generate([*others[:4], prompt, *others[4:]], [*noisy[:4], seeded, *noisy[4:]])
    assert outs[4].outputs[0].token_ids == alone
    different_seed = SamplingParams(temperature=1.0, top_p=0.9, seed=43, max_tokens=32, ignore_eos=True)
    assert llm.generate(prompt, different_seed)[0].outputs[0].token_ids != alone


def test_seeded_output_survives_preemption(qwen2_model, data_dir, llm):
    seeded = SamplingParams(temperature=0.8, seed=5, max_tokens=40, ignore_eos=True)
    prompts = [[i, i + 3, i + 5, i + 7] * 5 for i in range(10, 16)]
    roomy = [o.outputs[0].token_ids for o in llm.generate(prompts, seeded)]
    tight = LLM(str(qwen2_model[0]), data_dir=str(data_dir), num_kv_blocks=12, block_size=8, show_progress=False)
    assert [o.outputs[0].token_ids for o in tight.generate(prompts, seeded)] == roomy
    assert tight.engine.scheduler.num_preemptions > 0


def test_max_tokens_stop_token_ids_and_min_tokens(llm):
    free_run = llm.generate([5, 6, 7], SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True))[0]
    out = free_run.outputs[0]
    assert len(out.token_ids) == 12 and out.finish_reason == "length"
    stop_at = out.token_ids[4]
    first = out.token_ids.index(stop_at)
    stopped = llm.generate([5, 6, 7], SamplingParams(temperature=0.0, max_tokens=12, stop_token_ids=[stop_at]))
    o = stopped[0].outputs[0]
    assert o.token_ids == out.token_ids[: first + 1]
    assert o.finish_reason == "stop" and o.stop_reason == stop_at
    late = llm.generate(
        [5, 6, 7], SamplingParams(temperature=0.0, max_tokens=12, stop_token_ids=[stop_at], min_tokens=first + 1)
    )[0].outputs[0]
    assert stop_at not in late.token_ids[: first + 1]
    assert len(late.token_ids) > first + 1
