"""The OpenAPI document (`/openapi.json`) as the server really answers: each operation declares the
error statuses it can return, all as OpenAI error objects, and none of FastAPI's 422s (seekd
answers validation errors with 400s, see `seekd.server.errors`).

Clients generated from the document and contract fuzzers read it; tests/server/test_openapi_contract.py
makes every declared status happen on a live server and checks that nothing else does.
"""

from __future__ import annotations

from http import HTTPStatus
from typing import Any

from fastapi import FastAPI
from pydantic import BaseModel, ConfigDict

DESCRIPTION = (
    "OpenAI-compatible API of seekd. Every error is an OpenAI error object, "
    '`{"error": {"message", "type", "param", "code"}}`: those of each operation are declared with it, '
    "and an unknown URL gets 404 (code unknown_url), a method a path does not serve 405 "
    "(method_not_allowed). 429 and 503 responses may carry Retry-After."
)


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    """An OpenAI error object."""

    error: ErrorDetail


class ProbeStatus(BaseModel):
    """`/health` and `/ready`: the status (ok, unhealthy, ready, not_ready) and why not; with an API
    key `/ready` adds the engine's and the queue's numbers."""

    model_config = ConfigDict(extra="allow")
    status: str
    reason: str | None = None


_WHEN = {
    HTTPStatus.BAD_REQUEST: "Invalid request: body, field values or headers",
    HTTPStatus.UNAUTHORIZED: "Missing, invalid or revoked API key (only when the server has keys)",
    HTTPStatus.FORBIDDEN: "The API key's role or model list does not allow this",
    HTTPStatus.NOT_FOUND: "No such model, key, knowledge base or document",
    HTTPStatus.CONFLICT: "A knowledge base of that name exists",
    HTTPStatus.UNSUPPORTED_MEDIA_TYPE: "A document type seekd cannot read (txt, md, html, pdf and docx it can)",
    HTTPStatus.REQUEST_TIMEOUT: "The request's deadline (`timeout`, or the server's request_timeout_s) passed",
    HTTPStatus.REQUEST_ENTITY_TOO_LARGE: "Body larger than the server's max_request_body_bytes",
    HTTPStatus.TOO_MANY_REQUESTS: "Queue full or rate limit reached; retry after Retry-After seconds",
    HTTPStatus.SERVICE_UNAVAILABLE: "Model loading, engine gone, or the server shutting down",
}
_RETRY_AFTER = {"Retry-After": {"description": "Seconds to wait before retrying", "schema": {"type": "integer"}}}


def errors(*statuses: HTTPStatus) -> dict[int | str, dict[str, Any]]:
    """FastAPI `responses` for these error statuses, each an OpenAI error object."""
    out: dict[int | str, dict[str, Any]] = {}
    for status in statuses:
        out[int(status)] = {"model": ErrorResponse, "description": _WHEN[status]}
        if status in (HTTPStatus.TOO_MANY_REQUESTS, HTTPStatus.SERVICE_UNAVAILABLE):
            out[int(status)]["headers"] = _RETRY_AFTER
    return out


# Every route but /health is behind the API-key check: 401 without a valid key (when keys exist),
# 403 for a key whose role may not use the route.
KEYED = (HTTPStatus.UNAUTHORIZED, HTTPStatus.FORBIDDEN)
WITH_BODY = (HTTPStatus.BAD_REQUEST, HTTPStatus.REQUEST_ENTITY_TOO_LARGE)
GENERATION = errors(
    *WITH_BODY,
    *KEYED,
    HTTPStatus.NOT_FOUND,
    HTTPStatus.REQUEST_TIMEOUT,
    HTTPStatus.TOO_MANY_REQUESTS,
    HTTPStatus.SERVICE_UNAVAILABLE,
)


def streamed(model: type[BaseModel]) -> dict[int | str, dict[str, Any]]:
    """The 200 of a route that answers JSON, or server-sent events with `"stream": true`."""
    return {
        200: {
            "model": model,
            "description": 'The response; with `"stream": true`, server-sent events of chunks ending in `data: [DONE]`',
            "content": {"text/event-stream": {"schema": {"type": "string"}}},
        }
    }


def probe(*statuses: HTTPStatus) -> dict[int | str, dict[str, Any]]:
    """A probe answers its status in its own body, 200 or 503 (the other errors are error objects)."""
    out = errors(*statuses)
    for status in (200, 503):
        out[status] = {"model": ProbeStatus, "description": "Ready / alive" if status == 200 else "Not (yet) so"}
    return out


def install_openapi(app: FastAPI) -> None:
    """FastAPI adds a 422 (and its HTTPValidationError schema) to every operation with parameters;
    seekd never answers 422, so the generated document leaves them out."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        fresh = app.openapi_schema is None
        schema = build()
        if fresh:
            for operations in schema["paths"].values():
                for operation in operations.values():
                    operation["responses"].pop("422", None)
            for name in ("HTTPValidationError", "ValidationError"):
                schema.get("components", {}).get("schemas", {}).pop(name, None)
        return schema

    app.openapi = openapi
