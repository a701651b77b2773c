"""The DeepSeek prompt encoders run on the server's event loop for every chat request, so their cost
must grow linearly with the conversation: a body under the size limit can hold tens of thousands of
turns. Looking up the last user turn for every message, and walking back over every earlier tool
result for each result (V3.2), made it quadratic: 20,000 one-letter turns froze the V4 demo server
for about a minute, and 32,000 tool results took the V3.2 encoder about 40 s.

The encoders now take those lookups precomputed; `render_message` without them is the reference,
and random conversations must encode identically either way."""

from __future__ import annotations

import random
import time
from collections.abc import Callable

import pytest

from seekd.text import deepseek_encoding, deepseek_v4_encoding


def _call(i: int) -> dict:
    return {"id": f"call_{i}", "type": "function", "function": {"name": "f", "arguments": "{}"}}


def _random_conversation(rng: random.Random) -> list[dict]:
    messages: list[dict] = []
    for _ in range(rng.randint(1, 12)):
        kind = rng.choice(["user", "assistant", "system", "tool", "calls"])
        if kind == "calls":
            calls = [_call(j) for j in range(rng.randint(1, 3))]
            messages.append({"role": "assistant", "content": "a", "tool_calls": calls})
            messages += [
                {"role": "tool", "tool_call_id": c["id"], "content": f"r{j}"}
                for j, c in enumerate(calls[: rng.randint(0, len(calls))])
            ]
        elif kind == "tool":
            messages.append({"role": "tool", "tool_call_id": "call_0", "content": "t"})
        else:
            messages.append({"role": kind, "content": "c", "reasoning_content": "r"})
    return messages


def _outcome(encode: Callable[..., str], *args: object) -> str | tuple[str, str]:
    try:
        return encode(*args)
    except ValueError as e:
        return ("error", str(e))


def _v32_reference(messages: list[dict], thinking: bool) -> str:
    return deepseek_encoding.BOS + "".join(
        deepseek_encoding.render_message(i, messages, thinking) for i in range(len(messages))
    )


def _v4_reference(messages: list[dict], thinking: bool) -> str:
    full = deepseek_v4_encoding.sort_tool_results(deepseek_v4_encoding.merge_tool_messages(messages))
    full = deepseek_v4_encoding.drop_earlier_reasoning(full) if thinking else full
    return deepseek_v4_encoding.BOS + "".join(
        deepseek_v4_encoding.render_message(i, full, thinking, False, None) for i in range(len(full))
    )


@pytest.mark.parametrize("mode", ["chat", "thinking"])
@pytest.mark.parametrize("version", ["v32", "v4"])
def test_encoder_matches_per_message_rendering(version: str, mode: str) -> None:
    encoder, reference_of = {"v32": (deepseek_encoding, _v32_reference), "v4": (deepseek_v4_encoding, _v4_reference)}[
        version
    ]
    rng = random.Random(0 if version == "v32" else 1)
    for _ in range(300):
        messages = _random_conversation(rng)
        reference = _outcome(reference_of, messages, mode == "thinking")
        assert _outcome(encoder.encode_messages, messages, mode) == reference, messages


def test_long_conversations_encode_in_linear_time() -> None:
    turns = [{"role": ("user", "assistant")[i % 2], "content": "a"} for i in range(20_000)]
    calls = [_call(i) for i in range(32_000)]
    results = [{"role": "tool", "tool_call_id": c["id"], "content": "r"} for c in calls]
    tool_loop = [
        {"role": "user", "content": "q"},
        {"role": "assistant", "content": None, "tool_calls": calls},
        *results,
    ]
    start = time.monotonic()
    deepseek_v4_encoding.encode_messages(turns)
    deepseek_encoding.encode_messages(turns)
    deepseek_encoding.encode_messages(tool_loop)
    took = time.monotonic() - start
    assert took < 5, f"{took:.1f} s"  # quadratic: about a minute for each of the first two, 40 s for the third
