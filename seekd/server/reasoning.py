"""Splits DeepSeek-R1 style `<think>…</think>` reasoning out of generated text, as DeepSeek's own
API does (`reasoning_content` next to `content`).

R1 chat templates end the prompt with `<think>\\n`, and DeepSeek's V3.2/V4 encoders end a thinking-mode
prompt with `<think>` (chat mode: `</think>`), so the generated text usually starts *inside* the
reasoning and only `</think>` appears in the output; other models emit `<think>` themselves.
Both work: the parser starts in reasoning mode when the prompt opened the block, and an opening
tag at the very start of the output switches it on too. Text is fed in arbitrary chunks; a chunk
ending in a prefix of a tag is held back until the next chunk decides it.
"""

from __future__ import annotations

from dataclasses import dataclass

THINK_START = "<think>"
THINK_END = "</think>"


@dataclass
class ReasoningDelta:
    reasoning: str = ""
    content: str = ""


def prompt_opens_reasoning(prompt_text: str) -> bool:
    """Whether the prompt leaves the model inside an open `<think>` block."""
    start = prompt_text.rfind(THINK_START)
    return start != -1 and prompt_text.find(THINK_END, start) == -1


class ReasoningParser:
    def __init__(self, in_reasoning: bool) -> None:
        self.in_reasoning = in_reasoning
        self._at_start = True  # nothing released yet: an opening tag may still come
        self._after_end = False  # just closed the block: newlines before the answer are dropped
        self._pending = ""

    def feed(self, text: str) -> ReasoningDelta:
        """Route new text; returns what became certain."""
        self._pending += text
        delta = ReasoningDelta()
        while self._pending:
            if self._at_start:
                stripped = self._pending.lstrip()
                if THINK_START.startswith(stripped) and len(stripped) < len(THINK_START):
                    return delta  # could still be the opening tag
                self._at_start = False
                if stripped.startswith(THINK_START):
                    self.in_reasoning = True
                    self._pending = stripped[len(THINK_START) :]
                    continue
            if not self.in_reasoning:
                if self._after_end:
                    self._pending = self._pending.lstrip("\n")
                    if not self._pending:
                        return delta
                    self._after_end = False
                delta.content += self._pending
                self._pending = ""
                return delta
            end = self._pending.find(THINK_END)
            if end != -1:
                delta.reasoning += self._pending[:end]
                self._pending = self._pending[end + len(THINK_END) :]
                self.in_reasoning = False
                self._after_end = True
                continue
            keep = _partial_suffix(self._pending, THINK_END)
            delta.reasoning += self._pending[: len(self._pending) - keep]
            self._pending = self._pending[len(self._pending) - keep :]
            return delta
        return delta

    def finish(self) -> ReasoningDelta:
        """End of generation: held-back text is released where it was heading."""
        text, self._pending = self._pending, ""
        if self._after_end:
            text = text.lstrip("\n")
        if self.in_reasoning:
            return ReasoningDelta(reasoning=text)
        return ReasoningDelta(content=text)


def split_reasoning(text: str, in_reasoning: bool) -> ReasoningDelta:
    """Whole-text form of the parser (non-streaming responses)."""
    parser = ReasoningParser(in_reasoning)
    first, rest = parser.feed(text), parser.finish()
    return ReasoningDelta(first.reasoning + rest.reasoning, first.content + rest.content)


def _partial_suffix(text: str, tag: str) -> int:
    """Length of the longest suffix of `text` that is a proper prefix of `tag`."""
    for n in range(min(len(tag) - 1, len(text)), 0, -1):
        if text.endswith(tag[:n]):
            return n
    return 0


@dataclass(frozen=True)
class ReasoningTags:
    """The token ids of the tags (None where a tag is not one token) and whether the prompt opened
    the block: what `ReasoningTokenCounter` needs, fixed per request."""

    open_in_prompt: bool
    start_id: int | None
    end_id: int | None

    def counter(self) -> ReasoningTokenCounter:
        return ReasoningTokenCounter(self)


class ReasoningTokenCounter:
    """Usage's `reasoning_tokens` of one choice: the generated tokens from an open `<think>` (the
    prompt's, or a first generated `<think>` token) through the `</think>` token. Counted on token ids,
    so streamed and whole responses report the same number; where `</think>` is not one token,
    nothing is counted (the block could not be told apart from the answer token by token)."""

    def __init__(self, tags: ReasoningTags) -> None:
        self.tags = tags
        self.open = tags.open_in_prompt and tags.end_id is not None
        self.tokens = 0
        self._first = True

    def feed(self, token_ids: list[int]) -> None:
        for token in token_ids:
            if self._first and not self.open and self.tags.end_id is not None and token == self.tags.start_id:
                self.open = True
            self._first = False
            if self.open:
                self.tokens += 1
                self.open = token != self.tags.end_id
