"""Turns the last-position logits of a batch into next tokens, on the model's device.

Order of operations: raw logprobs (what the API reports) -> grammar masks of structured-output
requests -> logit_bias -> penalties -> greedy rows take the argmax -> temperature -> top-k / top-p /
min-p -> sample with the exponential race (argmax of p / q, q ~ Exp(1)). The race, unlike an
inverse-CDF draw, moves to another token only when two candidates nearly tie, so the logits'
rounding differences between batch shapes almost never change a sampled token. q is drawn as
-log(U): on a CPU that is several times cheaper than torch's exponential_. A request with a `seed`
draws its noise from a generator keyed on (seed, output position), so its tokens depend on nothing
else in the batch and survive preemption and recomputation unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from seekd.engine.outputs import TokenLogprob
from seekd.engine.request import Request
from seekd.engine.structured.bitmask import apply_token_bitmask

_SEED_MIX = 0x9E3779B97F4A7C15
_MASK63 = (1 << 63) - 1


@dataclass
class SamplingBatch:
    """Per-row sampling tensors for the requests that sample this step, in batch order."""

    temperature: torch.Tensor | None  # [B] float32, 1.0 on greedy rows; None when all rows are greedy
    greedy: torch.Tensor | None  # [B] bool; None when no row, or every row, is greedy
    top_k: torch.Tensor | None  # [B] int64, vocab size where disabled
    top_p: torch.Tensor | None  # [B] float32
    min_p: torch.Tensor | None  # [B] float32
    presence: torch.Tensor | None  # [B] float32
    frequency: torch.Tensor | None
    repetition: torch.Tensor | None
    output_counts: torch.Tensor | None  # [B, V] counts of each token in the output so far
    seen_mask: torch.Tensor | None  # [B, V] prompt or output contains the token
    seeds: list[int | None]
    positions: list[int]  # number of output tokens before this one
    num_logprobs: list[int | None]
    all_greedy: bool
    banned: list[tuple[int, list[int]]]  # (row, token ids) that may not be sampled yet (min_tokens)
    constrained_rows: list[int] = field(default_factory=list)  # rows of structured-output requests
    token_bitmask: torch.Tensor | None = None  # [B, ceil(V/32)] int32 grammar masks, on device; set by the runner
    bias: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None  # logit_bias as (rows, token ids, values)

    @classmethod
    def from_requests(cls, requests: list[Request], vocab_size: int, device: torch.device) -> SamplingBatch:
        params = [r.sampling_params for r in requests]
        greedy = [p.greedy for p in params]

        def col(values: list, dtype=torch.float32) -> torch.Tensor:
            # staged through host memory without waiting for the device (async scheduling)
            return torch.tensor(values, dtype=dtype).to(device, non_blocking=True)

        top_k = top_p = min_p = None
        if any(p.top_k > 0 and not g for p, g in zip(params, greedy)):
            top_k = col([min(p.top_k, vocab_size) if p.top_k > 0 else vocab_size for p in params], torch.int64)
        if any(p.top_p < 1.0 and not g for p, g in zip(params, greedy)):
            top_p = col([p.top_p for p in params])
        if any(p.min_p > 0.0 and not g for p, g in zip(params, greedy)):
            min_p = col([p.min_p for p in params])

        presence = frequency = repetition = counts = seen = None
        if any(p.has_penalties for p in params):
            presence = col([p.presence_penalty for p in params])
            frequency = col([p.frequency_penalty for p in params])
            repetition = col([p.repetition_penalty for p in params])
            counts = torch.zeros(len(requests), vocab_size, dtype=torch.float32, device=device)
            seen = torch.zeros(len(requests), vocab_size, dtype=torch.bool, device=device)
            for i, r in enumerate(requests):
                if not r.sampling_params.has_penalties:
                    continue  # its penalties are zero; other rows may still have pending outputs
                if r.output_token_ids:
                    ids = torch.tensor(r.output_token_ids, dtype=torch.int64, device=device)
                    counts[i].scatter_add_(0, ids, torch.ones_like(ids, dtype=torch.float32))
                prompt = torch.tensor(r.prompt_token_ids, dtype=torch.int64, device=device)
                seen[i, prompt] = True
            seen |= counts > 0

        banned = []
        for i, r in enumerate(requests):
            p = r.sampling_params
            if r.num_output_tokens < p.min_tokens:
                stops = list(p.stop_token_ids) + ([] if p.ignore_eos else list(r.eos_token_ids))
                if stops:
                    banned.append((i, stops))

        bias = None
        if any(p.logit_bias for p in params):
            entries = [(i, t, b) for i, p in enumerate(params) for t, b in p.logit_bias.items()]
            rows, ids, values = zip(*entries)
            bias = (col(list(rows), torch.int64), col(list(ids), torch.int64), col(list(values)))

        all_greedy = all(greedy)
        return cls(
            temperature=None if all_greedy else col([1.0 if g else p.temperature for p, g in zip(params, greedy)]),
            greedy=col(greedy, torch.bool) if any(greedy) and not all_greedy else None,
            top_k=top_k,
            top_p=top_p,
            min_p=min_p,
            presence=presence,
            frequency=frequency,
            repetition=repetition,
            output_counts=counts,
            seen_mask=seen,
            seeds=[p.seed for p in params],
            positions=[r.num_output_tokens for r in requests],
            num_logprobs=[p.logprobs for p in params],
            all_greedy=all_greedy,
            banned=banned,
            constrained_rows=[i for i, r in enumerate(requests) if r.grammar is not None],
            bias=bias,
        )


class Sampler:
    def __init__(self, device: torch.device, seed: int = 0) -> None:
        self.device = device
        self.generator = torch.Generator(device=device).manual_seed(seed)

    def __call__(self, logits: torch.Tensor, batch: SamplingBatch) -> tuple[list[int], list[TokenLogprob | None]]:
        sampled, raw_logprobs = self.sample(logits, batch)
        token_ids = sampled.tolist()
        return token_ids, gather_logprobs(raw_logprobs, token_ids, batch.num_logprobs)

    def sample(self, logits: torch.Tensor, batch: SamplingBatch) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Sampled ids and (when a row asked for logprobs) the raw logprobs, both left on the
        device: nothing here waits for the GPU."""
        logits = logits.float()
        raw_logprobs = None
        if any(n is not None for n in batch.num_logprobs):
            raw_logprobs = torch.log_softmax(logits, dim=-1)
        if batch.token_bitmask is not None:  # after the raw logprobs: masked ones would be -inf, not JSON
            apply_token_bitmask(logits, batch.token_bitmask, batch.constrained_rows)
        logits = apply_penalties(logits, batch)
        if batch.all_greedy:
            return logits.argmax(dim=-1), raw_logprobs
        return self._sample(logits, batch), raw_logprobs

    def _sample(self, logits: torch.Tensor, batch: SamplingBatch) -> torch.Tensor:
        greedy_ids = logits.argmax(dim=-1) if batch.greedy is not None else None
        logits = logits.div_(batch.temperature.unsqueeze(1))  # in place, as the masks and penalties before it
        logits = apply_top_k_top_p_min_p(logits, batch.top_k, batch.top_p, batch.min_p)
        probs = torch.softmax(logits, dim=-1)
        sampled = probs.div_(self._exponential_noise(probs.shape, batch)).argmax(dim=-1)
        return sampled if greedy_ids is None else torch.where(batch.greedy, greedy_ids, sampled)

    def _exponential_noise(self, shape: torch.Size, batch: SamplingBatch) -> torch.Tensor:
        noise = torch.empty(shape, dtype=torch.float32, device=self.device)
        noise.uniform_(generator=self.generator)
        for row, (seed, pos) in enumerate(zip(batch.seeds, batch.positions)):
            if seed is not None:
                gen = torch.Generator(device=self.device).manual_seed(row_seed(seed, pos))
                noise[row].uniform_(generator=gen)
        return noise.log_().neg_().clamp_(min=1e-10)  # -log(U) ~ Exp(1)


def row_seed(seed: int, position: int) -> int:
    return ((seed & _MASK63) * _SEED_MIX + position * 0x632BE59BD9B4E019 + 1) & _MASK63


def apply_penalties(logits: torch.Tensor, batch: SamplingBatch) -> torch.Tensor:
    if batch.bias is not None:  # -inf from a grammar mask stays -inf whatever the bias
        logits.index_put_(batch.bias[:2], batch.bias[2], accumulate=True)
    for row, token_ids in batch.banned:
        logits[row, token_ids] = float("-inf")
    if batch.output_counts is None:
        return logits
    rep = batch.repetition.unsqueeze(1)
    penalized = torch.where(logits > 0, logits / rep, logits * rep)
    logits = torch.where(batch.seen_mask, penalized, logits)
    logits = logits - batch.frequency.unsqueeze(1) * batch.output_counts
    return logits - batch.presence.unsqueeze(1) * (batch.output_counts > 0).float()


def apply_top_k_top_p_min_p(
    logits: torch.Tensor,
    top_k: torch.Tensor | None,
    top_p: torch.Tensor | None,
    min_p: torch.Tensor | None,
) -> torch.Tensor:
    if min_p is not None:
        probs = torch.softmax(logits, dim=-1)
        threshold = probs.max(dim=-1, keepdim=True).values * min_p.unsqueeze(1)
        logits = logits.masked_fill(probs < threshold, float("-inf"))
    if top_k is None and top_p is None:
        return logits
    sorted_logits, order = logits.sort(dim=-1, descending=True)
    remove = torch.zeros_like(sorted_logits, dtype=torch.bool)
    if top_k is not None:
        ranks = torch.arange(logits.size(-1), device=logits.device).unsqueeze(0)
        remove |= ranks >= top_k.unsqueeze(1)
    if top_p is not None:
        sorted_probs = torch.softmax(sorted_logits.masked_fill(remove, float("-inf")), dim=-1)
        cumulative = sorted_probs.cumsum(dim=-1)
        remove |= (cumulative - sorted_probs) >= top_p.unsqueeze(1)  # keep the token that crosses p
    remove[:, 0] = False
    sorted_logits = sorted_logits.masked_fill(remove, float("-inf"))
    return torch.empty_like(logits).scatter_(1, order, sorted_logits)


def gather_logprobs(
    raw_logprobs: torch.Tensor | None, token_ids: list[int], num_logprobs: list[int | None]
) -> list[TokenLogprob | None]:
    if raw_logprobs is None:
        return [None] * len(token_ids)
    ids = torch.tensor(token_ids, device=raw_logprobs.device).unsqueeze(1)
    chosen = raw_logprobs.gather(1, ids)
    ranks = (raw_logprobs > chosen).sum(dim=1) + 1
    k = max(n or 0 for n in num_logprobs)
    top_vals, top_ids = raw_logprobs.topk(k, dim=-1) if k else (None, None)
    chosen_l, ranks_l = chosen.squeeze(1).tolist(), ranks.tolist()
    top_vals_l = top_vals.tolist() if k else None
    top_ids_l = top_ids.tolist() if k else None
    out: list[TokenLogprob | None] = []
    for i, n in enumerate(num_logprobs):
        if n is None:
            out.append(None)
            continue
        out.append(
            TokenLogprob(
                token_id=token_ids[i],
                logprob=chosen_l[i],
                rank=ranks_l[i],
                top_token_ids=top_ids_l[i][:n] if n else [],
                top_logprobs=top_vals_l[i][:n] if n else [],
            )
        )
    return out
