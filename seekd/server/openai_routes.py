"""The OpenAI-compatible routes: request ids, model check, readiness gate, then one pass through
the request (`request_plan`: OpenAI request -> engine request), the engine (`generation`) and the
answer (`response_render`: engine outputs -> OpenAI response or SSE chunks)."""

from __future__ import annotations

import uuid
from http import HTTPStatus

from fastapi import APIRouter, Request
from starlette.responses import JSONResponse, Response

from seekd.errors import APIError
from seekd.ops.auth import principal_of
from seekd.server.adapters import adapter_model_name, select_model
from seekd.server.generation import Generation, ServingContext
from seekd.server.openapi import GENERATION, KEYED, errors, streamed
from seekd.server.protocol import (
    ChatCompletionRequest,
    ChatCompletionResponse,
    CompletionRequest,
    CompletionResponse,
    ModelCard,
    ModelList,
)
from seekd.server.request_plan import RequestPlan, plan_chat, plan_completion
from seekd.server.response_render import ChatRenderer, CompletionRenderer, Renderer
from seekd.server.streaming import ClientDisconnected, EventStreamResponse, prime, run_until_disconnect

router = APIRouter()

# Status for a request whose client left; nobody reads it, but access logs show what happened.
CLIENT_CLOSED_REQUEST = 499


def serving_context(request: Request) -> ServingContext:
    ctx: ServingContext | None = request.app.state.serving
    if ctx is None:
        client = request.app.state.engine
        reason = client.dead_reason if client is not None else None
        raise APIError(
            HTTPStatus.SERVICE_UNAVAILABLE,
            reason or "the model is still loading; retry when GET /ready returns 200",
            code="engine_unavailable",
        )
    if not ctx.client.is_ready:
        raise APIError(
            HTTPStatus.SERVICE_UNAVAILABLE, ctx.client.dead_reason or "engine not ready", code="engine_unavailable"
        )
    return ctx


def _check_model(ctx: ServingContext, model: str | None, request: Request) -> None:
    """The model must be the served one or `served:adapter` of a loaded LoRA adapter (which is
    then remembered on the request), and the API key must allow it."""
    select_model(model, ctx.served_model_name, ctx.client.lora_adapters, request)
    principal = principal_of(request.scope)
    name = ctx.served_model_name
    if principal is not None and not (principal.key.allows_model(name) or principal.key.allows_model(model or name)):
        raise APIError(
            HTTPStatus.FORBIDDEN,
            f"API key {principal.key.id} may not use the model `{model or name}`",
            type="permission_error",
            param="model",
            code="model_not_allowed",
        )


def _new_request_id(request: Request, prefix: str) -> str:
    request_id = f"{prefix}-{uuid.uuid4().hex}"
    request.state.request_id = request_id
    return request_id


@router.get("/v1/models", response_model=ModelList, responses=errors(*KEYED, HTTPStatus.SERVICE_UNAVAILABLE))
async def list_models(request: Request) -> ModelList:
    ctx = serving_context(request)
    principal = principal_of(request.scope)
    cards = [_model_card(ctx), *(_model_card(ctx, a) for a in sorted(ctx.client.lora_adapters or {}))]
    if principal is not None:
        allowed = principal.key.allows_model(ctx.served_model_name)
        cards = [c for c in cards if allowed or principal.key.allows_model(c.id)]
    return ModelList(data=cards)


@router.get(
    "/v1/models/{model_id:path}",
    response_model=ModelCard,
    responses=errors(*KEYED, HTTPStatus.NOT_FOUND, HTTPStatus.SERVICE_UNAVAILABLE),
)
async def retrieve_model(model_id: str, request: Request) -> ModelCard:
    """`client.models.retrieve(id)`; a name with a '/' (an organisation/model id) is one path."""
    ctx = serving_context(request)
    _check_model(ctx, model_id, request)
    return _model_card(ctx, request.state.lora_name)


def _model_card(ctx: ServingContext, adapter: str | None = None) -> ModelCard:
    """The base model's card, or that of one of its LoRA adapters (`served:adapter`)."""
    name = ctx.served_model_name
    loaded = {"quantization": ctx.quantization, "precision": ctx.precision}
    if adapter is None:
        return ModelCard(id=name, created=ctx.created, max_model_len=ctx.max_model_len, **loaded)
    return ModelCard(
        id=adapter_model_name(name, adapter),
        created=ctx.created,
        max_model_len=ctx.max_model_len,
        parent=name,
        **loaded,
    )


@router.post("/v1/chat/completions", responses={**streamed(ChatCompletionResponse), **GENERATION})
async def chat_completions(body: ChatCompletionRequest, request: Request) -> Response:
    ctx = serving_context(request)
    _check_model(ctx, body.model, request)
    request_id = _new_request_id(request, "chatcmpl")
    plan = await plan_chat(ctx, body, request)
    return await _respond(ctx, plan, ChatRenderer(ctx, plan), request, request_id)


@router.post("/v1/completions", responses={**streamed(CompletionResponse), **GENERATION})
async def completions(body: CompletionRequest, request: Request) -> Response:
    ctx = serving_context(request)
    _check_model(ctx, body.model, request)
    request_id = _new_request_id(request, "cmpl")
    plan = await plan_completion(ctx, body, request)
    return await _respond(ctx, plan, CompletionRenderer(ctx, plan), request, request_id)


async def _respond(
    ctx: ServingContext, plan: RequestPlan, renderer: Renderer, request: Request, request_id: str
) -> Response:
    """Runs the plan in the engine and answers: a stream once its first update is in (so errors
    before any output still get their status), or the whole response at the end."""
    gen = Generation(
        ctx, request_id, plan.prompts, plan.params, plan.policy, reasoning=plan.reasoning, images=plan.images
    )
    request.state.generation = gen  # for the audit trail
    request.state.access_fields = gen.access_fields
    try:
        if plan.stream:
            updates = gen.updates()
            first = await run_until_disconnect(request, prime(updates))
            return EventStreamResponse(renderer.events(gen, updates, first), request_id)
        await run_until_disconnect(request, gen.run())
    except ClientDisconnected:
        return JSONResponse({}, status_code=CLIENT_CLOSED_REQUEST)
    return JSONResponse(renderer.response(gen))
