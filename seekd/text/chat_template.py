"""Renders a model's Jinja chat template in a sandbox (templates come from model folders)."""

from __future__ import annotations

import datetime
import json
from functools import lru_cache
from typing import Any

import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment


class ChatTemplateError(ValueError):
    """The template rejected the conversation (e.g. roles out of order) or failed to render."""


def _raise_exception(message: str) -> None:
    raise ChatTemplateError(message)


class ToolArguments(str):
    """A past tool call's arguments: the client's JSON text, which templates that concatenate it
    (DeepSeek's) get back unchanged, carrying the parsed value for templates that `tojson` it
    (Qwen2.5's, written for argument objects)."""

    value: Any

    def __new__(cls, text: str, value: Any) -> ToolArguments:
        out = super().__new__(cls, text)
        out.value = value
        return out


def _tojson(value: Any, indent: int | None = None, ensure_ascii: bool = False, **_: Any) -> str:
    if isinstance(value, ToolArguments):
        value = value.value
    return json.dumps(value, indent=indent, ensure_ascii=ensure_ascii)


@lru_cache(maxsize=16)
def _compile(source: str) -> jinja2.Template:
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, autoescape=False)
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.datetime.now().strftime(fmt)
    return env.from_string(source)


def render_chat_template(
    template: str,
    messages: list[dict[str, Any]],
    *,
    add_generation_prompt: bool = True,
    special_tokens: dict[str, str | None] | None = None,
    tools: list[dict[str, Any]] | None = None,
    **kwargs: Any,
) -> str:
    try:
        compiled = _compile(template)
    except jinja2.TemplateSyntaxError as e:
        raise ChatTemplateError(f"the model's chat template does not parse: {e}") from e
    try:
        return compiled.render(
            messages=messages,
            add_generation_prompt=add_generation_prompt,
            tools=tools,
            **(special_tokens or {}),
            **kwargs,
        )
    except ChatTemplateError:
        raise
    except jinja2.TemplateError as e:
        raise ChatTemplateError(f"the chat template failed on this conversation: {e}") from e
