"""How closely two engines' next-token distributions agree over the same decode positions.

Both engines are teacher-forced along the same token sequences (a reference greedy continuation of
each prompt), so position by position they condition on identical contexts even where their own
greedy choices would part: every prompt is prefilled, then its continuation is fed one token per
step with all sequences in one decode batch, through the runner's real decode path (paged cache,
attention backend, CUDA graphs where captured). Used for the FP8 KV cache's acceptance: top-1
agreement and mean KL(reference || candidate) over those positions.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from seekd import LLM, SamplingParams
from seekd.engine.request import Request
from seekd.engine.scheduler import SchedulerOutput


@dataclass
class Agreement:
    positions: int
    top1: float  # fraction of positions whose most likely token is the same
    mean_kl: float  # mean KL(reference || candidate) in nats

    def __str__(self) -> str:
        return f"{self.positions} decode positions: top-1 agreement {self.top1:.4f}, mean KL {self.mean_kl:.2e}"


def greedy_sequences(llm: LLM, prompts: list[list[int]], num_decode: int) -> list[list[int]]:
    """Each prompt followed by the engine's greedy continuation of num_decode tokens."""
    params = SamplingParams(temperature=0.0, max_tokens=num_decode, ignore_eos=True)
    return [p + o.outputs[0].token_ids for p, o in zip(prompts, llm.generate(prompts, params))]


@torch.inference_mode()
def decode_logits(llm: LLM, sequences: list[list[int]], prompt_lens: list[int]) -> torch.Tensor:
    """Float32 logits [decode positions, vocab]: after one step that prefills the prompt (the first
    prompt_lens[i] tokens) of every sequence, one row per sequence (batch order) for each step that
    feeds one of its following tokens, the last included. Needs an idle engine; uses blocks 1.. of
    its cache as scratch."""
    runner = llm.engine.runner
    requests, block_ids, next_block = [], {}, 1
    for i, seq in enumerate(sequences):
        request = Request(f"agreement-{i}", seq, SamplingParams(max_tokens=1), max_output_tokens=1)
        block_ids[request.request_id] = []
        for count in runner.kv_layout.blocks_per_group(len(seq)):
            block_ids[request.request_id].append(list(range(next_block, next_block + count)))
            next_block += count
        requests.append(request)
    if next_block > runner.num_blocks:
        raise ValueError(f"the sequences need {next_block - 1} KV blocks, the cache has {runner.num_blocks - 1}")
    rows, step_tokens = [], dict(zip(block_ids, prompt_lens))
    while live := [r for r in requests if r.num_computed_tokens + step_tokens[r.request_id] <= r.num_tokens]:
        plan = SchedulerOutput(
            requests=live,
            num_scheduled_tokens={r.request_id: step_tokens[r.request_id] for r in live},
            block_ids={r.request_id: block_ids[r.request_id] for r in live},
        )
        step, _, _ = runner.flatten(plan)
        step.logits_indices = np.cumsum(step.query_lens) - 1
        rows.append(runner.model.compute_logits(runner.forward_hidden(step, None)).float().cpu())
        for r in live:
            r.num_computed_tokens += step_tokens[r.request_id]
            step_tokens[r.request_id] = 1
    return torch.cat(rows[1:])  # the prefill's logits come from the prefill path: not a decode position


def agreement(reference: torch.Tensor, candidate: torch.Tensor) -> Agreement:
    ref_logp = reference.double().log_softmax(dim=-1)
    cand_logp = candidate.double().log_softmax(dim=-1)
    kl = (ref_logp.exp() * (ref_logp - cand_logp)).sum(dim=-1)
    top1 = (reference.argmax(dim=-1) == candidate.argmax(dim=-1)).double().mean()
    return Agreement(reference.size(0), top1.item(), kl.mean().item())
