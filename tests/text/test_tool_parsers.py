"""Tool-call parsers on hand-written model outputs of each format: the complete-text reading, and the
streamed one with the text split at every character boundary (and into single characters), must
both give exactly the expected calls and clean content."""

from __future__ import annotations

import json

import pytest

from seekd.sampling_params import StructuredOutputParams
from seekd.server.tool_calls import ToolSetup
from seekd.server.tool_output import ChoiceOutput
from seekd.text.tool_parsers import ToolCall, detect_tool_format, make_tool_parser

WEATHER = ToolCall("get_weather", '{"city": "Paris", "unit": "celsius"}')
NESTED_ARGS = (
    '{"query": {"filters": [{"field": "a}b", "op": "<"}, {"nested": {"deep": [1, 2, {"x": null}]}}]}, "limit": 5}'
)
NESTED = ToolCall("search", NESTED_ARGS)

V3_CALL = "<｜tool▁call▁begin｜>function<｜tool▁sep｜>{name}\n```json\n{args}\n```<｜tool▁call▁end｜>"
V31_CALL = "<｜tool▁call▁begin｜>{name}<｜tool▁sep｜>{args}<｜tool▁call▁end｜>"
HERMES_CALL = '<tool_call>\n{{"name": "{name}", "arguments": {args}}}\n</tool_call>'


def v3(*calls: ToolCall) -> str:
    body = "\n".join(V3_CALL.format(name=c.name, args=c.arguments) for c in calls)
    return f"<｜tool▁calls▁begin｜>{body}<｜tool▁calls▁end｜>"


def v31(*calls: ToolCall) -> str:
    body = "".join(V31_CALL.format(name=c.name, args=c.arguments) for c in calls)
    return f"<｜tool▁calls▁begin｜>{body}<｜tool▁calls▁end｜>"


def hermes(*calls: ToolCall) -> str:
    return "\n".join(HERMES_CALL.format(name=c.name, args=c.arguments) for c in calls)


def dsml(block: str, *invokes: tuple[str, list[tuple[str, str, str]]]) -> str:
    """invokes: (name, [(param, string_flag, raw value)])."""
    parts = []
    for name, params in invokes:
        lines = [
            f'<｜DSML｜parameter name="{p}" string="{flag}">{value}</｜DSML｜parameter>' for p, flag, value in params
        ]
        parts.append(f'<｜DSML｜invoke name="{name}">\n' + "\n".join(lines) + "\n</｜DSML｜invoke>")
    return f"\n\n<｜DSML｜{block}>\n" + "\n".join(parts) + f"\n</｜DSML｜{block}>"


def collect(deltas, state) -> None:
    for d in deltas.tool_calls:
        if d.name is not None:
            assert d.index == len(state["calls"]), "a call's first piece carries its name, in index order"
            state["calls"].append([d.name, ""])
        state["calls"][d.index][1] += d.arguments
    state["content"] += deltas.content


def stream(fmt: str, chunks: list[str]) -> tuple[str, list[ToolCall]]:
    parser = make_tool_parser(fmt)
    state = {"content": "", "calls": []}
    for chunk in chunks:
        collect(parser.feed(chunk), state)
    collect(parser.finish(), state)
    return state["content"], [ToolCall(n, a) for n, a in state["calls"]]


def check_everywhere(fmt: str, text: str, content: str, calls: list[ToolCall]) -> None:
    parsed = make_tool_parser(fmt).parse(text)
    assert (parsed.content, parsed.tool_calls) == (content, calls)
    assert stream(fmt, [text]) == (content, calls)
    assert stream(fmt, list(text)) == (content, calls)
    for i in range(len(text) + 1):
        assert stream(fmt, [text[:i], text[i:]]) == (content, calls), f"split at {i}: {text[:i]!r} | {text[i:]!r}"


CASES = {
    "deepseek_v3": [
        ("plain", "Just text, no tools: 2 < 3 and ``` fences.", "Just text, no tools: 2 < 3 and ``` fences.", []),
        ("one", v3(WEATHER), "", [WEATHER]),
        ("text before", "Let me look that up.\n" + v3(WEATHER), "Let me look that up.", [WEATHER]),
        (
            "parallel nested",
            "Two calls." + v3(WEATHER, NESTED, ToolCall("noop", "{}")),
            "Two calls.",
            [WEATHER, NESTED, ToolCall("noop", "{}")],
        ),
    ],
    "deepseek_v31": [
        ("plain", "No calls <here> at all.", "No calls <here> at all.", []),
        ("one", v31(WEATHER), "", [WEATHER]),
        ("parallel nested", "Checking both." + v31(WEATHER, NESTED), "Checking both.", [WEATHER, NESTED]),
    ],
    "hermes": [
        ("plain", "A <tool> tag that is not one, and {json}.", "A <tool> tag that is not one, and {json}.", []),
        ("one", hermes(WEATHER), "", [WEATHER]),
        (
            "parallel nested",
            "I'll call two tools.\n" + hermes(WEATHER, NESTED),
            "I'll call two tools.",
            [WEATHER, NESTED],
        ),
        (
            "arguments first",
            '<tool_call>\n{"arguments": {"b": [1, {"c": 2}]}, "name": "f"}\n</tool_call>',
            "",
            [ToolCall("f", '{"b": [1, {"c": 2}]}')],
        ),
    ],
}
DSML_PARAMS = [
    ("city", "true", 'Pa"ris\\n <b>'),
    ("days", "false", "3"),
    ("filter", "false", '{"tags": ["a", "b"], "deep": {"x": [1, {"y": null}]}}'),
    ("note", "true", "line one\nline two"),
]
DSML_ARGS = json.dumps(
    {
        "city": 'Pa"ris\\n <b>',
        "days": 3,
        "filter": {"tags": ["a", "b"], "deep": {"x": [1, {"y": None}]}},
        "note": "line one\nline two",
    },
    ensure_ascii=False,
)
for block, fmt in (("function_calls", "deepseek_v32"), ("tool_calls", "deepseek_v4")):
    CASES[fmt] = [
        ("plain", "Nothing to call; <｜DSML｜ appears alone.", "Nothing to call; <｜DSML｜ appears alone.", []),
        (
            "text before, parallel nested",
            "Let me check." + dsml(block, ("get_weather", DSML_PARAMS), ("ping", [])),
            "Let me check.",
            [ToolCall("get_weather", DSML_ARGS), ToolCall("ping", "{}")],
        ),
    ]


@pytest.mark.parametrize(
    ("fmt", "name", "text", "content", "calls"),
    [(fmt, *case) for fmt, cases in CASES.items() for case in cases],
    ids=[f"{fmt}-{case[0]}" for fmt, cases in CASES.items() for case in cases],
)
def test_complete_and_every_split_give_exact_calls_and_clean_content(fmt, name, text, content, calls):
    check_everywhere(fmt, text, content, calls)


def test_streamed_deltas_give_the_name_first_then_arguments_in_pieces():
    parser = make_tool_parser("deepseek_v3")
    text = "Hi" + v3(NESTED)
    deltas = [d for ch in text for d in parser.feed(ch).tool_calls] + parser.finish().tool_calls
    assert deltas[0].name == "search" and deltas[0].arguments == ""
    assert all(d.name is None for d in deltas[1:]) and len(deltas) > 20
    assert "".join(d.arguments for d in deltas) == NESTED_ARGS


def test_dsml_arguments_validate_as_the_encoders_json():
    parsed = make_tool_parser("deepseek_v4").parse(dsml("tool_calls", ("get_weather", DSML_PARAMS)))
    assert json.loads(parsed.tool_calls[0].arguments)["filter"]["deep"]["x"][1] == {"y": None}


def test_cut_off_call_keeps_its_name_and_arguments_so_far():
    text = '<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>get_weather\n```json\n{"city": "Pa'
    assert stream("deepseek_v3", [text[:40], text[40:]]) == ("", [ToolCall("get_weather", '{"city": "Pa')])


@pytest.mark.parametrize(
    ("model_type", "template", "expected"),
    [
        ("deepseek_v4", None, "deepseek_v4"),
        ("deepseek_v32", None, "deepseek_v32"),
        ("qwen2", "{{ '<tool_call>' }}", "hermes"),
        ("qwen2", None, "hermes"),
        ("deepseek_v3", "{{'<｜tool▁call▁begin｜>' + t + '<｜tool▁sep｜>' + n + '\\n```json'}}", "deepseek_v3"),
        ("deepseek_v3", "{{'<｜tool▁call▁begin｜>' + n + '<｜tool▁sep｜>' + a}}", "deepseek_v31"),
        ("deepseek_v3", "no tools in this template", "deepseek_v3"),
    ],
)
def test_registry_picks_the_format_from_family_and_template(model_type, template, expected):
    assert detect_tool_format(model_type, template) == expected


# -- calls and reasoning (the server's per-choice reader: reasoning split first, then calls) --------


def read_choice(fmt: str, chunks: list[str], in_reasoning: bool = True) -> tuple[str, str, list[ToolCall]]:
    out = ChoiceOutput(ToolSetup("auto", [], tool_format=fmt), in_reasoning)
    reasoning, content = "", ""
    for delta in [out.feed(c) for c in chunks] + [out.finish()]:
        reasoning += delta.reasoning
        content += delta.content
    return reasoning, content, [ToolCall(c.function.name, c.function.arguments) for c in out.calls]


@pytest.mark.parametrize("fmt", ["deepseek_v3", "deepseek_v31", "hermes", "deepseek_v4"])
def test_calls_after_reasoning_at_every_split(fmt):
    block = {"deepseek_v3": v3, "deepseek_v31": v31, "hermes": hermes}.get(fmt)
    calls = (
        block(WEATHER, NESTED)
        if block
        else dsml("tool_calls", ("get_weather", [("city", "true", "Paris"), ("unit", "true", "celsius")]))
    )
    expected_calls = [WEATHER, NESTED] if block else [ToolCall("get_weather", WEATHER.arguments)]
    text = "I need the weather <first>.</think>\n\nOn it." + calls
    expected = ("I need the weather <first>.", "On it.", expected_calls)
    assert read_choice(fmt, [text]) == expected
    for i in range(len(text) + 1):
        assert read_choice(fmt, [text[:i], text[i:]]) == expected, f"split at {i}"


@pytest.mark.parametrize("fmt", ["deepseek_v3", "hermes", "deepseek_v4"])
def test_a_call_started_inside_reasoning_is_a_call_and_leaves_no_markup(fmt):
    block = {
        "deepseek_v3": v3(WEATHER),
        "hermes": hermes(WEATHER),
        "deepseek_v4": dsml("tool_calls", ("get_weather", [("city", "true", "Paris"), ("unit", "true", "celsius")])),
    }[fmt]
    text = "Thinking about it." + block
    for i in range(len(text) + 1):
        assert read_choice(fmt, [text[:i], text[i:]]) == ("Thinking about it.", "", [WEATHER]), f"split at {i}"


@pytest.mark.parametrize("mode", ["named", "required"])
def test_a_forced_call_after_reasoning_at_every_split(mode):
    """The forced call's grammar binds after `</think>`: reasoning first, then the JSON is the call."""
    setup = ToolSetup(
        mode, [], named="get_weather" if mode == "named" else None, structured=StructuredOutputParams(json_object=True)
    )
    args = '{"city": "Paris", "unit": "celsius"}'
    answer = args if mode == "named" else f'[{{"name": "get_weather", "arguments": {args}}}]'
    text = "Which city? Paris.</think>" + answer
    for i in range(len(text) + 1):
        out = ChoiceOutput(setup, in_reasoning=True)
        reasoning = content = ""
        for delta in [out.feed(text[:i]), out.feed(text[i:]), out.finish()]:
            reasoning, content = reasoning + delta.reasoning, content + delta.content
        assert (reasoning, content) == ("Which city? Paris.", ""), f"split at {i}"
        assert [(c.function.name, json.loads(c.function.arguments)) for c in out.calls] == [
            ("get_weather", json.loads(args))
        ], f"split at {i}"
