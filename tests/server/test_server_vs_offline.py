"""The server against the offline engine and under many concurrent streams (issue 4 acceptance)."""

from __future__ import annotations

import asyncio

import openai
import pytest

from seekd import LLM, SamplingParams
from seekd.config import DEMO_MODEL_NAME

PROMPTS = ["The quick brown fox", "你好，世界！", "DeepSeek runs on your own GPUs", "1 2 3 4 5 6 7 8"]


@pytest.fixture(scope="module")
def offline(data_dir) -> LLM:
    return LLM(data_dir=str(data_dir), num_kv_blocks=256, show_progress=False)


def test_server_greedy_equals_offline_llm(server, offline) -> None:
    params = SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True)
    expected = [o.outputs[0] for o in offline.generate(PROMPTS, params)]
    client = openai.OpenAI(base_url=server.api_url, api_key="unused")
    for prompt, want in zip(PROMPTS, expected, strict=True):
        resp = client.completions.create(
            model=DEMO_MODEL_NAME, prompt=prompt, max_tokens=12, temperature=0.0, extra_body={"ignore_eos": True}
        )
        assert resp.choices[0].text == want.text
        assert resp.usage.completion_tokens == len(want.token_ids)
        assert resp.usage.prompt_tokens == len(offline.tokenizer.encode(prompt))


def test_chat_usage_counts_the_templated_prompt(server, offline) -> None:
    client = openai.OpenAI(base_url=server.api_url, api_key="unused")
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Count to three"}]
    resp = client.chat.completions.create(
        model=DEMO_MODEL_NAME, messages=messages, max_tokens=5, temperature=0.0, extra_body={"ignore_eos": True}
    )
    assert resp.usage.prompt_tokens == len(offline.tokenizer.encode_chat(messages))
    assert resp.usage.completion_tokens == 5


def test_sixty_four_concurrent_streams_finish_complete_and_correct(server, offline) -> None:
    params = SamplingParams(temperature=0.0, max_tokens=8, ignore_eos=True)
    prompts = [f"{PROMPTS[i % len(PROMPTS)]} #{i}" for i in range(64)]
    expected = [o.outputs[0].text for o in offline.generate(prompts, params)]

    async def one(client: openai.AsyncOpenAI, prompt: str) -> tuple[str, int]:
        stream = await client.completions.create(
            model=DEMO_MODEL_NAME,
            prompt=prompt,
            max_tokens=8,
            temperature=0.0,
            stream=True,
            stream_options={"include_usage": True},
            extra_body={"ignore_eos": True},
        )
        text, tokens = [], 0
        async for chunk in stream:
            if chunk.choices:
                text.append(chunk.choices[0].text)
            if chunk.usage:
                tokens = chunk.usage.completion_tokens
        return "".join(text), tokens

    async def run_all() -> list[tuple[str, int]]:
        async with openai.AsyncOpenAI(base_url=server.api_url, api_key="unused", timeout=120) as client:
            return await asyncio.gather(*(one(client, p) for p in prompts))

    results = asyncio.run(run_all())
    assert [text for text, _ in results] == expected
    assert all(tokens == 8 for _, tokens in results)
    assert server.ready_payload()["engine"]["num_requests_running"] == 0
