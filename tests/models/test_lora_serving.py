"""Multi-LoRA serving: every request of a batch mixing adapters and the base model decodes exactly
as a model with its adapter merged into the weights (float32, greedy)."""

from __future__ import annotations

from pathlib import Path

import pytest
from lora_adapters import DENSE_TARGETS, MLA_TARGETS, write_merged_model, write_random_adapter

from seekd import LLM, SamplingParams

PROMPTS = [
    [5, 17, 99, 3, 200, 45, 7, 8, 9, 10, 11, 300, 301, 22, 23, 24, 25],
    [41, 42, 43],
    [7, 100, 250, 13, 9, 77, 81],
    list(range(30, 60)),
    [2, 3, 5, 7, 11, 13],
]
ADAPTERS = ["a0", "a1", "a2", "a3"]
GREEDY = SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True)


def engine(folder: Path, data_dir: Path, **options) -> LLM:
    return LLM(str(folder), data_dir=str(data_dir), num_kv_blocks=256, block_size=8, show_progress=False, **options)


def merged_tokens(base: Path, adapter: Path | None, tmp: Path, data_dir: Path, prompts: list[list[int]]) -> list:
    folder = base if adapter is None else write_merged_model(base, adapter, tmp / f"merged-{adapter.name}")
    llm = engine(folder, data_dir)
    return [o.outputs[0].token_ids for o in llm.generate(prompts, GREEDY)]


def assert_mixed_batch_matches_merged(base: Path, targets: tuple[str, ...], tmp: Path, data_dir: Path) -> None:
    adapters = {name: write_random_adapter(base, tmp / name, seed=i, targets=targets) for i, name in enumerate(ADAPTERS)}
    modules = ",".join(f"{name}={path}" for name, path in adapters.items())
    llm = engine(base, data_dir, lora_modules=modules, max_loras=4, max_lora_rank=8)
    # each prompt under every adapter and the base, all in one batch
    choices: list[str | None] = [None, *ADAPTERS]
    batch = [(p, name) for i, p in enumerate(PROMPTS) for name in choices[i % 5 :] + choices[: i % 5]]
    outputs = llm.generate([p for p, _ in batch], GREEDY, lora_name=[name for _, name in batch])
    got = {(tuple(p), name): o.outputs[0].token_ids for (p, name), o in zip(batch, outputs)}
    expected = {}
    for name in choices:
        tokens = merged_tokens(base, adapters.get(name), tmp, data_dir, PROMPTS)
        expected.update({(tuple(p), name): t for p, t in zip(PROMPTS, tokens)})
    assert got == expected
    # the adapters are not no-ops: every one changes some prompt's tokens
    for name in ADAPTERS:
        assert any(expected[(tuple(p), name)] != expected[(tuple(p), None)] for p in PROMPTS)


def test_qwen2_batch_of_four_adapters_and_base_matches_merged_models(qwen2_model, data_dir, tmp_path):
    folder, _ = qwen2_model
    assert_mixed_batch_matches_merged(folder, DENSE_TARGETS, tmp_path, data_dir)


@pytest.fixture(scope="module")
def tiny_v3(tiny_deepseek, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("tiny-v3")
    tiny_deepseek("v3", folder)
    return folder


def test_deepseek_v3_mla_adapters_match_merged_models(tiny_v3, data_dir, tmp_path):
    assert_mixed_batch_matches_merged(tiny_v3, MLA_TARGETS, tmp_path, data_dir)
