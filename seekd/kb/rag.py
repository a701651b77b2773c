"""Retrieved passages into the prompt, under a token budget, and the citations the answer carries.

Passages are numbered [1], [2], ... in a system message that asks the model to cite by number; the
response carries the same numbers as `citations` (knowledge base or URL, document, chunk, score)
and, after the answer, as a numbered reference list, so a reader sees the sources even in a client
that drops unknown response fields.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

INSTRUCTIONS = (
    "Answer using the numbered passages below where they are relevant, and cite them by number, "
    "like [1]. If they do not contain the answer, say so.\n\n"
)
HEADER = "Passages:\n"


@dataclass(frozen=True)
class Passage:
    source: Literal["knowledge_base", "web"]
    text: str
    score: float
    document: str  # knowledge base document name, or the page title
    chunk: int = 0
    knowledge_base: str | None = None
    url: str | None = None


@dataclass(frozen=True)
class Citation:
    index: int
    passage: Passage

    def as_dict(self) -> dict[str, Any]:
        p = self.passage
        out: dict[str, Any] = {"index": self.index, "source": p.source, "document": p.document, "chunk": p.chunk}
        out.update({"score": p.score, "text": p.text})
        if p.knowledge_base is not None:
            out["knowledge_base"] = p.knowledge_base
        if p.url is not None:
            out["url"] = p.url
        return out


def build_context(
    passages: list[Passage], budget_tokens: int, count_tokens: Callable[[str], int]
) -> tuple[str, list[Citation]]:
    """The system text and the citations of the passages that fit the budget (best first; one that
    does not fit is skipped and a shorter one after it may still go in)."""
    citations: list[Citation] = []
    parts = [INSTRUCTIONS, HEADER]
    used = count_tokens(INSTRUCTIONS + HEADER)
    for passage in sorted(passages, key=lambda p: p.score, reverse=True):
        entry = f"[{len(citations) + 1}] ({_label(passage)})\n{passage.text}\n\n"
        cost = count_tokens(entry)
        if used + cost > budget_tokens:
            continue
        citations.append(Citation(len(citations) + 1, passage))
        parts.append(entry)
        used += cost
    return ("".join(parts).rstrip() if citations else ""), citations


def _label(passage: Passage) -> str:
    if passage.url is not None:
        return f"{passage.document} — {passage.url}"
    return f"{passage.knowledge_base}/{passage.document}, chunk {passage.chunk}"


def references(citations: list[Citation]) -> str:
    """The numbered list appended to the answer."""
    if not citations:
        return ""
    return "\n\nReferences:\n" + "\n".join(f"[{c.index}] {_label(c.passage)}" for c in citations)


def with_context(messages: list[dict[str, Any]], context: str) -> list[dict[str, Any]]:
    """The messages with the passages in the system message (merged into the caller's own)."""
    if not context:
        return messages
    if messages and messages[0].get("role") == "system" and isinstance(messages[0].get("content"), str):
        first = {**messages[0], "content": f"{messages[0]['content']}\n\n{context}"}
        return [first, *messages[1:]]
    return [{"role": "system", "content": context}, *messages]


def last_user_text(messages: list[dict[str, Any]]) -> str:
    for message in reversed(messages):
        if message.get("role") == "user" and isinstance(message.get("content"), str):
            return message["content"]
    return ""
