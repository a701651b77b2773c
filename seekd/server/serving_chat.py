"""POST /v1/chat/completions: chat template -> Generation -> reasoning split -> response or SSE."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import Any

import msgspec
from starlette.requests import Request
from starlette.responses import JSONResponse

from seekd.kb.rag import references
from seekd.sampling_params import SamplingParams
from seekd.server.admission import request_policy
from seekd.server.chunks import ChatChunkEncoder
from seekd.server.errors import invalid_request
from seekd.server.generation import (
    ChoiceUpdate,
    Generation,
    ServingContext,
    build_sampling_params,
    check_fits_context,
    check_input_limits,
    check_num_sequences,
)
from seekd.server.knowledge import retrieve_for_chat
from seekd.server.legacy_functions import as_function_call, legacy_history
from seekd.server.logprobs import chat_logprobs
from seekd.server.protocol import (
    ChatChoice,
    ChatChunkChoice,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatCompletionResponse,
    ChatMessage,
    Citation,
    DeltaMessage,
    ResponseMessage,
)
from seekd.server.reasoning import THINK_END, THINK_START, ReasoningTags, prompt_opens_reasoning
from seekd.server.streaming import EventStreamResponse, prime, render_events, run_until_disconnect, sse
from seekd.server.tool_calls import (
    ChoiceOutput,
    chat_finish_reason,
    merge_tool_deltas,
    prepare_history,
    tool_setup,
    whole_output,
)
from seekd.text.chat_template import ChatTemplateError
from seekd.text.tool_parsers import detect_tool_format


def _message_dict(index: int, message: ChatMessage) -> dict[str, Any]:
    """Templates expect plain string content; text parts are joined, other parts refused. An
    assistant's `refusal` part (the SDK's echo of a refusal) is what the assistant said: its text."""
    content = message.content
    if isinstance(content, list):
        texts = []
        for part in content:
            refusal = (part.model_extra or {}).get("refusal")
            if part.type == "refusal" and message.role == "assistant" and isinstance(refusal, str):
                texts.append(refusal)
                continue
            if part.type != "text":
                raise invalid_request(
                    f"message {index}: content part type {part.type!r} is not supported (only 'text')",
                    param=f"messages.{index}.content",
                )
            if part.text is None:
                raise invalid_request(
                    f"message {index}: a 'text' content part needs a 'text' string", param=f"messages.{index}.content"
                )
            texts.append(part.text)
        content = "".join(texts)
    out = {**(message.model_extra or {}), "role": message.role, "content": content}
    if message.name is not None:
        out["name"] = message.name
    return out


# Responses leave out the `citations` field unless knowledge bases or web search gave some.
_NO_CITATIONS = {"citations"}

# Template arguments the server sets from request fields; a chat_template_kwargs copy would clash.
RESERVED_TEMPLATE_KWARGS = frozenset({"messages", "tools", "add_generation_prompt", "bos_token", "eos_token"})


def _check_supported(req: ChatCompletionRequest) -> None:
    if req.top_logprobs is not None and not req.logprobs:
        raise invalid_request("top_logprobs needs logprobs=true", param="top_logprobs")
    if clash := sorted(RESERVED_TEMPLATE_KWARGS & set(req.chat_template_kwargs or {})):
        raise invalid_request(
            f"chat_template_kwargs may not set {', '.join(clash)}: the request's own fields "
            "(messages, tools, add_generation_prompt) set them",
            param="chat_template_kwargs",
        )


def _format_after_reasoning(
    ctx: ServingContext, params: SamplingParams, in_reasoning: bool
) -> tuple[SamplingParams, bool]:
    """A response_format or forced tool call on a prompt that opens reasoning: the model reasons
    freely and the format binds from its `</think>` on, as with DeepSeek's API. Where `</think>` is
    not one token the format binds from the first token, and the whole output is the answer."""
    end = ctx.tokenizer.token_to_id(THINK_END) if in_reasoning else None
    if end is None:
        return params, False
    structured = msgspec.structs.replace(params.structured, start_after_token=end)
    return msgspec.structs.replace(params, structured=structured), True


async def create_chat_completion(
    ctx: ServingContext, req: ChatCompletionRequest, request: Request, request_id: str
) -> JSONResponse | EventStreamResponse:
    policy = request_policy(request, req.priority, req.timeout, ctx.request_timeout_s, req.cache_salt)
    _check_supported(req)
    check_num_sequences(ctx, 1, req.n, "n")
    tools = tool_setup(req, detect_tool_format(ctx.tokenizer.model_type, ctx.tokenizer.chat_template))
    messages = prepare_history(legacy_history([_message_dict(i, m) for i, m in enumerate(req.messages)]))
    retrieval = await retrieve_for_chat(ctx, req, messages, request)
    messages = retrieval.messages
    citations = [Citation(**c.as_dict()) for c in retrieval.citations] or None
    try:
        prompt_text = ctx.tokenizer.apply_chat_template(
            messages, add_generation_prompt=req.add_generation_prompt, tools=tools.tools, **req.template_kwargs()
        )
    except ChatTemplateError as e:
        raise invalid_request(str(e), param="messages") from e
    prompt_ids = await ctx.encode(prompt_text, add_special_tokens=False)
    max_tokens = req.max_completion_tokens if req.max_completion_tokens is not None else req.max_tokens
    if max_tokens is None:
        max_tokens = ctx.default_max_tokens(len(prompt_ids))
    check_fits_context(len(prompt_ids), max_tokens, ctx.max_model_len, "messages")
    check_input_limits(ctx, len(prompt_ids), max_tokens, "messages")
    num_top = (req.top_logprobs or 0) if req.logprobs else None
    params = build_sampling_params(
        req, max_tokens=max_tokens, logprobs=num_top, max_n=ctx.max_n, vocab_size=ctx.tokenizer.vocab_size
    )
    in_reasoning = prompt_opens_reasoning(prompt_text)
    if tools.structured is not None:  # a forced call (a response_format beside it is refused)
        params = msgspec.structs.replace(params, structured=tools.structured)
    if params.structured is not None:
        params, in_reasoning = _format_after_reasoning(ctx, params, in_reasoning)
    tags = ReasoningTags(in_reasoning, ctx.tokenizer.token_to_id(THINK_START), ctx.tokenizer.token_to_id(THINK_END))
    gen = Generation(ctx, request_id, [prompt_ids], params, policy, reasoning=tags)
    request.state.generation = gen  # for the audit trail
    request.state.access_fields = gen.access_fields

    if req.stream:
        updates = gen.updates()
        first = await run_until_disconnect(request, prime(updates))
        include_usage = bool(req.stream_options and req.stream_options.include_usage)
        parsers = [ChoiceOutput(tools, in_reasoning) for _ in gen.choices]
        events = _chat_events(ctx, gen, updates, first, parsers, num_top, include_usage, citations)
        return EventStreamResponse(events, request_id)

    await run_until_disconnect(request, gen.run())
    choices = []
    for c in gen.choices:
        split, output = whole_output(tools, in_reasoning, c.text)
        choices.append(
            ChatChoice(
                index=c.index,
                message=ResponseMessage(
                    content=split.content or (None if output.has_calls else ""),
                    reasoning_content=split.reasoning or None,
                    tool_calls=output.calls or None,
                ),
                logprobs=chat_logprobs(ctx.token_texts, c.logprobs, num_top) if num_top is not None else None,
                finish_reason=chat_finish_reason(c.finish_reason, output),
                stop_reason=c.stop_reason,
            )
        )
        if tools.legacy:
            as_function_call(choices[-1])
        if retrieval.citations and choices[-1].message.content is not None:
            choices[-1].message.content += references(retrieval.citations)
    response = ChatCompletionResponse(
        id=request_id,
        created=gen.created,
        model=ctx.served_model_name,
        choices=choices,
        usage=gen.usage(),
        citations=citations,
    )
    return JSONResponse(response.model_dump(mode="json", exclude=_NO_CITATIONS if citations is None else None))


async def _chat_events(
    ctx: ServingContext,
    gen: Generation,
    updates: AsyncGenerator[ChoiceUpdate, None],
    first: ChoiceUpdate | None,
    parsers: list[ChoiceOutput],
    num_top: int | None,
    include_usage: bool,
    citations: list[Citation] | None,
) -> AsyncGenerator[str | bytes, None]:
    def chunk(choices: list[ChatChunkChoice], usage=None, cited: list[Citation] | None = None) -> str:
        body = ChatCompletionChunk(
            id=gen.request_id,
            created=gen.created,
            model=ctx.served_model_name,
            choices=choices,
            usage=usage,
            citations=cited,
        )
        return sse(body.model_dump_json(exclude_none=False, exclude=_NO_CITATIONS if cited is None else None))

    text_chunk = ChatChunkEncoder(gen.request_id, gen.created, ctx.served_model_name)

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
        if num_top is None and not delta.tool_calls and not parser.setup.legacy:
            return text_chunk.text_delta(
                update.index,
                delta.content or None,
                delta.reasoning or None,
                chat_finish_reason(update.finish_reason, parser),
            )
        logprobs = chat_logprobs(ctx.token_texts, update.logprobs, num_top) if num_top is not None else None
        message = DeltaMessage(
            content=delta.content or None,
            reasoning_content=delta.reasoning or None,
            tool_calls=merge_tool_deltas(delta.tool_calls) or None,
        )
        choice = ChatChunkChoice(
            index=update.index,
            delta=message,
            logprobs=logprobs,
            finish_reason=chat_finish_reason(update.finish_reason, parser),
        )
        if parser.setup.legacy:
            as_function_call(choice)
        return chunk([choice])

    opening = [
        chunk(
            [ChatChunkChoice(index=c.index, delta=DeltaMessage(role="assistant", content="")) for c in gen.choices],
            cited=citations,
        )
    ]
    usage_event = (lambda: chunk([], gen.usage())) if include_usage else None
    async for event in render_events(updates, first, render, opening, usage_event):
        yield event
