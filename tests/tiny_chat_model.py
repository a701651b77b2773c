"""A tiny Qwen2 chat model folder that both seekd and transformers load: random weights saved as
safetensors, a small byte-level BPE tokenizer trained here, and a chat template."""

from __future__ import annotations

import json
from pathlib import Path

import torch

SPECIAL = ["<|pad|>", "<|bos|>", "<|eos|>", "<|system|>", "<|user|>", "<|assistant|>"]
TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|eos|>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
CORPUS = [
    "what is the capital of the country? the answer is paris, berlin, rome or madrid.",
    "say the word: apple banana cherry grape lemon mango olive peach.",
    "one two three four five six seven eight nine ten zero",
    "<think>let me reason step by step</think> so the result is 42.",
]


def write_tokenizer(folder: Path) -> int:
    """A byte-level BPE over a tiny corpus (any text encodes); returns the vocabulary size."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=SPECIAL, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tokenizer.train_from_iterator(CORPUS * 4, trainer)
    tokenizer.save(str(folder / "tokenizer.json"))
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": "<|bos|>",
        "eos_token": "<|eos|>",
        "pad_token": "<|pad|>",
        "chat_template": TEMPLATE,
        "model_max_length": 512,
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    return tokenizer.get_vocab_size()


def write_tiny_chat_model(folder: Path, seed: int = 0) -> Path:
    import transformers

    folder.mkdir(parents=True, exist_ok=True)
    vocab = write_tokenizer(folder)
    config = transformers.Qwen2Config(
        vocab_size=vocab,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        initializer_range=0.3,  # a frozen lm_head of 0.02-scale rows caps any logit near 1: nothing could learn
        tie_word_embeddings=False,
        bos_token_id=SPECIAL.index("<|bos|>"),
        eos_token_id=SPECIAL.index("<|eos|>"),
        pad_token_id=SPECIAL.index("<|pad|>"),
    )
    torch.manual_seed(seed)
    transformers.Qwen2ForCausalLM(config).float().save_pretrained(folder)
    return folder
