"""The forced-call reader: the JSON of tool_choice "required" / named, split at every point, gives
each call's name first and then its arguments in pieces that concatenate to the model's own text of
the value, the same as the whole text read at once (json.loads is the reference)."""

from __future__ import annotations

import json

import pytest

from seekd.sampling_params import StructuredOutputParams
from seekd.server.forced_calls import ForcedCallReader
from seekd.server.tool_calls import ToolSetup
from seekd.server.tool_output import ChoiceOutput
from seekd.text.tool_parsers import ToolCallDelta

ARGS = '{ "city":"Par\\"is }{", "days" :7, "tags": ["a]", {"b": null}], "ok":true }'
REQUIRED = f'[{{"name": "get_weather", "arguments": {ARGS}}}, {{"arguments":{{"unit": "c"}} ,"name":"convert"}}]'


def read(named: str | None, chunks: list[str]) -> tuple[list[tuple[str, str]], list[list[ToolCallDelta]]]:
    """(name, arguments) of each call, and the pieces of every feed."""
    reader = ForcedCallReader(named)
    feeds = [reader.feed(chunk) for chunk in chunks]
    calls: list[list[str]] = []
    for piece in (p for feed in feeds for p in feed):
        if piece.name is not None:
            assert piece.index == len(calls), "a call's name comes first, in index order"
            calls.append([piece.name, ""])
        calls[piece.index][1] += piece.arguments
    return [tuple(c) for c in calls], feeds


def test_named_call_streams_the_arguments_text_at_every_split() -> None:
    text = f"  {ARGS} "
    for i in range(len(text) + 1):
        calls, _ = read("get_weather", [text[:i], text[i:]])
        assert calls == [("get_weather", ARGS)], f"split at {i}"


def test_required_calls_stream_name_then_arguments_at_every_split() -> None:
    expected = [("get_weather", ARGS), ("convert", '{"unit": "c"}')]
    assert [(name, json.loads(args)) for name, args in expected] == [
        (c["name"], c["arguments"]) for c in json.loads(REQUIRED)
    ]
    for i in range(len(REQUIRED) + 1):
        for j in range(i, len(REQUIRED) + 1, 7):
            calls, _ = read(None, [REQUIRED[:i], REQUIRED[i:j], REQUIRED[j:]])
            assert calls == expected, f"split at {i}, {j}"


def test_arguments_come_out_character_by_character_as_generated() -> None:
    """Token by token (here: one character each), every feed inside the arguments releases its text."""
    _, feeds = read(None, list(REQUIRED))
    start = REQUIRED.index(ARGS)
    inside = feeds[start : start + len(ARGS)]
    assert all(len(feed) == 1 and feed[0].name is None and len(feed[0].arguments) == 1 for feed in inside)


def test_a_cut_off_call_keeps_its_name_and_arguments_so_far() -> None:
    cut = REQUIRED[: REQUIRED.index('"days"')]
    calls, _ = read(None, [cut])
    assert calls == [("get_weather", ARGS[: ARGS.index('"days"')])]


@pytest.mark.parametrize("mode", ["named", "required"])
def test_streamed_and_whole_choice_give_the_same_calls(mode: str) -> None:
    setup = ToolSetup(
        mode, [], named="get_weather" if mode == "named" else None, structured=StructuredOutputParams(json_object=True)
    )
    text = ARGS if mode == "named" else REQUIRED
    whole = ChoiceOutput(setup, in_reasoning=False)
    whole.feed(text)
    whole.finish()
    streamed = ChoiceOutput(setup, in_reasoning=False)
    pieces = [streamed.feed(ch) for ch in text] + [streamed.finish()]
    assert sum(1 for delta in pieces for call in delta.tool_calls if call.function.arguments) > len(ARGS) // 2
    assert [(c.function.name, c.function.arguments) for c in streamed.calls] == [
        (c.function.name, c.function.arguments) for c in whole.calls
    ]
