"""OpenAI-style error objects, `{"error": {"message", "type", "param", "code"}}`, for every failure.

Handlers raise `APIError`; FastAPI's validation errors (including malformed JSON) become 400s, and
any other exception becomes a 500 object, logged with its request id, instead of a crash.
"""

from __future__ import annotations

import logging
from http import HTTPStatus

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from seekd.errors import APIError

logger = logging.getLogger(__name__)


def invalid_request(message: str, param: str | None = None, code: str | None = None) -> APIError:
    return APIError(HTTPStatus.BAD_REQUEST, message, param=param, code=code)


SHUTDOWN_RETRY_AFTER_S = 5  # by then a retry reaches another replica, or this one restarted


def shutting_down(detail: str) -> APIError:
    """503 for work a stopping server will not do (refused while it drains, or cut off after)."""
    return APIError(
        HTTPStatus.SERVICE_UNAVAILABLE,
        f"the server is shutting down: {detail}; retry on another replica or after it restarts",
        code="server_shutting_down",
        headers={"Retry-After": str(SHUTDOWN_RETRY_AFTER_S)},
    )


def validation_error(exc: RequestValidationError) -> APIError:
    """First pydantic error, phrased for an API user: which field and what is wrong with it."""
    errors = exc.errors()
    if not errors:
        return invalid_request("invalid request body")
    first = errors[0]
    if first.get("type") == "json_invalid":
        return invalid_request(f"the request body is not valid JSON: {first.get('msg')}", code="invalid_json")
    loc = [str(part) for part in first.get("loc", ()) if part != "body"]
    param = ".".join(loc) or None
    if param is None and first.get("type") in ("model_attributes_type", "dict_type"):
        return invalid_request(
            "the request body must be a JSON object, sent with Content-Type: application/json", code="invalid_json"
        )
    msg = first.get("msg", "invalid value")
    if param is None:
        return invalid_request(f"invalid request body: {msg}")
    return invalid_request(f"invalid value for '{param}': {msg}", param=param)


# FastAPI's detail when the body fails to decode other than as bad JSON syntax: bytes that are not
# UTF-8/16/32, or an integer literal longer than Python's 4,300-digit limit.
FASTAPI_BODY_PARSE_ERROR = "There was an error parsing the body"


def unparsable_body() -> APIError:
    return invalid_request(
        "the request body is not valid JSON: it must be UTF-8 text, and integers at most 4,300 digits long",
        code="invalid_json",
    )


SERVED_ENDPOINTS = (
    "POST /v1/chat/completions, POST /v1/completions, GET /v1/models, POST /v1/embeddings, /v1/knowledge_bases"
)


def routing_error(method: str, path: str, exc: StarletteHTTPException) -> APIError:
    """Routing's own 404/405 say which URL failed and what is served, as OpenAI's "Invalid URL" does:
    a client pointed at an endpoint seekd lacks (/v1/responses, /v1/images) learns why."""
    if exc.status_code == HTTPStatus.NOT_FOUND and exc.detail == "Not Found":
        return APIError(
            HTTPStatus.NOT_FOUND,
            f"Invalid URL ({method} {path}): seekd serves {SERVED_ENDPOINTS}",
            type="invalid_request_error",
            code="unknown_url",
        )
    if exc.status_code == HTTPStatus.METHOD_NOT_ALLOWED:
        allowed = next((v for k, v in (exc.headers or {}).items() if k.lower() == "allow"), "")
        return APIError(
            HTTPStatus.METHOD_NOT_ALLOWED,
            f"{method} is not allowed on {path} (allowed: {allowed})",
            code="method_not_allowed",
            headers=exc.headers,
        )
    return APIError(exc.status_code, str(exc.detail), headers=exc.headers)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        return validation_error(exc).response()

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == HTTPStatus.BAD_REQUEST and exc.detail == FASTAPI_BODY_PARSE_ERROR:
            return unparsable_body().response()
        return routing_error(request.method, request.url.path, exc).response()

    @app.exception_handler(Exception)
    async def _unhandled(request: Request, exc: Exception) -> JSONResponse:
        logger.exception(
            "unhandled error request_id=%s path=%s",
            getattr(request.state, "request_id", "-"),
            request.url.path,
        )
        return APIError(HTTPStatus.INTERNAL_SERVER_ERROR, f"internal server error: {type(exc).__name__}").response()
