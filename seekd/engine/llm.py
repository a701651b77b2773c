"""Offline API: `LLM(model=...).generate(prompts, SamplingParams(...))` and `.chat(messages)`.

Runs the EngineCore in-process (no IPC) and does the text side itself: tokenization, chat template,
incremental detokenization and stop strings.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from seekd.config import SeekdConfig, load_config
from seekd.engine.engine_core import EngineCore
from seekd.engine.multimodal import ImageInput
from seekd.engine.output_processor import SequenceDelta, SequenceOutput, sequence_request_id
from seekd.engine.outputs import EngineOutput, TokenLogprob
from seekd.engine.request import EngineCoreRequest
from seekd.progress import progress_bar
from seekd.sampling_params import SamplingParams
from seekd.text.detokenizer import IncrementalDetokenizer
from seekd.text.tokenizer import Tokenizer

Prompt = str | list[int]
Messages = list[dict[str, Any]]


@dataclass
class CompletionOutput:
    index: int
    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[TokenLogprob] | None = None
    finish_reason: str | None = None
    stop_reason: int | str | None = None


@dataclass
class RequestOutput:
    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    outputs: list[CompletionOutput]
    num_cached_tokens: int = 0

    @property
    def finished(self) -> bool:
        return all(o.finish_reason is not None for o in self.outputs)


class _Sequence:
    """Client-side state of one sampled sequence (one of a request's `n`): the output processor's
    sequence, shown as the CompletionOutput handed to the caller."""

    def __init__(self, engine_id: str, output: CompletionOutput, detok: IncrementalDetokenizer | None) -> None:
        self.engine_id = engine_id
        self.output = output
        self.sequence = SequenceOutput(detok)
        output.token_ids = self.sequence.token_ids

    def absorb(self, out: EngineOutput) -> SequenceDelta:
        delta = self.sequence.apply(out)
        o, seq = self.output, self.sequence
        o.logprobs = seq.logprobs or None
        o.finish_reason, o.stop_reason = seq.finish_reason, seq.stop_reason
        if o.finish_reason is not None:
            o.text = seq.text
        return delta


class LLM:
    def __init__(
        self,
        model: str | None = None,
        *,
        config: SeekdConfig | None = None,
        show_progress: bool = True,
        **overrides: Any,
    ) -> None:
        """`overrides` are config fields by name (max_num_seqs=8, num_kv_blocks=64, ...)."""
        if config is None:
            config = load_config(overrides={"model": model, **overrides})
        self.config = config
        self.show_progress = show_progress
        self.engine = EngineCore(config, show_progress=show_progress)
        folder = self.engine.model_folder
        self.tokenizer = Tokenizer(folder) if (folder / "tokenizer.json").is_file() else None
        self._ids = itertools.count()

    def shutdown(self) -> None:
        """Stop tensor-parallel workers now (they also stop when this process exits)."""
        self.engine.shutdown()

    @property
    def max_model_len(self) -> int:
        return self.engine.max_model_len

    def _tokenize(self, prompt: Prompt) -> list[int]:
        if isinstance(prompt, str):
            if self.tokenizer is None:
                raise ValueError("this model folder has no tokenizer.json; pass prompts as token id lists")
            return self.tokenizer.encode(prompt)
        return list(prompt)

    def _submit(self, prompt_ids: list[int], params: SamplingParams, request_id: str, **extra: Any) -> list[_Sequence]:
        sequences = []
        for i in range(params.n):
            child = params.for_choice(i)
            engine_id = sequence_request_id(request_id, i)
            detok = None
            if self.tokenizer is not None:
                detok = IncrementalDetokenizer(
                    self.tokenizer, child.skip_special_tokens, child.stop, child.include_stop_str_in_output
                )
            self.engine.add_request(
                EngineCoreRequest(request_id=engine_id, prompt_token_ids=prompt_ids, sampling_params=child, **extra)
            )
            sequences.append(_Sequence(engine_id, CompletionOutput(index=i), detok))
        return sequences

    def generate(
        self,
        prompts: Prompt | Sequence[Prompt],
        sampling_params: SamplingParams | Sequence[SamplingParams] | None = None,
        images: Sequence[list[ImageInput]] | None = None,
        lora_name: str | Sequence[str | None] | None = None,
        **request_options: Any,
    ) -> list[RequestOutput]:
        """Generate for each prompt (text or token ids); results come back in prompt order.
        `images`: per prompt, the images whose placeholder tokens it holds (vision-language models).
        `lora_name`: the LoRA adapter of every prompt, or one per prompt (None = the base model).
        `request_options`: priority, tenant, cache_salt."""
        if isinstance(prompts, str) or (prompts and isinstance(prompts[0], int)):
            prompts = [prompts]
        params_list = _broadcast_params(sampling_params, len(prompts))
        if images is not None and len(images) != len(prompts):
            raise ValueError(f"images for {len(images)} prompts, but {len(prompts)} prompts")
        adapters = [lora_name] * len(prompts) if lora_name is None or isinstance(lora_name, str) else list(lora_name)
        if len(adapters) != len(prompts):
            raise ValueError(f"{len(adapters)} LoRA adapter names for {len(prompts)} prompts")
        results: list[RequestOutput] = []
        by_engine_id: dict[str, _Sequence] = {}
        for i, (prompt, params, adapter) in enumerate(zip(prompts, params_list, adapters)):
            ids = self._tokenize(prompt)
            request_id = f"gen-{next(self._ids)}"
            extra = dict(request_options)
            if images is not None and images[i]:
                extra["images"] = list(images[i])
            sequences = self._submit(ids, params, request_id, lora_name=adapter, **extra)
            by_engine_id.update((s.engine_id, s) for s in sequences)
            results.append(
                RequestOutput(
                    request_id, prompt if isinstance(prompt, str) else None, ids, [s.output for s in sequences]
                )
            )
        with progress_bar("Generating", total=len(by_engine_id), enabled=self.show_progress) as advance:
            for out in self._run():
                seq = by_engine_id.get(out.request_id)
                if seq is None:
                    continue
                if seq.absorb(out).stopped:
                    self.engine.abort_requests([seq.engine_id])
                if seq.output.finish_reason is not None:
                    advance(1)
        for result in results:
            result.num_cached_tokens = by_engine_id[
                sequence_request_id(result.request_id, 0)
            ].sequence.num_cached_tokens
        return results

    def chat(
        self,
        messages: Messages | Sequence[Messages],
        sampling_params: SamplingParams | Sequence[SamplingParams] | None = None,
        add_generation_prompt: bool = True,
        **template_kwargs: Any,
    ) -> list[RequestOutput]:
        if self.tokenizer is None:
            raise ValueError("this model folder has no tokenizer; chat needs one")
        conversations = [messages] if messages and isinstance(messages[0], dict) else list(messages)
        prompts = [
            self.tokenizer.encode_chat(conv, add_generation_prompt=add_generation_prompt, **template_kwargs)
            for conv in conversations
        ]
        return self.generate(prompts, sampling_params)

    def stream(self, prompt: Prompt, sampling_params: SamplingParams | None = None) -> Iterator[str]:
        """Text deltas of one sequence as they are produced (for the terminal chat)."""
        params = sampling_params or SamplingParams()
        if params.n != 1:
            raise ValueError("stream() produces one sequence; use n=1")
        (seq,) = self._submit(self._tokenize(prompt), params, f"stream-{next(self._ids)}")
        try:
            for out in self._run():
                if out.request_id != seq.engine_id:
                    continue
                delta = seq.absorb(out)
                if delta.text:
                    yield delta.text
                if delta.stopped:
                    self.engine.abort_requests([seq.engine_id])
                if seq.output.finish_reason is not None:
                    return
        finally:
            self.engine.abort_requests([seq.engine_id])

    def _run(self) -> Iterator[EngineOutput]:
        while self.engine.has_unfinished_requests():
            yield from self.engine.step()


def _broadcast_params(params: SamplingParams | Sequence[SamplingParams] | None, n: int) -> list[SamplingParams]:
    if params is None:
        return [SamplingParams()] * n
    if isinstance(params, SamplingParams):
        return [params] * n
    if len(params) != n:
        raise ValueError(f"{len(params)} sampling params for {n} prompts")
    return list(params)
