from __future__ import annotations

import pytest

from seekd.models.demo import ensure_demo_model
from seekd.text.chat_template import ChatTemplateError, render_chat_template
from seekd.text.tokenizer import Tokenizer


@pytest.fixture(scope="module")
def tokenizer(data_dir) -> Tokenizer:
    return Tokenizer(ensure_demo_model(data_dir))


def test_demo_template_follows_deepseek_r1_format(tokenizer):
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "<think>hmm</think>Hello!"},
        {"role": "user", "content": "2+2?"},
    ]
    text = tokenizer.apply_chat_template(messages)
    assert text == (
        "<｜begin▁of▁sentence｜>Be brief.<｜User｜>Hi<｜Assistant｜>Hello!<｜end▁of▁sentence｜>"
        "<｜User｜>2+2?<｜Assistant｜><think>\n"
    )
    ids = tokenizer.encode_chat(messages)
    assert ids[0] == tokenizer.bos_token_id and ids.count(tokenizer.bos_token_id) == 1
    assert tokenizer.token_to_id("<｜User｜>") in ids


def test_template_errors_are_chat_template_errors(tokenizer):
    with pytest.raises(ChatTemplateError, match="unknown message role"):
        tokenizer.apply_chat_template([{"role": "wizard", "content": "x"}])
    with pytest.raises(ChatTemplateError, match="does not parse"):
        render_chat_template("{% if %}", [])


def test_sandbox_blocks_attribute_escapes():
    evil = "{{ ''.__class__.__mro__[1].__subclasses__() }}"
    with pytest.raises(ChatTemplateError):
        render_chat_template(evil, [])
