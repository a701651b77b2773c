"""Chat-format SFT data: JSONL of {"messages": [{"role": ..., "content": ...}, ...]} turned into
token ids through the model's own chat template, with the loss on the last assistant turn only."""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

IGNORE_INDEX = -100  # label of a token the loss skips (the prompt, padding)
ROLES = frozenset({"system", "user", "assistant", "tool"})


@dataclass
class Example:
    input_ids: list[int]
    labels: list[int]


def read_conversations(path: Path) -> list[list[dict[str, str]]]:
    """The conversations of a JSONL file; ValueError naming the line of the first bad record."""
    conversations = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{number}: not JSON ({e.msg})") from e
            conversations.append(check_conversation(record, f"{path}:{number}"))
    if not conversations:
        raise ValueError(f"{path} holds no conversations")
    return conversations


def check_conversation(record: Any, where: str) -> list[dict[str, str]]:
    messages = record.get("messages") if isinstance(record, dict) else None
    if not isinstance(messages, list) or not messages:
        raise ValueError(f'{where}: expected {{"messages": [{{"role": ..., "content": ...}}, ...]}}')
    for m in messages:
        if not isinstance(m, dict) or m.get("role") not in ROLES or not isinstance(m.get("content"), str):
            raise ValueError(f"{where}: each message needs a role ({', '.join(sorted(ROLES))}) and text content")
    if messages[-1]["role"] != "assistant":
        raise ValueError(f"{where}: the last message must be the assistant's answer (the one it learns)")
    return messages


def tokenize(tokenizer: Any, messages: list[dict[str, str]], max_len: int) -> Example:
    """Prompt (every turn but the last, plus the generation prompt) and the answer, as the chat
    template renders them; labels mask the prompt. Cut to `max_len` tokens."""
    prompt_text = tokenizer.apply_chat_template(messages[:-1], tokenize=False, add_generation_prompt=True)
    full_text = tokenizer.apply_chat_template(messages, tokenize=False)
    if not full_text.startswith(prompt_text):
        raise ValueError("the chat template renders the answer's prompt differently from the whole conversation")
    prompt = tokenizer(prompt_text, add_special_tokens=False)["input_ids"]
    answer = tokenizer(full_text[len(prompt_text) :], add_special_tokens=False)["input_ids"]
    input_ids = (prompt + answer)[:max_len]
    labels = ([IGNORE_INDEX] * len(prompt) + answer)[:max_len]
    return Example(input_ids, labels)


def split(items: list, eval_fraction: float, seed: int) -> tuple[list, list]:
    """(train, eval), shuffled with `seed`; at least one example each side when there are two."""
    order = list(items)
    random.Random(seed).shuffle(order)
    if eval_fraction <= 0 or len(order) < 2:
        return order, []
    n_eval = min(len(order) - 1, max(1, round(len(order) * eval_fraction)))
    return order[n_eval:], order[:n_eval]


def collate(batch: list[Example | dict], pad_token_id: int) -> dict[str, Any]:
    """Right-padded tensors: pad ids, -100 labels, a zero attention mask on the padding."""
    import torch

    rows = [e if isinstance(e, Example) else Example(**e) for e in batch]
    width = max(len(e.input_ids) for e in rows)
    input_ids = torch.full((len(rows), width), pad_token_id, dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, e in enumerate(rows):
        n = len(e.input_ids)
        input_ids[i, :n] = torch.tensor(e.input_ids)
        labels[i, :n] = torch.tensor(e.labels)
        mask[i, :n] = 1
    return {"input_ids": input_ids, "labels": labels, "attention_mask": mask}
