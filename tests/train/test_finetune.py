"""`seekd finetune` on the CPU: a tiny Qwen2 learns a small lookup task (which fruit has which number)
through a LoRA adapter; its loss falls below a fixed bound, a stopped run resumes, and `seekd serve`'s
engine loading the adapter answers the trained prompts as taught while the base model does not."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
from tiny_chat_model import write_tiny_chat_model

from seekd import LLM, SamplingParams

pytest.importorskip("peft")

NUMBERS = ["one", "two", "three", "four", "five", "six", "seven", "eight"]
FRUITS = ["apple", "banana", "cherry", "grape", "lemon", "mango", "olive", "peach"]
LOSS_BOUND = 0.3  # a model that has not learnt the lookup stays near ln(8) ~ 2 on the fruit token


def conversation(number: str, fruit: str) -> dict:
    return {
        "messages": [
            {"role": "user", "content": f"fruit {number}"},
            {"role": "assistant", "content": f"the answer is {fruit}"},
        ]
    }


def finetune(base: Path, data: Path, output: Path, epochs: int) -> subprocess.CompletedProcess:
    cmd = [
        sys.executable, "-m", "seekd.cli", "finetune", "--base", str(base), "--data", str(data),
        "--output", str(output), "--rank", "8", "--alpha", "16", "--dropout", "0", "--epochs", str(epochs),
        "--learning-rate", "5e-3", "--batch-size", "8", "--eval-fraction", "0.125", "--save-steps", "16",
    ]  # fmt: skip
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=True)


def test_finetune_learns_the_task_resumes_and_the_adapter_serves(tmp_path, data_dir):
    base = write_tiny_chat_model(tmp_path / "tiny-chat")
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps(conversation(n, f)) + "\n" for n, f in zip(NUMBERS, FRUITS)) * 4)
    out = tmp_path / "adapter"

    finetune(base, data, out, epochs=12)
    assert (out / "adapter_config.json").is_file() and (out / "adapter_model.safetensors").is_file()
    first = json.loads((out / "finetune.json").read_text())
    assert first["steps"] == 48  # 28 training conversations in batches of 8 -> 4 steps an epoch
    result = finetune(base, data, out, epochs=16)  # a longer run resumes from checkpoint-48
    summary = json.loads((out / "finetune.json").read_text())
    assert summary["steps"] == 64
    with open(out / "loss_log.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    train = [float(r["train_loss"]) for r in rows if r["train_loss"]]
    assert len(train) == 64 and [int(r["step"]) for r in rows if r["train_loss"]] == list(range(1, 65))
    assert train[0] > 3 * LOSS_BOUND and summary["train_loss"] < LOSS_BOUND
    assert summary["eval_loss"] < LOSS_BOUND
    assert (out / "loss.png").is_file() and "loss plot" in result.stdout

    llm = LLM(str(base), data_dir=str(data_dir), lora_modules=f"fruits={out}", max_lora_rank=8, show_progress=False)
    prompts = [llm.tokenizer.encode_chat([{"role": "user", "content": f"fruit {n}"}]) for n in NUMBERS]
    greedy = SamplingParams(temperature=0.0, max_tokens=8)
    tuned = [o.outputs[0].text for o in llm.generate(prompts, greedy, lora_name="fruits")]
    plain = [o.outputs[0].text for o in llm.generate(prompts, greedy)]
    expected = [f"the answer is {f}" for f in FRUITS]
    assert sum(t == e for t, e in zip(tuned, expected)) >= 7
    assert not any(p == e for p, e in zip(plain, expected))
