"""Engine logprobs (token ids) -> OpenAI's two logprob formats (chat and legacy completions).

A single byte-level BPE token may hold half of a UTF-8 character, so a token's text alone can be
invalid; its raw `bytes` (what OpenAI reports for exactly this reason) come from undoing the
byte-to-unicode mapping of GPT-2 style vocabularies.
"""

from __future__ import annotations

from functools import lru_cache

from seekd.engine.outputs import TokenLogprob
from seekd.server.protocol import ChatLogprobs, ChatTokenLogprob, CompletionLogprobs, TopLogprob
from seekd.text.tokenizer import Tokenizer


@lru_cache(maxsize=1)
def _unicode_to_byte() -> dict[str, int]:
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    mapping = {chr(b): b for b in printable}
    extra = 0
    for b in range(256):
        if b not in printable:
            mapping[chr(256 + extra)] = b
            extra += 1
    return mapping


class TokenTexts:
    """Cached (text, bytes) of single tokens of one tokenizer."""

    def __init__(self, tokenizer: Tokenizer) -> None:
        self.tokenizer = tokenizer
        self._cache: dict[int, tuple[str, list[int]]] = {}

    def get(self, token_id: int) -> tuple[str, list[int]]:
        hit = self._cache.get(token_id)
        if hit is None:
            hit = self._cache[token_id] = self._compute(token_id)
        return hit

    def _compute(self, token_id: int) -> tuple[str, list[int]]:
        piece = self.tokenizer.id_to_token(token_id) or ""
        table = _unicode_to_byte()
        if piece and all(ch in table for ch in piece) and token_id not in self.tokenizer.all_special_ids:
            raw = bytes(table[ch] for ch in piece)
        else:
            raw = self.tokenizer.decode([token_id], skip_special_tokens=False).encode()
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            text = "".join(f"\\x{b:02x}" for b in raw)
            text = f"bytes:{text}"
        return text, list(raw)


def chat_logprobs(texts: TokenTexts, logprobs: list[TokenLogprob], num_top: int) -> ChatLogprobs:
    content = []
    for lp in logprobs:
        text, raw = texts.get(lp.token_id)
        top = [
            TopLogprob(token=texts.get(t)[0], logprob=v, bytes=texts.get(t)[1])
            for t, v in zip(lp.top_token_ids[:num_top], lp.top_logprobs[:num_top])
        ]
        content.append(ChatTokenLogprob(token=text, logprob=lp.logprob, bytes=raw, top_logprobs=top))
    return ChatLogprobs(content=content)


def completion_logprobs(
    texts: TokenTexts, logprobs: list[TokenLogprob], num_top: int, text_offset: int
) -> CompletionLogprobs:
    """`text_offset` is where the first of these tokens starts in the choice's text."""
    out = CompletionLogprobs()
    for lp in logprobs:
        text, _ = texts.get(lp.token_id)
        out.tokens.append(text)
        out.token_logprobs.append(lp.logprob)
        out.text_offset.append(text_offset)
        text_offset += len(text)
        top = {texts.get(t)[0]: v for t, v in zip(lp.top_token_ids[:num_top], lp.top_logprobs[:num_top])}
        out.top_logprobs.append(top if num_top else None)
    return out
