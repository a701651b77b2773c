"""One audit record per API call (`/v1/*`, `/admin/*`) and per refused caller on any route.

It sits outside the auth middleware, so refusals are recorded too, and reads what the inner layers
left in the request scope: the principal (auth), the Generation (handlers) and the request id
(access log). The record is written just before the last byte of the response (streams included),
when token counts and status are final, or when the client leaves.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from seekd.ops.audit import AuditLog
from seekd.ops.auth import principal_of

logger = logging.getLogger(__name__)

AUDITED_PREFIXES = ("/v1/", "/admin")
REFUSED = (401, 403)
CLIENT_GONE = 499
MAX_CAPTURED_BODY = 64 * 2**20  # the body limit rejects far earlier; this only bounds memory


class AuditMiddleware:
    def __init__(self, app: ASGIApp, log: AuditLog, store_content: bool) -> None:
        self.app = app
        self.log = log
        self.store_content = store_content

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status: int | None = None
        body: list[bytes] = []
        size = 0
        written = False

        def record() -> None:
            nonlocal written
            path: str = scope.get("path", "")
            final = status or CLIENT_GONE
            if not written and (path.startswith(AUDITED_PREFIXES) or final in REFUSED):
                self._write(scope, final, b"".join(body))
            written = True

        async def capture_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            elif message["type"] == "http.response.body" and not message.get("more_body", False):
                record()  # before the last byte: no caller sees a response that left no record
            await send(message)

        async def capture_receive() -> Message:
            nonlocal size
            message = await receive()
            chunk = message.get("body", b"")
            if message["type"] == "http.request" and size + len(chunk) <= MAX_CAPTURED_BODY:
                body.append(chunk)
                size += len(chunk)
            return message

        try:
            await self.app(scope, capture_receive if self.store_content else receive, capture_send)
        finally:
            record()  # the client left or the app failed before the response was complete

    def _write(self, scope: Scope, status: int, body: bytes) -> None:
        state = scope.get("state", {})
        principal = principal_of(scope)
        gen = state.get("generation")
        fields: dict[str, Any] = {
            "time": round(time.time(), 3),
            "request_id": state.get("x_request_id"),
            "key_id": principal.key.id if principal is not None else None,
            "role": principal.key.role if principal is not None else None,
            "tenant": gen.policy.tenant if gen is not None else (principal.key.tenant if principal else None),
            "client": (scope.get("client") or ("", 0))[0],
            "method": scope.get("method"),
            "route": scope.get("path"),
            "status": status,
        }
        content = None
        if gen is not None:
            fields.update(
                {
                    "response_id": gen.request_id,
                    "model": gen.ctx.served_model_name,
                    "prompt_tokens": gen.prompt_tokens,
                    "completion_tokens": gen.completion_tokens,
                    "cached_tokens": gen.cached_tokens,
                }
            )
            if self.store_content:
                content = {"request": _as_json(body), "outputs": [c.text for c in gen.choices]}
        try:
            self.log.append(fields, content)
        except OSError as e:
            logger.error("cannot write the audit log %s: %s", self.log.path, e)


def _as_json(body: bytes) -> Any:
    try:
        return json.loads(body)
    except ValueError:
        return body.decode(errors="replace")
