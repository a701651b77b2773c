"""A model folder's generation_config.json: the generation defaults its authors ship with it.

seekd reads the EOS token ids (the engine stops on them) and the answer length: `max_new_tokens`, or
`max_length`, which in transformers counts the prompt too. The server makes that length the default
`max_tokens` of a chat request that sets none; a model whose file gives neither answers until EOS or
the end of its context.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

FILE_NAME = "generation_config.json"


@dataclass(frozen=True)
class GenerationConfig:
    eos_token_ids: frozenset[int] = frozenset()
    max_new_tokens: int | None = None
    max_length: int | None = None  # prompt + answer

    @classmethod
    def from_folder(cls, folder: str | Path) -> GenerationConfig:
        """The folder's generation config; all defaults when the folder has none."""
        path = Path(folder) / FILE_NAME
        if not path.is_file():
            return cls()
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"{path} is not valid JSON: {e}") from e
        if not isinstance(data, dict):
            raise ValueError(f"{path} must hold a JSON object")
        return cls(
            eos_token_ids=token_ids(data.get("eos_token_id")),
            max_new_tokens=_length(data, "max_new_tokens", path),
            max_length=_length(data, "max_length", path),
        )

    def default_max_tokens(self, prompt_len: int) -> int | None:
        """The answer length for a prompt of `prompt_len` tokens: `max_new_tokens`, else what
        `max_length` leaves after the prompt (at least 1); None when the file sets neither."""
        if self.max_new_tokens is not None:
            return self.max_new_tokens
        if self.max_length is not None:
            return max(1, self.max_length - prompt_len)
        return None


def token_ids(value: Any) -> frozenset[int]:
    """`eos_token_id` as Hugging Face configs write it: one id, a list of ids, or null."""
    if isinstance(value, int):
        return frozenset((value,))
    if isinstance(value, list):
        return frozenset(int(v) for v in value)
    return frozenset()


def _length(data: dict[str, Any], key: str, path: Path) -> int | None:
    value = data.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{path}: {key} must be a positive integer, got {value!r}")
    return value
