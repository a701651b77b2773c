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


def mixed_batch(llm: LLM) -> dict:
    """Each prompt under every adapter and the base, all submitted at once, in interleaved order."""
    choices: list[str | None] = [None, *ADAPTERS]
    batch = [(p, name) for i, p in enumerate(PROMPTS) for name in choices[i % 5 :] + choices[: i % 5]]
    outputs = llm.generate([p for p, _ in batch], GREEDY, lora_name=[name for _, name in batch])
    return {(tuple(p), name): o.outputs[0].token_ids for (p, name), o in zip(batch, outputs)}


def assert_mixed_batch_matches_merged(base: Path, targets: tuple[str, ...], tmp: Path, data_dir: Path) -> LLM:
    """Returns the engine of the last run (two slots for four adapters)."""
    adapters = {
        name: write_random_adapter(base, tmp / name, seed=i, targets=targets) for i, name in enumerate(ADAPTERS)
    }
    modules = ",".join(f"{name}={path}" for name, path in adapters.items())
    expected = {}
    for name in [None, *ADAPTERS]:
        tokens = merged_tokens(base, adapters.get(name), tmp, data_dir, PROMPTS)
        expected.update({(tuple(p), name): t for p, t in zip(PROMPTS, tokens)})
    llm = engine(base, data_dir, lora_modules=modules, max_loras=4, max_lora_rank=8)
    assert mixed_batch(llm) == expected
    # two device slots for four adapters: requests wait for a slot, adapters are evicted and reloaded
    llm = engine(base, data_dir, lora_modules=modules, max_loras=2, max_lora_rank=8)
    assert mixed_batch(llm) == expected
    # the adapters are not no-ops: every one changes some prompt's tokens
    for name in ADAPTERS:
        assert any(expected[(tuple(p), name)] != expected[(tuple(p), None)] for p in PROMPTS)
    return llm


def test_qwen2_batch_of_four_adapters_and_base_matches_merged_models(qwen2_model, data_dir, tmp_path):
    folder, _ = qwen2_model
    assert_mixed_batch_matches_merged(folder, DENSE_TARGETS, tmp_path, data_dir)


@pytest.mark.gpu
def test_cuda_kernels_in_decode_graphs_match_merged_models(qwen2_model, data_dir, tmp_path):
    """On a GPU the same batch runs the segmented Triton kernels, decode steps inside CUDA graphs."""
    folder, _ = qwen2_model
    llm = assert_mixed_batch_matches_merged(folder, DENSE_TARGETS, tmp_path, data_dir)
    assert llm.engine.lora.state.use_kernel
    assert llm.engine.runner.decode_graphs is not None and llm.engine.runner.decode_graphs.lora is llm.engine.lora


@pytest.fixture(scope="module")
def tiny_v3(tiny_deepseek, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("tiny-v3")
    tiny_deepseek("v3", folder)
    return folder


def test_deepseek_v3_mla_adapters_match_merged_models(tiny_v3, data_dir, tmp_path):
    assert_mixed_batch_matches_merged(tiny_v3, MLA_TARGETS, tmp_path, data_dir)


def test_prefix_cache_is_keyed_by_adapter_and_by_load(qwen2_model, data_dir, tmp_path):
    folder, _ = qwen2_model
    a0 = write_random_adapter(folder, tmp_path / "a0", seed=0)
    llm = engine(folder, data_dir, lora_modules=f"a0={a0}", max_loras=2, max_lora_rank=8)
    prompt = list(range(40, 80))
    params = SamplingParams(temperature=0.0, max_tokens=2, ignore_eos=True)

    def cached(name: str | None) -> int:
        return llm.generate(prompt, params, lora_name=name)[0].num_cached_tokens

    assert cached(None) == 0
    assert cached("a0") == 0  # the base model's blocks hold other keys and values
    assert cached("a0") == 32
    assert cached(None) == 32
    llm.engine.load_lora("a0", str(write_random_adapter(folder, tmp_path / "a0-v2", seed=9)))
    assert cached("a0") == 0  # a reloaded adapter does not meet its old blocks


def test_unknown_and_unloaded_adapters_are_refused(qwen2_model, data_dir, tmp_path):
    folder, _ = qwen2_model
    a0 = write_random_adapter(folder, tmp_path / "a0", seed=0)
    llm = engine(folder, data_dir, enable_lora=True, max_lora_rank=8)
    with pytest.raises(ValueError, match="unknown LoRA adapter 'a0'"):
        llm.generate([1, 2, 3], GREEDY, lora_name="a0")
    llm.engine.load_lora("a0", str(a0))
    assert llm.engine.lora_names() == ["a0"]
    llm.generate([1, 2, 3], GREEDY, lora_name="a0")
    llm.engine.unload_lora("a0")
    with pytest.raises(ValueError, match="unknown LoRA adapter"):
        llm.generate([1, 2, 3], GREEDY, lora_name="a0")
    with pytest.raises(ValueError, match="rank 4; the server allows up to --max-lora-rank 2"):
        engine(folder, data_dir, lora_modules=f"a0={a0}", max_lora_rank=2)
    base = engine(folder, data_dir)
    with pytest.raises(ValueError, match="serves no LoRA adapters"):
        base.generate([1, 2, 3], GREEDY, lora_name="a0")


def test_unloading_an_adapter_lets_its_running_requests_finish(qwen2_model, data_dir, tmp_path):
    folder, _ = qwen2_model
    a0 = write_random_adapter(folder, tmp_path / "a0", seed=0)
    llm = engine(folder, data_dir, lora_modules=f"a0={a0}", max_lora_rank=8)
    expected = llm.generate(PROMPTS, GREEDY, lora_name="a0")
    sequences = [llm._submit(p, GREEDY, f"r{i}", lora_name="a0")[0] for i, p in enumerate(PROMPTS)]
    outputs: dict[str, list[int]] = {}
    first = llm.engine.step()
    llm.engine.unload_lora("a0")
    for out in [*first, *llm._run()]:
        outputs.setdefault(out.request_id, []).extend(out.new_token_ids)
    assert [outputs[s.engine_id] for s in sequences] == [o.outputs[0].token_ids for o in expected]
    assert not llm.engine.lora.live  # its weights went with its last request
