"""DeepSeek-V3.2 prompt encoding: thinking and chat modes, dropped reasoning, tools in DSML."""

from __future__ import annotations

import json

import pytest

from seekd.text.deepseek_encoding import BOS, EOS, encode_messages, render_tools

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather of a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer"}}},
    },
}


def test_single_turn_ends_with_think_in_thinking_mode_and_end_think_in_chat_mode():
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}]
    assert encode_messages(messages, "chat") == f"{BOS}Be brief.<｜User｜>hi<｜Assistant｜></think>"
    assert encode_messages(messages, "thinking") == f"{BOS}Be brief.<｜User｜>hi<｜Assistant｜><think>"


def test_earlier_turns_lose_their_reasoning():
    """DeepSeek's published example: the previous answer stays, its reasoning does not."""
    messages = [
        {"role": "user", "content": "hello"},
        {"role": "assistant", "content": "Hello! I am DeepSeek.", "reasoning_content": "thinking..."},
        {"role": "user", "content": "1+1=?"},
    ]
    expected = (
        f"{BOS}<｜User｜>hello<｜Assistant｜></think>Hello! I am DeepSeek.{EOS}<｜User｜>1+1=?<｜Assistant｜><think>"
    )
    assert encode_messages(messages, "thinking") == expected
    chat = encode_messages(messages, "chat")
    assert chat.endswith("<｜User｜>1+1=?<｜Assistant｜></think>") and "thinking..." not in chat


def test_current_turn_keeps_reasoning_across_tool_calls_in_dsml():
    call = {
        "id": "c1",
        "type": "function",
        "function": {"name": "get_weather", "arguments": json.dumps({"city": "Paris", "days": 2})},
    }
    messages = [
        {"role": "system", "content": "", "tools": [WEATHER_TOOL]},
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": "", "reasoning_content": "Need the tool.", "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
    ]
    prompt = encode_messages(messages, "thinking")
    assert prompt.startswith(BOS + "\n\n## Tools\n")
    assert json.dumps(WEATHER_TOOL["function"]) in prompt
    assert prompt.endswith(
        "<｜User｜>Weather in Paris?<｜Assistant｜><think>Need the tool.</think>\n\n"
        "<｜DSML｜function_calls>\n"
        '<｜DSML｜invoke name="get_weather">\n'
        '<｜DSML｜parameter name="city" string="true">Paris</｜DSML｜parameter>\n'
        '<｜DSML｜parameter name="days" string="false">2</｜DSML｜parameter>\n'
        "</｜DSML｜invoke>\n"
        f"</｜DSML｜function_calls>{EOS}"
        "\n\n<function_results>\n<result>sunny</result>\n</function_results>\n\n<think>"
    )
    assert encode_messages(messages, "chat").endswith("</function_results>\n\n</think>")


def test_several_tool_results_share_one_function_results_block():
    calls = [
        {"type": "function", "function": {"name": "get_weather", "arguments": json.dumps({"city": c})}}
        for c in ("Paris", "Oslo")
    ]
    messages = [
        {"role": "user", "content": "Compare"},
        {"role": "assistant", "content": "", "tool_calls": calls},
        {"role": "tool", "content": "sunny"},
        {"role": "tool", "content": "snow"},
    ]
    assert encode_messages(messages, "chat").endswith(
        f"{EOS}\n\n<function_results>\n<result>sunny</result>\n<result>snow</result>\n</function_results>\n\n</think>"
    )


def test_developer_message_carries_tools_and_response_format_before_the_question():
    schema = {"type": "json_schema", "json_schema": {"name": "answer", "schema": {"type": "object"}}}
    messages = [{"role": "developer", "content": "List two cities", "tools": [WEATHER_TOOL], "response_format": schema}]
    prompt = encode_messages(messages, "chat")
    assert prompt.startswith(f"{BOS}<｜User｜>\n\n{render_tools([WEATHER_TOOL])}\n\n## Response Format:")
    assert prompt.endswith(f"{json.dumps(schema)}\n\n# The user's message is: List two cities<｜Assistant｜></think>")


def test_context_is_judged_but_not_rendered_again():
    history = [{"role": "user", "content": "hello"}, {"role": "assistant", "content": "hi", "reasoning": "r"}]
    new = [{"role": "user", "content": "and now?"}]
    full = encode_messages(history + new, "thinking")
    assert full.endswith(encode_messages(new, "thinking", context=history))
    assert encode_messages(new, "thinking", context=history) == "<｜User｜>and now?<｜Assistant｜><think>"


def test_invalid_conversations_are_refused_with_a_reason():
    with pytest.raises(ValueError, match="thinking_mode must be one of"):
        encode_messages([{"role": "user", "content": "x"}], "fast")
    with pytest.raises(ValueError, match="no assistant tool call"):
        encode_messages([{"role": "user", "content": "x"}, {"role": "tool", "content": "y"}])
    with pytest.raises(ValueError, match="has no reasoning"):
        encode_messages([{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}], "thinking")
    with pytest.raises(ValueError, match="role 'robot'"):
        encode_messages([{"role": "robot", "content": "x"}])
