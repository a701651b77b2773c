"""The byte-level chunk encoders against the pydantic models they stand in for (the reference)."""

from __future__ import annotations

import random

import pytest

from seekd.server.chunks import ChatChunkEncoder, CompletionChunkEncoder
from seekd.server.protocol import (
    ChatChunkChoice,
    ChatCompletionChunk,
    CompletionChoice,
    CompletionResponse,
    DeltaMessage,
)
from seekd.server.streaming import sse

# every ASCII character (controls, quotes, backslash, DEL), separators JSON treats specially in
# JavaScript, accents, CJK, an astral emoji, a combining mark and a BOM
ALPHABET = [chr(c) for c in range(128)] + list("\u2028\u2029é灭绝😀\u0301\ufeff\u00a0")


def random_texts(count: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return ["".join(rng.choice(ALPHABET) for _ in range(rng.randrange(0, 12))) for _ in range(count)]


IDS = [("chatcmpl-0123abcd", "seekd-demo-random"), ('id "quoted" \\ é', "modèle/😀\n")]


@pytest.mark.parametrize(("request_id", "model"), IDS)
def test_chat_text_chunk_is_the_models_json(request_id: str, model: str) -> None:
    encoder = ChatChunkEncoder(request_id, 1_700_000_000, model)
    texts = random_texts(400, seed=1)
    for i, text in enumerate(texts):
        content = text if i % 3 else None
        reasoning = texts[-i - 1] if i % 2 else None
        finish = [None, "stop", "length", "tool_calls"][i % 4]
        index = i % 17
        reference = ChatCompletionChunk(
            id=request_id,
            created=1_700_000_000,
            model=model,
            choices=[
                ChatChunkChoice(
                    index=index, delta=DeltaMessage(content=content, reasoning_content=reasoning), finish_reason=finish
                )
            ],
        )
        # `citations` goes out only on the first chunk of a request with knowledge bases
        expected = sse(reference.model_dump_json(exclude_none=False, exclude={"citations"})).encode()
        assert encoder.text_delta(index, content, reasoning, finish) == expected


@pytest.mark.parametrize(("request_id", "model"), IDS)
def test_completion_text_chunk_is_the_models_json(request_id: str, model: str) -> None:
    encoder = CompletionChunkEncoder(request_id, 5, model)
    for i, text in enumerate(random_texts(400, seed=2)):
        finish = [None, "stop", "length"][i % 3]
        stop_reason = [None, 2**40 + i, '</s>\n"', 0][i % 4]
        reference = CompletionResponse(
            id=request_id,
            created=5,
            model=model,
            choices=[CompletionChoice(index=i, text=text, finish_reason=finish, stop_reason=stop_reason)],
        )
        assert encoder.text(i, text, finish, stop_reason) == sse(reference.model_dump_json()).encode()
