"""Incremental detokenization with stop strings.

Text is released only when it is final: bytes of a multi-byte UTF-8 character split across tokens
are held until complete (`tokenizers`' DecodeStream), and the last `len(longest stop) - 1`
characters are held back so that a stop string spanning several tokens never leaks out.

Stop strings are looked up by length in a dict, only at positions where a match would end in the
text a step added: a step costs (new characters x distinct stop lengths) lookups, so a request with
80,000 stop strings no longer stalls the server's event loop (and every other client) for seconds.
"""

from __future__ import annotations

from dataclasses import dataclass

from tokenizers.decoders import DecodeStream

from seekd.text.tokenizer import Tokenizer


@dataclass
class DetokenizerDelta:
    text: str  # new final text since the last call
    stop: str | None = None  # the stop string that matched, if one did


class IncrementalDetokenizer:
    def __init__(
        self,
        tokenizer: Tokenizer,
        skip_special_tokens: bool = True,
        stop: list[str] | None = None,
        include_stop_str_in_output: bool = False,
    ) -> None:
        self.tokenizer = tokenizer
        self._stream = DecodeStream(skip_special_tokens=skip_special_tokens)
        self.stop = [s for s in (stop or []) if s]
        self._rank_by_length: dict[int, dict[str, int]] = {}  # a tie goes to the earlier in `stop`
        for rank, s in enumerate(self.stop):
            self._rank_by_length.setdefault(len(s), {}).setdefault(s, rank)
        self.include_stop = include_stop_str_in_output
        self._holdback = max((len(s) for s in self.stop), default=1) - 1
        # Released text is kept in pieces and only the unreleased tail (at most the holdback plus the
        # newest step) is a string that grows: appending to all the text so far copied it on every
        # token, which cost ~20 µs per token 30k tokens into a long reasoning output.
        self._released: list[str] = []
        self._tail = ""
        self.stopped: str | None = None

    @property
    def output_text(self) -> str:
        return "".join(self._released)

    def push(self, token_ids: list[int]) -> DetokenizerDelta:
        """Feed new tokens; returns the text that became final. After a stop string matched,
        further tokens are ignored."""
        if self.stopped is not None:
            return DetokenizerDelta("", None)
        searched = len(self._tail)
        for token_id in token_ids:
            piece = self._stream.step(self.tokenizer.backend, token_id)
            if piece:
                self._tail += piece
        if self.stop:
            hit = self._find_stop(searched)
            if hit is not None:
                index, stop = hit
                end = index + len(stop) if self.include_stop else index
                self._tail = self._tail[:end]
                self.stopped = stop
                return DetokenizerDelta(self._release(len(self._tail)), stop)
        return DetokenizerDelta(self._release(len(self._tail) - self._holdback))

    def flush(self) -> str:
        """At the end of generation nothing more can complete a stop string: release the rest."""
        return self._release(len(self._tail))

    def _find_stop(self, searched: int) -> tuple[int, str] | None:
        """The earliest stop string that ends after `searched` (one ending earlier would have
        matched in an earlier step), as (start index, stop string), in the unreleased tail: a match
        that ends in new text starts at most holdback characters before it, which were held back."""
        text = self._tail
        best: tuple[int, int] | None = None  # (start index, rank)
        for length, ranks in self._rank_by_length.items():
            for index in range(max(0, searched - length + 1), len(text) - length + 1):
                rank = ranks.get(text[index : index + length])
                if rank is not None:
                    if best is None or (index, rank) < best:
                        best = (index, rank)
                    break  # later starts of this length cannot be earlier
        return None if best is None else (best[0], self.stop[best[1]])

    def _release(self, upto: int) -> str:
        """The first `upto` characters of the tail, which leave it."""
        if upto <= 0:
            return ""
        delta, self._tail = self._tail[:upto], self._tail[upto:]
        self._released.append(delta)
        return delta
