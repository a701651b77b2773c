"""The error every layer above the engine raises for an API caller: an OpenAI-style error object,
`{"error": {"message", "type", "param", "code"}}`, with its HTTP status.

It lives below both the server and the operations layer (auth refuses requests with it before any
route runs), so neither has to import the other for it.
"""

from __future__ import annotations

from http import HTTPStatus
from typing import Any

from starlette.responses import JSONResponse


class APIError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str | None = None,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type or _default_type(status)
        self.param = param
        self.code = code
        self.headers = headers  # e.g. Retry-After on a 429

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


def _default_type(status: int) -> str:
    if status == HTTPStatus.NOT_FOUND:
        return "not_found_error"
    if status >= 500:
        return "server_error"
    return "invalid_request_error"
