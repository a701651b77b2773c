"""Chat prompts for the DeepSeek models that ship a Python encoder instead of a Jinja template
(V3.2, V4): picks the encoder by `model_type` and turns API-level options into encoder arguments.

Options (request fields or `chat_template_kwargs`, named as vLLM and DeepSeek's API name them):
- `thinking` (bool, or DeepSeek's {"type": "enabled" | "disabled"}) / `enable_thinking`: thinking mode;
- `reasoning_effort`: "none" means chat mode; any other level asks for thinking unless `thinking` says
  otherwise. V4 knows two levels: "max" (also "xhigh") adds its maximum-effort instruction, the rest
  is "high". V3.2 has no levels.
- `drop_thinking` (default true): earlier turns' reasoning is left out of the prompt.
Without any of them the prompt is in chat mode, as vLLM does for these models.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from seekd.text import deepseek_encoding, deepseek_v4_encoding

REASONING_EFFORTS = ("none", "minimal", "low", "medium", "high", "xhigh", "max")
ENCODER_MODEL_TYPES = ("deepseek_v32", "deepseek_v4")

Encoder = Callable[..., str]


def has_encoder(model_type: str | None) -> bool:
    return model_type in ENCODER_MODEL_TYPES


def thinking_requested(thinking: Any, enable_thinking: Any, reasoning_effort: str | None) -> bool:
    """The thinking mode the request asks for (see the module docstring)."""
    if isinstance(thinking, dict):
        kind = thinking.get("type")
        if kind not in ("enabled", "disabled"):
            raise ValueError(f'thinking.type must be "enabled" or "disabled", not {kind!r}')
        thinking = kind == "enabled"
    if thinking is None:
        thinking = enable_thinking
    if thinking is None:
        return reasoning_effort not in (None, "none")
    if not isinstance(thinking, bool):
        raise ValueError(f"thinking must be true or false, not {thinking!r}")
    return thinking and reasoning_effort != "none"


def _with_tools(messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None) -> list[dict[str, Any]]:
    """Request-level `tools` go where DeepSeek's encoders read them: on the first system message
    (one is added at the start when the conversation has none)."""
    if not tools:
        return messages
    messages = list(messages)
    for i, msg in enumerate(messages):
        if msg.get("role") == "system":
            messages[i] = {**msg, "tools": tools}
            return messages
    return [{"role": "system", "content": "", "tools": tools}, *messages]


def encode_chat_prompt(
    model_type: str,
    messages: list[dict[str, Any]],
    tools: list[dict[str, Any]] | None = None,
    **options: Any,
) -> str:
    """The prompt text (BOS included) for `messages`; a ValueError names what was wrong."""
    effort = options.get("reasoning_effort")
    if effort is not None and effort not in REASONING_EFFORTS:
        raise ValueError(f"reasoning_effort must be one of {', '.join(REASONING_EFFORTS)}, not {effort!r}")
    thinking = thinking_requested(options.get("thinking"), options.get("enable_thinking"), effort)
    mode = "thinking" if thinking else "chat"
    messages = _with_tools(messages, tools)
    if model_type == "deepseek_v4":
        v4_effort = None
        if thinking and effort not in (None, "none"):
            v4_effort = "max" if effort in ("max", "xhigh") else "high"
        return deepseek_v4_encoding.encode_messages(
            messages, mode, reasoning_effort=v4_effort, drop_thinking=bool(options.get("drop_thinking", True))
        )
    if model_type == "deepseek_v32":
        return deepseek_encoding.encode_messages(messages, mode)
    raise ValueError(f"no DeepSeek prompt encoder for model_type {model_type!r}")
