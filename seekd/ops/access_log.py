"""Request ids and the access log: one JSON line per API request, on the `seekd.access` logger.

The request id is the caller's `X-Request-Id` when it is a sane token (so a gateway's id follows the
request through our logs), else a fresh one; either way it is echoed in the response's
`X-Request-Id`. The OpenAI response id (`chatcmpl-…`) stays separate: it must be unique in the
engine, and a caller's id need not be.

With `--log-format json` every log line is a JSON object (`seekd.ops.logging_setup`); with `text`
the access line is still JSON, after the usual prefix. It is the one line a request leaves at the
default level: uvicorn's own access log is off, and the server logs a generation's start and end
at debug.
"""

from __future__ import annotations

import json
import logging
import re
import time
import uuid
from collections.abc import Callable
from typing import Any

from starlette.datastructures import Headers, MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from seekd.ops.metrics import ServerMetrics

access_logger = logging.getLogger("seekd.access")

REQUEST_ID_HEADER = "x-request-id"
_SANE_REQUEST_ID = re.compile(r"[A-Za-z0-9._:\-]{1,128}")  # nothing that could forge a log line
LOGGED_PATH_PREFIX = "/v1/"  # API calls, not probes and scrapes
CLIENT_CLOSED_REQUEST = 499  # nginx's status for a client that left before the response


def request_id_of(headers: Headers) -> str:
    given = headers.get(REQUEST_ID_HEADER, "")
    return given if _SANE_REQUEST_ID.fullmatch(given) else uuid.uuid4().hex


# What a route handler leaves in `request.state.access_fields`: called once the response is done, it
# returns the request's own part of the line (response id, tenant, model, tokens, timings) as plain data.
RequestFields = Callable[[], dict[str, Any]]


def access_fields(
    request_id: str, method: str, path: str, status: int | None, started: float, request_fields: RequestFields | None
) -> dict[str, Any]:
    fields: dict[str, Any] = {"request_id": request_id, "method": method, "path": path, "status": status}
    if request_fields is None:
        fields["e2e_ms"] = round((time.monotonic() - started) * 1000.0, 3)
    else:
        fields.update(request_fields())
    return fields


class AccessLogMiddleware:
    """Assigns the request id, echoes it, and logs one line when the response is complete (or the
    client left), with the fields the handler left in `request.state.access_fields` (`RequestFields`)."""

    def __init__(self, app: ASGIApp, metrics: ServerMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.monotonic()
        request_id = request_id_of(Headers(scope=scope))
        scope.setdefault("state", {})["x_request_id"] = request_id
        status: int | None = None

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                MutableHeaders(scope=message)[REQUEST_ID_HEADER] = request_id
            await send(message)

        failed = True
        try:
            await self.app(scope, receive, send_with_id)
            failed = False
        finally:
            path: str = scope.get("path", "")
            if path.startswith(LOGGED_PATH_PREFIX):
                request_fields = scope["state"].get("access_fields")
                # No response and no error: the client left before its request was complete.
                final = status or (500 if failed else CLIENT_CLOSED_REQUEST)
                fields = access_fields(request_id, scope.get("method", ""), path, final, started, request_fields)
                self.metrics.http_request_done(fields["status"])
                access_logger.info(json.dumps(fields), extra={"fields": fields})
