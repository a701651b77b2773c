"""What the engine core reports after each step; msgspec Structs so they cross IPC as msgpack."""

from __future__ import annotations

import msgspec


class TokenLogprob(msgspec.Struct, array_like=True):
    """Log-probability of a sampled token and the top alternatives at that position."""

    token_id: int
    logprob: float
    rank: int  # 1 = the most likely token
    top_token_ids: list[int]
    top_logprobs: list[float]


class EngineOutput(msgspec.Struct, array_like=True, omit_defaults=True):
    """New tokens of one request produced by one engine step."""

    request_id: str
    new_token_ids: list[int]
    new_logprobs: list[TokenLogprob] | None = None
    finish_reason: str | None = None  # stop | length | abort
    stop_reason: int | str | None = None
    num_prompt_tokens: int = 0
    num_cached_tokens: int = 0

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None
