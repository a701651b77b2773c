"""Engine outputs -> OpenAI responses and SSE chunks, for chat and completions.

A renderer gets the `RequestPlan` (`seekd.server.request_plan`) and the running `Generation`, never
the request: whole responses and streams are built from the same choice updates, and a choice's
text is read for reasoning and tool calls by the same parser either way (`seekd.server.tool_output`).
The common stream frame (opening events, usage, `[DONE]`, an error event once the stream started)
is `seekd.server.streaming.render_events`.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import Any, Protocol

from seekd.kb.rag import references
from seekd.server.chunks import ChatChunkEncoder, CompletionChunkEncoder
from seekd.server.generation import ChoiceUpdate, Generation, ServingContext
from seekd.server.legacy_functions import as_function_call
from seekd.server.logprobs import chat_logprobs, completion_logprobs
from seekd.server.protocol import (
    ChatChoice,
    ChatChunkChoice,
    ChatCompletionChunk,
    ChatCompletionResponse,
    Citation,
    CompletionChoice,
    CompletionResponse,
    DeltaMessage,
    ResponseMessage,
    Usage,
)
from seekd.server.request_plan import RequestPlan
from seekd.server.streaming import render_events, sse
from seekd.server.tool_calls import ToolSetup
from seekd.server.tool_output import ChoiceOutput, chat_finish_reason, merge_tool_deltas, whole_output

# Responses leave out the `citations` field unless knowledge bases or web search gave some.
_NO_CITATIONS = {"citations"}


class Renderer(Protocol):
    def response(self, gen: Generation) -> dict[str, Any]:
        """The whole response's JSON body, once the generation has run to its end."""
        ...

    def events(
        self, gen: Generation, updates: AsyncGenerator[ChoiceUpdate, None], first: ChoiceUpdate | None
    ) -> AsyncGenerator[str | bytes, None]:
        """The SSE events of a stream whose first update (None: none) was already taken."""
        ...


class ChatRenderer:
    def __init__(self, ctx: ServingContext, plan: RequestPlan) -> None:
        self.ctx = ctx
        self.plan = plan
        self.tools = plan.tools or ToolSetup("none", None)
        self.citations = [Citation(**c.as_dict()) for c in plan.citations] or None

    def _logprobs(self, update_logprobs: list) -> Any:
        num_top = self.plan.num_top
        return chat_logprobs(self.ctx.token_texts, update_logprobs, num_top) if num_top is not None else None

    def response(self, gen: Generation) -> dict[str, Any]:
        choices = []
        for c in gen.choices:
            split, output = whole_output(self.tools, self.plan.in_reasoning, c.text)
            choice = ChatChoice(
                index=c.index,
                message=ResponseMessage(
                    content=split.content or (None if output.has_calls else ""),
                    reasoning_content=split.reasoning or None,
                    tool_calls=output.calls or None,
                ),
                logprobs=self._logprobs(c.logprobs),
                finish_reason=chat_finish_reason(c.finish_reason, output),
                stop_reason=c.stop_reason,
            )
            if self.tools.legacy:
                as_function_call(choice)
            if self.plan.citations and choice.message.content is not None:
                choice.message.content += references(self.plan.citations)
            choices.append(choice)
        response = ChatCompletionResponse(
            id=gen.request_id,
            created=gen.created,
            model=self.ctx.served_model_name,
            choices=choices,
            usage=gen.usage(),
            citations=self.citations,
        )
        return response.model_dump(mode="json", exclude=_NO_CITATIONS if self.citations is None else None)

    def _chunk(
        self, gen: Generation, choices: list[ChatChunkChoice], usage: Usage | None = None, cited: bool = False
    ) -> str:
        body = ChatCompletionChunk(
            id=gen.request_id,
            created=gen.created,
            model=self.ctx.served_model_name,
            choices=choices,
            usage=usage,
            citations=self.citations if cited else None,
        )
        exclude = None if cited and self.citations is not None else _NO_CITATIONS
        return sse(body.model_dump_json(exclude_none=False, exclude=exclude))

    async def events(
        self, gen: Generation, updates: AsyncGenerator[ChoiceUpdate, None], first: ChoiceUpdate | None
    ) -> AsyncGenerator[str | bytes, None]:
        parsers = [ChoiceOutput(self.tools, self.plan.in_reasoning) for _ in gen.choices]
        text_chunk = ChatChunkEncoder(gen.request_id, gen.created, self.ctx.served_model_name)
        plain = self.plan.num_top is None and not self.tools.legacy

        def render(update: ChoiceUpdate) -> str | bytes | None:
            parser = parsers[update.index]
            delta = parser.feed(update.text)
            if update.finish_reason is not None:
                rest = parser.finish()
                delta.reasoning += rest.reasoning
                delta.content += rest.content
                delta.tool_calls += rest.tool_calls
            if not (delta.reasoning or delta.content or delta.tool_calls or update.logprobs or update.finish_reason):
                return None
            finish_reason = chat_finish_reason(update.finish_reason, parser)
            if plain and not delta.tool_calls:
                return text_chunk.text_delta(
                    update.index, delta.content or None, delta.reasoning or None, finish_reason
                )
            message = DeltaMessage(
                content=delta.content or None,
                reasoning_content=delta.reasoning or None,
                tool_calls=merge_tool_deltas(delta.tool_calls) or None,
            )
            choice = ChatChunkChoice(
                index=update.index, delta=message, logprobs=self._logprobs(update.logprobs), finish_reason=finish_reason
            )
            if self.tools.legacy:
                as_function_call(choice)
            return self._chunk(gen, [choice])

        opening = [
            self._chunk(
                gen,
                [ChatChunkChoice(index=c.index, delta=DeltaMessage(role="assistant", content="")) for c in gen.choices],
                cited=True,
            )
        ]
        usage_event = (lambda: self._chunk(gen, [], gen.usage())) if self.plan.include_usage else None
        async for event in render_events(updates, first, render, opening, usage_event):
            yield event


class CompletionRenderer:
    def __init__(self, ctx: ServingContext, plan: RequestPlan) -> None:
        self.ctx = ctx
        self.plan = plan

    def _echo(self, gen: Generation, index: int) -> str:
        return self.plan.echoes[gen.choices[index].prompt_index] if self.plan.echoes else ""

    def response(self, gen: Generation) -> dict[str, Any]:
        num_top = self.plan.num_top
        choices = []
        for c in gen.choices:
            echo = self._echo(gen, c.index)
            logprobs = None
            if num_top is not None:
                logprobs = completion_logprobs(self.ctx.token_texts, c.logprobs, num_top, len(echo))
            choices.append(
                CompletionChoice(
                    index=c.index,
                    text=echo + c.text,
                    logprobs=logprobs,
                    finish_reason=c.finish_reason,
                    stop_reason=c.stop_reason,
                )
            )
        response = CompletionResponse(
            id=gen.request_id, created=gen.created, model=self.ctx.served_model_name, choices=choices, usage=gen.usage()
        )
        return response.model_dump(mode="json")

    def _chunk(self, gen: Generation, choices: list[CompletionChoice], usage: Usage | None = None) -> str:
        body = CompletionResponse(
            id=gen.request_id, created=gen.created, model=self.ctx.served_model_name, choices=choices, usage=usage
        )
        return sse(body.model_dump_json())

    async def events(
        self, gen: Generation, updates: AsyncGenerator[ChoiceUpdate, None], first: ChoiceUpdate | None
    ) -> AsyncGenerator[str | bytes, None]:
        num_top = self.plan.num_top
        offsets = [len(self._echo(gen, c.index)) for c in gen.choices]  # text_offset of the next token
        pending_echo = [bool(self._echo(gen, c.index)) for c in gen.choices]
        text_chunk = CompletionChunkEncoder(gen.request_id, gen.created, self.ctx.served_model_name)

        def render(update: ChoiceUpdate) -> str | bytes | None:
            text = update.text
            if pending_echo[update.index]:
                text = self._echo(gen, update.index) + text
                pending_echo[update.index] = False
            if not (text or update.logprobs or update.finish_reason):
                return None
            if num_top is None:
                return text_chunk.text(update.index, text, update.finish_reason, update.stop_reason)
            logprobs = completion_logprobs(self.ctx.token_texts, update.logprobs, num_top, offsets[update.index])
            offsets[update.index] += sum(len(t) for t in logprobs.tokens)
            choice = CompletionChoice(
                index=update.index,
                text=text,
                logprobs=logprobs,
                finish_reason=update.finish_reason,
                stop_reason=update.stop_reason,
            )
            return self._chunk(gen, [choice])

        usage_event = (lambda: self._chunk(gen, [], gen.usage())) if self.plan.include_usage else None
        async for event in render_events(updates, first, render, [], usage_event):
            yield event
