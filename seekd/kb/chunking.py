"""Sections to chunks: never across a heading, cut between sentences (Chinese 。！？； and Latin
.!? alike), so a passage that comes back as a citation reads as whole sentences."""

from __future__ import annotations

import re
from dataclasses import dataclass

from seekd.kb.parsers import Section

DEFAULT_MAX_CHARS = 500
# After a CJK stop (no space follows it), or after a Latin stop followed by white space; or at a newline.
_SENTENCE_END = re.compile(r"(?<=[。！？；!?;])|(?<=[.…])(?=\s)|\n+")


@dataclass(frozen=True)
class Chunk:
    heading: str
    text: str

    @property
    def indexed_text(self) -> str:
        """What embeddings and BM25 see: the heading is part of the passage's meaning."""
        return f"{self.heading}\n{self.text}" if self.heading else self.text


def split_sentences(text: str) -> list[str]:
    return [s.strip() for s in _SENTENCE_END.split(text) if s and s.strip()]


def chunk_sections(sections: list[Section], max_chars: int = DEFAULT_MAX_CHARS) -> list[Chunk]:
    chunks: list[Chunk] = []
    for section in sections:
        current = ""
        for sentence in split_sentences(section.text):
            for piece in _hard_split(sentence, max_chars):
                joined = _join(current, piece)
                if current and len(joined) > max_chars:
                    chunks.append(Chunk(section.heading, current))
                    current = piece
                else:
                    current = joined
        if current:
            chunks.append(Chunk(section.heading, current))
    return chunks


def _join(left: str, right: str) -> str:
    if not left:
        return right
    # No space between CJK sentences; one between Latin ones.
    sep = "" if _is_cjk(left[-1]) or _is_cjk(right[0]) else " "
    return left + sep + right


def _is_cjk(ch: str) -> bool:
    return "\u3000" <= ch <= "\u9fff" or "\uff00" <= ch <= "\uffef"


def _hard_split(sentence: str, max_chars: int) -> list[str]:
    """A sentence longer than a chunk (a table row, a run-on line) is cut at white space if it can be."""
    pieces = []
    while len(sentence) > max_chars:
        cut = sentence.rfind(" ", max_chars // 2, max_chars)
        cut = cut if cut > 0 else max_chars
        pieces.append(sentence[:cut].strip())
        sentence = sentence[cut:].strip()
    return [*pieces, sentence] if sentence else pieces
