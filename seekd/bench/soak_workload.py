"""What a soak sends, and how each answer is judged.

A request kind is one way clients use the API (streamed or blocking chat and completions, long
prompts, n > 1, structured output, a client that hangs up mid-stream). Each answer becomes a
SoakRecord with one outcome:

- ok: every choice finished (a finish_reason each; a stream also ended with `[DONE]`);
- disconnected: the client closed the stream on purpose;
- rejected: refused before any work (429 with an OpenAI error object);
- error: any other OpenAI error object, in the body or as a stream event, or a connection refused;
- lost: admitted, then neither completed nor given a proper error — a stream cut short, a response
  that never came (timeout), an error without an error object. A soak fails on any of these.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the CLI parser reads KINDS and DEFAULT_MIX from here: no httpx or tokenizer on import
    from seekd.bench.client import RequestResult
    from seekd.bench.workloads import BenchRequest

KINDS = (
    "chat_stream",
    "chat_blocking",
    "completion_stream",
    "completion_blocking",
    "long_prompt",
    "n_choices",
    "structured",
    "disconnect",
)
DEFAULT_MIX = (
    "chat_stream=8,chat_blocking=4,completion_stream=4,completion_blocking=2,"
    "long_prompt=2,n_choices=3,structured=1,disconnect=3"
)
BURST_KINDS = ("chat_stream", "chat_blocking", "completion_stream")  # short requests, all at once
OUTCOMES = ("ok", "disconnected", "rejected", "error", "lost")
NUM_SYSTEM_PROMPTS = 4  # chat requests share these, so the prefix cache shares (and must free) blocks

ANSWER_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"answer": {"enum": ["yes", "no", "maybe"]}, "sure": {"type": "boolean"}},
    "required": ["answer", "sure"],
    "additionalProperties": False,
}


def parse_mix(text: str) -> dict[str, float]:
    """ "kind=weight,..." -> weights; kinds left out get weight 0."""
    mix = dict.fromkeys(KINDS, 0.0)
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, sep, weight = part.partition("=")
        if name not in mix or not sep:
            raise ValueError(f"--mix takes kind=weight pairs with kinds from {', '.join(KINDS)}; got {part!r}")
        try:
            mix[name] = float(weight)
        except ValueError:
            raise ValueError(f"--mix weight of {name} is not a number: {weight!r}") from None
        if mix[name] < 0:
            raise ValueError(f"--mix weight of {name} must be >= 0, not {weight}")
    if sum(mix.values()) <= 0:
        raise ValueError(f"--mix gives every kind weight 0: {text!r}")
    return mix


@dataclass(frozen=True)
class PlannedRequest:
    kind: str
    endpoint: str  # chat | completions
    request: BenchRequest
    overrides: dict[str, Any]  # merged into the body: stream, n, response_format
    n: int = 1
    disconnect_after: int | None = None  # text chunks before the client hangs up
    structured: bool = False

    @property
    def stream(self) -> bool:
        return self.overrides.get("stream", True)


class RequestPlanner:
    """Draws requests of each kind; seeded, so a soak's workload repeats exactly."""

    def __init__(
        self, mix: dict[str, float], max_tokens: int, prompt_tokens: int, long_prompt_tokens: int, seed: int
    ) -> None:
        from seekd.bench.workloads import TextSource

        self.rng = random.Random(seed)
        self.kinds = [k for k in KINDS if mix[k] > 0]
        self.weights = [mix[k] for k in self.kinds]
        self.max_tokens = max_tokens
        self.prompt_tokens = prompt_tokens
        self.long_prompt_tokens = long_prompt_tokens
        self.source = TextSource(None)
        self.system_prompts = [self.source.sample(self.rng, 320) for _ in range(NUM_SYSTEM_PROMPTS)]

    def next(self, burst: bool = False) -> PlannedRequest:
        kinds = self.kinds
        if burst:
            kinds = [k for k in BURST_KINDS if k in self.kinds] or self.kinds
        weights = [self.weights[self.kinds.index(k)] for k in kinds]
        return self.plan(self.rng.choices(kinds, weights)[0])

    def plan(self, kind: str) -> PlannedRequest:
        from seekd.bench.workloads import BenchRequest

        rng = self.rng
        endpoint = rng.choice(("chat", "completions"))
        stream = rng.random() < 0.5
        prompt_tokens = self.prompt_tokens
        max_tokens = rng.randint(max(1, self.max_tokens // 2), self.max_tokens)
        extra: dict[str, Any] = {}
        n, disconnect_after, structured = 1, None, False
        if kind in ("chat_stream", "chat_blocking", "completion_stream", "completion_blocking"):
            endpoint = "chat" if kind.startswith("chat") else "completions"
            stream = kind.endswith("stream")
        elif kind == "long_prompt":
            prompt_tokens = rng.randint(self.long_prompt_tokens * 4 // 5, self.long_prompt_tokens)
            max_tokens = rng.randint(1, 8)
        elif kind == "n_choices":
            n = rng.randint(2, 3)
            extra["n"] = n
        elif kind == "structured":
            endpoint, structured = "chat", True
            extra["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": "answer", "schema": ANSWER_SCHEMA},
            }
            max_tokens = max(max_tokens, 24)
        elif kind == "disconnect":
            stream, disconnect_after = True, rng.randint(1, 4)
            max_tokens = 4 * self.max_tokens  # still generating when the client hangs up
        text = self.source.sample(rng, max(1, rng.randint(prompt_tokens // 2, prompt_tokens)))
        system = rng.choice(self.system_prompts) if endpoint == "chat" and kind != "long_prompt" else None
        request = BenchRequest(text, max_tokens, system=system)
        return PlannedRequest(kind, endpoint, request, {"stream": stream, **extra}, n, disconnect_after, structured)


@dataclass
class SoakRecord:
    """One request of a soak: what was sent, when (seconds after the soak started) and how it ended."""

    kind: str
    endpoint: str
    stream: bool
    n: int
    start: float
    end: float
    outcome: str  # one of OUTCOMES
    reason: str  # why it was not ok ("" when ok)
    status_code: int | None
    ttft: float | None
    output_tokens: int
    burst: bool = False

    @property
    def e2e(self) -> float:
        return self.end - self.start


def _judge(plan: PlannedRequest, result: RequestResult) -> tuple[str, str]:
    """(outcome, reason) of one answer; see the module docstring."""
    if result.disconnected:
        return "disconnected", ""
    status = result.status_code
    if status is None:  # no response head at all
        if result.error == "connect":
            return "error", f"connection refused: {result.error_detail}"
        if result.error == "timeout":
            return "lost", f"no response head: {result.error_detail}"
        return "lost", f"{result.error}: {result.error_detail}"
    if status != 200:
        if result.error_object is None:
            return "lost", f"HTTP {status} without an OpenAI error object: {result.error_detail[:200]}"
        outcome = "rejected" if status == 429 else "error"
        return outcome, f"HTTP {status}: {result.error_object['message'][:200]}"
    if result.error_object is not None:
        return "error", f"error event in the stream: {result.error_object['message'][:200]}"
    if result.error == "timeout":
        return "lost", f"hung: {result.error_detail}"
    if result.error not in (None, "stream", "empty"):  # an exception mid-response: connection reset, bad JSON
        return "lost", f"HTTP 200 cut short: {result.error}: {result.error_detail[:200]}"
    if plan.stream and not result.saw_done:
        return "lost", f"the stream ended without [DONE] (finish reasons: {result.finish_reasons})"
    if missing := [i for i in range(plan.n) if i not in result.finish_reasons]:
        return "lost", f"choices {missing} of {plan.n} ended without a finish_reason"
    if plan.structured and result.finish_reasons.get(0) == "stop" and (problem := _schema_problem(result.text)):
        return "error", f"structured output broke its schema: {problem}"
    return "ok", ""


def _schema_problem(text: str) -> str | None:
    """Why `text` is not an ANSWER_SCHEMA object (checked only when generation stopped on its own:
    a grammar lets the model stop only once the JSON is complete)."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        return f"not JSON ({e}): {text[:120]!r}"
    if not isinstance(value, dict) or set(value) != {"answer", "sure"}:
        return f"wrong keys: {text[:120]!r}"
    if value["answer"] not in ("yes", "no", "maybe") or not isinstance(value["sure"], bool):
        return f"wrong values: {text[:120]!r}"
    return None


def record(plan: PlannedRequest, result: RequestResult, end: float, burst: bool) -> SoakRecord:
    """`end`: seconds after the soak started (result.send_time is on the same clock)."""
    outcome, reason = _judge(plan, result)
    return SoakRecord(
        kind=plan.kind,
        endpoint=plan.endpoint,
        stream=plan.stream,
        n=plan.n,
        start=result.send_time,
        end=end,
        outcome=outcome,
        reason=reason,
        status_code=result.status_code,
        ttft=result.ttft,
        output_tokens=result.output_tokens,
        burst=burst,
    )
