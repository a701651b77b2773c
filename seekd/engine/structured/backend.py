"""llguidance behind the engine: one tokenizer, compiled grammars cached by constraint text, one
matcher per request (each choice of n>1 is its own request), and the batch bitmask fill."""

from __future__ import annotations

import logging
from collections import OrderedDict
from pathlib import Path

import llguidance
import torch

from seekd.engine.structured.grammar import GrammarError, to_grammar
from seekd.sampling_params import StructuredOutputParams

logger = logging.getLogger(__name__)

_CACHE_SIZE = 256


class RequestGrammar:
    """A request's matcher and how many of its output tokens it has consumed. Output tokens are
    the truth: the matcher catches up on them (a resumed request replays what it produced before
    a restart), so preemption by recompute, which keeps output_token_ids, needs no rollback.
    With `start_after` the grammar is inactive (masks nothing, never finishes) until that token."""

    def __init__(self, matcher: llguidance.LLMatcher, start_after: int | None = None) -> None:
        self.matcher = matcher
        self.num_consumed = 0
        self.start_after = start_after
        self.active = start_after is None

    def advance(self, output_token_ids: list[int]) -> None:
        for token in output_token_ids[self.num_consumed :]:
            self.num_consumed += 1
            if not self.active:
                self.active = token == self.start_after
            elif not self.matcher.consume_token(token):
                logger.warning("grammar rejected token %d: %s", token, self.matcher.get_error())

    @property
    def finished(self) -> bool:
        """The grammar is complete and allows nothing more (or broke, which also ends the request)."""
        return self.active and (self.matcher.is_stopped() or self.matcher.is_error())


class StructuredBackend:
    def __init__(
        self, tokenizer_json: str, vocab_size: int, eos_token_ids: frozenset[int], threads: int | None = None
    ) -> None:
        """`vocab_size` is the logits width (the model's, often above the tokenizer's): ids past
        the tokenizer are never allowed. `threads` fill masks in parallel (default: llguidance's,
        80% of the cores)."""
        self.vocab_size = vocab_size
        self.tokenizer = llguidance.LLTokenizer(
            tokenizer_json, n_vocab=vocab_size, eos_token=sorted(eos_token_ids) or None
        )
        self.executor = llguidance.LLExecutor(num_threads=threads)
        self._templates: OrderedDict[tuple[str, str], llguidance.LLMatcher] = OrderedDict()

    @classmethod
    def from_folder(cls, folder: Path, vocab_size: int, eos_token_ids: frozenset[int]) -> StructuredBackend:
        path = folder / "tokenizer.json"
        if not path.is_file():
            raise ValueError(f"structured output needs the model's tokenizer.json; {folder} has none")
        return cls(path.read_text(), vocab_size, eos_token_ids)

    def matcher(self, params: StructuredOutputParams) -> RequestGrammar:
        """A fresh matcher; raises GrammarError when the constraint does not compile."""
        key = params.cache_key
        template = self._templates.get(key)
        if template is None:
            template = llguidance.LLMatcher(self.tokenizer, to_grammar(params), log_level=0)
            if template.is_error():
                raise GrammarError(f"structured output does not compile: {template.get_error()}")
            self._templates[key] = template
            if len(self._templates) > _CACHE_SIZE:
                self._templates.popitem(last=False)
        else:
            self._templates.move_to_end(key)
        return RequestGrammar(template.deep_copy(), params.start_after_token)

    def fill_bitmask(self, grammars: list[RequestGrammar | None], bitmask: torch.Tensor) -> None:
        """Row i of `bitmask` (int32 [B, ceil(V/32)], host memory) gets the allowed tokens of
        grammars[i]; rows without an active grammar allow everything. One parallel call for the batch."""
        bitmask.fill_(-1)
        rows = [(g.matcher, i) for i, g in enumerate(grammars) if g is not None and g.active]
        if rows:
            one_row = bitmask.shape[1] * 4
            self.executor.unsafe_compute_mask_ptr(rows, bitmask.data_ptr(), one_row, bitmask.shape[0])


def bitmask_width(vocab_size: int) -> int:
    return (vocab_size + 31) // 32
