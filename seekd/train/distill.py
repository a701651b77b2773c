"""`seekd distill`: reasoning traces from a teacher (any OpenAI-compatible endpoint, e.g. a seekd
serving R1), filtered, written as chat SFT data, and handed to `seekd finetune` for the student.

A prompt record is {"prompt": "..."} or {"messages": [...]}, optionally with "system" and with
"answer" — a verifiable answer that the teacher's final answer must contain (a \\boxed{} value
when it gives one). Each kept trace becomes {"messages": [..., {"role": "assistant", "content":
"<think>\\n{reasoning}\\n</think>\\n\\n{answer}"}]}, the format of DeepSeek's R1 distills.
"""

from __future__ import annotations

import collections
import json
import logging
import re
import unicodedata
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

_BOXED = re.compile(r"\\boxed\{([^{}]*)\}")
_THINK = re.compile(r"<think>(.*?)</think>", re.DOTALL)


@dataclass
class PromptRecord:
    messages: list[dict[str, str]]
    answer: str | None = None


@dataclass
class Trace:
    prompt: PromptRecord
    reasoning: str  # "" when the teacher gave none
    content: str  # the final answer, without the reasoning
    finish_reason: str


@dataclass
class TraceFilter:
    """Which traces become training data; `verdict` names the first rule a trace breaks."""

    min_chars: int = 1  # of the final answer
    max_chars: int = 20000  # of reasoning + answer
    require_reasoning: bool = False
    keep_truncated: bool = False  # keep answers cut at max_tokens (a teacher that never stops early)

    def verdict(self, trace: Trace) -> str:
        if trace.finish_reason == "length" and not self.keep_truncated:
            return "truncated"
        if len(trace.content.strip()) < self.min_chars:
            return "empty_answer"
        if self.require_reasoning and not trace.reasoning.strip():
            return "no_reasoning"
        if "<think>" in trace.content or "</think>" in trace.content:
            return "bad_format"
        if len(trace.reasoning) + len(trace.content) > self.max_chars:
            return "too_long"
        if trace.prompt.answer is not None and not answer_matches(trace.content, trace.prompt.answer):
            return "wrong_answer"
        return "kept"


@dataclass
class DistillStats:
    prompts: int = 0
    traces: int = 0
    verdicts: dict[str, int] = field(default_factory=dict)
    failed_requests: int = 0

    @property
    def kept(self) -> int:
        return self.verdicts.get("kept", 0)


def _normalize(text: str) -> str:
    text = unicodedata.normalize("NFKC", text).strip().lower()
    return re.sub(r"\s+", " ", text).strip(" .")


def answer_matches(content: str, expected: str) -> bool:
    """The final answer holds the expected one: the last \\boxed{} value equals it when there is
    one, else it appears as a whole word (so "4" does not match "42")."""
    want = _normalize(expected)
    boxed = _BOXED.findall(content)
    if boxed:
        return _normalize(boxed[-1]) == want
    return re.search(rf"(?<![\w.]){re.escape(want)}(?![\w])", _normalize(content)) is not None


def split_reasoning(content: str, reasoning: str | None) -> tuple[str, str]:
    """(reasoning, answer): the server's reasoning_content, else a <think> block inside the content."""
    if reasoning:
        return reasoning.strip(), content.strip()
    match = _THINK.search(content)
    if match:
        return match.group(1).strip(), (content[: match.start()] + content[match.end() :]).strip()
    return "", content.strip()


def read_prompts(path: Path) -> list[PromptRecord]:
    records = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{path}:{number}"
            try:
                item = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{where}: not JSON ({e.msg})") from e
            records.append(_prompt_record(item, where))
    if not records:
        raise ValueError(f"{path} holds no prompts")
    return records


def _prompt_record(item: Any, where: str) -> PromptRecord:
    if not isinstance(item, dict):
        raise ValueError(f'{where}: expected {{"prompt": ...}} or {{"messages": [...]}}')
    if isinstance(item.get("messages"), list) and item["messages"]:
        messages = [dict(m) for m in item["messages"]]
    elif isinstance(item.get("prompt"), str) and item["prompt"].strip():
        messages = [{"role": "user", "content": item["prompt"]}]
    else:
        raise ValueError(f'{where}: expected {{"prompt": ...}} or {{"messages": [...]}}')
    if isinstance(item.get("system"), str):
        messages.insert(0, {"role": "system", "content": item["system"]})
    answer = item.get("answer")
    return PromptRecord(messages, None if answer is None else str(answer))


def sft_record(trace: Trace) -> dict[str, Any]:
    answer = trace.content
    if trace.reasoning:
        answer = f"<think>\n{trace.reasoning}\n</think>\n\n{trace.content}"
    return {"messages": [*trace.prompt.messages, {"role": "assistant", "content": answer}]}


@dataclass
class Teacher:
    """An OpenAI-compatible chat endpoint; `model` None = the first model it lists."""

    base_url: str
    api_key: str = "none"
    model: str | None = None
    max_tokens: int = 2048
    temperature: float = 0.6
    samples: int = 1  # traces per prompt
    timeout_s: float = 600.0

    def client(self) -> Any:
        import openai

        return openai.OpenAI(base_url=self.base_url, api_key=self.api_key, timeout=self.timeout_s, max_retries=2)

    def traces(self, client: Any, prompt: PromptRecord) -> list[Trace]:
        response = client.chat.completions.create(
            model=self.model,
            messages=prompt.messages,
            max_tokens=self.max_tokens,
            temperature=self.temperature,
            n=self.samples,
        )
        out = []
        for choice in response.choices:
            reasoning = getattr(choice.message, "reasoning_content", None)
            thought, content = split_reasoning(choice.message.content or "", reasoning)
            out.append(Trace(prompt, thought, content, choice.finish_reason or "stop"))
        return out


def collect_traces(
    teacher: Teacher,
    prompts: list[PromptRecord],
    keep: TraceFilter,
    out_path: Path,
    concurrency: int = 8,
    advance: Callable[[int], None] = lambda n: None,
) -> DistillStats:
    """Ask the teacher for every prompt (`concurrency` at a time), write the kept traces as SFT JSONL."""
    client = teacher.client()
    if teacher.model is None:
        teacher.model = client.models.list().data[0].id
    stats = DistillStats(prompts=len(prompts))
    verdicts: collections.Counter[str] = collections.Counter()
    out_path.parent.mkdir(parents=True, exist_ok=True)

    def ask(prompt: PromptRecord) -> list[Trace] | None:
        try:
            return teacher.traces(client, prompt)
        except Exception as e:  # one failed prompt (timeout, refusal) must not end the run
            logger.warning("teacher request failed: %s", e)
            return None

    with open(out_path, "w", encoding="utf-8") as out, ThreadPoolExecutor(concurrency) as pool:
        for traces in pool.map(ask, prompts):
            advance(1)
            if traces is None:
                stats.failed_requests += 1
                continue
            for trace in traces:
                stats.traces += 1
                verdict = keep.verdict(trace)
                verdicts[verdict] += 1
                if verdict == "kept":
                    out.write(json.dumps(sft_record(trace), ensure_ascii=False) + "\n")
    stats.verdicts = dict(verdicts)
    return stats
