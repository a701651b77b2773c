"""The offline API on the demo model (DeepSeek tokenizer) and on tiny checkpoints."""

from __future__ import annotations

import json
import shutil

import pytest

from seekd import LLM, SamplingParams


@pytest.fixture(scope="module")
def demo(data_dir) -> LLM:
    return LLM(data_dir=str(data_dir), num_kv_blocks=256, show_progress=False)


def test_demo_generates_text_from_text_prompts(demo):
    outs = demo.generate(["Hello", "你好，世界"], SamplingParams(temperature=0.0, max_tokens=8, ignore_eos=True))
    for out in outs:
        o = out.outputs[0]
        assert len(o.token_ids) == 8 and o.finish_reason == "length"
        assert o.text == demo.tokenizer.decode(o.token_ids)
    assert outs[1].prompt_token_ids == demo.tokenizer.encode("你好，世界")


def test_chat_uses_the_template_and_n_gives_distinct_samples(demo):
    params = SamplingParams(temperature=1.0, max_tokens=12, n=3, seed=11, ignore_eos=True)
    (out,) = demo.chat([{"role": "user", "content": "Tell me a story"}], params)
    assert [o.index for o in out.outputs] == [0, 1, 2]
    assert len({tuple(o.token_ids) for o in out.outputs}) == 3
    expected = demo.tokenizer.encode_chat([{"role": "user", "content": "Tell me a story"}])
    assert out.prompt_token_ids == expected
    (again,) = demo.chat([{"role": "user", "content": "Tell me a story"}], params)
    assert [o.token_ids for o in again.outputs] == [o.token_ids for o in out.outputs]


def test_stop_string_ends_generation_and_is_cut_from_text(demo):
    free = demo.generate("Hello", SamplingParams(temperature=0.0, max_tokens=20, ignore_eos=True))[0].outputs[0]
    stop = free.text[6:9]
    assert stop.strip()
    cut = demo.generate("Hello", SamplingParams(temperature=0.0, max_tokens=20, ignore_eos=True, stop=[stop]))
    o = cut[0].outputs[0]
    assert o.finish_reason == "stop" and o.stop_reason == stop
    assert o.text == free.text[: free.text.index(stop)]
    assert stop not in o.text
    assert not demo.engine.has_unfinished_requests()


def test_stream_yields_the_same_text_as_generate(demo):
    params = SamplingParams(temperature=0.7, seed=3, max_tokens=16, ignore_eos=True)
    full = demo.generate("Streaming check", params)[0].outputs[0].text
    assert "".join(demo.stream("Streaming check", params)) == full


def test_prompt_over_context_length_is_rejected(demo):
    with pytest.raises(ValueError, match="this model's context is"):
        demo.generate([5] * (demo.max_model_len + 1))


def test_missing_or_unsupported_model_folders_give_clear_errors(tmp_path, qwen2_model, data_dir):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        LLM(str(tmp_path / "nope"), data_dir=str(data_dir))
    with pytest.raises(FileNotFoundError, match=r"has no config\.json"):
        LLM(str(tmp_path), data_dir=str(data_dir))
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["MambaForCausalLM"]}))
    with pytest.raises(ValueError, match="MambaForCausalLM is not supported"):
        LLM(str(tmp_path), data_dir=str(data_dir))
    no_weights = tmp_path / "no-weights"
    no_weights.mkdir()
    shutil.copy(qwen2_model[0] / "config.json", no_weights / "config.json")
    with pytest.raises(FileNotFoundError, match=r"no \*\.safetensors weights"):
        LLM(str(no_weights), data_dir=str(data_dir))
    dummy = LLM(str(no_weights), data_dir=str(data_dir), load_format="dummy", num_kv_blocks=32, show_progress=False)
    assert len(dummy.generate([1, 2, 3], SamplingParams(max_tokens=4, ignore_eos=True))[0].outputs[0].token_ids) == 4


def test_sharded_checkpoint_with_index_loads_identically(tmp_path, qwen2_model, data_dir):
    folder, hf_model = qwen2_model
    sharded = tmp_path / "sharded"
    hf_model.save_pretrained(sharded, max_shard_size="100KB")
    assert (sharded / "model.safetensors.index.json").is_file()
    params = SamplingParams(temperature=0.0, max_tokens=10, ignore_eos=True)
    a = LLM(str(folder), data_dir=str(data_dir), num_kv_blocks=32, show_progress=False)
    b = LLM(str(sharded), data_dir=str(data_dir), num_kv_blocks=32, show_progress=False)
    ids_a = a.generate([4, 5, 6], params)[0].outputs[0].token_ids
    assert ids_a == b.generate([4, 5, 6], params)[0].outputs[0].token_ids


def test_kv_cache_too_small_for_any_context_is_a_clear_error(qwen2_model, data_dir):
    with pytest.raises(RuntimeError, match=r"the model does not fit: .* Try a shorter --max-model-len"):
        LLM(str(qwen2_model[0]), data_dir=str(data_dir), cpu_kv_cache_gib=1e-6, show_progress=False)
