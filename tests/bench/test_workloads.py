"""Workloads: prompt token counts are exact with a tokenizer, lengths follow the options."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from seekd.bench.workloads import TextSource, jsonl_requests, random_requests, shared_prefix_requests


def test_random_prompts_have_exactly_the_drawn_token_counts(demo_tokenizer) -> None:
    source = TextSource(demo_tokenizer)
    work = random_requests(source, 50, input_len=32, output_len=16, range_ratio=0.5, seed=1)
    for r in work:
        assert 16 <= r.prompt_len <= 48 and 8 <= r.max_tokens <= 24
        assert len(demo_tokenizer.encode(r.prompt)) == r.prompt_len
    assert len({r.prompt_len for r in work}) > 5
    assert work == random_requests(source, 50, input_len=32, output_len=16, range_ratio=0.5, seed=1)


def test_fixed_lengths_and_words_without_a_tokenizer() -> None:
    work = random_requests(TextSource(None), 5, input_len=20, output_len=7, range_ratio=0.0, seed=0)
    assert all(len(r.prompt.split()) == 20 and r.max_tokens == 7 and r.prompt_len is None for r in work)
    spread = random_requests(
        TextSource(None), 20, input_len=20, output_len=7, range_ratio=0.5, seed=0, output_range_ratio=0.0
    )
    assert {r.max_tokens for r in spread} == {7} and len({len(r.prompt.split()) for r in spread}) > 3


def test_shared_prefix_is_n_system_prompts_times_m_questions(demo_tokenizer) -> None:
    work = shared_prefix_requests(
        TextSource(demo_tokenizer),
        num_prefixes=3,
        questions_per_prefix=4,
        prefix_len=64,
        question_len=8,
        output_len=5,
        seed=0,
    )
    assert len(work) == 12
    systems = {r.system for r in work}
    assert len(systems) == 3 and all(len(demo_tokenizer.encode(s)) == 64 for s in systems)
    assert all(r.prompt_len == 72 for r in work)
    assert work[0].chat_messages()[0] == {"role": "system", "content": work[0].system}


def test_jsonl_requests_keep_messages_prompts_and_max_tokens(tmp_path: Path) -> None:
    path = tmp_path / "requests.jsonl"
    lines = [{"messages": [{"role": "user", "content": "hi"}], "max_tokens": 9}, {"prompt": "once upon"}, {}]
    path.write_text("\n".join(json.dumps(item) for item in lines[:2]) + "\n\n")
    chat, plain = jsonl_requests(path, None, default_max_tokens=4)
    assert chat.chat_messages() == [{"role": "user", "content": "hi"}] and chat.max_tokens == 9
    assert plain.prompt == "once upon" and plain.max_tokens == 4
    assert len(jsonl_requests(path, 1, None)) == 1
    path.write_text(json.dumps(lines[2]) + "\n")
    with pytest.raises(ValueError, match="neither"):
        jsonl_requests(path, None, None)
