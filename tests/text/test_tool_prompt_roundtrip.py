"""Round trip of a tool conversation: the history the server prepares (assistant tool_calls with
JSON-text arguments, tool results, prior reasoning_content) renders as each format expects, and the
calls the prompt shows parse back to the same calls."""

from __future__ import annotations

from seekd.server.tool_calls import prepare_history
from seekd.text import deepseek_encoding
from seekd.text.chat_template import render_chat_template
from seekd.text.tool_parsers import ToolCall, make_tool_parser

CALL = {
    "id": "call_1",
    "type": "function",
    "function": {"name": "get_weather", "arguments": '{"city": "Paris", "days": 2}'},
}
TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]
HISTORY = [
    {"role": "user", "content": "Weather in Paris?"},
    {"role": "assistant", "content": None, "reasoning_content": "I should call the tool.", "tool_calls": [CALL]},
    {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
]

# Qwen2.5-Instruct's chat template (the part that renders tools, calls and results), as the model ships it.
QWEN25_TEMPLATE = (
    "{%- if tools %}{{- '<|im_start|>system\\n' }}"
    "{%- if messages[0]['role'] == 'system' %}{{- messages[0]['content'] }}"
    "{%- else %}{{- 'You are Qwen, created by Alibaba Cloud. You are a helpful assistant.' }}{%- endif %}"
    '{{- "\\n\\n# Tools\\n\\nYou may call one or more functions to assist with the user query.\\n\\n'
    'You are provided with function signatures within <tools></tools> XML tags:\\n<tools>" }}'
    '{%- for tool in tools %}{{- "\\n" }}{{- tool | tojson }}{%- endfor %}'
    '{{- "\\n</tools>\\n\\nFor each function call, return a json object with function name and arguments '
    'within <tool_call></tool_call> XML tags:\\n<tool_call>\\n{\\"name\\": <function-name>, \\"arguments\\": '
    '<args-json-object>}\\n</tool_call><|im_end|>\\n" }}'
    "{%- endif %}"
    "{%- for message in messages %}"
    '{%- if (message.role == "user") or (message.role == "assistant" and not message.tool_calls) %}'
    "{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}"
    "{%- elif message.role == \"assistant\" %}{{- '<|im_start|>' + message.role }}"
    "{%- if message.content %}{{- '\\n' + message.content }}{%- endif %}"
    "{%- for tool_call in message.tool_calls %}"
    "{%- if tool_call.function is defined %}{%- set tool_call = tool_call.function %}{%- endif %}"
    '{{- \'\\n<tool_call>\\n{"name": "\' }}{{- tool_call.name }}{{- \'", "arguments": \' }}'
    "{{- tool_call.arguments | tojson }}{{- '}\\n</tool_call>' }}{%- endfor %}{{- '<|im_end|>\\n' }}"
    '{%- elif message.role == "tool" %}'
    "{%- if (loop.index0 == 0) or (messages[loop.index0 - 1].role != \"tool\") %}{{- '<|im_start|>user' }}{%- endif %}"
    "{{- '\\n<tool_response>\\n' }}{{- message.content }}{{- '\\n</tool_response>' }}"
    "{%- if loop.last or (messages[loop.index0 + 1].role != \"tool\") %}{{- '<|im_end|>\\n' }}{%- endif %}"
    "{%- endif %}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)


def test_qwen25_template_gets_argument_objects_and_tool_responses():
    prompt = render_chat_template(QWEN25_TEMPLATE, prepare_history(HISTORY), tools=TOOLS)
    assert prompt == (
        "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.\n\n# Tools\n\n"
        "You may call one or more functions to assist with the user query.\n\n"
        "You are provided with function signatures within <tools></tools> XML tags:\n<tools>\n"
        '{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}\n</tools>\n\n'
        "For each function call, return a json object with function name and arguments within "
        "<tool_call></tool_call> XML tags:\n<tool_call>\n"
        '{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call><|im_end|>\n'
        "<|im_start|>user\nWeather in Paris?<|im_end|>\n"
        '<|im_start|>assistant\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "days": 2}}\n'
        "</tool_call><|im_end|>\n"
        "<|im_start|>user\n<tool_response>\nsunny\n</tool_response><|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    shown = prompt[prompt.index("<|im_start|>assistant\n<tool_call>") + len("<|im_start|>assistant\n") :]
    shown = shown[: shown.index("<|im_end|>")]
    expected = [ToolCall("get_weather", '{"city": "Paris", "days": 2}')]
    assert make_tool_parser("hermes").parse(shown).tool_calls == expected


def test_deepseek_v3_style_template_concatenation_gets_the_clients_json_text():
    template = (
        "{% for m in messages %}{% if m['tool_calls'] %}{% for t in m['tool_calls'] %}"
        "{{ '<｜tool▁call▁begin｜>' + t['type'] + '<｜tool▁sep｜>' + t['function']['name'] + '\\n```json\\n'"
        " + t['function']['arguments'] + '\\n```<｜tool▁call▁end｜>' }}{% endfor %}{% endif %}{% endfor %}"
    )
    shown = render_chat_template(template, prepare_history(HISTORY))
    assert shown == (
        '<｜tool▁call▁begin｜>function<｜tool▁sep｜>get_weather\n```json\n{"city": "Paris", "days": 2}\n'
        "```<｜tool▁call▁end｜>"
    )
    expected = [ToolCall("get_weather", CALL["function"]["arguments"])]
    assert make_tool_parser("deepseek_v3").parse(shown).tool_calls == expected


def test_dsml_encoder_keeps_reasoning_and_results_and_its_calls_parse_back():
    prompt = deepseek_encoding.encode_messages(prepare_history(HISTORY), thinking_mode="thinking")
    assert prompt == (
        "<｜begin▁of▁sentence｜><｜User｜>Weather in Paris?<｜Assistant｜><think>I should call the tool.</think>"
        '\n\n<｜DSML｜function_calls>\n<｜DSML｜invoke name="get_weather">\n'
        '<｜DSML｜parameter name="city" string="true">Paris</｜DSML｜parameter>\n'
        '<｜DSML｜parameter name="days" string="false">2</｜DSML｜parameter>\n'
        "</｜DSML｜invoke>\n</｜DSML｜function_calls><｜end▁of▁sentence｜>"
        "\n\n<function_results>\n<result>sunny</result>\n</function_results>\n\n<think>"
    )
    generated = prompt[prompt.index("</think>") + len("</think>") : prompt.index("<｜end▁of▁sentence｜>")]
    parsed = make_tool_parser("deepseek_v32").parse(generated)
    assert parsed.tool_calls == [ToolCall("get_weather", '{"city": "Paris", "days": 2}')] and parsed.content == ""
