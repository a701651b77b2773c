"""OpenAI tool calling for chat, the request side: checks, the mode, and the history handed to the
prompt format (the generated text becomes `tool_calls` in `seekd.server.tool_output`).

- `tool_choice` "auto" (the default with tools): the model's own markup is parsed (the format comes
  from `seekd.text.tool_parsers`); "none": the tools are not shown to the model and nothing is parsed.
- "required" and a named function are enforced by grammar: the output is constrained to JSON (the
  named function's arguments, or an array of {name, arguments} over the tools) and that JSON becomes
  the calls directly, with no markup in between, streamed as it is written
  (`seekd.server.forced_calls`). Such output is all answer: there is no reasoning to split off,
  since the grammar allows JSON from the first token on.
- `parallel_tool_calls: false`: at most one call (the grammar's maxItems; with "auto", later calls
  are dropped).
- The legacy `functions`/`function_call` form is read as tools (`seekd.server.legacy_functions`).
- History: assistant `tool_calls` arguments stay the JSON text the client sent, but templates that
  apply `tojson` to them (written for argument objects, as Qwen2.5's) get the object (see
  ToolArguments); `tool` messages must answer a call of the assistant message before them.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, replace
from typing import Any

from seekd.sampling_params import StructuredOutputParams
from seekd.server.errors import invalid_request
from seekd.server.legacy_functions import tool_fields
from seekd.server.protocol import ChatCompletionRequest
from seekd.server.response_format import structured_from_schema
from seekd.text.chat_template import ToolArguments

_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
EMPTY_PARAMETERS: dict[str, Any] = {"type": "object", "properties": {}}


@dataclass
class ToolSetup:
    """What the request's tool fields decided."""

    mode: str  # none | auto | required | named
    tools: list[dict[str, Any]] | None  # for the prompt
    parallel: bool = True
    named: str | None = None
    structured: StructuredOutputParams | None = None
    tool_format: str | None = None  # the parser's key, for "auto"
    legacy: bool = False  # asked in the legacy functions form: answered as `function_call`


def _is_named(choice: Any) -> bool:
    """`tool_choice` of the form {"type": "function", "function": {"name": ...}}."""
    return isinstance(choice, dict) and choice.get("type") == "function" and isinstance(choice.get("function"), dict)


def _check_tools(tools: list[dict[str, Any]], choice: Any) -> tuple[dict[str, dict[str, Any]], set[str]]:
    """Each tool's parameters schema by name, and the names of the tools marked `strict`; a 400 on
    the first bad entry. A strict schema the choice enforces must compile whole; the others are
    compiled leniently (keywords the grammar cannot enforce are ignored, as OpenAI enforces no
    schema that is not strict), and one only shown to the model must just be a schema."""
    schemas: dict[str, dict[str, Any]] = {}
    strict: set[str] = set()
    for i, tool in enumerate(tools):
        param = f"tools.{i}"
        if tool.get("type", "function") != "function" or not isinstance(tool.get("function"), dict):
            raise invalid_request(
                f"{param}: only tools of type 'function' with a 'function' object are supported", param=param
            )
        function = tool["function"]
        name = function.get("name")
        if not isinstance(name, str) or not _NAME.match(name):
            raise invalid_request(
                f"{param}.function.name must be 1-64 letters, digits, '_' or '-', got {name!r}",
                param=f"{param}.function.name",
            )
        if name in schemas:
            raise invalid_request(f"tool name {name!r} is defined twice", param=f"{param}.function.name")
        parameters = function.get("parameters", EMPTY_PARAMETERS)
        if not isinstance(parameters, dict):
            raise invalid_request(
                f"{param}.function.parameters must be a JSON schema object", param=f"{param}.function.parameters"
            )
        enforced = choice == "required" or (_is_named(choice) and choice["function"].get("name") == name)
        if function.get("strict") is True:
            strict.add(name)
        structured_from_schema(
            parameters, param=f"{param}.function.parameters", lenient=not (enforced and name in strict)
        )
        schemas[name] = parameters
    return schemas, strict


def tool_setup(req: ChatCompletionRequest, tool_format: str) -> ToolSetup:
    """Checks tools, tool_choice and parallel_tool_calls (400s), and decides the mode."""
    tools, choice, parallel_tool_calls, legacy = tool_fields(req)
    setup = _tool_setup(tools, choice, parallel_tool_calls, req.response_format, tool_format)
    return replace(setup, legacy=True) if legacy else setup


def _tool_setup(
    tools: list[dict[str, Any]] | None,
    choice: Any,
    parallel_tool_calls: bool | None,
    response_format: dict[str, Any] | None,
    tool_format: str,
) -> ToolSetup:
    if not tools:
        if choice not in (None, "none"):
            raise invalid_request("tool_choice needs tools: the request has none", param="tool_choice")
        return ToolSetup("none", None)
    schemas, strict = _check_tools(tools, choice)
    if choice not in (None, "auto", "none") and (response_format or {}).get("type") not in (None, "text"):
        raise invalid_request(
            "tool_choice 'required' or a named function cannot be combined with a "
            "response_format: both constrain the whole output",
            param="tool_choice",
        )
    parallel = parallel_tool_calls is not False
    if choice in (None, "auto"):
        return ToolSetup("auto", tools, parallel, tool_format=tool_format)
    if choice == "none":
        return ToolSetup("none", None, parallel)
    if choice == "required":
        items = {
            "anyOf": [
                {
                    "type": "object",
                    "properties": {"name": {"const": name}, "arguments": _own_resource(name, schema)},
                    "required": ["name", "arguments"],
                    "additionalProperties": False,
                }
                for name, schema in schemas.items()
            ]
        }
        schema: dict[str, Any] = {"type": "array", "items": items, "minItems": 1}
        if not parallel:
            schema["maxItems"] = 1
        return ToolSetup(
            "required",
            tools,
            parallel,
            structured=structured_from_schema(schema, param="tool_choice", lenient=not strict.issuperset(schemas)),
        )
    if _is_named(choice):
        name = choice["function"].get("name")
        if name not in schemas:
            raise invalid_request(
                f"tool_choice names function {name!r}, which is not among the tools ({', '.join(schemas)})",
                param="tool_choice",
            )
        return ToolSetup(
            "named",
            tools,
            parallel,
            named=name,
            structured=structured_from_schema(schemas[name], param="tool_choice", lenient=name not in strict),
        )
    raise invalid_request(
        'tool_choice must be "none", "auto", "required" or {"type": "function", "function": {"name": ...}}',
        param="tool_choice",
    )


def _own_resource(name: str, schema: dict[str, Any]) -> dict[str, Any]:
    """A tool's schema, embedded in the "required" array schema, as a resource of its own (`$id`):
    its refs (`#/$defs/...`, `#`) then resolve against the tool's schema, where they were written,
    not against the wrapper. A schema with its own `$id` is one already."""
    return schema if "$id" in schema else {**schema, "$id": f"urn:seekd:tool:{name}"}


def prepare_history(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Checks assistant tool calls and tool results (400s) and wraps call arguments for templates."""
    pending: set[str] = set()
    out = []
    for i, msg in enumerate(messages):
        role = msg.get("role")
        if role == "assistant" and msg.get("tool_calls") is not None:
            if not isinstance(msg["tool_calls"], list):
                raise invalid_request(
                    f"message {i}: tool_calls must be a list of tool calls", param=f"messages.{i}.tool_calls"
                )
            msg = {**msg, "tool_calls": [_history_call(i, j, call) for j, call in enumerate(msg["tool_calls"])]}
            pending = {call["id"] for call in msg["tool_calls"]}
        elif role == "tool":
            call_id = msg.get("tool_call_id")
            if not isinstance(call_id, str) or not call_id:
                raise invalid_request(
                    f"message {i}: a 'tool' message needs the 'tool_call_id' it answers",
                    param=f"messages.{i}.tool_call_id",
                )
            if call_id not in pending:
                raise invalid_request(
                    f"message {i}: tool_call_id {call_id!r} answers no tool call of the assistant message before it",
                    param=f"messages.{i}.tool_call_id",
                )
        elif role != "assistant":
            pending = set()
        out.append(msg)
    return out


def _history_call(i: int, j: int, call: Any) -> dict[str, Any]:
    param = f"messages.{i}.tool_calls.{j}"
    function = call.get("function") if isinstance(call, dict) else None
    if not isinstance(function, dict) or not isinstance(function.get("name"), str):
        raise invalid_request(f"{param}: a tool call needs a 'function' with a 'name'", param=param)
    if not isinstance(call.get("id"), str) or not call["id"]:
        raise invalid_request(f"{param}: a tool call needs an 'id'", param=f"{param}.id")
    arguments = function.get("arguments", "{}")
    if not isinstance(arguments, str):
        raise invalid_request(
            f"{param}.function.arguments must be a string of JSON", param=f"{param}.function.arguments"
        )
    try:
        value = json.loads(arguments or "{}")
    except json.JSONDecodeError as e:
        raise invalid_request(
            f"{param}.function.arguments is not valid JSON: {e}", param=f"{param}.function.arguments"
        ) from e
    return {
        **call,
        "type": call.get("type", "function"),
        "function": {**function, "arguments": ToolArguments(arguments, value)},
    }
