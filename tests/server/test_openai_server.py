"""Acceptance tests: the real `seekd serve` process (demo model) driven by the real openai client."""

from __future__ import annotations

import asyncio
import threading
import time

import httpx
import openai
import pytest

from seekd.server.logprobs import _unicode_to_byte
from seekd.text.tokenizer import Tokenizer

from .conftest import MAX_REQUEST_BODY_BYTES, ServerHandle

pytestmark = pytest.mark.slow

LONG_PROMPT = " ".join(f"item {i} is number {i * 7 % 13}" for i in range(60))
MULTIBYTE_PROMPT = "你好，世界！我们来聊聊天气 😀🎉👍 和 中文 分词"


@pytest.fixture(scope="module")
def client(server: ServerHandle) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.api_url, api_key="unused", max_retries=0, timeout=60)


@pytest.fixture(scope="module")
def model(client: openai.OpenAI) -> str:
    return client.models.list().data[0].id


def chat(client: openai.OpenAI, model: str, content: str = "hello", **kwargs):
    return client.chat.completions.create(model=model, messages=[{"role": "user", "content": content}], **kwargs)


def stream_chat_text(client: openai.OpenAI, model: str, content: str, **kwargs) -> tuple[str, str, list]:
    reasoning, text, chunks = "", "", []
    for chunk in chat(client, model, content, stream=True, **kwargs):
        chunks.append(chunk)
        for choice in chunk.choices:
            reasoning += getattr(choice.delta, "reasoning_content", None) or ""
            text += choice.delta.content or ""
    return reasoning, text, chunks


def wait_until_idle(server: ServerHandle, timeout: float = 5.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        payload = server.ready_payload()
        engine = payload["engine"]
        if (
            engine.get("num_requests_running") == 0
            and engine.get("num_requests_waiting") == 0
            and payload["requests_in_flight"] == 0
        ):
            return payload
        if time.monotonic() > deadline:
            pytest.fail(f"engine still busy after {timeout} s: {payload}")
        time.sleep(0.05)


# -- basics ------------------------------------------------------------------------------------


def test_health_ready_models_and_openapi(server: ServerHandle, client: openai.OpenAI, model: str) -> None:
    assert httpx.get(f"{server.base_url}/health").json() == {"status": "ok"}
    ready = server.ready_payload()
    assert ready["status"] == "ready" and ready["model"] == model == "seekd-demo-random"
    assert ready["max_model_len"] == 8192
    (card,) = httpx.get(f"{server.base_url}/v1/models").json()["data"]
    assert card["quantization"] == "auto" and card["precision"] in server.log()
    schema = httpx.get(f"{server.base_url}/openapi.json").json()
    assert {"/v1/chat/completions", "/v1/completions", "/v1/models"} <= set(schema["paths"])
    assert "starting on http://127.0.0.1" in server.log() and "ready: serving seekd-demo-random" in server.log()


THINKING = {"thinking": {"type": "enabled"}}  # DeepSeek's API field


def test_chat_completion_splits_reasoning_and_counts_usage(client: openai.OpenAI, model: str) -> None:
    resp = chat(client, model, max_tokens=8, extra_body={"ignore_eos": True, **THINKING})
    (choice,) = resp.choices
    # Thinking mode: the V4 prompt ends with <think>, so the random output is all reasoning.
    assert choice.message.reasoning_content
    assert choice.message.content == ""
    assert choice.finish_reason == "length"
    assert resp.usage.completion_tokens == 8
    assert resp.usage.total_tokens == resp.usage.prompt_tokens + 8
    assert resp.usage.prompt_tokens_details.cached_tokens >= 0


def test_readme_first_example_answers_in_the_demo_models_default_length(client: openai.OpenAI) -> None:
    """No max_tokens: the demo's generation config (256 new tokens) bounds the answer, so the README's
    first request takes seconds; it once ran to the end of the 8k context (about 90 s here)."""
    start = time.monotonic()
    resp = client.with_options(timeout=30).chat.completions.create(
        model="seekd-demo-random",
        messages=[{"role": "user", "content": "Hi"}],
        extra_body={**THINKING, "ignore_eos": True},
    )
    assert resp.usage.completion_tokens == 256 and resp.choices[0].finish_reason == "length"
    assert time.monotonic() - start < 30


def test_thinking_options_choose_the_mode_like_deepseek_and_vllm(client: openai.OpenAI, model: str) -> None:
    """Chat mode by default (the answer is content); thinking via DeepSeek's `thinking`, vLLM's
    `chat_template_kwargs` or a reasoning_effort; usage counts the prompt the encoder built."""
    base = dict(max_tokens=6, extra_body={"ignore_eos": True})
    plain = chat(client, model, **base)
    assert plain.choices[0].message.content and not plain.choices[0].message.reasoning_content
    for extra in (THINKING, {"chat_template_kwargs": {"thinking": True}}, {"reasoning_effort": "high"}):
        resp = chat(client, model, max_tokens=6, extra_body={"ignore_eos": True, **extra})
        assert resp.choices[0].message.reasoning_content and resp.choices[0].message.content == ""
        assert resp.usage.prompt_tokens == plain.usage.prompt_tokens  # </think> became <think>
    effort = chat(client, model, max_tokens=6, extra_body={"ignore_eos": True, **THINKING, "reasoning_effort": "max"})
    assert effort.usage.prompt_tokens > plain.usage.prompt_tokens + 50  # the max-effort instruction
    off = chat(client, model, max_tokens=6, extra_body={"ignore_eos": True, **THINKING, "reasoning_effort": "none"})
    assert off.choices[0].message.content and not off.choices[0].message.reasoning_content
    for bad in ({"thinking": {"type": "sometimes"}}, {"reasoning_effort": "extreme"}):
        with pytest.raises(openai.BadRequestError):
            chat(client, model, max_tokens=2, extra_body=bad)


def test_reasoning_content_sent_back_continues_the_conversation(client: openai.OpenAI, model: str) -> None:
    first = chat(client, model, "2+2?", max_tokens=6, extra_body={"ignore_eos": True, **THINKING}).choices[0]
    turn = {"role": "assistant", "content": "4", "reasoning_content": first.message.reasoning_content}
    messages = [{"role": "user", "content": "2+2?"}, turn, {"role": "user", "content": "and 3+3?"}]
    resp = client.chat.completions.create(
        model=model, messages=messages, max_tokens=4, extra_body={"ignore_eos": True, **THINKING}
    )
    assert resp.choices[0].message.reasoning_content and resp.choices[0].finish_reason == "length"


def test_chat_stream_equals_non_stream_for_same_seed(client: openai.OpenAI, model: str) -> None:
    kwargs = dict(max_tokens=16, seed=11, temperature=1.0, extra_body={"ignore_eos": True})
    whole = chat(client, model, MULTIBYTE_PROMPT, **kwargs)
    reasoning, text, chunks = stream_chat_text(
        client, model, MULTIBYTE_PROMPT, stream_options={"include_usage": True}, **kwargs
    )
    assert reasoning == (whole.choices[0].message.reasoning_content or "")  # chat mode: none
    assert text == whole.choices[0].message.content
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 16
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"


def test_multibyte_text_round_trips_through_the_detokenizer(client: openai.OpenAI, model: str) -> None:
    """CJK/emoji prompts and (random) multi-byte output: streamed pieces concatenate to the whole
    text, and the whole text is exactly the UTF-8 decoding of the generated tokens' bytes."""
    checked = 0
    for seed in range(3):
        kwargs = dict(max_tokens=20, seed=seed, logprobs=True, extra_body={"ignore_eos": True})
        whole = chat(client, model, MULTIBYTE_PROMPT, **kwargs).choices[0]
        text = (whole.message.reasoning_content or "") + whole.message.content
        reasoning, content, _ = stream_chat_text(client, model, MULTIBYTE_PROMPT, **kwargs)
        assert reasoning + content == text
        reference = b"".join(bytes(t.bytes) for t in whole.logprobs.content).decode("utf-8", "replace")
        if "\ufffd" not in reference and "<｜" not in reference:  # random tokens may be invalid UTF-8
            assert text == reference
            assert any(ord(ch) > 127 for ch in text)
            checked += 1
    assert checked >= 1


def test_n_returns_distinct_choices(client: openai.OpenAI, model: str) -> None:
    resp = client.completions.create(
        model=model, prompt="count", n=2, max_tokens=6, seed=3, extra_body={"ignore_eos": True}
    )
    assert [c.index for c in resp.choices] == [0, 1]
    assert resp.choices[0].text != resp.choices[1].text
    assert resp.usage.completion_tokens == 12
    indexes = {c.choices[0].index for c in chat(client, model, n=2, max_tokens=4, stream=True) if c.choices}
    assert indexes == {0, 1}


def test_seed_reproduces_text(client: openai.OpenAI, model: str) -> None:
    kwargs = dict(model=model, prompt="once upon a time", max_tokens=12, temperature=1.0, top_p=0.9)
    a = client.completions.create(seed=42, **kwargs).choices[0].text
    b = client.completions.create(seed=42, **kwargs).choices[0].text
    c = client.completions.create(seed=43, **kwargs).choices[0].text
    assert a == b
    assert a != c


def test_sampling_fields_and_unknown_fields_are_accepted(client: openai.OpenAI, model: str) -> None:
    resp = chat(
        client,
        model,
        max_completion_tokens=5,
        temperature=0.7,
        top_p=0.8,
        presence_penalty=0.5,
        frequency_penalty=0.3,
        user="u-1",
        metadata=None,
        extra_body={
            "top_k": 20,
            "min_p": 0.05,
            "repetition_penalty": 1.2,
            "ignore_eos": True,
            "some_future_field": {"x": 1},
        },
    )
    assert resp.usage.completion_tokens == 5


# -- stop strings and stop tokens --------------------------------------------------------------


def test_stop_string_never_leaks_also_when_streamed(client: openai.OpenAI, model: str) -> None:
    kwargs = dict(model=model, prompt="tell me a story", max_tokens=40, seed=5, extra_body={"ignore_eos": True})
    full = client.completions.create(**kwargs).choices[0].text
    stripped = full.strip()
    middle = len(full) // 2
    stop = full[middle : middle + 3] if len(stripped) >= 8 else stripped[:2]
    assert stop.strip(), full
    expected = full[: full.index(stop)]

    resp = client.completions.create(stop=[stop, "never-appears-xyz"], **kwargs)
    assert resp.choices[0].text == expected
    assert resp.choices[0].finish_reason == "stop"
    assert stop not in resp.choices[0].text

    chunks = [c for c in client.completions.create(stop=stop, stream=True, **kwargs) if c.choices]
    streamed = "".join(c.choices[0].text for c in chunks)
    assert streamed == expected
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_stop_string_in_chat_stream(client: openai.OpenAI, model: str) -> None:
    kwargs = dict(max_tokens=30, seed=9, extra_body={"ignore_eos": True, **THINKING})
    reasoning, _, _ = stream_chat_text(client, model, "hi", **kwargs)
    stop = reasoning[len(reasoning) // 2 : len(reasoning) // 2 + 2]
    assert stop.strip()
    r2, c2, chunks = stream_chat_text(client, model, "hi", stop=[stop], **kwargs)
    assert stop not in r2 + c2
    assert r2 == reasoning[: reasoning.index(stop)]
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"


def test_stop_token_ids(client: openai.OpenAI, model: str, data_dir) -> None:
    kwargs = dict(max_tokens=8, seed=21, logprobs=True, extra_body={"ignore_eos": True})
    tokens = chat(client, model, "stop here", **kwargs).choices[0].logprobs.content
    byte_to_char = {b: ch for ch, b in _unicode_to_byte().items()}
    tokenizer = Tokenizer(data_dir / "models" / "seekd-demo-random")
    # special tokens (the random model may sample them) are not byte-level text: they map to None
    ids = [tokenizer.token_to_id("".join(byte_to_char[b] for b in t.bytes)) for t in tokens]
    position = next(i for i, t in enumerate(ids) if i >= 2 and t is not None and t not in ids[:i])
    stop_id = ids[position]
    extra = {"ignore_eos": True, "stop_token_ids": [stop_id]}
    resp = chat(client, model, "stop here", **{**kwargs, "extra_body": extra})
    assert resp.choices[0].finish_reason == "stop"
    assert resp.choices[0].model_extra["stop_reason"] == stop_id
    assert resp.usage.completion_tokens == position + 1


# -- logprobs and usage ------------------------------------------------------------------------


def test_chat_logprobs_shape(client: openai.OpenAI, model: str) -> None:
    resp = chat(client, model, max_tokens=6, logprobs=True, top_logprobs=3, extra_body={"ignore_eos": True})
    content = resp.choices[0].logprobs.content
    assert len(content) == resp.usage.completion_tokens == 6
    for item in content:
        assert item.logprob <= 0.0 and item.bytes
        assert len(item.top_logprobs) == 3
        assert item.top_logprobs[0].logprob >= item.top_logprobs[-1].logprob
    streamed = [
        lp
        for c in chat(client, model, max_tokens=6, logprobs=True, top_logprobs=2, stream=True)
        if c.choices and c.choices[0].logprobs
        for lp in c.choices[0].logprobs.content
    ]
    assert len(streamed) >= 1 and all(len(lp.top_logprobs) == 2 for lp in streamed)


def test_completion_logprobs_shape(client: openai.OpenAI, model: str) -> None:
    resp = client.completions.create(
        model=model, prompt="abc", max_tokens=5, logprobs=2, extra_body={"ignore_eos": True}
    )
    lp = resp.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == len(lp.text_offset) == 5
    assert all(1 <= len(top) <= 2 for top in lp.top_logprobs)
    assert lp.text_offset[0] == 0 and lp.text_offset == sorted(lp.text_offset)


def test_cached_tokens_reported_for_repeated_prompt(client: openai.OpenAI, model: str) -> None:
    first = client.completions.create(model=model, prompt=LONG_PROMPT, max_tokens=2)
    second = client.completions.create(model=model, prompt=LONG_PROMPT, max_tokens=2)
    assert first.usage.prompt_tokens == second.usage.prompt_tokens > 100
    cached = second.usage.prompt_tokens_details.cached_tokens
    assert 16 <= cached <= second.usage.prompt_tokens
    assert cached % 16 == 0  # whole blocks


# -- concurrency and disconnects ---------------------------------------------------------------


def test_sixteen_parallel_requests_complete(server: ServerHandle, model: str) -> None:
    async def run() -> list:
        async with openai.AsyncOpenAI(base_url=server.api_url, api_key="x", max_retries=0, timeout=60) as aclient:
            calls = [
                aclient.chat.completions.create(
                    model=model,
                    messages=[{"role": "user", "content": f"question {i}"}],
                    max_tokens=8,
                    seed=i,
                    extra_body={"ignore_eos": True},
                )
                for i in range(16)
            ]
            return await asyncio.gather(*calls)

    results = asyncio.run(run())
    assert len(results) == 16
    assert all(r.choices[0].finish_reason == "length" and r.usage.completion_tokens == 8 for r in results)
    wait_until_idle(server)


def test_streaming_client_disconnect_aborts_and_frees_blocks(server: ServerHandle, model: str) -> None:
    body = {"model": model, "prompt": LONG_PROMPT, "max_tokens": 4000, "stream": True, "ignore_eos": True}
    with httpx.stream("POST", f"{server.api_url}/completions", json=body, timeout=30) as resp:
        assert resp.status_code == 200
        lines = resp.iter_lines()
        received = [line for _, line in zip(range(6), lines)]
        assert any(line.startswith("data: {") for line in received)
        busy = server.ready_payload()["engine"]
        assert busy["num_requests_running"] == 1 and busy["kv_cache_usage_perc"] > 0
    idle = wait_until_idle(server)
    assert idle["engine"]["kv_cache_usage_perc"] == 0.0
    assert "aborting request_id=cmpl-" in server.log()


def test_non_streaming_client_disconnect_aborts_and_frees_blocks(server: ServerHandle, model: str) -> None:
    body = {"model": model, "prompt": "go on forever", "max_tokens": 4000, "ignore_eos": True}
    outcome: list[BaseException] = []

    def call() -> None:
        try:
            httpx.post(f"{server.api_url}/completions", json=body, timeout=1.5)
        except BaseException as e:
            outcome.append(e)

    thread = threading.Thread(target=call)
    thread.start()
    saw_running = False
    while thread.is_alive():
        saw_running |= server.ready_payload()["engine"].get("num_requests_running", 0) >= 1
        time.sleep(0.05)
    thread.join()
    assert outcome and isinstance(outcome[0], httpx.ReadTimeout)
    assert saw_running
    idle = wait_until_idle(server)
    assert idle["engine"]["kv_cache_usage_perc"] == 0.0


# -- errors ------------------------------------------------------------------------------------


def _error(resp: httpx.Response) -> dict:
    error = resp.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    return error


def test_unknown_model_is_404(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        chat(client, "gpt-4o", max_tokens=2)
    assert info.value.status_code == 404
    assert "gpt-4o" in info.value.body["message"] and info.value.body["code"] == "model_not_found"


@pytest.mark.parametrize(
    ("kwargs", "param"),
    [
        ({"temperature": -0.5}, "temperature"),
        ({"top_p": 1.5}, "top_p"),
        ({"n": 0}, "n"),
        ({"n": 1000}, "n"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"presence_penalty": 3.0}, "presence_penalty"),
        ({"top_logprobs": 50, "logprobs": True}, "top_logprobs"),
        ({"extra_body": {"stop_token_ids": [-1]}}, None),
        ({"stop": [""]}, None),
    ],
)
def test_invalid_parameters_are_400(client: openai.OpenAI, model: str, kwargs: dict, param: str | None) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        chat(client, model, **{"max_tokens": 2, **kwargs})
    assert info.value.body["type"] == "invalid_request_error"
    if param is not None:
        assert info.value.body["param"] == param


def test_invalid_parameters_are_400_when_streaming(client: openai.OpenAI, model: str) -> None:
    with pytest.raises(openai.BadRequestError):
        client.completions.create(model=model, prompt="x", temperature=5, stream=True)


def test_context_length_exceeded_names_both_numbers(client: openai.OpenAI, model: str) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.completions.create(model=model, prompt="hello there", max_tokens=8191)
    message = info.value.body["message"]
    assert "context length is 8192 tokens" in message and "8191 in the completion" in message
    assert info.value.body["code"] == "context_length_exceeded"
    with pytest.raises(openai.BadRequestError) as info:
        chat(client, model, "word " * 9000, max_tokens=1)
    assert "8192" in info.value.body["message"]


def test_engine_rejection_becomes_400(client: openai.OpenAI, model: str) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.completions.create(model=model, prompt=[10**8], max_tokens=2)
    assert "token ids" in info.value.body["message"]


def test_malformed_json_and_wrong_types_are_400(server: ServerHandle) -> None:
    resp = httpx.post(
        f"{server.api_url}/chat/completions",
        content=b'{"model": "x", "messages": [',
        headers={"content-type": "application/json"},
    )
    assert resp.status_code == 400 and _error(resp)["code"] == "invalid_json"
    resp = httpx.post(f"{server.api_url}/chat/completions", json={"messages": "not a list"})
    assert resp.status_code == 400 and _error(resp)["param"] == "messages"
    resp = httpx.post(f"{server.api_url}/completions", json={"prompt": []})
    assert resp.status_code == 400


def test_body_too_large_is_413(server: ServerHandle) -> None:
    big = {"prompt": "a" * (MAX_REQUEST_BODY_BYTES + 10)}
    resp = httpx.post(f"{server.api_url}/completions", json=big, timeout=30)
    assert resp.status_code == 413
    assert _error(resp)["code"] == "request_too_large"


def test_unsupported_features_are_refused_clearly(client: openai.OpenAI, model: str) -> None:
    tool = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}
    with pytest.raises(openai.BadRequestError) as info:
        chat(client, model, max_tokens=2, tools=[{**tool, "type": "code_interpreter"}])
    assert "only tools of type 'function'" in info.value.body["message"]


def test_server_survives_all_of_the_above(client: openai.OpenAI, model: str, server: ServerHandle) -> None:
    assert chat(client, model, max_tokens=2).choices[0].finish_reason in ("length", "stop")
    assert server.process.poll() is None
    assert "Traceback" not in server.log()
