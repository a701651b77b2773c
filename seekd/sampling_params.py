"""Sampling parameters of one request; a msgspec Struct so that it is also the IPC wire format."""

from __future__ import annotations

import json
from typing import Any

import msgspec

_GREEDY_EPS = 1e-5


class StructuredOutputParams(msgspec.Struct, kw_only=True, omit_defaults=True, frozen=True):
    """A constraint on the generated text, enforced by grammar-constrained decoding: exactly one of
    `json_schema` (JSON-schema text), `json_object` (any JSON object), `regex` or `grammar` (a Lark
    grammar in llguidance's dialect). The constrained request finishes with reason "stop" when
    the grammar is complete; EOS is only allowed where the grammar accepts.

    `start_after_token` leaves the output free until that token (the end of a reasoning model's
    `<think>` block) and constrains what follows it, so such a model reasons first and then
    answers in the format.

    `lenient` compiles a json_schema ignoring the keywords and formats the grammar cannot enforce
    (uniqueItems, not, propertyNames, unknown formats) instead of refusing it: for OpenAI schemas
    without `strict: true`, which OpenAI itself does not enforce at all."""

    json_schema: str | None = None
    json_object: bool = False
    regex: str | None = None
    grammar: str | None = None
    start_after_token: int | None = None
    lenient: bool = False

    def __post_init__(self) -> None:
        kinds = [self.json_schema is not None, self.json_object, self.regex is not None, self.grammar is not None]
        if sum(kinds) != 1:
            raise ValueError("structured output needs exactly one of json_schema, json_object, regex, grammar")

    @classmethod
    def from_schema(cls, schema: dict[str, Any], lenient: bool = False) -> StructuredOutputParams:
        """Compact text; key order is kept because it is the order the properties are generated in."""
        return cls(json_schema=json.dumps(schema, separators=(",", ":"), ensure_ascii=False), lenient=lenient)

    @property
    def cache_key(self) -> tuple[str, str]:
        if self.json_schema is not None:
            return ("lenient_json_schema" if self.lenient else "json_schema", self.json_schema)
        if self.json_object:
            return ("json_object", "")
        if self.regex is not None:
            return ("regex", self.regex)
        return ("grammar", self.grammar or "")


class SamplingParams(msgspec.Struct, kw_only=True, omit_defaults=True):
    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0 or -1 disables
    min_p: float = 0.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    seed: int | None = None
    max_tokens: int | None = 16  # None: up to the context length
    min_tokens: int = 0
    stop: list[str] = msgspec.field(default_factory=list)
    stop_token_ids: list[int] = msgspec.field(default_factory=list)
    ignore_eos: bool = False
    logprobs: int | None = None  # number of top alternatives returned with each sampled token
    skip_special_tokens: bool = True
    include_stop_str_in_output: bool = False
    structured: StructuredOutputParams | None = None  # grammar-constrained decoding (response_format, tools)
    logit_bias: dict[int, float] = msgspec.field(default_factory=dict)  # token id -> added to its logit

    def __post_init__(self) -> None:
        if isinstance(self.stop, str):
            self.stop = [self.stop]
        checks = [
            (self.n >= 1, f"n must be at least 1, got {self.n}"),
            (self.temperature >= 0.0, f"temperature must be >= 0, got {self.temperature}"),
            (0.0 < self.top_p <= 1.0, f"top_p must be in (0, 1], got {self.top_p}"),
            (self.top_k >= -1, f"top_k must be -1, 0 (disabled) or positive, got {self.top_k}"),
            (0.0 <= self.min_p <= 1.0, f"min_p must be in [0, 1], got {self.min_p}"),
            (-2.0 <= self.presence_penalty <= 2.0, "presence_penalty must be in [-2, 2]"),
            (-2.0 <= self.frequency_penalty <= 2.0, "frequency_penalty must be in [-2, 2]"),
            (0.0 < self.repetition_penalty <= 10.0, "repetition_penalty must be in (0, 10]"),
            (self.max_tokens is None or self.max_tokens >= 1, "max_tokens must be at least 1"),
            (self.min_tokens >= 0, "min_tokens must be >= 0"),
            (
                self.max_tokens is None or self.min_tokens <= self.max_tokens,
                "min_tokens must not exceed max_tokens",
            ),
            (self.logprobs is None or 0 <= self.logprobs <= 20, "logprobs must be in [0, 20]"),
            (all(s for s in self.stop), "stop strings must not be empty"),
            (all(t >= 0 for t in self.stop_token_ids), "stop_token_ids must be non-negative"),
            (all(t >= 0 for t in self.logit_bias), "logit_bias token ids must be non-negative"),
            (all(-100.0 <= b <= 100.0 for b in self.logit_bias.values()), "logit_bias values must be in [-100, 100]"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)
        if self.top_k == -1:
            self.top_k = 0

    def for_choice(self, index: int) -> SamplingParams:
        """Parameters of the index-th of `n` sequences: one sequence, and a distinct seed so that
        the n samples differ while each stays reproducible."""
        seed = None if self.seed is None else self.seed + index
        return msgspec.structs.replace(self, n=1, seed=seed)

    @property
    def greedy(self) -> bool:
        return self.temperature < _GREEDY_EPS

    @property
    def has_penalties(self) -> bool:
        """Sampling depends on the tokens produced so far."""
        return bool(self.presence_penalty or self.frequency_penalty or self.repetition_penalty != 1.0)
