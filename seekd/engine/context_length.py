"""The context-length rule, in one place for the engine and both front doors (the server's routes and
the offline API): a request fits when its tokens leave room for at least one more in the model's
context. The engine refuses a prompt that leaves none and grants at most the room left; the server
also refuses an explicit max_tokens that overruns the context, before any work (as OpenAI does).
"""

from __future__ import annotations


class ContextLengthExceeded(ValueError):
    """A request that cannot fit. `str()` is the engine's short form; `openai_message` the API's,
    whose wording clients match to detect this error."""

    def __init__(self, num_tokens: int, max_model_len: int, max_tokens: int | None = None) -> None:
        self.num_tokens = num_tokens
        self.max_model_len = max_model_len
        self.max_tokens = max_tokens  # None: the tokens alone leave no room
        if max_tokens is None:
            message = f"prompt has {num_tokens} tokens; this model's context is {max_model_len}"
        else:
            message = (
                f"prompt has {num_tokens} tokens and max_tokens is {max_tokens}; this model's context is "
                f"{max_model_len}"
            )
        super().__init__(message)

    @property
    def param(self) -> str | None:
        """The request field to reduce: max_tokens, or None for the prompt itself."""
        return None if self.max_tokens is None else "max_tokens"

    def openai_message(self, prompt_field: str) -> str:
        """The message as OpenAI words it; `prompt_field` names what held the prompt (prompt, messages)."""
        if self.max_tokens is None:
            return (
                f"This model's maximum context length is {self.max_model_len} tokens. However, your "
                f"{prompt_field} resulted in {self.num_tokens} tokens. Please reduce the length of the "
                f"{prompt_field}."
            )
        return (
            f"This model's maximum context length is {self.max_model_len} tokens. However, you requested "
            f"{self.num_tokens + self.max_tokens} tokens ({self.num_tokens} in the {prompt_field}, "
            f"{self.max_tokens} in the completion). Please reduce the length of the prompt or of max_tokens."
        )


def check_context_length(num_tokens: int, max_model_len: int, max_tokens: int | None = None) -> None:
    """Raise ContextLengthExceeded unless `num_tokens` leave room for one more token and, when
    `max_tokens` is given, for all of them."""
    if num_tokens >= max_model_len:
        raise ContextLengthExceeded(num_tokens, max_model_len)
    if max_tokens is not None and num_tokens + max_tokens > max_model_len:
        raise ContextLengthExceeded(num_tokens, max_model_len, max_tokens)


def output_budget(num_tokens: int, max_tokens: int | None, max_model_len: int) -> int:
    """Tokens a request may still generate: `max_tokens` (None: no limit of its own), cut to the
    room the context leaves."""
    room = max_model_len - num_tokens
    return room if max_tokens is None else min(max_tokens, room)
