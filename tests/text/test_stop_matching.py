"""Stop-string matching by length buckets over the unreleased tail (the fast path) against the plain
`str.find` over every stop string in all the text so far (the reference it replaced): the same
released text, the same stop, on random text fed in random token chunks."""

from __future__ import annotations

import random

import pytest
from tokenizers.decoders import DecodeStream

from seekd.models.demo import ensure_demo_model
from seekd.text.detokenizer import DetokenizerDelta, IncrementalDetokenizer
from seekd.text.tokenizer import Tokenizer

WORDS = ["the", "cat", "sat", "on", "a", "mat", "你好", "世界", "😀", "ab", "abc", "b", "c", " ", "\n", "é"]


@pytest.fixture(scope="module")
def tokenizer(data_dir) -> Tokenizer:
    return Tokenizer(ensure_demo_model(data_dir))


class FindEveryStop:
    """The reference: all decoded text kept in one string, and `str.find` of each stop string from
    `len(longest stop) - 1` characters before the new text."""

    def __init__(self, tokenizer: Tokenizer, stop: list[str], include_stop_str_in_output: bool) -> None:
        self.tokenizer = tokenizer
        self._stream = DecodeStream(skip_special_tokens=True)
        self.stop = [s for s in stop if s]
        self.include_stop = include_stop_str_in_output
        self._holdback = max((len(s) for s in self.stop), default=1) - 1
        self._text = ""
        self._emitted = 0
        self.stopped: str | None = None

    @property
    def output_text(self) -> str:
        return self._text[: self._emitted]

    def push(self, token_ids: list[int]) -> DetokenizerDelta:
        if self.stopped is not None:
            return DetokenizerDelta("")
        searched = len(self._text)
        for token_id in token_ids:
            self._text += self._stream.step(self.tokenizer.backend, token_id) or ""
        best: tuple[int, str] | None = None
        for stop in self.stop:
            index = self._text.find(stop, max(0, searched - self._holdback))
            if index != -1 and (best is None or index < best[0]):
                best = (index, stop)
        if best is not None:
            self._text = self._text[: best[0] + len(best[1]) if self.include_stop else best[0]]
            self.stopped = best[1]
            return DetokenizerDelta(self._release(len(self._text)), best[1])
        return DetokenizerDelta(self._release(len(self._text) - self._holdback))

    def flush(self) -> str:
        return self._release(len(self._text))

    def _release(self, upto: int) -> str:
        if upto <= self._emitted:
            return ""
        delta, self._emitted = self._text[self._emitted : upto], upto
        return delta


def run(
    detok: IncrementalDetokenizer | FindEveryStop, ids: list[int], chunks: list[int]
) -> tuple[list[str], str | None, str]:
    pieces, stop, i = [], None, 0
    for size in chunks:
        delta = detok.push(ids[i : i + size])
        pieces.append(delta.text)
        stop = stop or delta.stop
        i += size
    pieces.append(detok.flush())
    return pieces, stop, detok.output_text


def test_length_buckets_match_find_on_random_text(tokenizer: Tokenizer) -> None:
    rng = random.Random(7)
    matched = 0
    for _ in range(300):
        text = "".join(rng.choice(WORDS) for _ in range(rng.randint(1, 30)))
        ids = tokenizer.encode(text, add_special_tokens=False)
        stops = []
        for _ in range(rng.randint(1, 6)):
            a = rng.randrange(len(text))
            stops.append(text[a : a + rng.randint(1, 6)] if rng.random() < 0.7 else rng.choice(WORDS) + "z")
        chunks = []
        while sum(chunks) < len(ids):
            chunks.append(rng.randint(1, 3))
        include = rng.random() < 0.3
        fast = run(IncrementalDetokenizer(tokenizer, stop=stops, include_stop_str_in_output=include), ids, chunks)
        reference = run(FindEveryStop(tokenizer, stop=stops, include_stop_str_in_output=include), ids, chunks)
        assert fast == reference, (text, stops, chunks)
        matched += reference[1] is not None
    assert matched > 150  # most cases exercise a match, not only the no-match path


def test_the_one_matching_stop_among_eighty_thousand_is_found(tokenizer: Tokenizer) -> None:
    ids = tokenizer.encode("the cat sat on a mat " * 4, add_special_tokens=False)
    stops = [f"zq{i}" for i in range(80_000)] + ["on a mat the", "n a"]
    pieces, stop, text = run(IncrementalDetokenizer(tokenizer, stop=stops), ids, [1] * len(ids))
    assert (stop, text, "".join(pieces)) == ("n a", "the cat sat o", "the cat sat o")
