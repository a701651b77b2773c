"""The router's errors in the server's OpenAI error shape (seekd/errors.py), so clients get the same
error objects from the router as from a replica (`{"error": {"message", "type", "param", "code"}}`).
"""

from __future__ import annotations

from http import HTTPStatus

from seekd.errors import APIError

__all__ = ["APIError", "no_backend", "unknown_model"]


def unknown_model(model: str, served: list[str]) -> APIError:
    return APIError(
        HTTPStatus.NOT_FOUND,
        f"the model {model!r} does not exist on this router; it serves {', '.join(served) or 'nothing'}",
        type="invalid_request_error",
        param="model",
        code="model_not_found",
    )


def no_backend(model: str, detail: str) -> APIError:
    return APIError(
        HTTPStatus.SERVICE_UNAVAILABLE,
        f"no backend could answer for model {model!r}: {detail}; retry shortly",
        code="no_backend_available",
        headers={"Retry-After": "1"},
    )
