"""The R1 reasoning parser: both prompt styles, and tags split at every possible chunk boundary."""

from __future__ import annotations

import pytest

from seekd.server.reasoning import ReasoningParser, prompt_opens_reasoning, split_reasoning


def feed_in_chunks(text: str, in_reasoning: bool, size: int) -> tuple[str, str]:
    parser = ReasoningParser(in_reasoning)
    reasoning = content = ""
    for i in range(0, len(text), size):
        delta = parser.feed(text[i : i + size])
        reasoning, content = reasoning + delta.reasoning, content + delta.content
    rest = parser.finish()
    return reasoning + rest.reasoning, content + rest.content


@pytest.mark.parametrize(
    ("text", "in_reasoning", "expected"),
    [
        ("let me think</think>\n\nThe answer is 4.", True, ("let me think", "The answer is 4.")),
        ("<think>\nhmm</think>Answer", False, ("\nhmm", "Answer")),
        ("<think>still thinking", False, ("still thinking", "")),
        ("plain answer, no reasoning", False, ("", "plain answer, no reasoning")),
        ("cut off mid-reasoning </thi", True, ("cut off mid-reasoning </thi", "")),
        ("a < b and </ is not a tag</think>ok", True, ("a < b and </ is not a tag", "ok")),
        ("你好😀</think>答案🎉", True, ("你好😀", "答案🎉")),
    ],
)
def test_split_is_the_same_for_every_chunking(text: str, in_reasoning: bool, expected: tuple[str, str]) -> None:
    whole = split_reasoning(text, in_reasoning)
    assert (whole.reasoning, whole.content) == expected
    for size in range(1, len(text) + 1):
        assert feed_in_chunks(text, in_reasoning, size) == expected


def test_prompt_opens_reasoning_only_for_an_unclosed_think() -> None:
    assert prompt_opens_reasoning("<｜User｜>hi<｜Assistant｜><think>\n")
    assert not prompt_opens_reasoning("<｜User｜>hi<｜Assistant｜>")
    assert not prompt_opens_reasoning("<think>old</think> <｜User｜>hi<｜Assistant｜>")


def test_nothing_is_released_while_a_tag_may_be_forming() -> None:
    parser = ReasoningParser(in_reasoning=True)
    assert parser.feed("thought </th").reasoning == "thought "
    delta = parser.feed("ink>answer")
    assert (delta.reasoning, delta.content) == ("", "answer")
