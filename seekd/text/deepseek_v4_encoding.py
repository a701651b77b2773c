"""DeepSeek-V4 prompt encoding: OpenAI-style messages -> the exact prompt text V4 was trained on.

V4 ships a Python encoder like V3.2 (`encoding/encoding_dsv4.py` in the model repos); this is our
implementation of its format. What changed from V3.2 (seekd/text/deepseek_encoding.py):
- there is no tool role: tool results become a user turn of `<tool_result>…</tool_result>` blocks
  (in the order of the assistant's calls, matched by `tool_call_id`), and a user message that follows
  them joins the same turn; consecutive user messages are one turn, joined by a blank line;
- a user turn ends with `<｜Assistant｜>` plus `<think>` (thinking mode, the last user turn) or
  `</think>`; an assistant message never repeats the `<｜Assistant｜>` that its user turn wrote;
- tool calls are a `<｜DSML｜tool_calls>` block (was `function_calls`) and the tools section has new text;
- `reasoning_effort="max"` in thinking mode puts an extra instruction at the very start;
- earlier turns' reasoning is dropped in thinking mode, unless the conversation declares tools: then
  every assistant message keeps its reasoning (agent loops replay them); developer messages of earlier
  turns are dropped with it;
- a `latest_reminder` role (`<｜latest_reminder｜>` + text).
"""

from __future__ import annotations

import copy
import json
from typing import Any

from seekd.text.deepseek_encoding import BOS, DSML, EOS, RESPONSE_FORMAT_PROMPT, THINK_END, THINK_START, to_json

USER = "<｜User｜>"
ASSISTANT = "<｜Assistant｜>"
LATEST_REMINDER = "<｜latest_reminder｜>"
THINKING_MODES = ("chat", "thinking")
REASONING_EFFORTS = (None, "high", "max")

Message = dict[str, Any]

# Word for word as the model was trained with them.
REASONING_EFFORT_MAX = (
    "Reasoning Effort: Absolute maximum with no shortcuts permitted.\n"
    "You MUST be very thorough in your thinking and comprehensively decompose the problem to resolve the root "
    "cause, rigorously stress-testing your logic against all potential paths, edge cases, and adversarial "
    "scenarios.\n"
    "Explicitly write out your entire deliberation process, documenting every intermediate step, considered "
    "alternative, and rejected hypothesis to ensure absolutely no assumption is left unchecked.\n\n"
)

TOOLS_PROMPT = f"""## Tools

You have access to a set of tools to help answer the user's question. You can invoke tools by writing a "<{DSML}tool_calls>" block like the following:

<{DSML}tool_calls>
<{DSML}invoke name="$TOOL_NAME">
<{DSML}parameter name="$PARAMETER_NAME" string="true|false">$PARAMETER_VALUE</{DSML}parameter>
...
</{DSML}invoke>
<{DSML}invoke name="$TOOL_NAME2">
...
</{DSML}invoke>
</{DSML}tool_calls>

String parameters should be specified as is and set `string="true"`. For all other types (numbers, booleans, arrays, objects), pass the value in JSON format and set `string="false"`.

If thinking_mode is enabled (triggered by {THINK_START}), you MUST output your complete reasoning inside {THINK_START}...{THINK_END} BEFORE any tool calls or final response.

Otherwise, output directly after {THINK_END} with tool calls or final response.

### Available Tool Schemas

{{schemas}}

You MUST strictly follow the above defined tool name and parameter schemas to invoke tool calls.
"""  # noqa: E501


def render_tools(tools: list[Message]) -> str:
    """OpenAI `tools` ([{"type": "function", "function": {...}}]) as V4's tools section."""
    return TOOLS_PROMPT.replace("{schemas}", "\n".join(to_json(tool["function"]) for tool in tools))


def render_tool_call(tool_call: Message) -> str:
    """One OpenAI tool call in DSML. Arguments that are not a JSON object are passed whole, as V4's
    encoder does, under the parameter name `arguments`."""
    function = tool_call["function"]
    raw = function.get("arguments") or "{}"
    try:
        arguments = json.loads(raw) if isinstance(raw, str) else raw
    except json.JSONDecodeError:
        arguments = {"arguments": raw}
    if not isinstance(arguments, dict):
        arguments = {"arguments": raw}
    params = [
        f'<{DSML}parameter name="{key}" string="{"true" if isinstance(value, str) else "false"}">'
        f"{value if isinstance(value, str) else to_json(value)}</{DSML}parameter>"
        for key, value in arguments.items()
    ]
    return f'<{DSML}invoke name="{function["name"]}">\n' + "\n".join(params) + f"\n</{DSML}invoke>"


def _text(content: Any) -> str:
    return "" if content is None else str(content)


def merge_tool_messages(messages: list[Message]) -> list[Message]:
    """Tool results (and a user message right after them) become one user turn of content blocks;
    consecutive user messages merge the same way."""
    merged: list[Message] = []
    for msg in messages:
        role = msg.get("role")
        previous = merged[-1] if merged and merged[-1].get("role") == "user" and "blocks" in merged[-1] else None
        if role == "tool":
            block = {"type": "tool_result", "id": msg.get("tool_call_id") or "", "content": _text(msg.get("content"))}
            if previous is not None:
                previous["blocks"].append(block)
            else:
                merged.append({"role": "user", "blocks": [block]})
        elif role == "user":
            block = {"type": "text", "text": _text(msg.get("content"))}
            if previous is not None:
                previous["blocks"].append(block)
            else:
                merged.append({"role": "user", "content": msg.get("content"), "blocks": [block]})
        else:
            merged.append(copy.copy(msg))
    return merged


def sort_tool_results(messages: list[Message]) -> list[Message]:
    """Within a turn, tool results follow the order of the calls they answer (by tool_call_id)."""
    order: dict[str, int] = {}
    for msg in messages:
        if msg.get("role") == "assistant" and msg.get("tool_calls"):
            order = {call["id"]: i for i, call in enumerate(msg["tool_calls"]) if call.get("id")}
        elif msg.get("role") == "user" and order and "blocks" in msg:
            results = sorted(
                (b for b in msg["blocks"] if b["type"] == "tool_result"), key=lambda b: order.get(b["id"], 0)
            )
            it = iter(results)
            msg["blocks"] = [next(it) if b["type"] == "tool_result" else b for b in msg["blocks"]]
    return messages


def last_user_index(messages: list[Message]) -> int:
    return max((i for i, m in enumerate(messages) if m.get("role") in ("user", "developer")), default=-1)


def drop_earlier_reasoning(messages: list[Message]) -> list[Message]:
    """Before the last user turn: assistants lose their reasoning, developer messages go."""
    last_user = last_user_index(messages)
    kept = []
    for i, msg in enumerate(messages):
        if i >= last_user or msg.get("role") in ("user", "system", "latest_reminder"):
            kept.append(msg)
        elif msg.get("role") == "assistant":
            kept.append({k: v for k, v in msg.items() if k != "reasoning_content"})
    return kept


def _instructions(msg: Message) -> str:
    out = ""
    if msg.get("tools"):
        out += "\n\n" + render_tools(msg["tools"])
    if msg.get("response_format"):
        out += "\n\n" + RESPONSE_FORMAT_PROMPT.format(schema=to_json(msg["response_format"]))
    return out


def _render_user(msg: Message) -> str:
    blocks = msg.get("blocks")
    if not blocks:
        return USER + _text(msg.get("content"))
    parts = [b["text"] if b["type"] == "text" else f"<tool_result>{b['content']}</tool_result>" for b in blocks]
    return USER + "\n\n".join(parts)


def _render_assistant(index: int, msg: Message, thinking: bool, keep_reasoning: bool, last_user: int) -> str:
    reasoning = ""
    if thinking and (keep_reasoning or index > last_user):
        reasoning = _text(msg.get("reasoning_content") or msg.get("reasoning")) + THINK_END
    calls = ""
    if msg.get("tool_calls"):
        invokes = "\n".join(render_tool_call(call) for call in msg["tool_calls"])
        calls = f"\n\n<{DSML}tool_calls>\n{invokes}\n</{DSML}tool_calls>"
    return reasoning + _text(msg.get("content")) + calls + EOS


def render_message(
    index: int,
    messages: list[Message],
    thinking: bool,
    keep_reasoning: bool,
    reasoning_effort: str | None,
    last_user: int | None = None,
) -> str:
    """`last_user`: `last_user_index(messages)` when the caller has it (looking it up per message made
    encoding quadratic in the number of messages)."""
    msg, role = messages[index], messages[index].get("role")
    last_user = last_user_index(messages) if last_user is None else last_user
    prompt = REASONING_EFFORT_MAX if index == 0 and thinking and reasoning_effort == "max" else ""
    if role == "system":
        prompt += _text(msg.get("content")) + _instructions(msg)
    elif role == "developer":
        if not msg.get("content"):
            raise ValueError(f"developer message {index} has no content")
        prompt += USER + _text(msg["content"]) + _instructions(msg)
    elif role == "user":
        prompt += _render_user(msg)
    elif role == "latest_reminder":
        prompt += LATEST_REMINDER + _text(msg.get("content"))
    elif role == "assistant":
        prompt += _render_assistant(index, msg, thinking, keep_reasoning, last_user)
    else:
        raise ValueError(
            f"message {index} has role {role!r}; expected system, developer, user, assistant, tool or latest_reminder"
        )
    following = messages[index + 1].get("role") if index + 1 < len(messages) else None
    if role in ("user", "developer") and following in (None, "assistant", "latest_reminder"):
        open_think = thinking and (keep_reasoning or index >= last_user)
        prompt += ASSISTANT + (THINK_START if open_think else THINK_END)
    return prompt


def encode_messages(
    messages: list[Message],
    thinking_mode: str = "chat",
    reasoning_effort: str | None = None,
    context: list[Message] | None = None,
    drop_thinking: bool = True,
    add_bos: bool = True,
) -> str:
    """The prompt for `messages`. `context`: earlier messages already encoded (the cached part of an
    agent loop): only `messages` are rendered, turns are judged over context + messages, no BOS."""
    if thinking_mode not in THINKING_MODES:
        raise ValueError(f"thinking_mode must be one of {', '.join(THINKING_MODES)}, not {thinking_mode!r}")
    if reasoning_effort not in REASONING_EFFORTS:
        raise ValueError(f"reasoning_effort must be 'high', 'max' or None for DeepSeek-V4, not {reasoning_effort!r}")
    context = sort_tool_results(merge_tool_messages(context or []))
    full = sort_tool_results(context + merge_tool_messages(messages))
    thinking = thinking_mode == "thinking"
    keep_reasoning = not drop_thinking or any(m.get("tools") for m in full)
    first = len(context)
    if thinking and not keep_reasoning:
        first = len(drop_earlier_reasoning(context)) if context else 0
        full = drop_earlier_reasoning(full)
    prompt = BOS if add_bos and not context else ""
    last_user = last_user_index(full)
    return prompt + "".join(
        render_message(i, full, thinking, keep_reasoning, reasoning_effort, last_user) for i in range(first, len(full))
    )
