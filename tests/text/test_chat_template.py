from __future__ import annotations

import pytest

from seekd.models.demo import ensure_demo_model
from seekd.text.chat_template import ChatTemplateError, render_chat_template
from seekd.text.tokenizer import Tokenizer


@pytest.fixture(scope="module")
def tokenizer(data_dir) -> Tokenizer:
    return Tokenizer(ensure_demo_model(data_dir))


def test_demo_prompts_come_from_deepseek_v4s_encoder(tokenizer):
    """The demo is a V4 model: no Jinja template, V4's encoder, earlier reasoning dropped."""
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!", "reasoning_content": "hmm"},
        {"role": "user", "content": "2+2?"},
    ]
    assert tokenizer.chat_template is None and tokenizer.model_type == "deepseek_v4"
    text = tokenizer.apply_chat_template(messages, thinking=True)
    assert text == (
        "<｜begin▁of▁sentence｜>Be brief.<｜User｜>Hi<｜Assistant｜></think>Hello!<｜end▁of▁sentence｜>"
        "<｜User｜>2+2?<｜Assistant｜><think>"
    )
    ids = tokenizer.encode_chat(messages)
    assert ids[0] == tokenizer.bos_token_id and ids.count(tokenizer.bos_token_id) == 1
    assert tokenizer.token_to_id("<｜User｜>") in ids and ids[-1] == tokenizer.token_to_id("</think>")


def test_template_errors_are_chat_template_errors(tokenizer):
    with pytest.raises(ChatTemplateError, match="role 'wizard'"):
        tokenizer.apply_chat_template([{"role": "wizard", "content": "x"}])
    with pytest.raises(ChatTemplateError, match="does not parse"):
        render_chat_template("{% if %}", [])


def test_sandbox_blocks_attribute_escapes():
    evil = "{{ ''.__class__.__mro__[1].__subclasses__() }}"
    with pytest.raises(ChatTemplateError):
        render_chat_template(evil, [])
