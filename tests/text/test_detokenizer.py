from __future__ import annotations

import pytest

from seekd.models.demo import ensure_demo_model
from seekd.text.detokenizer import IncrementalDetokenizer
from seekd.text.tokenizer import Tokenizer


@pytest.fixture(scope="module")
def tokenizer(data_dir) -> Tokenizer:
    return Tokenizer(ensure_demo_model(data_dir))


def stream(detok: IncrementalDetokenizer, ids: list[int]) -> list[str]:
    pieces = [detok.push([t]).text for t in ids]
    pieces.append(detok.flush())
    return pieces


def test_multibyte_characters_split_across_tokens_are_never_broken(tokenizer):
    text = "Grüße 你好世界 🎉🎉 naïve ok 👩‍👩‍👧"
    ids = tokenizer.encode(text, add_special_tokens=False)
    pieces = stream(IncrementalDetokenizer(tokenizer), ids)
    assert "".join(pieces) == text
    assert all("\ufffd" not in p for p in pieces)
    assert len(ids) > len(text.split())  # the emoji really are split over several tokens


def test_stop_string_spanning_tokens_never_leaks(tokenizer):
    text = "alpha beta STOP_HERE gamma"
    ids = tokenizer.encode(text, add_special_tokens=False)
    detok = IncrementalDetokenizer(tokenizer, stop=["STOP_HERE"])
    emitted = []
    for t in ids:
        step = detok.push([t])
        emitted.append(step.text)
        if step.stop:
            break
    assert "".join(emitted) == "alpha beta "
    assert detok.stopped == "STOP_HERE"
    assert all("STOP" not in e for e in emitted)


def test_stop_string_can_be_included_on_request(tokenizer):
    ids = tokenizer.encode("one two three four", add_special_tokens=False)
    detok = IncrementalDetokenizer(tokenizer, stop=["three"], include_stop_str_in_output=True)
    text = "".join(detok.push([t]).text for t in ids)
    assert text == "one two three"


def test_earliest_of_several_stop_strings_wins(tokenizer):
    ids = tokenizer.encode("x: b then a", add_special_tokens=False)
    detok = IncrementalDetokenizer(tokenizer, stop=["a", "b"])
    assert detok.push(ids).text == "x: " and detok.stopped == "b"


def test_special_tokens_are_skipped_or_kept(tokenizer):
    ids = [tokenizer.bos_token_id, *tokenizer.encode("hi", add_special_tokens=False)]
    assert "".join(stream(IncrementalDetokenizer(tokenizer), ids)) == "hi"
    kept = "".join(stream(IncrementalDetokenizer(tokenizer, skip_special_tokens=False), ids))
    assert kept == tokenizer.bos_token + "hi"
