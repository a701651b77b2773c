"""`/admin/lora-adapters`: list, load and unload LoRA adapters at runtime (admin keys only, like all of
/admin). Requests already running on an unloaded adapter finish on it; new ones get 404."""

from __future__ import annotations

from collections.abc import Awaitable
from http import HTTPStatus
from typing import Literal

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field

from seekd.errors import APIError
from seekd.server.adapters import adapter_model_name
from seekd.server.engine_client import EngineClient, EngineDeadError, EngineRequestError
from seekd.server.errors import invalid_request
from seekd.server.openapi import KEYED, WITH_BODY, errors

router = APIRouter(prefix="/admin")


class AdapterInfo(BaseModel):
    name: str
    model: str  # what requests put in `model` to use it
    path: str  # "" = loaded from --lora-modules


class AdapterList(BaseModel):
    object: Literal["list"] = "list"
    data: list[AdapterInfo]


class LoadAdapterRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=64)
    path: str = Field(min_length=1, max_length=4096, description="a PEFT LoRA adapter folder on the server")


def _client(request: Request) -> EngineClient:
    client: EngineClient | None = request.app.state.engine
    if client is None or client.info is None or client.dead_reason is not None:
        reason = client.dead_reason if client is not None else None
        raise APIError(
            HTTPStatus.SERVICE_UNAVAILABLE, reason or "the model is still loading", code="engine_unavailable"
        )
    return client


async def _engine_call(call: Awaitable[None]) -> None:
    """An adapter operation in the engine: its refusal is the caller's 400, a missing engine 503."""
    try:
        await call
    except EngineRequestError as e:
        raise invalid_request(str(e)) from e
    except EngineDeadError as e:
        raise APIError(HTTPStatus.SERVICE_UNAVAILABLE, str(e), code="engine_unavailable") from e


def _listing(request: Request, client: EngineClient) -> AdapterList:
    served = request.app.state.serving.served_model_name
    adapters = client.lora_adapters or {}
    return AdapterList(
        data=[AdapterInfo(name=n, model=adapter_model_name(served, n), path=p) for n, p in sorted(adapters.items())]
    )


@router.get("/lora-adapters", response_model=AdapterList, responses=errors(*KEYED, HTTPStatus.SERVICE_UNAVAILABLE))
async def list_adapters(request: Request) -> AdapterList:
    return _listing(request, _client(request))


@router.post(
    "/lora-adapters", response_model=AdapterList, responses=errors(*WITH_BODY, *KEYED, HTTPStatus.SERVICE_UNAVAILABLE)
)
async def load_adapter(body: LoadAdapterRequest, request: Request) -> AdapterList:
    """Load (or replace) an adapter; the answer lists the adapters loaded after it."""
    client = _client(request)
    await _engine_call(client.load_adapter(body.name, body.path))
    return _listing(request, client)


@router.delete(
    "/lora-adapters/{name}",
    response_model=AdapterList,
    responses=errors(*KEYED, HTTPStatus.NOT_FOUND, HTTPStatus.SERVICE_UNAVAILABLE),
)
async def unload_adapter(name: str, request: Request) -> AdapterList:
    client = _client(request)
    if name not in (client.lora_adapters or {}):
        raise APIError(HTTPStatus.NOT_FOUND, f"no LoRA adapter named {name!r} is loaded", code="adapter_not_found")
    await _engine_call(client.unload_adapter(name))
    return _listing(request, client)
