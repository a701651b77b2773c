"""The openai SDK's request and response surface against the real server: fields real clients send
are honoured, ignored on purpose, or refused with a 400 naming the field; responses parse into the
SDK's own types with the fields where OpenAI puts them.

Decisions this file pins (README "OpenAI SDK and LangChain clients"):
- ignored, because they change nothing seekd computes: `user`, `metadata`, `store`, `service_tier`,
  `prediction` (a latency hint: the output is the same), `parallel_tool_calls` without tools;
- refused (400): `modalities` other than "text" and `audio` (seekd makes no audio, and text alone
  would be silently wrong);
- `logit_bias` is applied to the logits before sampling (greedy included); ids outside the
  vocabulary and values outside [-100, 100] are 400s;
- legacy `functions`/`function_call` are served as tools, answered as `message.function_call`.
"""

from __future__ import annotations

import asyncio
import json

import httpx
import openai
import pytest
from live_server import ServerHandle
from pydantic import BaseModel, ConfigDict, Field

from seekd.server.reasoning import ReasoningTags

from .conftest import MODEL, THINKING

pytestmark = pytest.mark.slow

USER = [{"role": "user", "content": "hello there"}]
FREE = {"ignore_eos": True}  # random weights may pick EOS at once: generate exactly max_tokens


@pytest.fixture(scope="module")
def client(server: ServerHandle) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.api_url, api_key="unused", max_retries=0, timeout=60)


def chat(client: openai.OpenAI, messages: list | None = None, **kwargs):
    kwargs.setdefault("max_tokens", 4)
    return client.chat.completions.create(model=MODEL, messages=messages or USER, **kwargs)


def streamed(client: openai.OpenAI, messages: list | None = None, **kwargs) -> list:
    return list(chat(client, messages, stream=True, **kwargs))


# -- models --------------------------------------------------------------------------------------


def test_models_list_and_retrieve(client: openai.OpenAI) -> None:
    (card,) = client.models.list().data
    assert card.id == MODEL and card.object == "model" and card.owned_by == "seekd"
    assert isinstance(card.created, int) and card.created > 1_600_000_000
    retrieved = client.models.retrieve(MODEL)
    assert retrieved.model_dump() == card.model_dump()
    with pytest.raises(openai.NotFoundError) as info:
        client.models.retrieve("gpt-4o")
    assert info.value.code == "model_not_found" and info.value.param == "model"
    assert "gpt-4o" in info.value.message


def test_unknown_endpoints_are_openai_404s(client: openai.OpenAI, server: ServerHandle) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        client.images.generate(model=MODEL, prompt="hi")
    assert info.value.code == "unknown_url" and "/v1/embeddings" in info.value.message  # lists what is served
    with pytest.raises(openai.NotFoundError) as info:  # embeddings come from their own model
        client.embeddings.create(model=MODEL, input="hi")
    assert info.value.code == "model_not_found" and "use-multilingual-v3" in info.value.message
    with pytest.raises(openai.NotFoundError) as info:
        client.responses.create(model=MODEL, input="hi")
    assert "/v1/chat/completions" in info.value.message  # says what to use instead
    resp = httpx.get(f"{server.api_url}/audio/speech")
    assert resp.status_code == 404 and resp.headers["content-type"] == "application/json"
    assert set(resp.json()["error"]) == {"message", "type", "param", "code"}
    resp = httpx.get(f"{server.api_url}/chat/completions")
    assert resp.status_code == 405 and resp.json()["error"]["code"] == "method_not_allowed"
    assert "POST" in resp.json()["error"]["message"]


def test_a_body_that_is_not_a_json_object_says_how_to_send_one(server: ServerHandle) -> None:
    """curl -d sends form encoding unless told otherwise: the 400 names the header to set."""
    body = json.dumps({"model": MODEL, "messages": USER, "max_tokens": 2}).encode()
    for content, headers in (
        (body, {"content-type": "application/x-www-form-urlencoded"}),
        (b"[1, 2]", {"content-type": "application/json"}),
    ):
        resp = httpx.post(f"{server.api_url}/chat/completions", content=content, headers=headers)
        assert resp.status_code == 400
        error = resp.json()["error"]
        assert "Content-Type: application/json" in error["message"] and error["code"] == "invalid_json"


# -- fields accepted, ignored or refused ---------------------------------------------------------


def test_fields_ignored_on_purpose_change_nothing(client: openai.OpenAI) -> None:
    base = dict(seed=21, temperature=1.0, max_tokens=6, extra_body=FREE)
    reference = chat(client, **base).choices[0].message.content
    ignored = chat(
        client,
        user="u-42",
        metadata={"team": "ops"},
        store=False,
        service_tier="auto",
        prediction={"type": "content", "content": "hello there"},
        parallel_tool_calls=False,
        modalities=["text"],
        **base,
    )
    assert ignored.choices[0].message.content == reference


@pytest.mark.parametrize(
    ("kwargs", "param"),
    [
        ({"modalities": ["text", "audio"]}, "modalities"),
        ({"audio": {"voice": "alloy", "format": "wav"}}, "audio"),
        ({"logit_bias": {"42": 101}}, "logit_bias"),
        ({"logit_bias": {"10000000": 5}}, "logit_bias"),  # past the vocabulary
        ({"logit_bias": {"-3": 5}}, "logit_bias"),
        ({"response_format": {"type": "xml"}}, "response_format"),
        ({"top_logprobs": 2}, "top_logprobs"),  # needs logprobs=true
        ({"function_call": "auto"}, "function_call"),  # needs functions
    ],
)
def test_unsupported_fields_are_400s_naming_the_field(client: openai.OpenAI, kwargs: dict, param: str) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        chat(client, **kwargs)
    assert info.value.status_code == 400 and info.value.param == param
    assert info.value.body["type"] == "invalid_request_error"


def test_logit_bias_forces_and_bans_tokens(client: openai.OpenAI) -> None:
    from seekd.models.demo import _tokenizer_source
    from seekd.text.tokenizer import Tokenizer

    tokenizer = Tokenizer(_tokenizer_source())
    (hello,), (world,) = (tokenizer.encode(w, add_special_tokens=False) for w in ("hello", "world"))
    base = dict(temperature=0.0, max_tokens=4, extra_body=FREE)

    def text(bias: dict[int, float]) -> str:
        return chat(client, logit_bias={str(t): b for t, b in bias.items()}, **base).choices[0].message.content

    assert text({hello: 50, world: 60}) == "world" * 4  # far above any logit of the random model
    assert text({hello: 50, world: -100}) == "hello" * 4  # -100 bans
    assert text({}) not in ("hello" * 4, "world" * 4)


def test_max_completion_tokens_wins_over_max_tokens(client: openai.OpenAI) -> None:
    resp = chat(client, max_tokens=6, max_completion_tokens=3, extra_body=FREE)
    assert resp.usage.completion_tokens == 3
    assert chat(client, max_tokens=None, max_completion_tokens=2, extra_body=FREE).usage.completion_tokens == 2


def test_message_forms_clients_send(client: openai.OpenAI) -> None:
    """Text parts equal the joined string, `name` is accepted, and `developer` is a system turn."""
    kwargs = dict(seed=5, max_tokens=5, extra_body=FREE)
    plain = chat(client, [{"role": "user", "content": "hello there"}], **kwargs)
    parts = chat(
        client,
        [{"role": "user", "content": [{"type": "text", "text": "hello "}, {"type": "text", "text": "there"}]}],
        **kwargs,
    )
    assert parts.usage.prompt_tokens == plain.usage.prompt_tokens
    assert parts.choices[0].message.content == plain.choices[0].message.content
    named = chat(client, [{"role": "user", "content": "hello there", "name": "alice"}], **kwargs)
    assert named.choices[0].finish_reason == "length"
    system = chat(client, [{"role": "system", "content": "Be brief."}, *USER], **kwargs)
    developer = chat(client, [{"role": "developer", "content": "Be brief."}, *USER], **kwargs)
    assert developer.usage.prompt_tokens > plain.usage.prompt_tokens
    assert system.usage.prompt_tokens > plain.usage.prompt_tokens
    history = [
        {"role": "system", "content": [{"type": "text", "text": "Be brief."}]},
        *USER,
        {"role": "assistant", "content": [{"type": "text", "text": "Hi."}]},
        *USER,
    ]
    assert chat(client, history, **kwargs).choices[0].finish_reason == "length"
    said = [*USER, {"role": "assistant", "content": "I can't help with that."}, *USER]
    refused = [
        *USER,
        {"role": "assistant", "content": [{"type": "refusal", "refusal": "I can't help with that."}]},
        *USER,
    ]
    assert chat(client, refused, **kwargs).usage.prompt_tokens == chat(client, said, **kwargs).usage.prompt_tokens
    for part in (
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
        {"type": "refusal", "refusal": "users do not refuse"},
    ):
        with pytest.raises(openai.BadRequestError) as info:
            chat(client, [{"role": "user", "content": [part]}])
        assert info.value.param.startswith("messages.0.content") and part["type"] in info.value.message


def test_seed_determinism_and_penalties(client: openai.OpenAI) -> None:
    base = dict(temperature=1.0, max_tokens=8, extra_body=FREE)
    a, b = chat(client, seed=1, **base), chat(client, seed=1, **base)
    assert a.choices[0].message.content == b.choices[0].message.content
    assert chat(client, seed=2, **base).choices[0].message.content != a.choices[0].message.content
    penalised = chat(client, seed=1, presence_penalty=1.5, frequency_penalty=1.0, **base)
    assert penalised.usage.completion_tokens == 8


def test_stop_string_and_list(client: openai.OpenAI) -> None:
    base = dict(seed=9, temperature=1.0, max_tokens=12, extra_body=FREE)
    full = chat(client, **base).choices[0].message.content
    stop = full[3:5]
    assert stop.strip(), full
    expected = full[: full.index(stop)]
    for value in (stop, [stop, "never-seen-zzz"]):
        resp = chat(client, stop=value, **base).choices[0]
        assert resp.message.content == expected and resp.finish_reason == "stop"
        text = "".join(c.choices[0].delta.content or "" for c in streamed(client, stop=value, **base) if c.choices)
        assert text == expected


# -- logprobs ------------------------------------------------------------------------------------


def test_logprobs_parse_into_the_sdk_types_whole_streamed_and_per_choice(client: openai.OpenAI) -> None:
    base = dict(max_tokens=3, logprobs=True, top_logprobs=3, seed=4, extra_body=FREE)
    whole = chat(client, **base).choices[0]
    content = whole.logprobs.content
    assert len(content) == 3
    assert "".join(t.token for t in content) == whole.message.content
    for token in content:
        assert token.logprob <= 0 and bytes(token.bytes).decode("utf-8", "replace")
        assert [t.logprob for t in token.top_logprobs] == sorted((t.logprob for t in token.top_logprobs), reverse=True)
        assert len(token.top_logprobs) == 3 and token.top_logprobs[0].logprob >= token.logprob
    chunks = [c for c in streamed(client, **base) if c.choices and c.choices[0].logprobs]
    streamed_tokens = [t for c in chunks for t in c.choices[0].logprobs.content]
    assert [t.model_dump() for t in streamed_tokens] == [t.model_dump() for t in content]
    multi = chat(client, n=2, **base)
    assert [len(c.logprobs.content) for c in multi.choices] == [3, 3]


# -- n > 1 ---------------------------------------------------------------------------------------


def test_n_choices_whole_and_streamed(client: openai.OpenAI) -> None:
    base = dict(n=3, seed=8, temperature=1.0, max_tokens=4, extra_body=FREE)
    whole = chat(client, **base)
    assert [c.index for c in whole.choices] == [0, 1, 2]
    assert whole.usage.completion_tokens == 12
    chunks = streamed(client, stream_options={"include_usage": True}, **base)
    texts, finishes = ["", "", ""], [[], [], []]
    for chunk in chunks[:-1]:
        assert chunk.usage is None
        for choice in chunk.choices:
            texts[choice.index] += choice.delta.content or ""
            if choice.finish_reason is not None:
                finishes[choice.index].append(choice.finish_reason)
    assert finishes == [["length"]] * 3
    assert texts == [c.message.content for c in whole.choices]  # seed + i per choice, streamed or not
    assert chunks[-1].choices == [] and chunks[-1].usage.model_dump() == whole.usage.model_dump()


# -- usage ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("thinking", [False, True])
def test_usage_is_the_same_streamed_and_whole(client: openai.OpenAI, thinking: bool) -> None:
    extra = {**FREE, **(THINKING if thinking else {})}
    prompt = [{"role": "user", "content": "usage accounting " * 200}]
    whole = chat(client, prompt, max_tokens=5, extra_body=extra).usage
    last = streamed(client, prompt, max_tokens=5, extra_body=extra, stream_options={"include_usage": True})[-1]
    usage = last.usage
    assert usage.prompt_tokens == whole.prompt_tokens and usage.completion_tokens == whole.completion_tokens == 5
    assert usage.total_tokens == whole.total_tokens == whole.prompt_tokens + 5
    assert usage.prompt_tokens_details.cached_tokens >= 256  # the second time, the prompt's blocks are cached
    expected_reasoning = 5 if thinking else 0  # thinking: all of it is reasoning (random weights)
    assert whole.completion_tokens_details.reasoning_tokens == expected_reasoning
    assert usage.completion_tokens_details.reasoning_tokens == expected_reasoning


def test_stream_without_include_usage_sends_no_usage(client: openai.OpenAI) -> None:
    chunks = streamed(client, extra_body=FREE)
    assert all(c.usage is None for c in chunks) and chunks[-1].choices


@pytest.mark.parametrize(
    ("open_in_prompt", "tokens", "expected"),
    [
        (True, [5, 6, 2, 7, 8], 3),  # reasoning, </think> (counted), then the answer
        (True, [5, 6, 7], 3),  # cut off while reasoning
        (False, [1, 5, 2, 7], 3),  # the model opened the block itself
        (False, [5, 1, 2, 7], 0),  # <think> later than the first token is just text
        (False, [5, 6], 0),
    ],
)
def test_reasoning_token_counter(open_in_prompt: bool, tokens: list[int], expected: int) -> None:
    counter = ReasoningTags(open_in_prompt, start_id=1, end_id=2).counter()
    for token in tokens:  # one token per engine output, as streamed
        counter.feed([token])
    assert counter.tokens == expected
    whole = ReasoningTags(open_in_prompt, start_id=1, end_id=2).counter()
    whole.feed(tokens)
    assert whole.tokens == expected
    assert ReasoningTags(open_in_prompt, start_id=None, end_id=None).counter().tokens == 0


# -- response_format -----------------------------------------------------------------------------


class Ticket(BaseModel):
    model_config = ConfigDict(extra="forbid")
    severity: int = Field(ge=1, le=5)
    team: str = Field(pattern="^(db|net|app)$")


def test_response_format_kinds_and_the_sdk_parse_helper(client: openai.OpenAI) -> None:
    text = chat(client, response_format={"type": "text"}, max_tokens=3, extra_body=FREE)
    assert text.choices[0].finish_reason == "length"
    objects = [chat(client, response_format={"type": "json_object"}, max_tokens=40, seed=s) for s in range(6)]
    done = [r.choices[0].message.content for r in objects if r.choices[0].finish_reason == "stop"]
    assert done and all(isinstance(json.loads(t), dict) for t in done)
    for seed in range(3):
        parsed = client.chat.completions.parse(
            model=MODEL, messages=USER, response_format=Ticket, max_tokens=40, seed=seed
        )
        ticket = parsed.choices[0].message.parsed
        assert isinstance(ticket, Ticket) and 1 <= ticket.severity <= 5
    schema = {"type": "json_schema", "json_schema": {"name": "t", "schema": Ticket.model_json_schema()}}
    chunks = streamed(client, response_format=schema, max_tokens=40, seed=0)
    Ticket.model_validate_json("".join(c.choices[0].delta.content or "" for c in chunks if c.choices))


def test_streamed_tool_call_chunks_hold_one_entry_per_call(client: openai.OpenAI) -> None:
    """The first chunk of a call carries its id, name and first argument text in one entry, as
    OpenAI's do; clients that take `tool_calls[0]` of a chunk miss nothing."""
    tool = {"type": "function", "function": FUNCTIONS[0]}
    base = dict(
        tools=[tool], tool_choice={"type": "function", "function": {"name": "page_oncall"}}, max_tokens=40, seed=3
    )
    whole = chat(client, **base).choices[0].message.tool_calls[0]
    arguments, ids = "", []
    for chunk in streamed(client, **base):
        for choice in chunk.choices:
            deltas = choice.delta.tool_calls or []
            assert len({d.index for d in deltas}) == len(deltas)
            ids += [d.id for d in deltas if d.id]
            arguments += "".join(d.function.arguments or "" for d in deltas)
    assert len(ids) == 1 and json.loads(arguments) == json.loads(whole.function.arguments)


# -- legacy function calling ---------------------------------------------------------------------

FUNCTIONS = [
    {"name": "page_oncall", "description": "Page the on-call engineer", "parameters": Ticket.model_json_schema()}
]


def test_legacy_function_call_whole_and_streamed(client: openai.OpenAI) -> None:
    base = dict(functions=FUNCTIONS, function_call={"name": "page_oncall"}, max_tokens=40, seed=3)
    choice = chat(client, **base).choices[0]
    assert choice.finish_reason == "function_call" and choice.message.tool_calls is None
    assert choice.message.function_call.name == "page_oncall"
    Ticket.model_validate_json(choice.message.function_call.arguments)
    name, arguments, finish = None, "", None
    for chunk in streamed(client, **base):
        for c in chunk.choices:
            assert c.delta.tool_calls is None
            if c.delta.function_call is not None:
                name = name or c.delta.function_call.name
                arguments += c.delta.function_call.arguments or ""
            finish = c.finish_reason or finish
    assert (name, finish) == ("page_oncall", "function_call")
    assert json.loads(arguments) == json.loads(choice.message.function_call.arguments)


def test_legacy_function_history_and_errors(client: openai.OpenAI) -> None:
    call = {"name": "page_oncall", "arguments": json.dumps({"severity": 2, "team": "db"})}
    history = [
        *USER,
        {"role": "assistant", "content": None, "function_call": call},
        {"role": "function", "name": "page_oncall", "content": "paged"},
    ]
    with_result = chat(client, history, functions=FUNCTIONS, extra_body=FREE)
    assert with_result.usage.prompt_tokens > chat(client, functions=FUNCTIONS).usage.prompt_tokens
    with pytest.raises(openai.BadRequestError) as info:
        chat(client, [*USER, {"role": "function", "name": "page_oncall", "content": "x"}], functions=FUNCTIONS)
    assert info.value.param == "messages.1.role"
    tool = {"type": "function", "function": FUNCTIONS[0]}
    with pytest.raises(openai.BadRequestError) as info:
        chat(client, functions=FUNCTIONS, tools=[tool])
    assert info.value.param == "functions"


# -- async client ------------------------------------------------------------------------------


def test_async_client_whole_streamed_and_concurrent(server: ServerHandle, client: openai.OpenAI) -> None:
    base = dict(model=MODEL, messages=USER, max_tokens=5, seed=13, temperature=1.0, extra_body=FREE)
    expected = client.chat.completions.create(**base).choices[0].message.content

    async def run() -> tuple[list[str], str]:
        async with openai.AsyncOpenAI(base_url=server.api_url, api_key="unused", max_retries=0) as aclient:
            many = await asyncio.gather(*(aclient.chat.completions.create(**base) for _ in range(4)))
            text = ""
            async for chunk in await aclient.chat.completions.create(stream=True, **base):
                text += (chunk.choices[0].delta.content or "") if chunk.choices else ""
            return [r.choices[0].message.content for r in many], text

    many, text = asyncio.run(run())
    assert many == [expected] * 4 and text == expected
