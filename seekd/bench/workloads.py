"""Benchmark workloads: what each request asks for, independent of the endpoint it is sent to.

Prompts are built so that their token counts are known: with a tokenizer, from whole-word vocabulary
entries (" word" tokens re-encode to exactly one token each, so N words are N tokens); without one,
from common English words (about one token each for most tokenizers, but uncounted).
"""

from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from seekd.text.tokenizer import Tokenizer

# Used only when no tokenizer is given: short, common words that most BPE vocabularies hold whole.
COMMON_WORDS = (
    "the of and to in is was for on that with as by at from his her it an were are which this be or "
    "has had not but first one their its new after who they two have been more other all she time "
    "year also into only over most can may when some these would school city between during part "
    "such three world state where while known work life under early then both him later made many "
    "name since high area being used group each well system team small long music found four game"
)


@dataclass(frozen=True)
class BenchRequest:
    """One request of a workload. `system` is a shared prefix (a system message in chat; prepended
    to the prompt for completions). `prompt_len` is the token count of system + text when a
    tokenizer counted it, else None."""

    text: str
    max_tokens: int | None
    system: str | None = None
    messages: list[dict[str, Any]] | None = None
    prompt_len: int | None = None

    @property
    def prompt(self) -> str:
        return (self.system or "") + self.text

    def chat_messages(self) -> list[dict[str, Any]]:
        if self.messages is not None:
            return self.messages
        system = [{"role": "system", "content": self.system}] if self.system else []
        return [*system, {"role": "user", "content": self.text}]


class TextSource:
    """Random text of a requested number of tokens."""

    def __init__(self, tokenizer: Tokenizer | None) -> None:
        self.tokenizer = tokenizer
        if tokenizer is None:
            self.words = [" " + w for w in COMMON_WORDS.split()]
            return
        self.words = []
        for token_id in range(tokenizer.vocab_size):
            if token_id in tokenizer.all_special_ids:
                continue
            piece = tokenizer.decode([token_id])
            if len(piece) >= 3 and piece[0] == " " and piece[1:].isascii() and piece[1:].isalpha():
                self.words.append(piece)
        if len(self.words) < 100:
            raise ValueError("the tokenizer has too few whole-word tokens to build prompts; run without --tokenizer")

    def sample(self, rng: random.Random, num_tokens: int) -> str:
        text = "".join(rng.choice(self.words) for _ in range(num_tokens))
        if self.tokenizer is None:
            return text
        ids = self.tokenizer.encode(text, add_special_tokens=False)
        if len(ids) != num_tokens:  # a rare merge across words: cut to the exact count
            text = self.tokenizer.decode(ids[:num_tokens])
        return text

    def count(self, text: str) -> int | None:
        if self.tokenizer is None:
            return None
        return len(self.tokenizer.encode(text, add_special_tokens=False))


def _length(rng: random.Random, mean: int, range_ratio: float) -> int:
    low, high = round(mean * (1 - range_ratio)), round(mean * (1 + range_ratio))
    return max(1, rng.randint(low, high))


def random_requests(
    source: TextSource,
    num_prompts: int,
    input_len: int,
    output_len: int,
    range_ratio: float,
    seed: int,
    output_range_ratio: float | None = None,
) -> list[BenchRequest]:
    """Lengths uniform in [len*(1-r), len*(1+r)]; r = 0 gives fixed lengths. Output lengths use
    `output_range_ratio` where given (0: every request asks for exactly `output_len`)."""
    out_ratio = range_ratio if output_range_ratio is None else output_range_ratio
    rng = random.Random(seed)
    requests = []
    for _ in range(num_prompts):
        text = source.sample(rng, _length(rng, input_len, range_ratio))
        requests.append(BenchRequest(text, _length(rng, output_len, out_ratio), prompt_len=source.count(text)))
    return requests


# Log-normal length spreads of a chat workload: most requests short, a long tail. Medians and cut-offs
# are the caller's (--input-len, --output-len); the tails are cut at 8x the median.
CHAT_LENGTH_SIGMA = 0.9
CHAT_LENGTH_TAIL = 8


def _chat_length(rng: random.Random, median: int) -> int:
    return max(4, min(CHAT_LENGTH_TAIL * median, round(rng.lognormvariate(math.log(median), CHAT_LENGTH_SIGMA))))


def chat_like_requests(
    source: TextSource, num_prompts: int, input_median: int, output_median: int, seed: int
) -> list[BenchRequest]:
    """Prompt and output lengths drawn from log-normal distributions, as in public chat logs such as
    ShareGPT (a few long conversations among many short turns), generated here so that nothing is
    downloaded: the same seed gives the same workload on every machine."""
    rng = random.Random(seed)
    requests = []
    for _ in range(num_prompts):
        text = source.sample(rng, _chat_length(rng, input_median))
        requests.append(BenchRequest(text, _chat_length(rng, output_median), prompt_len=source.count(text)))
    return requests


def shared_prefix_requests(
    source: TextSource,
    num_prefixes: int,
    questions_per_prefix: int,
    prefix_len: int,
    question_len: int,
    output_len: int,
    seed: int,
) -> list[BenchRequest]:
    """N system prompts x M questions, shuffled: a server with prefix caching prefills each system
    prompt once, so its TTFT drops against the same lengths without shared prefixes."""
    rng = random.Random(seed)
    requests = []
    for _ in range(num_prefixes):
        system = source.sample(rng, prefix_len)
        for _ in range(questions_per_prefix):
            text = source.sample(rng, question_len)
            requests.append(BenchRequest(text, output_len, system=system, prompt_len=source.count(system + text)))
    rng.shuffle(requests)
    return requests


def jsonl_requests(path: Path, num_prompts: int | None, default_max_tokens: int | None) -> list[BenchRequest]:
    """One JSON object a line: {"messages": [...]} (chat) or {"prompt": "..."}, optionally with
    "max_tokens". The file's order is kept; `num_prompts` takes the first lines."""
    requests = []
    for number, line in enumerate(Path(path).read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}:{number} is not JSON: {e}") from None
        max_tokens = item.get("max_tokens", default_max_tokens)
        if isinstance(item.get("messages"), list):
            last = item["messages"][-1].get("content") if item["messages"] else ""
            requests.append(BenchRequest(last if isinstance(last, str) else "", max_tokens, messages=item["messages"]))
        elif isinstance(item.get("prompt"), str):
            requests.append(BenchRequest(item["prompt"], max_tokens))
        else:
            raise ValueError(f'{path}:{number} has neither "messages" (a list) nor "prompt" (a string)')
        if num_prompts is not None and len(requests) == num_prompts:
            break
    if not requests:
        raise ValueError(f"{path} holds no requests")
    return requests
