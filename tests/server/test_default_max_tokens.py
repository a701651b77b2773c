"""A chat request without max_tokens answers at the length the model's generation_config.json sets
(`max_length` counts the prompt too), served by a real `seekd serve`; an explicit max_tokens wins."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import openai
import pytest

from seekd.models.demo import ensure_demo_model

from .conftest import running_server

pytestmark = pytest.mark.slow

MAX_LENGTH = 40


def test_default_max_tokens_is_what_max_length_leaves_after_the_prompt(data_dir: Path, tmp_path: Path) -> None:
    model = tmp_path / "short-model"
    shutil.copytree(ensure_demo_model(data_dir), model)
    (model / "generation_config.json").write_text(json.dumps({"eos_token_id": 1, "max_length": MAX_LENGTH}))
    flags = ("--model", str(model), "--load-format", "dummy")
    with running_server(data_dir, tmp_path / "server.log", *flags) as server:
        client = openai.OpenAI(base_url=server.api_url, api_key="unused", max_retries=0, timeout=30)
        common = dict(model="short-model", extra_body={"ignore_eos": True})
        for words in (1, 12):
            messages = [{"role": "user", "content": " ".join(["word"] * words)}]
            usage = client.chat.completions.create(messages=messages, **common).usage
            assert usage.completion_tokens == MAX_LENGTH - usage.prompt_tokens > 0
        explicit = client.chat.completions.create(messages=messages, max_tokens=3, **common)
        assert explicit.usage.completion_tokens == 3
