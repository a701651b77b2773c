"""Request body size limit (pure ASGI), answered with an OpenAI-style 413 before any parsing.

The body is read here and replayed to the app, so a limit also holds for chunked uploads that
carry no Content-Length. An oversized body is drained (up to a bound) before the 413 is sent,
because HTTP clients that are still writing the body would otherwise see a reset, not the error.
A body nested deeper than `max_json_depth` gets a 400 here too: the JSON parser would recurse on it.
So does a body with a lone UTF-16 surrogate in a string, which no later stage could encode.
"""

from __future__ import annotations

from http import HTTPStatus

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from seekd.errors import APIError
from seekd.server.http.json_depth import deeper_than
from seekd.server.http.lone_surrogates import lone_surrogate_path

MAX_DRAIN_FACTOR = 8  # beyond limit * this, stop reading and let the connection drop


class BodySizeLimitMiddleware:
    def __init__(self, app: ASGIApp, max_body_bytes: int, max_json_depth: int = 0) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.max_json_depth = max_json_depth  # 0 = unchecked

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            size += len(message.get("body", b""))
            if size <= self.max_body_bytes:
                chunks.append(message.get("body", b""))
            if not message.get("more_body", False) or size > self.max_body_bytes * MAX_DRAIN_FACTOR:
                break
        if size > self.max_body_bytes:
            await self._reject(size, send)
            return
        body = b"".join(chunks)
        if self.max_json_depth and deeper_than(body, self.max_json_depth):
            await self._reject_depth(send)
            return
        if (where := lone_surrogate_path(body)) is not None:
            await _reject_surrogate(where, send)
            return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _reject(self, size: int, send: Send) -> None:
        error = APIError(
            HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
            f"request body is {size} bytes or more; the limit is {self.max_body_bytes} bytes "
            "(server setting max_request_body_bytes)",
            code="request_too_large",
        )
        response = error.response()
        await response({"type": "http"}, _no_receive, send)

    async def _reject_depth(self, send: Send) -> None:
        error = APIError(
            HTTPStatus.BAD_REQUEST,
            f"the request body nests arrays/objects deeper than {self.max_json_depth} levels "
            "(server setting max_json_depth)",
            code="json_too_deep",
        )
        await error.response()({"type": "http"}, _no_receive, send)


async def _reject_surrogate(where: str, send: Send) -> None:
    error = APIError(
        HTTPStatus.BAD_REQUEST,
        f"the request body holds a lone UTF-16 surrogate (half of an escaped pair, e.g. \\ud800) in "
        f"{where or 'the body'}; strings must be valid Unicode",
        param=where or None,
        code="invalid_unicode",
    )
    await error.response()({"type": "http"}, _no_receive, send)


async def _no_receive() -> Message:
    return {"type": "http.disconnect"}
