"""The built-in demo model is a miniature DeepSeek-V3 (MLA + DeepSeekMoE) that runs with no arguments."""

from __future__ import annotations

import json

from seekd import LLM, SamplingParams
from seekd.layers.mla import MLAAttention
from seekd.layers.moe import SparseMoE
from seekd.models.deepseek_v2 import DeepseekV3ForCausalLM


def test_demo_model_is_deepseek_v3_and_generates_with_no_arguments(tmp_path):
    llm = LLM(data_dir=str(tmp_path), show_progress=False)
    model = llm.engine.runner.model
    assert isinstance(model, DeepseekV3ForCausalLM)
    assert all(isinstance(layer, MLAAttention) for layer in model.attention_layers())
    assert any(isinstance(layer.mlp, SparseMoE) for layer in model.model.layers)
    config = json.loads((llm.engine.model_folder / "config.json").read_text())
    assert config["topk_method"] == "noaux_tc" and config["scoring_func"] == "sigmoid"

    params = SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True)
    outs = llm.generate(["Hello", "你好，世界", "a longer prompt with several more words in it"], params)
    assert [len(o.outputs[0].token_ids) for o in outs] == [12, 12, 12]
    alone = llm.generate("你好，世界", params)[0].outputs[0].token_ids
    assert alone == outs[1].outputs[0].token_ids
    messages = [{"role": "user", "content": "Hi"}]
    (chat,) = llm.chat(messages, SamplingParams(temperature=0.0, max_tokens=8))
    assert chat.prompt_token_ids == llm.tokenizer.encode_chat(messages)
    assert chat.outputs[0].token_ids
