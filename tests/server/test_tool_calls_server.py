"""Tool calling through a real `seekd serve` on the demo model (random weights) with the openai
client: tool_choice required / named are enforced by grammar, so even gibberish weights must give
calls whose arguments validate against the tool's schema — streamed and not, alone and in a batch
mixed with unconstrained requests — and bad tool requests are clear 400s."""

from __future__ import annotations

import asyncio
import json

import jsonschema
import openai
import pytest

WEATHER = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "enum": ["Paris", "Berlin", "Tokyo"]},
        "days": {"type": "integer", "minimum": 1, "maximum": 7},
    },
    "required": ["city", "days"],
    "additionalProperties": False,
}
CONVERT = {
    "type": "object",
    "properties": {"unit": {"type": "string", "enum": ["c", "f"]}, "exact": {"type": "boolean"}},
    "required": ["unit", "exact"],
    "additionalProperties": False,
}
TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "description": "Weather forecast", "parameters": WEATHER}},
    {"type": "function", "function": {"name": "convert", "parameters": CONVERT}},
]
SCHEMAS = {"get_weather": WEATHER, "convert": CONVERT}
MODEL = "seekd-demo-random"
NAMED = {"type": "function", "function": {"name": "get_weather"}}


def request(i: int, kind: str, stream: bool) -> dict:
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": f"Request {i}: weather?"}],
        "temperature": 0,
        "stream": stream,
    }
    if kind == "plain":
        return {**body, "max_tokens": 16}
    body.update(tools=TOOLS, max_tokens=64)
    if kind == "named":
        return {**body, "tool_choice": NAMED}
    return {**body, "tool_choice": "required", "parallel_tool_calls": False}


async def run(client: openai.AsyncOpenAI, body: dict) -> dict:
    """The choice as {content, finish_reason, tool_calls: [(id, name, arguments)]}, streamed or not."""
    if not body["stream"]:
        choice = (await client.chat.completions.create(**body)).choices[0]
        calls = [(c.id, c.function.name, c.function.arguments) for c in choice.message.tool_calls or []]
        return {"content": choice.message.content, "finish_reason": choice.finish_reason, "tool_calls": calls}
    content, finish, calls = "", None, []
    async for chunk in await client.chat.completions.create(**body):
        for choice in chunk.choices:
            content += choice.delta.content or ""
            finish = choice.finish_reason or finish
            for d in choice.delta.tool_calls or []:
                if d.id is not None:
                    assert d.index == len(calls) and d.function.name, "first piece: index, id and name"
                    calls.append([d.id, d.function.name, ""])
                calls[d.index][2] += d.function.arguments or ""
    return {"content": content or None, "finish_reason": finish, "tool_calls": [tuple(c) for c in calls]}


def check_calls(result: dict, kind: str) -> None:
    assert result["finish_reason"] == "tool_calls", result
    assert result["content"] is None
    assert len(result["tool_calls"]) == 1
    for call_id, name, arguments in result["tool_calls"]:
        assert call_id.startswith("call_") and len(call_id) > 10
        assert name in SCHEMAS and (kind != "named" or name == "get_weather")
        jsonschema.validate(json.loads(arguments), SCHEMAS[name])


def without_ids(result: dict) -> dict:
    return {**result, "tool_calls": [(name, args) for _, name, args in result["tool_calls"]]}


def test_required_and_named_calls_validate_alone_and_batched_with_unconstrained(server):
    kinds = [("named", False), ("named", True), ("required", False), ("required", True)] * 4
    bodies = [request(i, kind, stream) for i, (kind, stream) in enumerate(kinds)]
    bodies += [request(100 + i, "plain", i % 2 == 0) for i in range(16)]

    async def main() -> tuple[list[dict], list[dict]]:
        async with openai.AsyncOpenAI(base_url=server.api_url, api_key="none", max_retries=0) as client:
            alone = [await run(client, body) for body in bodies[:4]]
            batched = await asyncio.gather(*(run(client, body) for body in bodies))
            return alone, list(batched)

    alone, batched = asyncio.run(main())
    for (kind, _), result in zip(kinds, batched[:16], strict=True):
        check_calls(result, kind)
    for result in batched[16:]:
        assert result["tool_calls"] == [] and result["finish_reason"] in ("stop", "length")
    assert [without_ids(r) for r in alone] == [without_ids(r) for r in batched[:4]]


def test_streamed_and_whole_give_the_same_call(server):
    async def main() -> list[dict]:
        async with openai.AsyncOpenAI(base_url=server.api_url, api_key="none", max_retries=0) as client:
            return [
                await run(client, request(7, kind, stream))
                for kind in ("named", "required")
                for stream in (False, True)
            ]

    named_whole, named_stream, required_whole, required_stream = [without_ids(r) for r in asyncio.run(main())]
    assert named_whole == named_stream and required_whole == required_stream


@pytest.mark.parametrize("tool_choice", ["required", NAMED], ids=["required", "named"])
def test_forced_call_arguments_stream_in_pieces_as_generated(server, tool_choice):
    """As with "auto": the name first, then the arguments in many chunks while they are generated
    (a forced call once sent all its arguments in one chunk at the end)."""
    client = openai.OpenAI(base_url=server.api_url, api_key="none", max_retries=0)
    common = dict(
        model=MODEL,
        messages=[{"role": "user", "content": "Weather in Tokyo for a week?"}],
        tools=TOOLS,
        tool_choice=tool_choice,
        parallel_tool_calls=False,
        max_tokens=64,
        temperature=0,
    )
    whole = client.chat.completions.create(**common).choices[0]
    assert whole.finish_reason == "tool_calls", whole
    pieces, names, finish = [], [], None
    for chunk in client.chat.completions.create(**common, stream=True):
        for choice in chunk.choices:
            finish = choice.finish_reason or finish
            for d in choice.delta.tool_calls or []:
                assert d.index == 0
                names += [d.function.name] if d.function.name else []
                pieces += [d.function.arguments] if d.function.arguments else []
    assert finish == "tool_calls" and names == [whole.message.tool_calls[0].function.name]
    assert len(pieces) >= 4, pieces
    assert json.loads("".join(pieces)) == json.loads(whole.message.tool_calls[0].function.arguments)


BAD = [
    ({"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice", "nope"),
    ({"tool_choice": "required"}, "tool_choice", "needs tools"),
    (
        {"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "strin"}}}]},
        "tools.0.function.parameters",
        "strin",
    ),
    ({"tools": [{"type": "function", "function": {"name": "bad name!"}}]}, "tools.0.function.name", "letters"),
    ({"tools": TOOLS, "tool_choice": "sometimes"}, "tool_choice", "must be"),
]


@pytest.mark.parametrize(("extra", "param", "words"), BAD)
def test_bad_tool_requests_are_400s(server, extra, param, words):
    client = openai.OpenAI(base_url=server.api_url, api_key="none", max_retries=0)
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}], **extra)
    error = e.value.body
    assert error["param"] == param and words in error["message"]


CALL = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}
BAD_HISTORY = [
    (
        [{"role": "assistant", "content": None, "tool_calls": [CALL]}, {"role": "tool", "content": "sunny"}],
        "messages.2.tool_call_id",
        "tool_call_id",
    ),
    (
        [
            {"role": "assistant", "content": None, "tool_calls": [CALL]},
            {"role": "tool", "tool_call_id": "call_2", "content": "sunny"},
        ],
        "messages.2.tool_call_id",
        "call_2",
    ),
    ([{"role": "tool", "tool_call_id": "call_1", "content": "sunny"}], "messages.1.tool_call_id", "answers no"),
    (
        [{"role": "assistant", "tool_calls": [{**CALL, "function": {"name": "f", "arguments": "{oops"}}]}],
        "messages.1.tool_calls.0.function.arguments",
        "not valid JSON",
    ),
]


@pytest.mark.parametrize(("history", "param", "words"), BAD_HISTORY)
def test_malformed_tool_history_is_a_400(server, history, param, words):
    client = openai.OpenAI(base_url=server.api_url, api_key="none", max_retries=0)
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "hi"}, *history], tools=TOOLS, max_tokens=4
        )
    assert e.value.body["param"] == param and words in e.value.body["message"]


def test_history_with_calls_and_results_is_accepted(server):
    client = openai.OpenAI(base_url=server.api_url, api_key="none", max_retries=0)
    messages = [
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": None, "reasoning_content": "Use the tool.", "tool_calls": [CALL]},
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny, 21 C"},
    ]
    out = client.chat.completions.create(model=MODEL, messages=messages, tools=TOOLS, max_tokens=4, temperature=0)
    assert out.choices[0].finish_reason in ("stop", "length", "tool_calls")


def test_forced_call_in_thinking_mode_comes_after_free_reasoning(server):
    """With thinking on, a named call binds after `</think>`: the reasoning is exactly the
    unconstrained request's (the random model does not close it in a few tokens), and no call yet."""
    client = openai.OpenAI(base_url=server.api_url, api_key="unused", max_retries=0)
    common = dict(
        model=MODEL,
        messages=[{"role": "user", "content": "Weather in Paris?"}],
        max_tokens=10,
        temperature=0,
        tools=TOOLS,
        extra_body={"thinking": {"type": "enabled"}},
    )
    free = client.chat.completions.create(**common).choices[0]
    forced = client.chat.completions.create(**common, tool_choice=NAMED).choices[0]
    assert free.message.reasoning_content
    assert forced.message.reasoning_content == free.message.reasoning_content
    assert not forced.message.tool_calls and forced.finish_reason == "length"


# Schemas as pydantic and LangChain write them: nested models under `$defs`, refs by JSON pointer from
# the schema's own root. "required" wraps every tool's schema in one array schema, where such a
# pointer once resolved against the wrapper: a 400 ("Pointer '/$defs/City' does not exist"), or a
# `#/properties/...` ref silently bound to the wrong subschema.
NESTED = {
    "$defs": {
        "City": {
            "type": "object",
            "properties": {"name": {"type": "string", "enum": ["Paris", "Oslo"]}},
            "required": ["name"],
            "additionalProperties": False,
        }
    },
    "type": "object",
    "properties": {"city": {"$ref": "#/$defs/City"}, "days": {"type": "integer", "minimum": 1, "maximum": 3}},
    "required": ["city", "days"],
    "additionalProperties": False,
}
POINTER = {
    "type": "object",
    "properties": {"unit": {"type": "string", "enum": ["c", "f"]}, "again": {"$ref": "#/properties/unit"}},
    "required": ["unit", "again"],
    "additionalProperties": False,
}


@pytest.mark.parametrize("schema", [NESTED, POINTER], ids=["defs", "pointer"])
def test_required_call_resolves_refs_within_each_tools_own_schema(server, schema):
    client = openai.OpenAI(base_url=server.api_url, api_key="none", max_retries=0)
    tools = [
        {"type": "function", "function": {"name": "f", "parameters": schema}},
        {"type": "function", "function": {"name": "g", "parameters": CONVERT}},
    ]
    for seed in range(3):
        choice = client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": "go"}],
            tools=tools,
            tool_choice="required",
            parallel_tool_calls=False,
            max_tokens=64,
            seed=seed,
        ).choices[0]
        assert choice.finish_reason == "tool_calls", choice
        call = choice.message.tool_calls[0].function
        jsonschema.validate(json.loads(call.arguments), {"f": schema, "g": CONVERT}[call.name])


# Valid JSON Schema that the grammar engine cannot enforce: pydantic writes uniqueItems for a set,
# MCP servers' tool schemas carry propertyNames, not and formats of their own. With tool_choice auto
# (or none) nothing is enforced, and such tools were refused ("Unimplemented keys") all the same; a
# forced call enforces the rest of the schema unless the tool is marked strict.
UNENFORCEABLE = [
    {"type": "object", "properties": {"tags": {"type": "array", "items": {"type": "string"}, "uniqueItems": True}}},
    {"type": "object", "properties": {"q": {"not": {"type": "null"}}}},
    {"type": "object", "propertyNames": {"pattern": "^[a-z]+$"}},
    {"type": "object", "properties": {"path": {"type": "string", "format": "uri-template"}}},
]


@pytest.mark.parametrize("schema", UNENFORCEABLE, ids=["uniqueItems", "not", "propertyNames", "format"])
def test_tools_the_grammar_cannot_enforce_are_served_unless_strict_and_forced(server, schema):
    client = openai.OpenAI(base_url=server.api_url, api_key="none", max_retries=0)
    tools = [
        {"type": "function", "function": {"name": "g", "parameters": CONVERT}},
        {"type": "function", "function": {"name": "f", "parameters": schema}},
    ]
    common = dict(model=MODEL, messages=[{"role": "user", "content": "go"}], tools=tools, max_tokens=4)
    for tool_choice in ("auto", "none"):
        assert client.chat.completions.create(**common, tool_choice=tool_choice).choices[0].finish_reason
    named_other = client.chat.completions.create(
        **common, tool_choice={"type": "function", "function": {"name": "g"}}, max_completion_tokens=32
    ).choices[0]
    assert named_other.finish_reason in ("tool_calls", "length")
    for tool_choice in ("required", {"type": "function", "function": {"name": "f"}}):
        forced = client.chat.completions.create(**common, tool_choice=tool_choice, max_completion_tokens=32)
        assert forced.choices[0].finish_reason in ("tool_calls", "length")
        strict_tools = [tools[0], {"type": "function", "function": {"name": "f", "parameters": schema, "strict": True}}]
        with pytest.raises(openai.BadRequestError) as e:
            client.chat.completions.create(**{**common, "tools": strict_tools}, tool_choice=tool_choice)
        assert e.value.body["param"] == "tools.1.function.parameters", e.value.body
