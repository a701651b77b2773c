"""Stop-string matching by length buckets (the fast path) against the plain `str.find` over every
stop string (the reference it replaced): the same released text, the same stop, on random text fed
in random token chunks."""

from __future__ import annotations

import random

import pytest

from seekd.models.demo import ensure_demo_model
from seekd.text.detokenizer import IncrementalDetokenizer
from seekd.text.tokenizer import Tokenizer

WORDS = ["the", "cat", "sat", "on", "a", "mat", "你好", "世界", "😀", "ab", "abc", "b", "c", " ", "\n", "é"]


@pytest.fixture(scope="module")
def tokenizer(data_dir) -> Tokenizer:
    return Tokenizer(ensure_demo_model(data_dir))


class FindEveryStop(IncrementalDetokenizer):
    """The reference: `str.find` of each stop string from `len(longest stop) - 1` characters
    before the new text."""

    def _find_stop(self, searched: int) -> tuple[int, str] | None:
        start = max(0, searched - self._holdback)
        best: tuple[int, str] | None = None
        for stop in self.stop:
            index = self._text.find(stop, start)
            if index != -1 and (best is None or index < best[0]):
                best = (index, stop)
        return best


def run(detok: IncrementalDetokenizer, ids: list[int], chunks: list[int]) -> tuple[list[str], str | None, str]:
    pieces, stop, i = [], None, 0
    for size in chunks:
        delta = detok.push(ids[i:i + size])
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
            stops.append(text[a:a + rng.randint(1, 6)] if rng.random() < 0.7 else rng.choice(WORDS) + "z")
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
