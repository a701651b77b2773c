"""A model folder's tokenizer (tokenizer.json via `tokenizers`) plus its tokenizer_config.json:
special tokens and the chat template. transformers is not needed at run time.
Models whose config.json names a DeepSeek `model_type` with its own Python encoder (V3.2, V4) get
their prompts from that encoder, not from a Jinja template."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import tokenizers

from seekd.text.chat_template import ChatTemplateError, render_chat_template
from seekd.text.deepseek_prompt import encode_chat_prompt, has_encoder


def _token_content(value: Any) -> str | None:
    if isinstance(value, dict):
        return value.get("content")
    return value


class Tokenizer:
    def __init__(self, folder: str | Path) -> None:
        folder = Path(folder)
        path = folder / "tokenizer.json"
        ggufs = sorted(folder.glob("*.gguf")) if not path.is_file() else []
        if path.is_file():
            self.backend = tokenizers.Tokenizer.from_file(str(path))
            config_path = folder / "tokenizer_config.json"
            config = json.loads(config_path.read_text()) if config_path.is_file() else {}
        elif len(ggufs) == 1:  # llama.cpp's file alone: its metadata carries the tokenizer
            from seekd.text.gguf_tokenizer import gguf_tokenizer

            self.backend, config = gguf_tokenizer(ggufs[0])
        else:
            raise FileNotFoundError(f"model folder {folder} has no tokenizer.json")
        self.bos_token = _token_content(config.get("bos_token"))
        self.eos_token = _token_content(config.get("eos_token"))
        self.pad_token = _token_content(config.get("pad_token"))
        self.chat_template = self._find_chat_template(folder, config)
        self.model_type = self._model_type(folder)
        self.bos_token_id = self.token_to_id(self.bos_token)
        self.eos_token_id = self.token_to_id(self.eos_token)
        self.all_special_ids = frozenset(i for i, tok in self.backend.get_added_tokens_decoder().items() if tok.special)

    @staticmethod
    def _find_chat_template(folder: Path, config: dict[str, Any]) -> str | None:
        template = config.get("chat_template")
        if isinstance(template, list):  # [{"name": "default", "template": ...}, ...]
            named = {t.get("name"): t.get("template") for t in template}
            template = named.get("default") or next(iter(named.values()), None)
        jinja_file = folder / "chat_template.jinja"
        if template is None and jinja_file.is_file():
            template = jinja_file.read_text()
        return template

    @staticmethod
    def _model_type(folder: Path) -> str | None:
        path = folder / "config.json"
        if not path.is_file():
            return None
        config = json.loads(path.read_text())
        return config.get("model_type") or (config.get("text_config") or {}).get("model_type")

    @property
    def uses_deepseek_encoder(self) -> bool:
        return has_encoder(self.model_type)

    @property
    def has_chat_format(self) -> bool:
        """Whether chat messages can be turned into a prompt (a template or a DeepSeek encoder)."""
        return self.chat_template is not None or self.uses_deepseek_encoder

    @property
    def vocab_size(self) -> int:
        return self.backend.get_vocab_size()

    def token_to_id(self, token: str | None) -> int | None:
        return None if token is None else self.backend.token_to_id(token)

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return self.backend.encode(text, add_special_tokens=add_special_tokens).ids

    def encode_without_gil(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """As encode, but the Rust tokenizer lets go of the GIL while it works (its batch call does,
        the single one does not): run in a thread, megabytes of prompt leave other threads running."""
        return self.backend.encode_batch([text], add_special_tokens=add_special_tokens)[0].ids

    def decode(self, token_ids: list[int], skip_special_tokens: bool = True) -> str:
        return self.backend.decode(token_ids, skip_special_tokens=skip_special_tokens)

    def id_to_token(self, token_id: int) -> str | None:
        return self.backend.id_to_token(token_id)

    def apply_chat_template(
        self,
        messages: list[dict[str, Any]],
        add_generation_prompt: bool = True,
        tools: list[dict[str, Any]] | None = None,
        **kwargs: Any,
    ) -> str:
        """The prompt text. For DeepSeek encoders the generation prompt is part of the format (a user
        turn always ends by opening the assistant's), so add_generation_prompt does not apply."""
        if self.uses_deepseek_encoder:
            try:
                return encode_chat_prompt(str(self.model_type), messages, tools=tools, **kwargs)
            except (ValueError, KeyError, TypeError) as e:
                raise ChatTemplateError(f"cannot encode this conversation for {self.model_type}: {e}") from e
        if self.chat_template is None:
            raise ChatTemplateError("this model has no chat template; use a completion prompt instead")
        return render_chat_template(
            self.chat_template,
            messages,
            add_generation_prompt=add_generation_prompt,
            special_tokens={"bos_token": self.bos_token or "", "eos_token": self.eos_token or ""},
            tools=tools,
            **kwargs,
        )

    def encode_chat(self, messages: list[dict[str, Any]], **kwargs: Any) -> list[int]:
        """The template writes the special tokens (BOS included) itself, so none are added again."""
        return self.encode(self.apply_chat_template(messages, **kwargs), add_special_tokens=False)
