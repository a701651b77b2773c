from __future__ import annotations

import pytest

from seekd.engine.context_length import ContextLengthExceeded, check_context_length, output_budget


def test_a_prompt_must_leave_room_for_one_token():
    check_context_length(15, 16)
    with pytest.raises(ContextLengthExceeded, match="16 tokens; this model's context is 16") as info:
        check_context_length(16, 16)
    assert info.value.param is None
    assert "your messages resulted in 16 tokens" in info.value.openai_message("messages")


def test_an_explicit_max_tokens_must_fit_but_the_engine_only_cuts_it():
    check_context_length(10, 16, max_tokens=6)
    with pytest.raises(ContextLengthExceeded) as info:
        check_context_length(10, 16, max_tokens=7)
    assert info.value.param == "max_tokens"
    assert "you requested 17 tokens (10 in the prompt, 7 in the completion)" in info.value.openai_message("prompt")
    assert output_budget(10, 7, 16) == 6 and output_budget(10, None, 16) == 6 and output_budget(10, 3, 16) == 3
