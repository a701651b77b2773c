"""The built-in demo model is a miniature DeepSeek-V4 (sliding / CSA / HCA attention, hash and top-k
MoE) with V4's tokenizer and prompt encoder, and runs with no arguments."""

from __future__ import annotations

import json

from seekd import LLM, SamplingParams
from seekd.models.deepseek_v4 import CSA, HCA, SLIDING, DeepseekV4ForCausalLM, layer_types, mlp_layer_types
from seekd.models.hf_config import HFConfig
from seekd.text.deepseek_v4_encoding import encode_messages


def test_demo_model_is_deepseek_v4_and_generates_with_no_arguments(tmp_path):
    llm = LLM(data_dir=str(tmp_path), show_progress=False)
    model = llm.engine.runner.model
    assert isinstance(model, DeepseekV4ForCausalLM)
    folder = llm.engine.model_folder
    config = HFConfig(json.loads((folder / "config.json").read_text()))
    assert set(layer_types(config)) == {SLIDING, CSA, HCA}
    assert set(mlp_layer_types(config)) == {"hash_moe", "moe"}
    assert config.vocab_size == llm.tokenizer.vocab_size == 129280
    assert "RANDOM" in (folder / "README.md").read_text()
    table = model.layers[0].ffn.gate.tid2eid  # the random hash table picks distinct, valid experts
    assert table.max() < config.n_routed_experts and (table[:, 0] != table[:, 1]).all()
    assert len(set(table[:, 0].tolist())) == config.n_routed_experts

    params = SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True)
    long_prompt = "a longer prompt with many more words in it, so that it runs past the sliding window " * 2
    outs = llm.generate(["Hello", "你好，世界", long_prompt], params)
    assert [len(o.outputs[0].token_ids) for o in outs] == [12, 12, 12]
    assert len(outs[2].prompt_token_ids) > 2 * config.sliding_window
    alone = llm.generate("你好，世界", params)[0].outputs[0].token_ids
    assert alone == outs[1].outputs[0].token_ids

    messages = [{"role": "user", "content": "Hi"}]
    (chat,) = llm.chat(messages, SamplingParams(temperature=0.0, max_tokens=8), thinking=True)
    assert llm.tokenizer.decode(chat.prompt_token_ids, skip_special_tokens=False) == encode_messages(
        messages, "thinking"
    )
    assert chat.outputs[0].token_ids
