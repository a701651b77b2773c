"""OpenAI tool calling for chat, the output side: a choice's generated text -> reasoning, content
and `tool_calls`, for streamed chunks and whole responses alike. What the request decided (the
mode, a forced call's grammar) comes in as a `ToolSetup` from `seekd.server.tool_calls`."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field

from seekd.server.forced_calls import ForcedCallReader
from seekd.server.protocol import DeltaFunctionCall, DeltaToolCall, FunctionCall, ToolCallOut
from seekd.server.reasoning import ReasoningParser
from seekd.server.tool_calls import ToolSetup
from seekd.text.tool_parsers import ToolCallDelta, ToolParser, make_tool_parser


def new_call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


@dataclass
class ChatDelta:
    reasoning: str = ""
    content: str = ""
    tool_calls: list[DeltaToolCall] = field(default_factory=list)


class ChoiceOutput:
    """One choice's text -> reasoning, content and tool calls, chunk by chunk (a whole response is
    one chunk and `finish`), so that streamed and whole responses are read by the same code."""

    def __init__(self, setup: ToolSetup, in_reasoning: bool) -> None:
        """A constrained (forced) call is read as JSON; `in_reasoning` then means the grammar
        binds after the model's reasoning, which is split off first."""
        self.setup = setup
        constrained = setup.structured is not None
        self.reasoning = ReasoningParser(in_reasoning) if in_reasoning or not constrained else None
        self.tools: ToolParser | None = make_tool_parser(setup.tool_format) if setup.mode == "auto" else None
        self.forced = ForcedCallReader(setup.named) if constrained else None
        self.ids: list[str] = []
        self.calls: list[ToolCallOut] = []

    @property
    def has_calls(self) -> bool:
        return bool(self.ids)

    def feed(self, text: str) -> ChatDelta:
        if self.reasoning is None:
            return self._constrained(text)
        split = self.reasoning.feed(text)
        return self._route(split.reasoning, split.content, final=False)

    def finish(self) -> ChatDelta:
        if self.reasoning is None:
            return self._constrained("")
        split = self.reasoning.finish()
        return self._route(split.reasoning, split.content, final=True)

    def _route(self, reasoning: str, content: str, final: bool) -> ChatDelta:
        if self.setup.structured is not None:  # the forced call, once the reasoning is over
            out = self._constrained(content) if content or self.forced.started else ChatDelta()
            out.reasoning = reasoning
            return out
        if self.tools is None:
            return ChatDelta(reasoning, content)
        out = ChatDelta()
        for piece in (
            self.tools.feed(reasoning, reasoning=True),
            self.tools.feed(content),
            *((self.tools.finish(),) if final else ()),
        ):
            out.reasoning += piece.reasoning
            out.content += piece.content
            out.tool_calls += self._deltas(piece.tool_calls)
        return out

    def _deltas(self, pieces: list[ToolCallDelta]) -> list[DeltaToolCall]:
        out = []
        for piece in pieces:
            if piece.index >= 1 and not self.setup.parallel:
                continue
            if piece.name is not None:
                self.ids.append(new_call_id())
                self.calls.append(ToolCallOut(id=self.ids[-1], function=FunctionCall(name=piece.name, arguments="")))
                out.append(
                    DeltaToolCall(
                        index=piece.index,
                        id=self.ids[-1],
                        type="function",
                        function=DeltaFunctionCall(name=piece.name, arguments=piece.arguments),
                    )
                )
            else:
                out.append(DeltaToolCall(index=piece.index, function=DeltaFunctionCall(arguments=piece.arguments)))
            self.calls[piece.index].function.arguments += piece.arguments
        return out

    def _constrained(self, text: str) -> ChatDelta:
        return ChatDelta(tool_calls=self._deltas(self.forced.feed(text)))


def merge_tool_deltas(deltas: list[DeltaToolCall]) -> list[DeltaToolCall]:
    """One entry per call in a chunk, as OpenAI sends them: argument pieces that follow a piece of
    the same call are appended to it, so clients that read only the first entry of an index lose
    nothing."""
    out: list[DeltaToolCall] = []
    for delta in deltas:
        if out and out[-1].index == delta.index and delta.id is None:
            last = out[-1].function
            out[-1] = out[-1].model_copy(
                update={
                    "function": DeltaFunctionCall(
                        name=last.name, arguments=(last.arguments or "") + (delta.function.arguments or "")
                    )
                }
            )
        else:
            out.append(delta)
    return out


def whole_output(setup: ToolSetup, in_reasoning: bool, text: str) -> tuple[ChatDelta, ChoiceOutput]:
    """A whole response's text, read as the stream would be."""
    out = ChoiceOutput(setup, in_reasoning)
    delta, rest = out.feed(text), out.finish()
    return ChatDelta(delta.reasoning + rest.reasoning, delta.content + rest.content), out


def chat_finish_reason(reason: str | None, output: ChoiceOutput) -> str | None:
    """ "tool_calls" when the model stopped after calling tools (a cut-off call stays "length")."""
    return "tool_calls" if reason == "stop" and output.has_calls else reason
