"""The engine's state of one sequence being generated."""

from __future__ import annotations

import enum
import time
from typing import TYPE_CHECKING

import msgspec

from seekd.engine.multimodal import ImageInput
from seekd.sampling_params import SamplingParams

if TYPE_CHECKING:
    from seekd.engine.structured.backend import RequestGrammar

PENDING_TOKEN = -1  # an output token still being sampled on the device


class RequestStatus(enum.IntEnum):
    WAITING = 0
    RUNNING = 1
    PREEMPTED = 2
    FINISHED_STOPPED = 3
    FINISHED_LENGTH = 4
    FINISHED_ABORTED = 5

    @property
    def finished(self) -> bool:
        return self >= RequestStatus.FINISHED_STOPPED


FINISH_REASONS = {
    RequestStatus.FINISHED_STOPPED: "stop",
    RequestStatus.FINISHED_LENGTH: "length",
    RequestStatus.FINISHED_ABORTED: "abort",
}


class Request:
    """One sequence. `num_computed_tokens` counts tokens whose KV is in the cache; the tokens
    from there to `num_tokens` are what the next steps must still run through the model."""

    def __init__(
        self,
        request_id: str,
        prompt_token_ids: list[int],
        sampling_params: SamplingParams,
        eos_token_ids: frozenset[int] = frozenset(),
        *,
        max_output_tokens: int,
        arrival_time: float | None = None,
        priority: int = 0,
        tenant: str = "default",
        cache_salt: str | None = None,
        deadline: float | None = None,
        output_token_ids: list[int] | None = None,
        images: list[ImageInput] | None = None,
        lora_name: str | None = None,
    ) -> None:
        """`output_token_ids` resumes a sequence that another engine had started (after a restart):
        it counts as output, exactly as for a preempted request, so sampler positions (seeded noise),
        penalties, min_tokens and max_output_tokens go on where they were."""
        if not prompt_token_ids:
            raise ValueError(f"request {request_id}: the prompt is empty")
        self.request_id = request_id
        self.prompt_token_ids = list(prompt_token_ids)
        self.sampling_params = sampling_params
        self.eos_token_ids = eos_token_ids
        self.max_output_tokens = max_output_tokens
        self.arrival_time = time.monotonic() if arrival_time is None else arrival_time
        self.priority = priority  # lower value = more important
        self.tenant = tenant
        self.cache_salt = cache_salt
        self.deadline = deadline
        self.images: list[ImageInput] = sorted(images or [], key=lambda im: im.offset)
        self.lora_name = lora_name  # the LoRA adapter it runs on; None = the base model
        self.lora_key: str | None = None  # that adapter's load (name and load count): keys its prefix cache

        self.output_token_ids: list[int] = list(output_token_ids or [])
        self.all_token_ids: list[int] = list(prompt_token_ids) + self.output_token_ids
        self.num_computed_tokens = 0
        self.num_cached_tokens = -1  # prefix-cache hit of the first scheduling; -1 = not yet
        self.num_preemptions = 0
        self.status = RequestStatus.WAITING
        self.stop_reason: int | None = None
        self.block_hashes: list[bytes] = []  # hash chain of the full blocks of all_token_ids
        self.grammar: RequestGrammar | None = None  # matcher of a structured-output request
        # Output slots whose token is still being sampled on the device (async scheduling): they
        # sit at the end of the output as PENDING_TOKEN until the step that samples them finishes.
        self.num_pending_tokens = 0

    @property
    def num_prompt_tokens(self) -> int:
        return len(self.prompt_token_ids)

    @property
    def num_tokens(self) -> int:
        return len(self.all_token_ids)

    @property
    def num_output_tokens(self) -> int:
        return len(self.output_token_ids)

    @property
    def num_known_tokens(self) -> int:
        """Tokens whose ids are known on the host (prompt and resolved output)."""
        return len(self.all_token_ids) - self.num_pending_tokens

    @property
    def will_finish_by_length(self) -> bool:
        """Pending tokens already take the sequence to its length limit: scheduling it again
        could only compute a token that would be thrown away."""
        return self.num_output_tokens >= self.max_output_tokens

    @property
    def is_finished(self) -> bool:
        return self.status.finished

    @property
    def finish_reason(self) -> str | None:
        return FINISH_REASONS.get(self.status)

    def append_output_token(self, token_id: int) -> None:
        self.output_token_ids.append(token_id)
        self.all_token_ids.append(token_id)

    def append_pending_token(self) -> None:
        self.append_output_token(PENDING_TOKEN)
        self.num_pending_tokens += 1

    def resolve_pending_token(self, token_id: int) -> None:
        """The oldest pending slot gets its sampled token."""
        index = len(self.output_token_ids) - self.num_pending_tokens
        self.output_token_ids[index] = token_id
        self.all_token_ids[self.num_prompt_tokens + index] = token_id
        self.num_pending_tokens -= 1

    def drop_pending_tokens(self) -> None:
        """A finished sequence forgets slots scheduled past its end."""
        if self.num_pending_tokens:
            del self.output_token_ids[-self.num_pending_tokens :]
            del self.all_token_ids[-self.num_pending_tokens :]
            self.num_pending_tokens = 0

    def check_stop(self, max_model_len: int) -> bool:
        """Decide, after the newest resolved token, whether the request is finished; set status if
        so. (min_tokens is enforced by the sampler, which cannot pick a stop token before it.)"""
        num_output = len(self.output_token_ids) - self.num_pending_tokens
        token = self.output_token_ids[num_output - 1]
        params = self.sampling_params
        if not params.ignore_eos and token in self.eos_token_ids:
            self.status = RequestStatus.FINISHED_STOPPED
        elif token in params.stop_token_ids:
            self.status = RequestStatus.FINISHED_STOPPED
            self.stop_reason = token
        elif self._grammar_complete(num_output):
            self.status = RequestStatus.FINISHED_STOPPED
        elif num_output >= self.max_output_tokens or self.num_known_tokens >= max_model_len:
            self.status = RequestStatus.FINISHED_LENGTH
        else:
            return False
        self.drop_pending_tokens()
        return True

    def _grammar_complete(self, num_output: int) -> bool:
        if self.grammar is None:
            return False
        self.grammar.advance(self.output_token_ids[:num_output])
        return self.grammar.finished

    def __repr__(self) -> str:
        return (
            f"Request({self.request_id}, status={self.status.name}, prompt={self.num_prompt_tokens}, "
            f"output={self.num_output_tokens}, computed={self.num_computed_tokens})"
        )


class EngineCoreRequest(msgspec.Struct, kw_only=True, omit_defaults=True):
    """What a front door (offline LLM or the API server) submits to the engine core; plain data
    so that it crosses the process boundary as msgpack."""

    request_id: str
    prompt_token_ids: list[int]
    sampling_params: SamplingParams
    arrival_time: float | None = None
    priority: int = 0
    tenant: str = "default"
    cache_salt: str | None = None
    deadline: float | None = None  # time.monotonic(); CLOCK_MONOTONIC is system-wide, so valid across processes
    resume_output_token_ids: list[int] = msgspec.field(default_factory=list)  # produced before a restart
    images: list[ImageInput] = msgspec.field(default_factory=list)  # their placeholders are in the prompt
    lora_name: str | None = None  # a LoRA adapter loaded in the engine; None = the base model
