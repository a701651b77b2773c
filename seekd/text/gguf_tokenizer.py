"""A `tokenizers` tokenizer rebuilt from a GGUF file's metadata, for model folders that hold only the
GGUF file (as Ollama's do): llama.cpp's byte-level BPE ("gpt2" model: Qwen2, Llama 3, DeepSeek) with
its vocabulary, merges, control tokens and the pre-tokenizer regex its `pre` name stands for, plus
the chat template and the bos/eos tokens as tokenizer_config.json would give them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import tokenizers
from tokenizers import decoders, models, pre_tokenizers

# llama.cpp's pre-tokenizer names -> the split regex of the tokenizer it was converted from
_WORDS = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|"
_REST = r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
_QWEN2_SPLIT = _WORDS + r"\p{N}" + _REST
_LLAMA3_SPLIT = _WORDS + r"\p{N}{1,3}" + _REST
_GPT2_SPLIT = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
SPLITS = {"qwen2": _QWEN2_SPLIT, "llama-bpe": _LLAMA3_SPLIT, "llama3": _LLAMA3_SPLIT, "default": _GPT2_SPLIT}
_CONTROL, _USER_DEFINED = 3, 4  # llama.cpp's token types


def gguf_tokenizer(path: Path) -> tuple[tokenizers.Tokenizer, dict[str, Any]]:
    """(tokenizer, tokenizer_config-like dict with bos_token, eos_token, chat_template)."""
    import gguf

    reader = gguf.GGUFReader(str(path))

    def field(key: str, default: Any = None) -> Any:
        f = reader.fields.get(key)
        return default if f is None else f.contents()

    kind = field("tokenizer.ggml.model")
    if kind != "gpt2":
        raise ValueError(
            f"{path.name} has a {kind!r} tokenizer; seekd rebuilds byte-level BPE (gpt2) tokenizers from GGUF "
            "metadata: put the model's tokenizer.json beside the file"
        )
    tokens = field("tokenizer.ggml.tokens")
    merges = [tuple(m.split(" ", 1)) for m in field("tokenizer.ggml.merges", [])]
    tokenizer = tokenizers.Tokenizer(models.BPE({t: i for i, t in enumerate(tokens)}, merges, ignore_merges=False))
    split = SPLITS.get(field("tokenizer.ggml.pre", "default"), _GPT2_SPLIT)
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(tokenizers.Regex(split), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tokenizer.decoder = decoders.ByteLevel()
    types = field("tokenizer.ggml.token_type", [])
    special = [
        tokenizers.AddedToken(tokens[i], special=True, normalized=False) for i, t in enumerate(types) if t == _CONTROL
    ]
    tokenizer.add_special_tokens(special)
    tokenizer.add_tokens([tokens[i] for i, t in enumerate(types) if t == _USER_DEFINED])

    def token(key: str) -> str | None:
        index = field(key)
        return tokens[int(index)] if index is not None and int(index) < len(tokens) else None

    config = {
        "bos_token": token("tokenizer.ggml.bos_token_id"),
        "eos_token": token("tokenizer.ggml.eos_token_id"),
        "chat_template": field("tokenizer.chat_template"),
    }
    return tokenizer, config
