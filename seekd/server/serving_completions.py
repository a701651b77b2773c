"""POST /v1/completions: prompt(s) as text or token ids -> Generation -> response or SSE."""

from __future__ import annotations

from collections.abc import AsyncGenerator

from starlette.requests import Request
from starlette.responses import JSONResponse

from seekd.server.admission import request_policy
from seekd.server.chunks import CompletionChunkEncoder
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
from seekd.server.logprobs import completion_logprobs
from seekd.server.protocol import CompletionChoice, CompletionRequest, CompletionResponse
from seekd.server.streaming import EventStreamResponse, prime, render_events, run_until_disconnect, sse


async def _prompts(
    ctx: ServingContext, prompt: str | list[str] | list[int] | list[list[int]], n: int
) -> list[list[int]]:
    """Normalise the four OpenAI prompt shapes to token id lists (text gets the model's BOS). The
    number of sequences is checked before any prompt is tokenized."""
    if isinstance(prompt, str):
        items: list[str | list[int]] = [prompt]
    elif prompt and all(isinstance(t, int) for t in prompt):
        items = [list(prompt)]
    else:
        items = list(prompt)
    if not items:
        raise invalid_request("prompt must not be empty", param="prompt")
    check_num_sequences(ctx, len(items), n, "prompt")
    out = []
    for item in items:
        ids = await ctx.encode(item) if isinstance(item, str) else list(item)
        if not ids:
            raise invalid_request("prompt must not be empty", param="prompt")
        out.append(ids)
    return out


def _check_supported(req: CompletionRequest) -> None:
    if req.suffix:
        raise invalid_request("suffix is not supported", param="suffix")
    if req.best_of is not None and req.best_of != req.n:
        raise invalid_request("best_of other than n is not supported", param="best_of")
    if req.echo and req.logprobs is not None:
        raise invalid_request("echo together with logprobs is not supported", param="echo")


async def create_completion(
    ctx: ServingContext, req: CompletionRequest, request: Request, request_id: str
) -> JSONResponse | EventStreamResponse:
    policy = request_policy(request, req.priority, req.timeout, ctx.request_timeout_s, req.cache_salt)
    _check_supported(req)
    prompts = await _prompts(ctx, req.prompt, req.n)
    max_tokens = 16 if req.max_tokens is None else req.max_tokens  # the OpenAI default
    for ids in prompts:
        check_fits_context(len(ids), max_tokens, ctx.max_model_len, "prompt")
        check_input_limits(ctx, len(ids), max_tokens, "prompt")
    params = build_sampling_params(
        req, max_tokens=max_tokens, logprobs=req.logprobs, max_n=ctx.max_n, vocab_size=ctx.tokenizer.vocab_size
    )
    gen = Generation(ctx, request_id, prompts, params, policy)
    request.state.generation = gen  # for the audit trail
    request.state.access_fields = gen.access_fields
    echoes = [ctx.tokenizer.decode(ids, skip_special_tokens=True) if req.echo else "" for ids in prompts]

    if req.stream:
        updates = gen.updates()
        first = await run_until_disconnect(request, prime(updates))
        include_usage = bool(req.stream_options and req.stream_options.include_usage)
        events = _completion_events(ctx, gen, updates, first, echoes, req.logprobs, include_usage)
        return EventStreamResponse(events, request_id)

    await run_until_disconnect(request, gen.run())
    choices = []
    for c in gen.choices:
        echo = echoes[c.prompt_index]
        logprobs = None
        if req.logprobs is not None:
            logprobs = completion_logprobs(ctx.token_texts, c.logprobs, req.logprobs, len(echo))
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
        id=request_id, created=gen.created, model=ctx.served_model_name, choices=choices, usage=gen.usage()
    )
    return JSONResponse(response.model_dump(mode="json"))


async def _completion_events(
    ctx: ServingContext,
    gen: Generation,
    updates: AsyncGenerator[ChoiceUpdate, None],
    first: ChoiceUpdate | None,
    echoes: list[str],
    num_top: int | None,
    include_usage: bool,
) -> AsyncGenerator[str | bytes, None]:
    offsets = [len(echoes[c.prompt_index]) for c in gen.choices]  # text_offset of the next token
    pending_echo = [bool(echoes[c.prompt_index]) for c in gen.choices]

    def chunk(choices: list[CompletionChoice], usage=None) -> str:
        body = CompletionResponse(
            id=gen.request_id, created=gen.created, model=ctx.served_model_name, choices=choices, usage=usage
        )
        return sse(body.model_dump_json())

    text_chunk = CompletionChunkEncoder(gen.request_id, gen.created, ctx.served_model_name)

    def render(update: ChoiceUpdate) -> str | bytes | None:
        text = update.text
        if pending_echo[update.index]:
            text = echoes[gen.choices[update.index].prompt_index] + text
            pending_echo[update.index] = False
        if not (text or update.logprobs or update.finish_reason):
            return None
        if num_top is None:
            return text_chunk.text(update.index, text, update.finish_reason, update.stop_reason)
        logprobs = completion_logprobs(ctx.token_texts, update.logprobs, num_top, offsets[update.index])
        offsets[update.index] += sum(len(t) for t in logprobs.tokens)
        return chunk(
            [
                CompletionChoice(
                    index=update.index,
                    text=text,
                    logprobs=logprobs,
                    finish_reason=update.finish_reason,
                    stop_reason=update.stop_reason,
                )
            ]
        )

    usage_event = (lambda: chunk([], gen.usage())) if include_usage else None
    async for event in render_events(updates, first, render, [], usage_event):
        yield event
