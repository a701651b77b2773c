"""DeepSeek-V3.2 prompt encoding: OpenAI-style messages -> the exact prompt text the model was trained on.

DeepSeek ships a Python encoder for V3.2 instead of a Jinja chat template; this is our implementation
of the same format:
- a turn is `<｜User｜>{content}<｜Assistant｜>` followed by `<think>` when the model should reason
  (thinking mode, the last user turn) and `</think>` otherwise (chat mode, or an earlier turn);
- reasoning is shown to the model only after the last user message (the current turn, across its
  tool calls); earlier turns' reasoning is dropped, which keeps long chats short and prefix-cacheable;
- tool calls are written in DSML (`<｜DSML｜function_calls>` / `invoke` / `parameter` tags), tool
  results inside `<function_results>`, and the tool schemas go into the system (or developer) prompt.
"""

from __future__ import annotations

import json
from typing import Any

BOS = "<｜begin▁of▁sentence｜>"
EOS = "<｜end▁of▁sentence｜>"
THINK_START = "<think>"
THINK_END = "</think>"
DSML = "｜DSML｜"
THINKING_MODES = ("chat", "thinking")

Message = dict[str, Any]

# The tool instructions, word for word as the model was trained with them.
TOOLS_PROMPT = f"""## Tools
You have access to a set of tools you can use to answer the user's question.
You can invoke functions by writing a "<{DSML}function_calls>" block like the following as part of your reply to the user:
<{DSML}function_calls>
<{DSML}invoke name="$FUNCTION_NAME">
<{DSML}parameter name="$PARAMETER_NAME" string="true|false">$PARAMETER_VALUE</{DSML}parameter>
...
</{DSML}invoke>
<{DSML}invoke name="$FUNCTION_NAME2">
...
</{DSML}invoke>
</{DSML}function_calls>
String and scalar parameters should be specified as is without any escaping or quotes, while lists and objects should use JSON format. The "string" attribute should be set to "true" for string type parameters and "false" for other types (numbers, booleans, arrays, objects).
If the thinking_mode is enabled, then after function results you should strongly consider outputting a thinking block. Here is an example:
<{DSML}function_calls>
...
</{DSML}function_calls>
<function_results>
...
</function_results>
{THINK_START}...thinking about results{THINK_END}
Here are the functions available in JSONSchema format:
<functions>
{{schemas}}
</functions>
"""  # noqa: E501
RESPONSE_FORMAT_PROMPT = "## Response Format:\n\nYou MUST strictly adhere to the following schema to reply:\n{schema}"


def to_json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)


def render_tools(tools: list[Message]) -> str:
    """OpenAI `tools` ([{"type": "function", "function": {...}}]) as the tools section."""
    return TOOLS_PROMPT.replace("{schemas}", "\n".join(to_json(tool["function"]) for tool in tools))


def render_tool_call(tool_call: Message) -> str:
    """One OpenAI tool call (arguments as a JSON string) in DSML: strings as is, other values as JSON."""
    function = tool_call["function"]
    params = [
        f'<{DSML}parameter name="{key}" string="{"true" if isinstance(value, str) else "false"}">'
        f"{value if isinstance(value, str) else to_json(value)}</{DSML}parameter>"
        for key, value in json.loads(function["arguments"] or "{}").items()
    ]
    return f'<{DSML}invoke name="{function["name"]}">\n' + "\n".join(params) + f"\n</{DSML}invoke>"


def _instructions(msg: Message) -> str:
    """The tools and response-format sections a system or developer message carries."""
    out = ""
    if msg.get("tools"):
        out += "\n\n" + render_tools(msg["tools"])
    if msg.get("response_format"):
        out += "\n\n" + RESPONSE_FORMAT_PROMPT.format(schema=to_json(msg["response_format"]))
    return out


def _last_user_index(messages: list[Message]) -> int:
    return max((i for i, m in enumerate(messages) if m.get("role") in ("user", "developer")), default=-1)


def _tool_caller(index: int, messages: list[Message]) -> int:
    """The message before the run of tool results that message `index` ends."""
    caller = index - 1
    while caller >= 0 and messages[caller].get("role") == "tool":
        caller -= 1
    return caller


def _render_tool_result(
    index: int, messages: list[Message], thinking: bool, last_user: int, caller: int | None = None
) -> str:
    """Results of one assistant message's calls are grouped, in call order, in one <function_results>.
    `caller`: `_tool_caller(index, messages)` when the caller of this function has it (walking back
    from every result made a run of k results cost k^2)."""
    caller = _tool_caller(index, messages) if caller is None else caller
    calls = messages[caller].get("tool_calls") if caller >= 0 and messages[caller].get("role") == "assistant" else None
    order = index - caller
    if not calls or order > len(calls):
        raise ValueError(f"message {index} is a tool result, but no assistant tool call before it is waiting for one")
    out = "\n\n<function_results>" if order == 1 else ""
    out += f"\n<result>{messages[index].get('content') or ''}</result>"
    if order == len(calls):
        out += "\n</function_results>\n\n" + (THINK_START if thinking and index >= last_user else THINK_END)
    return out


def render_message(
    index: int, messages: list[Message], thinking: bool, last_user: int | None = None, tool_caller: int | None = None
) -> str:
    """`last_user` and `tool_caller` (for a tool result): `_last_user_index(messages)` and
    `_tool_caller(index, messages)` when the caller has them (looking them up per message made
    encoding quadratic in the number of messages)."""
    msg = messages[index]
    role = msg.get("role")
    content = msg.get("content") or ""
    last_user = _last_user_index(messages) if last_user is None else last_user
    if role == "system":
        return content + _instructions(msg)
    if role in ("user", "developer"):
        if role == "developer":
            if not content:
                raise ValueError(f"developer message {index} has no content")
            content = _instructions(msg) + f"\n\n# The user's message is: {content}"
        think = THINK_START if thinking and index == last_user else THINK_END
        return f"<｜User｜>{content}<｜Assistant｜>{think}"
    if role == "tool":
        return _render_tool_result(index, messages, thinking, last_user, tool_caller)
    if role == "assistant":
        reasoning = ""
        if thinking and index > last_user:  # the current turn: its reasoning stays visible
            text = msg.get("reasoning_content") or msg.get("reasoning")
            if not text and not msg.get("tool_calls"):
                raise ValueError(f"thinking mode: assistant message {index} of the current turn has no reasoning")
            reasoning = (text or "") + THINK_END
        calls = ""
        if msg.get("tool_calls"):
            invokes = "\n".join(render_tool_call(call) for call in msg["tool_calls"])
            calls = f"\n\n<{DSML}function_calls>\n{invokes}\n</{DSML}function_calls>"
        return reasoning + content + calls + EOS
    raise ValueError(f"message {index} has role {role!r}; expected system, developer, user, assistant or tool")


def encode_messages(
    messages: list[Message], thinking_mode: str = "chat", context: list[Message] | None = None, add_bos: bool = True
) -> str:
    """The prompt for `messages`. `context`: earlier messages already encoded (e.g. the cached part of an
    agent loop): only `messages` are rendered, but roles and turns are judged over context + messages,
    and no BOS is added."""
    if thinking_mode not in THINKING_MODES:
        raise ValueError(f"thinking_mode must be one of {', '.join(THINKING_MODES)}, not {thinking_mode!r}")
    context = context or []
    full = context + messages
    prompt = BOS if add_bos and not context else ""
    thinking = thinking_mode == "thinking"
    last_user = _last_user_index(full)
    callers = []  # per message: the message before the run of tool results it belongs to
    for i, msg in enumerate(full):
        callers.append(
            callers[i - 1] if i and msg.get("role") == "tool" and full[i - 1].get("role") == "tool" else i - 1
        )
    return prompt + "".join(
        render_message(i, full, thinking, last_user, callers[i]) for i in range(len(context), len(full))
    )
