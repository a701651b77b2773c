"""BM25 over chunks, with Chinese word segmentation by `rjieba` (the Rust jieba-rs port, maintained;
the Python `jieba` has had no release since 2020). Search-mode segmentation also emits the words
inside compounds (服务器 -> 服务, 服务器), so a question need not use the document's exact compound.

An in-memory inverted index that takes additions and removals one chunk at a time, so incremental
re-ingest never rebuilds it; the store keeps each chunk's terms and rebuilds it on open.
"""

from __future__ import annotations

import math
import re
from collections import Counter

import rjieba

K1 = 1.2
B = 0.75
_WORD = re.compile(r"[\w\u3400-\u9fff]", re.UNICODE)
_CHINESE_STOPWORDS = (
    "的 了 是 在 和 与 及 或 也 都 就 而 之 其 这 那 有 为 以 于 对 中 吗 呢 吧 啊 什么 多少 哪里 怎么 如何"
)
_ENGLISH_STOPWORDS = (
    "a an the of to in on at for and or is are was were be been by with as it its this that what which who "
    "how when where do does did can i you we my our your from"
)
STOPWORDS = frozenset(_CHINESE_STOPWORDS.split()) | frozenset(_ENGLISH_STOPWORDS.split())


def tokenize(text: str) -> list[str]:
    """Lower-cased search-mode words, punctuation and stop words dropped."""
    return [
        t
        for t in (w.strip().lower() for w in rjieba.cut_for_search(text))
        if t and t not in STOPWORDS and _WORD.search(t)
    ]


class BM25Index:
    def __init__(self) -> None:
        self._postings: dict[str, dict[int, int]] = {}
        self._lengths: dict[int, int] = {}
        self._total = 0

    def __len__(self) -> int:
        return len(self._lengths)

    def add(self, chunk_id: int, terms: list[str]) -> None:
        if chunk_id in self._lengths:
            self.remove(chunk_id, terms)
        for term, tf in Counter(terms).items():
            self._postings.setdefault(term, {})[chunk_id] = tf
        self._lengths[chunk_id] = len(terms)
        self._total += len(terms)

    def remove(self, chunk_id: int, terms: list[str]) -> None:
        """`terms`: the ones the chunk was added with."""
        if self._lengths.pop(chunk_id, None) is None:
            return
        self._total -= len(terms)
        for term in set(terms):
            posting = self._postings.get(term)
            if posting is not None:
                posting.pop(chunk_id, None)
                if not posting:
                    del self._postings[term]

    def search(self, terms: list[str], k: int, min_coverage: float = 0.0) -> list[tuple[int, float]]:
        """Best `k` (chunk id, score), highest first; chunks sharing no term are not returned, nor
        those whose matched terms carry less than `min_coverage` of the query's IDF weight (a
        "minimum should match" in IDF terms)."""
        n = len(self._lengths)
        if not n or not terms:
            return []
        avg = self._total / n
        scores: dict[int, float] = {}
        covered: dict[int, float] = {}
        total_idf = 0.0
        for term in set(terms):
            posting = self._postings.get(term, {})
            idf = math.log(1 + (n - len(posting) + 0.5) / (len(posting) + 0.5))
            total_idf += idf
            lengths = self._lengths
            for chunk_id, tf in posting.items():
                norm = K1 * (1 - B + B * lengths[chunk_id] / avg)
                scores[chunk_id] = scores.get(chunk_id, 0.0) + idf * tf * (K1 + 1) / (tf + norm)
                covered[chunk_id] = covered.get(chunk_id, 0.0) + idf
        floor = min_coverage * total_idf
        best = sorted(
            ((chunk_id, score) for chunk_id, score in scores.items() if covered[chunk_id] >= floor),
            key=lambda item: item[1],
            reverse=True,
        )
        return best[:k]
