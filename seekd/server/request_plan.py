"""OpenAI request -> engine request, in one pass.

A chat or completions request is read here once: the checks that refuse it (400s before any
work), its prompt (the chat template over the history, tools and retrieved passages; or the four
completions prompt shapes), the output budget against the context and the operator's limits, and
the SamplingParams with their grammar (a `response_format` or a forced tool call, bound after the
model's reasoning). The `RequestPlan` that comes out is all the rest of the request needs:
`server/generation.py` runs it in the engine and `server/response_render.py` turns the outputs
into OpenAI responses and chunks; neither reads the request again.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import msgspec
from starlette.requests import Request

from seekd.engine.context_length import ContextLengthExceeded, check_context_length
from seekd.engine.multimodal import ImageInput
from seekd.kb.rag import Citation
from seekd.sampling_params import SamplingParams
from seekd.server.admission import RequestPolicy, request_policy
from seekd.server.errors import invalid_request
from seekd.server.generation import ServingContext
from seekd.server.images import ChatImages
from seekd.server.knowledge import retrieve_for_chat
from seekd.server.legacy_functions import legacy_history
from seekd.server.protocol import ChatCompletionRequest, ChatMessage, CompletionRequest, SamplingFields
from seekd.server.reasoning import THINK_END, THINK_START, ReasoningTags, prompt_opens_reasoning
from seekd.server.response_format import structured_from_response_format
from seekd.server.tool_calls import ToolSetup, prepare_history, tool_setup
from seekd.text.chat_template import ChatTemplateError
from seekd.text.tool_parsers import detect_tool_format

COMPLETIONS_DEFAULT_MAX_TOKENS = 16  # OpenAI's default for /v1/completions

# Template arguments the server sets from request fields; a chat_template_kwargs copy would clash.
RESERVED_TEMPLATE_KWARGS = frozenset({"messages", "tools", "add_generation_prompt", "bos_token", "eos_token"})


@dataclass
class RequestPlan:
    """What one API request asks of the engine and how its answer is to be shaped."""

    prompts: list[list[int]]
    params: SamplingParams
    policy: RequestPolicy
    stream: bool
    include_usage: bool  # streamed: a last chunk with the usage
    num_top: int | None  # logprobs asked for (and how many alternatives); None = none
    reasoning: ReasoningTags | None = None  # chat: the prompt's reasoning block, for usage and splitting
    tools: ToolSetup | None = None  # chat: how the output is read for tool calls
    citations: list[Citation] = field(default_factory=list)  # chat: passages put into the prompt
    echoes: list[str] = field(default_factory=list)  # completions: each prompt's text when `echo` is set
    images: list[ImageInput] = field(default_factory=list)  # chat: the prompt's images, placeholders expanded

    @property
    def in_reasoning(self) -> bool:
        """The output starts inside a reasoning block (the prompt opened one)."""
        return self.reasoning is not None and self.reasoning.open_in_prompt


# -- chat ---------------------------------------------------------------------------------------


async def plan_chat(ctx: ServingContext, req: ChatCompletionRequest, request: Request) -> RequestPlan:
    policy = request_policy(request, req.priority, req.timeout, ctx.request_timeout_s, req.cache_salt)
    _check_chat_fields(req)
    check_num_sequences(ctx, 1, req.n, "n")
    tools = tool_setup(req, detect_tool_format(ctx.tokenizer.model_type, ctx.tokenizer.chat_template))
    chat_images = await ctx.images.prepare(req.messages) if ctx.images is not None else ChatImages(req.messages)
    messages = prepare_history(legacy_history([_message_dict(i, m) for i, m in enumerate(chat_images.messages)]))
    retrieval = await retrieve_for_chat(ctx, req, messages, request)
    try:
        prompt_text = ctx.tokenizer.apply_chat_template(
            retrieval.messages,
            add_generation_prompt=req.add_generation_prompt,
            tools=tools.tools,
            **req.template_kwargs(),
        )
    except ChatTemplateError as e:
        raise invalid_request(str(e), param="messages") from e
    prompt_ids, images = chat_images.bind(await ctx.encode(prompt_text, add_special_tokens=False))
    max_tokens = req.max_completion_tokens if req.max_completion_tokens is not None else req.max_tokens
    if max_tokens is None:
        max_tokens = ctx.default_max_tokens(len(prompt_ids))
    check_budget(ctx, [prompt_ids], max_tokens, "messages")
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
    return RequestPlan(
        prompts=[prompt_ids],
        params=params,
        policy=policy,
        stream=bool(req.stream),
        include_usage=bool(req.stream_options and req.stream_options.include_usage),
        num_top=num_top,
        reasoning=tags,
        tools=tools,
        citations=retrieval.citations,
        images=images,
    )


def _check_chat_fields(req: ChatCompletionRequest) -> None:
    if req.top_logprobs is not None and not req.logprobs:
        raise invalid_request("top_logprobs needs logprobs=true", param="top_logprobs")
    if clash := sorted(RESERVED_TEMPLATE_KWARGS & set(req.chat_template_kwargs or {})):
        raise invalid_request(
            f"chat_template_kwargs may not set {', '.join(clash)}: the request's own fields "
            "(messages, tools, add_generation_prompt) set them",
            param="chat_template_kwargs",
        )


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


# -- completions --------------------------------------------------------------------------------


async def plan_completion(ctx: ServingContext, req: CompletionRequest, request: Request) -> RequestPlan:
    policy = request_policy(request, req.priority, req.timeout, ctx.request_timeout_s, req.cache_salt)
    _check_completion_fields(req)
    prompts = await _prompts(ctx, req.prompt, req.n)
    max_tokens = COMPLETIONS_DEFAULT_MAX_TOKENS if req.max_tokens is None else req.max_tokens
    check_budget(ctx, prompts, max_tokens, "prompt")
    params = build_sampling_params(
        req, max_tokens=max_tokens, logprobs=req.logprobs, max_n=ctx.max_n, vocab_size=ctx.tokenizer.vocab_size
    )
    echoes = [ctx.tokenizer.decode(ids, skip_special_tokens=True) if req.echo else "" for ids in prompts]
    return RequestPlan(
        prompts=prompts,
        params=params,
        policy=policy,
        stream=bool(req.stream),
        include_usage=bool(req.stream_options and req.stream_options.include_usage),
        num_top=req.logprobs,
        echoes=echoes,
    )


def _check_completion_fields(req: CompletionRequest) -> None:
    if req.suffix:
        raise invalid_request("suffix is not supported", param="suffix")
    if req.best_of is not None and req.best_of != req.n:
        raise invalid_request("best_of other than n is not supported", param="best_of")
    if req.echo and req.logprobs is not None:
        raise invalid_request("echo together with logprobs is not supported", param="echo")


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


# -- shared: budget and sampling ----------------------------------------------------------------


def check_budget(ctx: ServingContext, prompts: list[list[int]], max_tokens: int | None, param: str) -> None:
    """Every prompt with its output fits the context and the operator's limits."""
    for ids in prompts:
        check_fits_context(len(ids), max_tokens, ctx.max_model_len, param)
        check_input_limits(ctx, len(ids), max_tokens, param)


def build_sampling_params(
    req: SamplingFields, *, max_tokens: int | None, logprobs: int | None, max_n: int, vocab_size: int
) -> SamplingParams:
    check_n(req.n, max_n)
    logit_bias = parse_logit_bias(req.logit_bias, vocab_size)
    given = {
        "temperature": req.temperature,
        "top_p": req.top_p,
        "top_k": req.top_k,
        "min_p": req.min_p,
        "presence_penalty": req.presence_penalty,
        "frequency_penalty": req.frequency_penalty,
        "repetition_penalty": req.repetition_penalty,
    }
    try:
        return SamplingParams(
            n=req.n,
            seed=req.seed,
            max_tokens=max_tokens,
            min_tokens=req.min_tokens,
            stop=[req.stop] if isinstance(req.stop, str) else list(req.stop or []),
            stop_token_ids=list(req.stop_token_ids or []),
            ignore_eos=req.ignore_eos,
            logprobs=logprobs,
            skip_special_tokens=req.skip_special_tokens,
            include_stop_str_in_output=req.include_stop_str_in_output,
            structured=structured_from_response_format(getattr(req, "response_format", None)),
            logit_bias=logit_bias,
            **{k: v for k, v in given.items() if v is not None},
        )
    except ValueError as e:
        raise invalid_request(str(e)) from e


MAX_LOGIT_BIAS_ENTRIES = 300  # OpenAI's own bound; the sampler applies every entry of every row each step


def parse_logit_bias(raw: dict[str, float] | None, vocab_size: int) -> dict[int, float]:
    """OpenAI's {"token id": bias} with JSON's string keys -> token ids."""
    if raw is not None and len(raw) > MAX_LOGIT_BIAS_ENTRIES:
        raise invalid_request(
            f"logit_bias may hold at most {MAX_LOGIT_BIAS_ENTRIES} tokens, got {len(raw)}", param="logit_bias"
        )
    bias = {}
    for key, value in (raw or {}).items():
        if not (key.isascii() and key.isdigit()):
            raise invalid_request(f"logit_bias keys must be token ids, got {key!r}", param="logit_bias")
        token = int(key)
        if token >= vocab_size:
            raise invalid_request(
                f"logit_bias token id {token} is outside the vocabulary [0, {vocab_size})", param="logit_bias"
            )
        if not -100.0 <= value <= 100.0:
            raise invalid_request(
                f"logit_bias values must be in [-100, 100], got {value} for token {token}", param="logit_bias"
            )
        bias[token] = float(value)
    return bias


def check_fits_context(prompt_len: int, max_tokens: int | None, max_model_len: int, param: str) -> None:
    """Refuse up front what cannot fit (seekd/engine/context_length.py), as a 400 worded like OpenAI's."""
    try:
        check_context_length(prompt_len, max_model_len, max_tokens)
    except ContextLengthExceeded as e:
        raise invalid_request(e.openai_message(param), param=e.param or param, code="context_length_exceeded") from None


def check_n(n: int, max_n: int) -> None:
    if n > max_n:
        raise invalid_request(f"n must be at most {max_n}, got {n}", param="n")


def check_num_sequences(ctx: ServingContext, num_prompts: int, n: int, param: str) -> None:
    """One request may not ask for more sequences than the engine runs at once: admission lets any
    request into an idle engine, so a larger one (thousands of prompts in one completions call)
    would hold every other request back until all of its sequences were done. The `n` the operator
    allows (max_n) is always accepted, even where fewer sequences run at once."""
    check_n(n, ctx.max_n)
    limit = max(ctx.admission.max_inflight_seqs, ctx.max_n)
    if num_prompts * n > limit:
        raise invalid_request(
            f"this request asks for {num_prompts * n} sequences ({num_prompts} prompts x n={n}); this server takes "
            f"at most {limit} in one request (server settings max_num_seqs, max_inflight_requests, max_n): split "
            "it into smaller requests",
            param=param,
            code="too_many_sequences",
        )


def check_input_limits(ctx: ServingContext, prompt_len: int, max_tokens: int | None, param: str) -> None:
    """The operator's bounds on one request, tighter than the model's context."""
    if ctx.max_prompt_tokens and prompt_len > ctx.max_prompt_tokens:
        raise invalid_request(
            f"the {param} has {prompt_len} tokens; this server accepts at most {ctx.max_prompt_tokens} "
            "(server setting max_prompt_tokens)",
            param=param,
            code="prompt_too_long",
        )
    if ctx.max_output_tokens and (max_tokens or 0) > ctx.max_output_tokens:
        raise invalid_request(
            f"max_tokens is {max_tokens}; this server allows at most {ctx.max_output_tokens} "
            "(server setting max_output_tokens)",
            param="max_tokens",
            code="max_tokens_too_large",
        )
