"""LangChain (`langchain-openai`) against the real server, as users wire it: ChatOpenAI and the
completions-style OpenAI LLM with `base_url` and the served model name.

The demo model has random weights, so text is random; what is checked is what a client relies on:
the calls go through, the pieces (messages, tool calls, usage, logprobs) land where LangChain puts
them, and grammar-constrained output parses and validates into the caller's pydantic class.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Coroutine
from typing import Annotated, Any, Literal

import openai
import pytest
from langchain_core.messages import (
    AIMessage,
    AIMessageChunk,
    FunctionMessage,
    HumanMessage,
    SystemMessage,
    ToolMessage,
)
from langchain_core.output_parsers.openai_functions import JsonOutputFunctionsParser, PydanticOutputFunctionsParser
from langchain_core.tools import tool
from langchain_core.utils.function_calling import convert_to_openai_function
from langchain_deepseek import ChatDeepSeek
from langchain_openai import ChatOpenAI, OpenAI
from live_server import ServerHandle
from pydantic import BaseModel, ConfigDict, Field

from .conftest import MODEL, THINKING

pytestmark = pytest.mark.slow


class Verdict(BaseModel):
    """Bounded fields (an enum, a one-digit integer, no extra keys): random weights still finish."""

    model_config = ConfigDict(extra="forbid")
    label: Literal["yes", "no", "maybe"]
    score: int = Field(ge=0, le=9)


class Notes(BaseModel):
    """Everything optional: any JSON object json_mode produces that has no such keys validates."""

    summary: str = ""


@tool
def get_weather(city: Literal["Paris", "Oslo"], days: Annotated[int, Field(ge=1, le=3)]) -> str:
    """Weather forecast for a city."""
    return f"sunny in {city} for {days} days"


# strict=True adds `additionalProperties: false`, as OpenAI's strict mode needs: without it the
# schema allows extra keys, and random weights may write them until max_tokens.
STRICT = {"strict": True}


@pytest.fixture(scope="module")
def run_async() -> Callable[[Coroutine], Any]:
    """One event loop for the module: langchain-openai caches its async HTTP client process-wide,
    and a client made in a loop that asyncio.run closed fails in the next one."""
    loop = asyncio.new_event_loop()
    yield loop.run_until_complete
    loop.close()


def chat_model(server: ServerHandle, **kwargs) -> ChatOpenAI:
    options = {"max_tokens": 6, "max_retries": 0, "timeout": 60, **kwargs}
    return ChatOpenAI(base_url=server.api_url, api_key="unused", model=MODEL, **options)


def add_chunks(chunks: list[AIMessageChunk]) -> AIMessageChunk:
    total = chunks[0]
    for chunk in chunks[1:]:
        total = total + chunk
    return total


HISTORY = [
    SystemMessage("You are terse."),
    HumanMessage("Hi"),
    AIMessage("Hello."),
    HumanMessage("Weather?"),
]


# -- plain chat ----------------------------------------------------------------------------------


def test_invoke_and_stream_agree_for_one_seed(server: ServerHandle) -> None:
    llm = chat_model(server, seed=7, temperature=1.0, max_tokens=8, extra_body={"ignore_eos": True})
    whole = llm.invoke(HISTORY)
    assert isinstance(whole, AIMessage) and whole.content
    assert whole.response_metadata["finish_reason"] == "length"
    assert whole.response_metadata["model_name"] == MODEL
    assert whole.usage_metadata["output_tokens"] == 8
    streamed = add_chunks(list(llm.stream(HISTORY)))
    assert streamed.content == whole.content


def test_async_invoke_stream_and_batch(server: ServerHandle, run_async: Callable) -> None:
    llm = chat_model(server, seed=3, max_tokens=5, extra_body={"ignore_eos": True})

    async def run() -> tuple[AIMessage, list[AIMessageChunk], list[AIMessage]]:
        whole = await llm.ainvoke("hello")
        chunks = [c async for c in llm.astream("hello")]
        batch = await llm.abatch(["hello", "hi there"])
        return whole, chunks, batch

    whole, chunks, abatch = run_async(run())
    assert add_chunks(chunks).content == whole.content
    batch = llm.batch(["hello", "hi there"])
    assert [m.content for m in batch] == [m.content for m in abatch]
    assert batch[0].content == whole.content  # same seed, same prompt
    assert all(m.usage_metadata["output_tokens"] == 5 for m in batch)


def test_stream_usage_matches_invoke_usage(server: ServerHandle) -> None:
    llm = chat_model(server, max_tokens=4, stream_usage=True, extra_body={"ignore_eos": True})
    whole = llm.invoke(HISTORY)
    streamed = add_chunks(list(llm.stream(HISTORY)))
    for usage in (whole.usage_metadata, streamed.usage_metadata):
        assert usage["output_tokens"] == 4
        assert usage["input_tokens"] == whole.usage_metadata["input_tokens"] > 4
        assert usage["total_tokens"] == usage["input_tokens"] + 4
        assert usage["output_token_details"].get("reasoning", 0) == 0  # chat mode: no reasoning


def test_max_completion_tokens_stop_and_temperature_zero(server: ServerHandle) -> None:
    assert (
        chat_model(server, max_tokens=None, max_completion_tokens=3).invoke("hi").usage_metadata["output_tokens"] <= 3
    )
    greedy = chat_model(server, temperature=0, max_tokens=6, extra_body={"ignore_eos": True})
    first = greedy.invoke("same prompt")
    assert greedy.invoke("same prompt").content == first.content
    stop = first.content[2:4]
    assert stop.strip()
    stopped = greedy.invoke("same prompt", stop=[stop])
    assert stopped.content == first.content[: first.content.index(stop)]
    assert stopped.response_metadata["finish_reason"] == "stop"


def test_n_returns_n_generations(server: ServerHandle) -> None:
    llm = chat_model(server, n=3, seed=5, temperature=1.0, extra_body={"ignore_eos": True})
    result = llm.generate([[HumanMessage("hi")]])
    texts = [g.text for g in result.generations[0]]
    assert len(texts) == 3 and len(set(texts)) == 3
    assert result.llm_output["token_usage"]["completion_tokens"] == 18


def test_seed_reproduces_and_differs(server: ServerHandle) -> None:
    def text(seed: int) -> str:
        return chat_model(server, seed=seed, temperature=1.0, extra_body={"ignore_eos": True}).invoke("hi").content

    assert text(11) == text(11)
    assert text(11) != text(12)


def test_logprobs_reach_response_metadata_whole_and_streamed(server: ServerHandle) -> None:
    llm = chat_model(server, logprobs=True, top_logprobs=2, max_tokens=3, extra_body={"ignore_eos": True})
    content = llm.invoke("hi").response_metadata["logprobs"]["content"]
    assert len(content) == 3
    for entry in content:
        assert isinstance(entry["token"], str) and entry["logprob"] <= 0
        assert len(entry["top_logprobs"]) == 2
        assert entry["top_logprobs"][0]["logprob"] >= entry["top_logprobs"][1]["logprob"]
    streamed = add_chunks(list(llm.stream("hi")))
    assert len(streamed.response_metadata["logprobs"]["content"]) == 3


# -- thinking mode -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "options",
    [{"extra_body": THINKING}, {"reasoning_effort": "high"}, {"extra_body": {"thinking": {"type": "enabled"}}}],
)
def test_thinking_mode_counts_reasoning_tokens_and_keeps_content_clean(server: ServerHandle, options: dict) -> None:
    """ChatOpenAI drops the non-standard `reasoning_content` (langchain-openai says so: it targets
    OpenAI's schema only); the reasoning must then not leak into `content`, and the usage still
    says how many tokens went to reasoning."""
    llm = chat_model(server, max_tokens=6, stream_usage=True, **options)
    extra = {"ignore_eos": True, **options.get("extra_body", {})}
    whole = llm.invoke("2+2?", extra_body=extra)
    streamed = add_chunks(list(llm.stream("2+2?", extra_body=extra)))
    for message in (whole, streamed):
        assert message.content == ""  # every generated token was reasoning
        assert message.usage_metadata["output_tokens"] == 6
        assert message.usage_metadata["output_token_details"]["reasoning"] == 6


def test_reasoning_is_reachable_through_the_openai_client_langchain_wraps(server: ServerHandle) -> None:
    """What langchain-openai hides is in the response it reads: `llm.root_client` is the openai client."""
    llm = chat_model(server, max_tokens=4)
    raw = llm.root_client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "2+2?"}],
        max_tokens=4,
        extra_body={"ignore_eos": True, **THINKING},
    )
    assert raw.choices[0].message.reasoning_content
    assert raw.usage.completion_tokens_details.reasoning_tokens == 4


def test_chat_deepseek_carries_reasoning_content_whole_and_streamed(server: ServerHandle) -> None:
    """langchain-deepseek's ChatDeepSeek (ChatOpenAI plus DeepSeek's `reasoning_content`) is the
    LangChain class that shows the reasoning; pointed at seekd it gets it, whole and streamed."""
    llm = ChatDeepSeek(
        api_base=server.api_url,
        api_key="unused",
        model=MODEL,
        max_tokens=6,
        max_retries=0,
        stream_usage=True,
        extra_body={"thinking": {"type": "enabled"}, "ignore_eos": True},
    )
    whole = llm.invoke("2+2?")
    streamed = add_chunks(list(llm.stream("2+2?")))
    for message in (whole, streamed):
        assert message.content == "" and message.additional_kwargs["reasoning_content"]
        assert message.usage_metadata["output_token_details"]["reasoning"] == 6
    plain = ChatDeepSeek(api_base=server.api_url, api_key="unused", model=MODEL, max_tokens=4, max_retries=0)
    answer = plain.invoke("2+2?")
    assert answer.content and not answer.additional_kwargs.get("reasoning_content")


# -- tools ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("tool_choice", ["required", "get_weather", "any"])
def test_forced_tool_calls_parse_into_valid_arguments(server: ServerHandle, tool_choice: str) -> None:
    llm = chat_model(server, max_tokens=60, seed=1).bind_tools(
        [get_weather], tool_choice=tool_choice, parallel_tool_calls=False, **STRICT
    )
    for message in (llm.invoke(HISTORY), add_chunks(list(llm.stream(HISTORY)))):
        assert message.response_metadata["finish_reason"] == "tool_calls"
        assert not message.invalid_tool_calls
        (call,) = message.tool_calls
        assert call["name"] == "get_weather" and call["id"].startswith("call_")
        assert call["args"]["city"] in ("Paris", "Oslo")
        assert get_weather.invoke(call["args"]).startswith("sunny")


class City(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: Literal["Paris", "Oslo"]


class Trip(BaseModel):
    """Nested models: pydantic puts City under `$defs` and refers to it as `#/$defs/City`."""

    model_config = ConfigDict(extra="forbid")
    origin: City
    stops: list[City] = Field(max_length=2)


class Tagged(BaseModel):
    """A set: pydantic writes `uniqueItems`, which the grammar engine cannot enforce."""

    tags: set[Literal["a", "b"]]


def test_nested_models_as_tools_under_any_and_sets_under_auto(server: ServerHandle) -> None:
    """`tool_choice="any"` wraps every tool's schema in one array schema: the nested models' `$defs`
    refs were resolved against that wrapper (a 400, "Pointer '/$defs/City' does not exist"). A tool
    with a set field was refused even under auto, where nothing is enforced."""
    forced = chat_model(server, max_tokens=80, seed=3).bind_tools(
        [Trip, Verdict], tool_choice="any", parallel_tool_calls=False
    )
    for message in (forced.invoke(HISTORY), add_chunks(list(forced.stream(HISTORY)))):
        assert message.response_metadata["finish_reason"] == "tool_calls" and not message.invalid_tool_calls
        (call,) = message.tool_calls
        {"Trip": Trip, "Verdict": Verdict}[call["name"]].model_validate(call["args"])
    auto = chat_model(server, max_tokens=4).bind_tools([Tagged, Trip]).invoke(HISTORY)
    assert auto.response_metadata["finish_reason"] in ("stop", "length", "tool_calls")


def test_required_parallel_calls_cut_by_max_tokens_keep_whole_calls_and_the_cut_ones_start(
    server: ServerHandle,
) -> None:
    """Random weights keep adding calls to the array until max_tokens: the finished calls arrive whole
    and valid, streamed or not, and the call that was cut off keeps what was generated of it (its
    arguments stream as they are written, as with "auto" and as OpenAI sends them); the reason is
    "length" and streamed and whole agree."""
    llm = chat_model(server, max_tokens=70, seed=1).bind_tools([get_weather], tool_choice="required", **STRICT)
    whole, streamed = llm.invoke(HISTORY), add_chunks(list(llm.stream(HISTORY)))
    for message in (whole, streamed):
        assert message.response_metadata["finish_reason"] == "length"
        *finished, _ = message.tool_calls
        assert finished and all(get_weather.invoke(call["args"]) for call in finished)
    *finished_raw, cut_raw = [chunk["args"] for chunk in streamed.tool_call_chunks]
    assert all(json.loads(args) for args in finished_raw)
    with pytest.raises(json.JSONDecodeError):
        json.loads(cut_raw)
    assert [c["args"] for c in streamed.tool_calls] == [c["args"] for c in whole.tool_calls]
    assert len({c["id"] for c in whole.tool_calls}) == len(whole.tool_calls)


def test_auto_tool_choice_runs_and_never_leaves_broken_calls(server: ServerHandle) -> None:
    llm = chat_model(server, max_tokens=20).bind_tools([get_weather], tool_choice="auto")
    message = llm.invoke(HISTORY)
    assert isinstance(message, AIMessage)
    assert message.response_metadata["finish_reason"] in ("stop", "length", "tool_calls")
    assert not message.invalid_tool_calls


def test_tool_message_round_trip(server: ServerHandle) -> None:
    llm = chat_model(server, max_tokens=60, seed=2)
    forced = llm.bind_tools([get_weather], tool_choice="get_weather", **STRICT)
    question = [*HISTORY[:1], HumanMessage("Weather in Paris?")]
    first = forced.invoke(question)
    (call,) = first.tool_calls
    result = ToolMessage(get_weather.invoke(call["args"]), tool_call_id=call["id"])
    answer = llm.bind_tools([get_weather]).invoke([*question, first, result], max_tokens=5)
    assert isinstance(answer, AIMessage)
    assert answer.usage_metadata["input_tokens"] > first.usage_metadata["input_tokens"]


def test_tool_message_for_an_unknown_call_is_a_clear_error(server: ServerHandle) -> None:
    llm = chat_model(server).bind_tools([get_weather])
    with pytest.raises(openai.BadRequestError) as info:
        llm.invoke([HumanMessage("hi"), ToolMessage("42", tool_call_id="call_nope")])
    assert info.value.body["param"] == "messages.1.tool_call_id"


def test_parallel_tool_calls_false_gives_at_most_one_call(server: ServerHandle) -> None:
    llm = chat_model(server, max_tokens=80, seed=4).bind_tools(
        [get_weather], tool_choice="required", parallel_tool_calls=False, **STRICT
    )
    message = llm.invoke(HISTORY)
    assert len(message.tool_calls) == 1


def test_legacy_functions_with_langchains_function_parsers(server: ServerHandle) -> None:
    """Older LangChain chains bind `functions` and read `additional_kwargs["function_call"]`."""
    function = convert_to_openai_function(Verdict)
    llm = chat_model(server, max_tokens=60, seed=6).bind(functions=[function], function_call={"name": function["name"]})
    message = llm.invoke(HISTORY)
    assert message.response_metadata["finish_reason"] == "function_call"
    assert message.additional_kwargs["function_call"]["name"] == "Verdict"
    verdict = (llm | PydanticOutputFunctionsParser(pydantic_schema=Verdict)).invoke(HISTORY)
    assert isinstance(verdict, Verdict)
    streamed = list((llm | JsonOutputFunctionsParser()).stream(HISTORY))
    assert Verdict.model_validate(streamed[-1]) == verdict  # same seed, streamed or not
    result = FunctionMessage(name="Verdict", content="noted")
    answer = chat_model(server).bind(functions=[function]).invoke([*HISTORY, message, result])
    assert answer.usage_metadata["input_tokens"] > message.usage_metadata["input_tokens"]


# -- structured output ---------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["json_schema", "function_calling"])
def test_structured_output_validates_into_the_pydantic_class(
    server: ServerHandle, method: str, run_async: Callable
) -> None:
    for seed in range(3):
        llm = chat_model(server, max_tokens=60, seed=seed, temperature=1.0)
        result = llm.with_structured_output(Verdict, method=method, include_raw=True).invoke(HISTORY)
        assert result["parsing_error"] is None, result
        assert isinstance(result["parsed"], Verdict)
        assert 0 <= result["parsed"].score <= 9
        streamed = list(llm.with_structured_output(Verdict, method=method).stream(HISTORY))
        assert streamed and isinstance(streamed[-1], Verdict)
    awaited = run_async(llm.with_structured_output(Verdict, method=method).ainvoke(HISTORY))
    assert awaited == result["parsed"]  # the last seed's, asked again asynchronously


def test_structured_output_of_a_model_with_a_set_field(server: ServerHandle) -> None:
    """pydantic's set becomes uniqueItems, which the grammar cannot enforce. LangChain's function
    calling sends the schema without strict: it is served with the rest enforced (it was a 400).
    Its json_schema method marks the schema strict, which OpenAI also refuses with uniqueItems."""
    llm = chat_model(server, max_tokens=40, seed=0)
    result = llm.with_structured_output(Tagged, method="function_calling", include_raw=True).invoke(HISTORY)
    if result["raw"].response_metadata["finish_reason"] != "length":
        assert result["parsing_error"] is None and isinstance(result["parsed"], Tagged), result
    with pytest.raises(openai.BadRequestError, match="uniqueItems"):
        llm.with_structured_output(Tagged, method="json_schema").invoke(HISTORY)


def test_structured_output_json_mode_gives_json(server: ServerHandle) -> None:
    """json_mode sends no schema (OpenAI's json_object): the server only guarantees a JSON object,
    so a run that finished must be one, and `{}`-like objects validate into the optional class."""
    parsed = []
    for seed in range(6):
        llm = chat_model(server, max_tokens=40, seed=seed, temperature=1.0)
        try:
            result = llm.with_structured_output(Notes, method="json_mode", include_raw=True).invoke("notes as JSON")
        except openai.LengthFinishReasonError:  # the openai client refuses to parse a cut-off object
            continue
        raw = result["raw"]
        assert isinstance(json.loads(raw.content), dict)
        if result["parsed"] is not None:
            parsed.append(result["parsed"])
    assert parsed and all(isinstance(p, Notes) for p in parsed)


# -- completions-style LLM -----------------------------------------------------------------------


def test_openai_completions_llm(server: ServerHandle, run_async: Callable) -> None:
    llm = OpenAI(
        base_url=server.api_url,
        api_key="unused",
        model=MODEL,
        max_tokens=5,
        seed=9,
        max_retries=0,
        extra_body={"ignore_eos": True},
    )
    text = llm.invoke("Once upon a time")
    assert text and "".join(llm.stream("Once upon a time")) == text
    assert run_async(llm.ainvoke("Once upon a time")) == text
    assert llm.batch(["Once upon a time", "x"])[0] == text
    result = OpenAI(
        base_url=server.api_url,
        api_key="unused",
        model=MODEL,
        max_tokens=3,
        logprobs=2,
        max_retries=0,
        extra_body={"ignore_eos": True},
    ).generate(["x"])
    logprobs = result.generations[0][0].generation_info["logprobs"]
    assert len(logprobs["tokens"]) == 3 and all(len(top) == 2 for top in logprobs["top_logprobs"])
    assert result.llm_output["token_usage"]["completion_tokens"] == 3
    several = OpenAI(
        base_url=server.api_url,
        api_key="unused",
        model=MODEL,
        max_tokens=3,
        n=2,
        seed=1,
        max_retries=0,
        extra_body={"ignore_eos": True},
    ).generate(["x", "y"])
    assert [len(g) for g in several.generations] == [2, 2]
    assert several.llm_output["token_usage"]["completion_tokens"] == 12
