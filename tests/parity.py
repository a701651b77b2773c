"""Shared checks of a seekd model: against its `transformers` reference (CPU, float32), and of the
engine behaviours (prefix cache, preemption, chunked prefill) that must not change its output."""

from __future__ import annotations

import torch

from seekd import LLM, SamplingParams


def hf_greedy(hf_model: torch.nn.Module, prompt: list[int], n: int, **model_inputs: torch.Tensor) -> list[int]:
    """HF greedy decoding that, like ignore_eos, neither stops at nor suppresses EOS; `model_inputs`
    go to the model beside the ids (a vision model's pixel values)."""
    hf_model.generation_config.eos_token_id = None
    with torch.no_grad():
        out = hf_model.generate(
            torch.tensor([prompt]),
            **model_inputs,
            max_new_tokens=n,
            do_sample=False,
            attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
            pad_token_id=0,
        )
    return out[0, len(prompt) :].tolist()


def assert_prefill_logits_match(llm: LLM, hf_model: torch.nn.Module, prompts: list[list[int]]) -> None:
    for prompt in prompts:
        ours = llm.engine.runner.prefill_logits(prompt)
        with torch.no_grad():
            ref = hf_model(torch.tensor([prompt])).logits[0]
        assert (ours - ref).abs().max().item() < 1e-4


def assert_greedy_matches(llm: LLM, hf_model: torch.nn.Module, prompts: list[list[int]], n: int = 32) -> None:
    """Greedy tokens equal HF's, for the prompts run together (mixed lengths) and one by one."""
    params = SamplingParams(temperature=0.0, max_tokens=n, ignore_eos=True)
    expected = [hf_greedy(hf_model, p, n) for p in prompts]
    assert len({tuple(e) for e in expected}) == len(prompts)  # the model is not degenerate
    assert [o.outputs[0].token_ids for o in llm.generate(prompts, params)] == expected
    assert [llm.generate(p, params)[0].outputs[0].token_ids for p in prompts] == expected
    assert not llm.engine.has_unfinished_requests()


def randomize_weights(model: torch.nn.Module) -> None:
    """Every weight random and non-trivial (norms and the MoE routing bias included), so that any
    mismatch between implementations shows up in the parity checks."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 1:
                p.copy_(1.0 + 0.2 * torch.randn_like(p))
            else:
                p.normal_(0.0, 0.15 if "embed" in name else 0.1)
        for name, b in model.named_buffers():
            if name.endswith("e_score_correction_bias"):
                b.copy_(0.1 * torch.randn_like(b))


SHARED_PREFIX = list(range(10, 42))  # 32 tokens = 4 blocks of 8
ENGINE_PROMPTS = [[*SHARED_PREFIX, 200 + i, 201, 202 + i] for i in range(3)] + [list(range(100, 113))]
ENGINE_GREEDY = SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True)


def assert_all_blocks_free(llm: LLM) -> None:
    """No request holds a block of any cache group: every group draws from the one pool, so every
    block but the null block is back in it, unreferenced."""
    kv = llm.engine.scheduler.kv
    assert [m.req_blocks for m in kv.managers] == [{} for _ in kv.managers]
    assert kv.pool.num_free_blocks == kv.pool.num_blocks - 1
    assert [b.block_id for b in kv.pool.blocks[1:] if b.ref_cnt != 0] == []


def generate_engine_prompts(llm: LLM, prompts: list[list[int]] = ENGINE_PROMPTS) -> list[list[int]]:
    """Greedy tokens of `prompts`; every KV block must be back in the pool afterwards."""
    outs = [o.outputs[0].token_ids for o in llm.generate(prompts, ENGINE_GREEDY)]
    assert_all_blocks_free(llm)
    return outs
