"""OpenAI's legacy function-calling form (`functions`, `function_call`, `role: "function"`), read as
tools so that older clients get calls instead of having the fields silently ignored.

The legacy form is one call at most: `functions` become tools with parallel calls off,
`function_call` ("none", "auto" or {"name": ...}) becomes `tool_choice`, and the answer carries
`message.function_call` (streamed: `delta.function_call`) with finish_reason "function_call".
In the history, an assistant `function_call` becomes a tool call with an id made up here, and the
`function` message after it the tool result answering that id.
"""

from __future__ import annotations

from typing import Any

from seekd.server.errors import invalid_request
from seekd.server.protocol import ChatChoice, ChatChunkChoice, ChatCompletionRequest, DeltaFunctionCall, FunctionCall


def tool_fields(req: ChatCompletionRequest) -> tuple[list[dict[str, Any]] | None, Any, bool | None, bool]:
    """(tools, tool_choice, parallel_tool_calls, legacy) of the request, from whichever form it used."""
    if req.functions is None:
        if req.function_call is not None:
            raise invalid_request("function_call needs functions: the request has none", param="function_call")
        return req.tools, req.tool_choice, req.parallel_tool_calls, False
    if req.tools is not None or req.tool_choice is not None:
        raise invalid_request(
            "use either tools/tool_choice or the legacy functions/function_call, not both", param="functions"
        )
    if not req.functions:
        raise invalid_request("functions must not be empty", param="functions")
    tools = [{"type": "function", "function": function} for function in req.functions]
    choice = req.function_call
    if isinstance(choice, dict):
        if not isinstance(choice.get("name"), str):
            raise invalid_request('function_call must be "none", "auto" or {"name": ...}', param="function_call")
        choice = {"type": "function", "function": {"name": choice["name"]}}
    elif choice not in (None, "none", "auto"):
        raise invalid_request('function_call must be "none", "auto" or {"name": ...}', param="function_call")
    return tools, choice, False, True


def legacy_history(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Assistant `function_call`s and `function` results rewritten as tool calls and tool results."""
    out, pending = [], None
    for i, msg in enumerate(messages):
        role = msg.get("role")
        if role == "assistant" and msg.get("function_call") is not None:
            call = msg["function_call"]
            if msg.get("tool_calls") is not None:
                raise invalid_request(
                    f"message {i}: an assistant message has either tool_calls or the legacy function_call, not both",
                    param=f"messages.{i}.function_call",
                )
            if not isinstance(call, dict):
                raise invalid_request(
                    f"message {i}: function_call must be an object with 'name' and 'arguments'",
                    param=f"messages.{i}.function_call",
                )
            pending = f"call_legacy_{i}"
            msg = {k: v for k, v in msg.items() if k != "function_call"}
            msg["tool_calls"] = [{"id": pending, "type": "function", "function": call}]
        elif role == "function":
            if pending is None:
                raise invalid_request(
                    f"message {i}: a 'function' message must answer the function_call of the "
                    "assistant message before it",
                    param=f"messages.{i}.role",
                )
            msg = {**msg, "role": "tool", "tool_call_id": pending}
        elif role != "assistant":
            pending = None
        out.append(msg)
    return out


def as_function_call(choice: ChatChoice | ChatChunkChoice) -> None:
    """In place: the (single) tool call becomes `function_call`, "tool_calls" becomes "function_call"."""
    if choice.finish_reason == "tool_calls":
        choice.finish_reason = "function_call"
    if isinstance(choice, ChatChoice):
        calls, choice.message.tool_calls = choice.message.tool_calls, None
        if calls:
            choice.message.function_call = FunctionCall(
                name=calls[0].function.name, arguments=calls[0].function.arguments
            )
        return
    calls, choice.delta.tool_calls = choice.delta.tool_calls, None
    if calls:
        piece = calls[0].function
        choice.delta.function_call = DeltaFunctionCall(name=piece.name, arguments=piece.arguments)
