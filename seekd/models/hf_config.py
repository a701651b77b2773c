"""A model folder's config.json as an attribute-style object (transformers is not a runtime dep)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


class HFConfig:
    """A vision-language model nests its language model's fields under `text_config`; a field missing
    at the top level is read from there, so the engine sizes vocabulary, context and KV cache alike
    for every model."""

    def __init__(self, data: dict[str, Any]) -> None:
        self._data = dict(data)
        text = self._data.get("text_config")
        self._text: dict[str, Any] = text if isinstance(text, dict) else {}

    def __getattr__(self, key: str) -> Any:
        data = self.__dict__["_data"]
        if key in data:
            return data[key]
        if key in self.__dict__["_text"]:
            return self.__dict__["_text"][key]
        raise AttributeError(f"config.json has no field {key!r}")

    @classmethod
    def from_folder(cls, folder: str | Path) -> HFConfig:
        path = Path(folder)
        if not path.is_dir():
            raise FileNotFoundError(f"model folder {path} does not exist")
        config_file = path / "config.json"
        if not config_file.is_file():
            from seekd.models.gguf_checkpoint import gguf_config, gguf_file

            gguf = gguf_file(path)
            if gguf is not None:  # llama.cpp's file carries the config in its metadata
                return cls(gguf_config(gguf))
            raise FileNotFoundError(f"model folder {path} has no config.json")
        try:
            data = json.loads(config_file.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"{config_file} is not valid JSON: {e}") from e
        return cls(data)

    def get(self, key: str, default: Any = None) -> Any:
        value = self._data.get(key, self._text.get(key))
        return default if value is None else value

    def to_dict(self) -> dict[str, Any]:
        return dict(self._data)

    @property
    def architecture(self) -> str:
        archs = self._data.get("architectures") or []
        if not archs:
            raise ValueError("config.json names no architectures")
        return archs[0]

    @property
    def torch_dtype_name(self) -> str | None:
        return self._data.get("torch_dtype") or self._data.get("dtype")

    @property
    def context_length(self) -> int:
        return int(self.get("max_position_embeddings") or 4096)
