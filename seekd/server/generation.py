"""One API request in the engine, shared by chat and completions.

Takes what `seekd.server.request_plan` decided (prompts, SamplingParams, policy), waits for
admission, submits one engine request per (prompt, choice) and builds each choice through the
output processor shared with the offline API (seekd/engine/output_processor.py), which releases
only final text: whole UTF-8 characters, and never a stop string (the engine request of a choice
whose stop string matched is aborted at once). Whatever ends the iteration — finish, error or the
client going away (task cancelled) — aborts what is still running in the engine."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any

from seekd.engine.context_length import output_budget
from seekd.engine.multimodal import ImageInput
from seekd.engine.output_processor import SequenceOutput, sequence_request_id
from seekd.engine.outputs import EngineOutput, TokenLogprob
from seekd.engine.request import EngineCoreRequest
from seekd.errors import APIError
from seekd.models.generation_config import GenerationConfig
from seekd.ops.auth import cache_salt_for
from seekd.ops.metrics import ServerMetrics
from seekd.sampling_params import SamplingParams
from seekd.server.admission import AdmissionController, RequestPolicy, Ticket
from seekd.server.engine_client import EngineClient, EngineDeadError, EngineRequestError, RequestStream
from seekd.server.errors import invalid_request
from seekd.server.images import ImageFrontend
from seekd.server.logprobs import TokenTexts
from seekd.server.protocol import CompletionTokensDetails, PromptTokensDetails, Usage
from seekd.server.reasoning import ReasoningTags, ReasoningTokenCounter
from seekd.server.shutdown import LiveRequests
from seekd.text.detokenizer import IncrementalDetokenizer
from seekd.text.tokenizer import Tokenizer

logger = logging.getLogger(__name__)


@dataclass
class ServingContext:
    """Everything a handler needs, fixed once the engine is ready."""

    client: EngineClient
    tokenizer: Tokenizer
    token_texts: TokenTexts
    served_model_name: str
    max_model_len: int
    max_n: int
    created: int
    metrics: ServerMetrics
    admission: AdmissionController
    live: LiveRequests
    request_timeout_s: float  # default deadline of a request; 0 = none
    tenant_cache_isolation: bool = True  # prefix-cache hits only within a tenant
    max_prompt_tokens: int = 0  # 0 = the context length is the only bound
    quantization: str | None = None  # --quantization, and the weight precision it loads (/v1/models)
    precision: str | None = None
    max_output_tokens: int = 0  # 0 = the rest of the context
    generation_config: GenerationConfig = field(default_factory=GenerationConfig)  # the model's defaults
    images: ImageFrontend | None = None  # image content parts of chat messages; None: a test context

    def default_max_tokens(self, prompt_len: int) -> int | None:
        """`max_tokens` of a chat request that sets none: the model's generation config, capped by
        the operator's `max_output_tokens` and by the context; None = the rest of the context."""
        limits = [n for n in (self.generation_config.default_max_tokens(prompt_len), self.max_output_tokens) if n]
        if not limits:
            return None
        return max(1, output_budget(prompt_len, min(limits), self.max_model_len))

    async def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """Token ids of a prompt. Long texts are tokenized in a worker thread without the GIL: on
        the event loop, a few megabytes (seconds of work) would stall every other client's stream."""
        if len(text) < LONG_PROMPT_CHARS:
            return self.tokenizer.encode(text, add_special_tokens)
        return await asyncio.to_thread(self.tokenizer.encode_without_gil, text, add_special_tokens)


LONG_PROMPT_CHARS = 32_768  # below this, tokenizing takes about a millisecond: a thread hop costs more


@dataclass
class ChoiceUpdate:
    """What one engine output changed in one choice."""

    index: int
    text: str
    logprobs: list[TokenLogprob]
    finish_reason: str | None = None
    stop_reason: int | str | None = None


class Choice(SequenceOutput):
    """One choice of an API request: its sequence, plus where it sits in the response and, for
    chat, how many of its tokens are reasoning."""

    def __init__(
        self,
        index: int,
        engine_id: str,
        prompt_index: int,
        detok: IncrementalDetokenizer,
        reasoning: ReasoningTokenCounter | None = None,
    ) -> None:
        super().__init__(detok)
        self.index = index
        self.engine_id = engine_id
        self.prompt_index = prompt_index
        self.reasoning = reasoning  # chat only

    def absorb(self, out: EngineOutput) -> ChoiceUpdate:
        if self.reasoning is not None:
            self.reasoning.feed(out.new_token_ids)
        delta = self.apply(out)
        return ChoiceUpdate(self.index, delta.text, delta.logprobs, delta.finish_reason, delta.stop_reason)


class Generation:
    """All choices of one API request: `len(prompts) * n`, indexed prompt-major as OpenAI does."""

    def __init__(
        self,
        ctx: ServingContext,
        request_id: str,
        prompts: list[list[int]],
        params: SamplingParams,
        policy: RequestPolicy,
        reasoning: ReasoningTags | None = None,
        images: list[ImageInput] | None = None,
    ) -> None:
        """`reasoning` (chat): count each choice's reasoning tokens for the usage. `images` (chat,
        one prompt): the prompt's images, whose placeholder tokens it holds."""
        self.ctx = ctx
        self.reasoning = reasoning
        self.request_id = request_id
        self.prompts = prompts
        self.params = params
        self.policy = policy
        self.created = int(time.time())
        self.tracker = ctx.metrics.track()
        self.choices: list[Choice] = []
        self._requests: list[EngineCoreRequest] = []
        self._ticket: Ticket | None = None
        self._stream: RequestStream | None = None
        self._cut: APIError | None = None  # why the server ended it (shutdown)
        cache_salt = cache_salt_for(policy.tenant, policy.request_cache_salt, ctx.tenant_cache_isolation)
        for p, prompt in enumerate(prompts):
            for i in range(params.n):
                index = p * params.n + i
                child = params.for_choice(i)
                engine_id = sequence_request_id(request_id, index)
                detok = IncrementalDetokenizer(
                    ctx.tokenizer, child.skip_special_tokens, child.stop, child.include_stop_str_in_output
                )
                self.choices.append(
                    Choice(index, engine_id, p, detok, reasoning=reasoning.counter() if reasoning is not None else None)
                )
                self._requests.append(
                    EngineCoreRequest(
                        request_id=engine_id,
                        prompt_token_ids=prompt,
                        sampling_params=child,
                        arrival_time=policy.arrival,
                        priority=policy.priority,
                        tenant=policy.tenant,
                        deadline=policy.deadline,
                        cache_salt=cache_salt,
                        images=list(images or []),
                        lora_name=policy.lora_name,
                    )
                )

    @property
    def estimated_tokens(self) -> int:
        """What admission charges: prompt + max_tokens (or the rest of the context) per sequence."""
        room = self.ctx.max_model_len
        return self.params.n * sum(len(p) + (self.params.max_tokens or room - len(p)) for p in self.prompts)

    async def updates(self) -> AsyncIterator[ChoiceUpdate]:
        """Choice updates in arrival order, once admitted; raises APIError if the queue refuses the
        request (429/503), its deadline passes (408), or the engine refuses it or is gone."""
        admission = self.ctx.admission
        try:
            ticket = admission.enqueue(
                self.request_id,
                self.policy.tenant,
                self.policy.priority,
                self.estimated_tokens,
                len(self._requests),
                self.policy.key_limits,
            )
        except APIError as e:
            if e.status == HTTPStatus.TOO_MANY_REQUESTS:
                self.ctx.metrics.request_rejected("rate_limit" if e.code == "rate_limit_exceeded" else "queue_full")
            raise
        self._ticket = ticket
        try:
            with self.ctx.live.track(self):
                await admission.wait(ticket, self.policy.deadline)
                async for update in self._generate():
                    yield update
        finally:
            admission.release(ticket)

    def cut(self, error: APIError) -> None:
        """End the request now with `error` (the server is stopping): a queued request leaves the
        queue, a running one's outputs so far go out first, then the error."""
        if self._cut is not None:
            return
        self._cut = error
        queued = self._ticket is not None and self._ticket.cut(error)
        if self._stream is not None:
            self._stream.put(error)
        logger.warning(
            "cut off request_id=%s tenant=%s %s: %s",
            self.request_id,
            self.policy.tenant,
            "while queued" if queued else f"after {self.completion_tokens} completion tokens",
            error.message,
        )

    def _deadline_error(self) -> APIError:
        return APIError(
            HTTPStatus.REQUEST_TIMEOUT,
            f"the request's deadline of {self.policy.timeout_s:g} s passed before it finished",
            type="timeout_error",
            code="request_timeout",
        )

    def _arm_deadline(self, stream: RequestStream) -> asyncio.TimerHandle | None:
        """The engine aborts a request past its deadline by itself; this also ends the API request
        on time when the engine is slow to notice (mid-step, restarting)."""
        deadline = self.policy.deadline
        if deadline is None:
            return None
        delay = max(0.0, deadline - time.monotonic())
        return asyncio.get_running_loop().call_later(delay, stream.put, self._deadline_error())

    async def _generate(self) -> AsyncIterator[ChoiceUpdate]:
        by_engine_id = {c.engine_id: c for c in self.choices}
        if self._cut is not None:  # cut between its admission and now
            raise self._cut
        self.tracker.on_scheduled()
        try:
            stream = self._stream = self.ctx.client.submit(self._requests)
        except EngineDeadError as e:
            raise APIError(HTTPStatus.SERVICE_UNAVAILABLE, str(e), code="engine_unavailable") from e
        logger.debug(
            "started request_id=%s tenant=%s priority=%d prompts=%d prompt_tokens=%d n=%d max_tokens=%s",
            self.request_id,
            self.policy.tenant,
            self.policy.priority,
            len(self.prompts),
            self.prompt_tokens,
            self.params.n,
            self.params.max_tokens,
        )
        timer = self._arm_deadline(stream)
        try:
            async for out in stream:
                choice = by_engine_id[out.request_id]
                if choice.finish_reason is not None:
                    continue  # outputs already in flight when its stop string matched
                if out.finish_reason == "abort":  # the engine aborts on its own only past the deadline
                    raise self._deadline_error()
                update = choice.absorb(out)
                self.tracker.on_output(choice.index, len(out.new_token_ids))
                if choice.finish_reason is not None:
                    stream.finish(choice.engine_id)
                yield update
        except EngineRequestError as e:
            raise invalid_request(str(e)) from e
        except EngineDeadError as e:
            raise APIError(HTTPStatus.SERVICE_UNAVAILABLE, str(e), code="engine_unavailable") from e
        finally:
            if timer is not None:
                timer.cancel()
            if stream.unfinished:
                logger.info(
                    "aborting request_id=%s tenant=%s (%d sequences unfinished)",
                    self.request_id,
                    self.policy.tenant,
                    len(stream.unfinished),
                )
            stream.abort()
        self.tracker.on_finished(self.prompt_tokens, self.cached_tokens, [c.finish_reason for c in self.choices])
        logger.debug(
            "finished request_id=%s tenant=%s completion_tokens=%d cached_tokens=%d reasons=%s",
            self.request_id,
            self.policy.tenant,
            self.completion_tokens,
            self.cached_tokens,
            ",".join(str(c.finish_reason) for c in self.choices),
        )

    async def run(self) -> None:
        """Non-streaming: drive the generation to the end."""
        async for _ in self.updates():
            pass

    @property
    def prompt_tokens(self) -> int:
        return sum(len(p) for p in self.prompts)

    @property
    def completion_tokens(self) -> int:
        return sum(c.num_tokens for c in self.choices)

    @property
    def cached_tokens(self) -> int:
        """Prefix-cache hits of each prompt's first choice (later choices hit the first's blocks)."""
        return sum(c.num_cached_tokens for c in self.choices if c.index % self.params.n == 0)

    def access_fields(self) -> dict[str, Any]:
        """This request's part of its access-log line (`seekd.ops.access_log`), as plain data."""
        t = self.tracker
        return {
            "id": self.request_id,
            "tenant": self.policy.tenant,
            "model": self.ctx.served_model_name,
            "prompt_tokens": self.prompt_tokens,
            "output_tokens": self.completion_tokens,
            "cached_tokens": self.cached_tokens,
            "queue_ms": t.ms(t.arrival, t.scheduled),
            "ttft_ms": t.ms(t.arrival, t.first_token),
            "e2e_ms": t.ms(t.arrival, t.finished or time.monotonic()),
            "finish_reason": ",".join(str(c.finish_reason) for c in self.choices),
        }

    def usage(self) -> Usage:
        return Usage(
            prompt_tokens=self.prompt_tokens,
            completion_tokens=self.completion_tokens,
            total_tokens=self.prompt_tokens + self.completion_tokens,
            prompt_tokens_details=PromptTokensDetails(cached_tokens=self.cached_tokens),
            completion_tokens_details=None
            if self.reasoning is None
            else CompletionTokensDetails(
                reasoning_tokens=sum(c.reasoning.tokens for c in self.choices if c.reasoning is not None)
            ),
        )
