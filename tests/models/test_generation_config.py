"""generation_config.json as seekd reads it: EOS ids and the default answer length."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from seekd.models.demo import DEMO_MAX_NEW_TOKENS, ensure_demo_model
from seekd.models.generation_config import GenerationConfig


def write(folder: Path, data: dict) -> Path:
    (folder / "generation_config.json").write_text(json.dumps(data))
    return folder


def test_max_new_tokens_is_the_default_answer_length_whatever_the_prompt(tmp_path: Path) -> None:
    config = GenerationConfig.from_folder(write(tmp_path, {"eos_token_id": [1, 7], "max_new_tokens": 300}))
    assert config.eos_token_ids == {1, 7}
    assert [config.default_max_tokens(n) for n in (1, 500, 5000)] == [300, 300, 300]


def test_max_length_counts_the_prompt(tmp_path: Path) -> None:
    config = GenerationConfig.from_folder(write(tmp_path, {"eos_token_id": 2, "max_length": 100}))
    assert config.eos_token_ids == {2}
    assert [config.default_max_tokens(n) for n in (10, 99, 100, 400)] == [90, 1, 1, 1]


def test_without_a_length_the_answer_runs_to_the_context(tmp_path: Path) -> None:
    assert GenerationConfig.from_folder(tmp_path).default_max_tokens(10) is None  # no file
    assert GenerationConfig.from_folder(write(tmp_path, {"temperature": 0.6})).default_max_tokens(10) is None


@pytest.mark.parametrize("value", [0, -5, "256", True, 12.5])
def test_a_bad_length_names_the_file_and_field(tmp_path: Path, value) -> None:
    with pytest.raises(ValueError, match=r"generation_config\.json: max_new_tokens must be a positive integer"):
        GenerationConfig.from_folder(write(tmp_path, {"max_new_tokens": value}))


def test_the_demo_model_ships_a_short_default_answer(tmp_path: Path) -> None:
    config = GenerationConfig.from_folder(ensure_demo_model(tmp_path))
    assert config.default_max_tokens(8000) == DEMO_MAX_NEW_TOKENS <= 512
    assert config.eos_token_ids == {1}
