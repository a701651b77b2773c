"""Engine outputs -> what a caller sees of one sampled sequence: its tokens, logprobs, final text and
finish reason. The one output processor of both front doors (the server's `Generation` and the
offline `LLM`), and the one scheme of their engine request ids.

Text is released by the incremental detokenizer: whole UTF-8 characters, and never a stop string.
When a stop string matches, the sequence finishes with reason "stop" at once and its front door
aborts the engine request; outputs still in flight for it are not absorbed.
"""

from __future__ import annotations

from dataclasses import dataclass

from seekd.engine.outputs import EngineOutput, TokenLogprob
from seekd.text.detokenizer import IncrementalDetokenizer


def sequence_request_id(request_id: str, index: int) -> str:
    """Engine request id of sequence `index` of a caller's request (an API request's choices are
    indexed prompt-major: prompt p, sample i of n -> p * n + i)."""
    return f"{request_id}-{index}"


@dataclass
class SequenceDelta:
    """What one engine output added to a sequence."""

    text: str
    logprobs: list[TokenLogprob]
    finish_reason: str | None
    stop_reason: int | str | None
    stopped: bool  # a stop string ended it: the front door aborts its engine request


class SequenceOutput:
    """One sampled sequence as the engine's outputs build it. Without a detokenizer (a model folder
    without a tokenizer) it collects token ids only."""

    def __init__(self, detok: IncrementalDetokenizer | None) -> None:
        self.detok = detok
        self.token_ids: list[int] = []
        self.logprobs: list[TokenLogprob] = []
        self.num_cached_tokens = 0
        self.finish_reason: str | None = None
        self.stop_reason: int | str | None = None
        self._pieces: list[str] = []  # joined on demand: `+=` would copy all the text per token

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def text(self) -> str:
        return "".join(self._pieces)

    def apply(self, out: EngineOutput) -> SequenceDelta:
        self.token_ids.extend(out.new_token_ids)
        self.num_cached_tokens = out.num_cached_tokens
        new_logprobs = list(out.new_logprobs or [])
        self.logprobs.extend(new_logprobs)
        text, stopped = "", False
        if self.detok is not None:
            step = self.detok.push(out.new_token_ids)
            text = step.text
            if step.stop is not None:
                self.finish_reason, self.stop_reason, stopped = "stop", step.stop, True
        if out.finish_reason is not None and not stopped:
            self.finish_reason, self.stop_reason = out.finish_reason, out.stop_reason
            if self.detok is not None:
                text += self.detok.flush()
        if text:
            self._pieces.append(text)
        return SequenceDelta(text, new_logprobs, self.finish_reason, self.stop_reason, stopped)
