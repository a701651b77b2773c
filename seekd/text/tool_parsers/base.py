"""What every tool-call parser shares: the result types and the streaming machinery.

A parser turns the text a model generated into `content` (and `reasoning`) plus OpenAI tool calls.
Streaming works on arbitrary chunks (a chunk may end in the middle of any tag): outside a call block
the parser releases text up to a possible start of the block's opening tag, and holds back the rest
until the next chunk decides it, so markup never reaches `content`. Inside a block each format's
`_step` consumes what it can; a call's name is released as soon as it is known, its arguments in
pieces as they become certain. Concatenating the pieces of a call gives exactly its final
`arguments`. Whitespace that separates text from a call block belongs to neither.

Text arrives on two channels, reasoning and content (the reasoning parser splits them first). A
call block is recognised on both: a model that starts a call inside its reasoning made a call, and
its markup must not show up as reasoning either. Text around a block stays on its own channel.
"""

from __future__ import annotations

import json
import logging
from abc import ABC, abstractmethod
from dataclasses import dataclass, field

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ToolCall:
    name: str
    arguments: str  # JSON text, as OpenAI sends it


@dataclass
class ParsedOutput:
    """Complete-text result."""

    content: str
    tool_calls: list[ToolCall]


@dataclass
class ToolCallDelta:
    """A piece of call `index`: its name the first time, then arguments text to append."""

    index: int
    name: str | None = None
    arguments: str = ""


@dataclass
class ToolStreamDelta:
    reasoning: str = ""
    content: str = ""
    tool_calls: list[ToolCallDelta] = field(default_factory=list)


def partial_suffix(text: str, tag: str) -> int:
    """Length of the longest suffix of `text` that is a proper prefix of `tag`."""
    for n in range(min(len(tag) - 1, len(text)), 0, -1):
        if text.endswith(tag[:n]):
            return n
    return 0


def held_back(text: str, tags: tuple[str, ...]) -> int:
    """How much of the end of `text` could still turn into one of `tags` (with the whitespace
    before it, which goes with the tag)."""
    keep = max(partial_suffix(text, tag) for tag in tags)
    body = text[: len(text) - keep]
    return len(text) - len(body.rstrip())


def json_string_body(text: str) -> str:
    """`text` escaped as inside a JSON string; escaping is per character, so pieces concatenate."""
    return json.dumps(text, ensure_ascii=False)[1:-1]


def split_blocks(text: str, starts: tuple[str, ...], end: str, keep: tuple[str, ...] = ()) -> tuple[str, list[str]]:
    """Complete-text helper: the content outside call blocks, and each block's inside (a block runs
    to `end` or to the end of the text; start tags in `keep` stay part of the block). Whitespace
    between text and a block is dropped, as the streaming path does."""
    content, blocks = "", []
    while True:
        found = [(i, tag) for tag in starts if (i := text.find(tag)) != -1]
        if not found:
            return content + text, blocks
        at, tag = min(found)
        content += text[:at].rstrip()
        rest = text[at:] if tag in keep else text[at + len(tag) :]
        close = rest.find(end)
        blocks.append(rest if close == -1 else rest[:close])
        text = "" if close == -1 else rest[close + len(end) :].lstrip()


class ToolParser(ABC):
    """One format. `parse` is the complete-text reference; `feed`/`finish` stream."""

    start_tags: tuple[str, ...]  # any of these opens a call block

    def __init__(self) -> None:
        self._buf = ""
        self._reasoning = False  # channel of the text in _buf
        self._in_block = False
        self._after_block = False  # whitespace right after a block is dropped
        self._index = -1  # current call
        self._out = ToolStreamDelta()

    # -- complete text ---------------------------------------------------------------------------

    @abstractmethod
    def parse(self, text: str) -> ParsedOutput:
        """The whole output at once (no reasoning channel); an independent, regex-based reading of
        the same format that the streaming path is tested against."""

    # -- streaming -------------------------------------------------------------------------------

    def feed(self, text: str, reasoning: bool = False) -> ToolStreamDelta:
        """New text on a channel; returns what became certain."""
        if not text:
            return self._take()
        if reasoning != self._reasoning and not self._in_block:
            self._text(self._buf)  # a tag cannot span the channel switch: the reasoning tag was between
            self._buf = ""
        self._reasoning = reasoning
        self._buf += text
        self._run(final=False)
        return self._take()

    def finish(self) -> ToolStreamDelta:
        """End of generation: held text is released; an unfinished call keeps what it has."""
        self._run(final=True)
        if self._in_block:
            self._close_unfinished()
            self._buf = ""
        return self._take()

    @property
    def num_calls(self) -> int:
        return self._index + 1

    def _take(self) -> ToolStreamDelta:
        out, self._out = self._out, ToolStreamDelta()
        return out

    def _run(self, final: bool) -> None:
        while True:
            if self._in_block:
                if not self._step(final):
                    return
                continue
            if self._after_block:
                self._buf = self._buf.lstrip()
                if not self._buf:
                    return
                self._after_block = False
            found = [(i, tag) for tag in self.start_tags if (i := self._buf.find(tag)) != -1]
            if found:
                at, tag = min(found)
                self._text(self._buf[:at].rstrip())
                self._buf = self._buf[at + len(tag) :]
                self._in_block = True
                self._open_block(tag)
                continue
            keep = 0 if final else held_back(self._buf, self.start_tags)
            self._text(self._buf[: len(self._buf) - keep])
            self._buf = self._buf[len(self._buf) - keep :]
            return

    def _end_block(self) -> None:
        self._in_block = False
        self._after_block = True

    def _text(self, text: str) -> None:
        if not text:
            return
        if self._reasoning:
            self._out.reasoning += text
        else:
            self._out.content += text

    def _new_call(self, name: str) -> None:
        self._index += 1
        self._out.tool_calls.append(ToolCallDelta(self._index, name=name))

    def _arguments(self, text: str) -> None:
        if not text:
            return
        calls = self._out.tool_calls
        if calls and calls[-1].index == self._index:
            calls[-1].arguments += text
        else:
            calls.append(ToolCallDelta(self._index, arguments=text))

    @abstractmethod
    def _open_block(self, tag: str) -> None:
        """A start tag was consumed: set up the block's first state."""

    @abstractmethod
    def _step(self, final: bool) -> bool:
        """Consume from `_buf` inside a block; False when more text is needed."""

    @abstractmethod
    def _close_unfinished(self) -> None:
        """Generation ended inside a block (e.g. max_tokens): release what is certain."""


class StreamedArguments:
    """Arguments text that grows in place until an end tag: releases the part no later text can
    change (`settle` trims what may still belong to the end), then the rest at the end."""

    def __init__(self, settle) -> None:
        self.settle = settle
        self.sent = 0

    def progress(self, raw: str, end_tag: str) -> str:
        safe = self.settle(raw[: len(raw) - partial_suffix(raw, end_tag)], final=False)
        return self._advance(safe)

    def complete(self, raw: str) -> str:
        return self._advance(self.settle(raw, final=True))

    def _advance(self, text: str) -> str:
        if len(text) <= self.sent:
            return ""
        piece, self.sent = text[self.sent :], len(text)
        return piece
