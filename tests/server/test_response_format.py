"""response_format on a live server with the real openai client (demo model, random weights):
constrained output validates in a mixed batch of 32, streamed and not, equals the same request run
alone, and bad formats are 400s."""

from __future__ import annotations

import asyncio
import json
import math
import re

import jsonschema
import openai
import pytest

from seekd.config import DEMO_MODEL_NAME

SCHEMAS = [
    {
        "type": "object",
        "properties": {
            "city": {"type": "string", "maxLength": 10},
            "population": {"type": "integer", "minimum": 0, "maximum": 100000},
            "kind": {"enum": ["town", "city", "village"]},
        },
        "required": ["city", "population", "kind"],
        "additionalProperties": False,
    },
    {
        "type": "object",
        "properties": {
            "done": {"type": "boolean"},
            "steps": {"type": "array", "items": {"type": "integer", "minimum": 1, "maximum": 9}, "maxItems": 3},
        },
        "required": ["done", "steps"],
        "additionalProperties": False,
    },
    {
        "type": "object",
        "properties": {
            "answer": {"enum": ["yes", "no", "maybe"]},
            "confidence": {"type": "integer", "minimum": 0, "maximum": 10},
        },
        "required": ["answer"],
        "additionalProperties": False,
    },
]


def request_specs() -> list[dict]:
    """32 mixed requests: json_schema (strict), json_object and free text; greedy and seeded."""
    specs = []
    for i in range(32):
        kind = ("schema", "schema", "object", "text")[i % 4]
        spec = {
            "messages": [{"role": "user", "content": f"Request {i}: answer in JSON"}],
            "max_tokens": {"schema": 80, "object": 24, "text": 10}[kind],  # a json_object may never close
            "temperature": 0.0 if i % 3 == 0 else 0.9,
            "seed": 1000 + i,
        }
        if kind == "schema":
            schema = SCHEMAS[i % len(SCHEMAS)]
            spec["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": f"s{i % 3}", "schema": schema, "strict": True},
            }
        elif kind == "object":
            spec["response_format"] = {"type": "json_object"}
        else:
            spec["extra_body"] = {"ignore_eos": True}
        specs.append(spec)
    return specs


_LITERAL_TAILS = ["", "0", ":0", '"k":0', "rue", "ue", "e", "alse", "lse", "se", "ull", "ll", "l"]


def is_json_object_prefix(text: str) -> bool:
    """Whether `text` can be completed into a JSON object: what a json_object request cut by
    max_tokens must be (random weights write strings that never close)."""
    stack, in_string, escaped = [], False, False
    for ch in text:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "{[":
            stack.append("}" if ch == "{" else "]")
        elif ch in "}]" and (not stack or stack.pop() != ch):
            return False
    base = text
    if in_string:  # cut an unfinished escape, close the string
        base = re.sub(r"\\u[0-9a-fA-F]{0,3}$", "", text[:-1] if escaped else text) + '"'
    closers = "".join(reversed(stack))
    for tail in [*_LITERAL_TAILS, *(f'"{t}' for t in _LITERAL_TAILS)]:
        try:
            return isinstance(json.loads(base + tail + closers), dict)
        except json.JSONDecodeError:
            continue
    return False


def check(spec: dict, text: str, reasoning: str | None, finish_reason: str) -> None:
    response_format = spec.get("response_format")
    if response_format is None:
        assert finish_reason == "length"
        return
    assert reasoning is None
    if response_format["type"] == "json_object" and finish_reason == "length":
        assert is_json_object_prefix(text), text
        return
    assert finish_reason == "stop", text
    schema = response_format.get("json_schema", {}).get("schema", {"type": "object"})
    jsonschema.validate(json.loads(text), schema)


async def run_one(client: openai.AsyncOpenAI, spec: dict, stream: bool) -> tuple[str, str | None, str]:
    """(content, reasoning_content, finish_reason); constrained output has no reasoning part."""
    if not stream:
        resp = await client.chat.completions.create(model=DEMO_MODEL_NAME, **spec)
        choice = resp.choices[0]
        return choice.message.content, getattr(choice.message, "reasoning_content", None), choice.finish_reason
    content, reasoning, finish = [], [], None
    events = await client.chat.completions.create(model=DEMO_MODEL_NAME, stream=True, **spec)
    async for chunk in events:
        for choice in chunk.choices:
            content.append(choice.delta.content or "")
            reasoning.append(getattr(choice.delta, "reasoning_content", None) or "")
            finish = choice.finish_reason or finish
    return "".join(content), "".join(reasoning) or None, finish


async def run_batch(server, specs: list[dict], stream: bool) -> list[tuple[str, str | None, str]]:
    async with openai.AsyncOpenAI(base_url=server.api_url, api_key="unused", max_retries=0) as client:
        return await asyncio.gather(*(run_one(client, s, stream) for s in specs))


async def run_alone(server, specs: list[dict]) -> list[tuple[str, str | None, str]]:
    async with openai.AsyncOpenAI(base_url=server.api_url, api_key="unused", max_retries=0) as client:
        return [await run_one(client, s, False) for s in specs]


def test_thirty_two_mixed_requests_validate_streamed_and_not_and_equal_the_same_requests_alone(server):
    specs = request_specs()
    batched = asyncio.run(run_batch(server, specs, stream=False))
    streamed = asyncio.run(run_batch(server, specs, stream=True))
    for spec, (text, reasoning, finish) in zip(specs, batched):
        check(spec, text, reasoning, finish)
    assert streamed == batched
    assert asyncio.run(run_alone(server, specs)) == batched


def test_n_choices_and_completions_endpoint_are_constrained(server):
    client = openai.OpenAI(base_url=server.api_url, api_key="unused", max_retries=0)
    schema = SCHEMAS[0]
    resp = client.chat.completions.create(
        model=DEMO_MODEL_NAME,
        messages=[{"role": "user", "content": "cities"}],
        n=3,
        temperature=1.0,
        seed=4,
        max_tokens=80,
        response_format={"type": "json_schema", "json_schema": {"name": "c", "schema": schema}},
    )
    assert len(resp.choices) == 3
    for choice in resp.choices:
        jsonschema.validate(json.loads(choice.message.content), schema)
    completion = client.completions.create(
        model=DEMO_MODEL_NAME,
        prompt="JSON:",
        max_tokens=80,
        temperature=0.0,
        extra_body={"response_format": {"type": "json_schema", "json_schema": {"name": "c", "schema": schema}}},
    )
    assert completion.choices[0].finish_reason == "stop"
    jsonschema.validate(json.loads(completion.choices[0].text), schema)


def test_logprobs_of_constrained_tokens_are_the_models_and_finite(server):
    client = openai.OpenAI(base_url=server.api_url, api_key="unused", max_retries=0)
    resp = client.chat.completions.create(
        model=DEMO_MODEL_NAME,
        messages=[{"role": "user", "content": "pick"}],
        max_tokens=40,
        temperature=0.0,
        logprobs=True,
        top_logprobs=5,
        response_format={"type": "json_schema", "json_schema": {"name": "a", "schema": SCHEMAS[2]}},
    )
    choice = resp.choices[0]
    jsonschema.validate(json.loads(choice.message.content), SCHEMAS[2])
    entries = choice.logprobs.content
    assert "".join(e.token for e in entries) == choice.message.content
    for entry in entries:
        assert len(entry.top_logprobs) == 5
        assert all(math.isfinite(t.logprob) for t in entry.top_logprobs)
        assert math.isfinite(entry.logprob) and entry.logprob <= entry.top_logprobs[0].logprob


@pytest.mark.parametrize(
    ("response_format", "message"),
    [
        ({"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "nonsense"}}}, "nonsense"),
        (
            {
                "type": "json_schema",
                "json_schema": {"name": "x", "schema": {"type": "string", "format": "zz"}, "strict": True},
            },
            "format",
        ),
        ({"type": "json_schema", "json_schema": {"schema": {"type": "object"}}}, "name"),
        ({"type": "json_schema"}, "json_schema"),
        ({"type": "xml"}, "not supported"),
    ],
)
def test_invalid_response_format_is_a_400_openai_error(server, response_format, message):
    client = openai.OpenAI(base_url=server.api_url, api_key="unused", max_retries=0)
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(
            model=DEMO_MODEL_NAME,
            messages=[{"role": "user", "content": "hi"}],
            max_tokens=5,
            response_format=response_format,
        )
    error = info.value.body
    assert info.value.status_code == 400
    assert error["type"] == "invalid_request_error"
    assert error["param"].startswith("response_format")
    assert message in error["message"]
    ok = client.chat.completions.create(  # the server goes on serving
        model=DEMO_MODEL_NAME,
        messages=[{"role": "user", "content": "hi"}],
        max_tokens=40,
        temperature=0.0,
        response_format={"type": "json_schema", "json_schema": {"name": "a", "schema": SCHEMAS[2]}},
    )
    jsonschema.validate(json.loads(ok.choices[0].message.content), SCHEMAS[2])


@pytest.mark.parametrize("stream", [False, True])
def test_thinking_mode_reasons_freely_before_the_format_binds(server, stream):
    """With thinking on, the format binds after `</think>` (the random model does not reach it in
    a few tokens): the reasoning is exactly the unconstrained request's, and no answer yet."""
    client = openai.OpenAI(base_url=server.api_url, api_key="unused", max_retries=0)
    common = dict(
        model=DEMO_MODEL_NAME,
        messages=[{"role": "user", "content": "Describe a person"}],
        max_tokens=10,
        temperature=0,
        extra_body={"thinking": {"type": "enabled"}},
    )
    free = client.chat.completions.create(**common).choices[0]
    fmt = {"type": "json_schema", "json_schema": {"name": "person", "schema": SCHEMAS[0], "strict": True}}
    if stream:
        reasoning, content, finish = "", "", None
        for chunk in client.chat.completions.create(**common, response_format=fmt, stream=True):
            delta = chunk.choices[0].delta
            reasoning += getattr(delta, "reasoning_content", None) or ""
            content += delta.content or ""
            finish = chunk.choices[0].finish_reason or finish
    else:
        choice = client.chat.completions.create(**common, response_format=fmt).choices[0]
        reasoning, content, finish = choice.message.reasoning_content, choice.message.content, choice.finish_reason
    assert free.message.reasoning_content and "</think>" not in free.message.reasoning_content
    assert reasoning == free.message.reasoning_content
    assert not content and finish == "length"


def test_keywords_the_grammar_cannot_enforce_are_ignored_unless_strict(server):
    """pydantic writes uniqueItems for a set and formats llguidance lacks: without strict: true
    (OpenAI enforces no such schema) the rest of the schema is enforced; with it, a 400."""
    client = openai.OpenAI(base_url=server.api_url, api_key="unused", max_retries=0)
    schema = {
        "type": "object",
        "properties": {
            "tags": {"type": "array", "items": {"type": "string", "maxLength": 3}, "uniqueItems": True, "maxItems": 2},
            "url": {"type": "string", "format": "uri-template", "maxLength": 5},
        },
        "required": ["tags", "url"],
    }
    common = dict(model=DEMO_MODEL_NAME, messages=[{"role": "user", "content": "hi"}], max_tokens=60, seed=3)
    resp = client.chat.completions.create(
        **common, response_format={"type": "json_schema", "json_schema": {"name": "t", "schema": schema}}
    )
    if resp.choices[0].finish_reason == "stop":
        lax = {
            **schema,
            "properties": {
                "tags": {k: v for k, v in schema["properties"]["tags"].items() if k != "uniqueItems"},
                "url": {"type": "string", "maxLength": 5},
            },
        }
        jsonschema.validate(json.loads(resp.choices[0].message.content), lax)
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(
            **common,
            response_format={"type": "json_schema", "json_schema": {"name": "t", "schema": schema, "strict": True}},
        )
    assert info.value.body["param"] == "response_format"
