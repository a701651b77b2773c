"""Which LoRA adapter an OpenAI request selects: `model: "base:adapter"` (clients stay unchanged).

`select_model` checks the request's model name against the served model and its adapters and
records the adapter on the request (`request.state.lora_name`), where `request_policy` picks it up
for the engine request; `model_cards` lists the base model and one card per adapter.
"""

from __future__ import annotations

from http import HTTPStatus

from starlette.requests import Request

from seekd.errors import APIError

ADAPTER_SEPARATOR = ":"


def split_model_name(model: str, served_model_name: str) -> tuple[str, str | None]:
    """("base", "adapter") of "base:adapter", ("base", None) of the base name. The base name is
    matched whole first, so a base name that holds ':' itself (deepseek-r1:7b) still works."""
    if model == served_model_name:
        return model, None
    base, sep, adapter = model.rpartition(ADAPTER_SEPARATOR)
    if sep and base == served_model_name and adapter:
        return base, adapter
    return model, None


def adapter_model_name(served_model_name: str, adapter: str) -> str:
    return f"{served_model_name}{ADAPTER_SEPARATOR}{adapter}"


def select_model(model: str | None, served_model_name: str, adapters: dict[str, str] | None, request: Request) -> None:
    """Check `model` and remember its adapter on the request; APIError 404 for an unknown model
    or adapter."""
    request.state.lora_name = None
    if model is None or model == served_model_name:
        return
    base, adapter = split_model_name(model, served_model_name)
    if adapter is None:
        raise APIError(
            HTTPStatus.NOT_FOUND,
            f"The model `{model}` does not exist; this server serves `{served_model_name}`.",
            param="model",
            code="model_not_found",
        )
    if adapter not in (adapters or {}):
        loaded = ", ".join(adapter_model_name(base, a) for a in sorted(adapters or {})) or "none"
        raise APIError(
            HTTPStatus.NOT_FOUND,
            f"The model `{model}` does not exist: no LoRA adapter `{adapter}` is loaded (adapters: {loaded}).",
            param="model",
            code="model_not_found",
        )
    request.state.lora_name = adapter


def selected_adapter(request: Request) -> str | None:
    """The adapter `select_model` found in the request's model name (None = the base model)."""
    return getattr(request.state, "lora_name", None)
