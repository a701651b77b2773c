"""`seekd distill` end to end: a demo `seekd serve` as the teacher, its traces filtered (a prompt whose
verifiable answer the teacher misses is dropped), written as SFT data, and a student adapter trained
on them that seekd loads; and the filter rules on their own."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from live_server import running_server
from tiny_chat_model import write_tiny_chat_model

from seekd import LLM, SamplingParams
from seekd.train.distill import PromptRecord, Trace, TraceFilter, answer_matches, split_reasoning

pytest.importorskip("peft")


def test_distill_from_a_seekd_teacher_writes_filtered_data_and_an_adapter(tmp_path, data_dir):
    student = write_tiny_chat_model(tmp_path / "student")
    prompts = tmp_path / "prompts.jsonl"
    records = [
        {"prompt": "What is two plus two?"},
        {"prompt": "Name a fruit.", "system": "Answer briefly."},
        {"messages": [{"role": "user", "content": "Count to three."}]},
        {"prompt": "What is the secret word?", "answer": "zzqx-never-said"},
    ]
    prompts.write_text("".join(json.dumps(r) + "\n" for r in records))
    out = tmp_path / "distilled"
    with running_server(data_dir, tmp_path / "teacher.log") as teacher:
        cmd = [
            sys.executable, "-m", "seekd.cli", "distill", "--teacher", teacher.api_url, "--student", str(student),
            "--prompts", str(prompts), "--output", str(out), "--max-tokens", "24", "--temperature", "0",
            "--keep-truncated", "--rank", "4", "--alpha", "8", "--max-steps", "3", "--eval-fraction", "0",
            "--batch-size", "2",
        ]  # fmt: skip
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((out / "distill.json").read_text())
    assert summary["teacher_model"] == "seekd-demo-random"
    assert summary["verdicts"] == {"kept": 3, "wrong_answer": 1}
    sft = [json.loads(line) for line in (out / "sft.jsonl").read_text().splitlines()]
    assert [m["messages"][0]["content"] for m in sft] == ["What is two plus two?", "Answer briefly.", "Count to three."]
    assert all(m["messages"][-1]["role"] == "assistant" and m["messages"][-1]["content"] for m in sft)
    adapter = out / "adapter"
    assert json.loads((adapter / "finetune.json").read_text())["steps"] == 3
    llm = LLM(str(student), data_dir=str(data_dir), lora_modules=f"d={adapter}", max_lora_rank=4, show_progress=False)
    (result,) = llm.generate([3, 4, 5], SamplingParams(max_tokens=4, temperature=0), lora_name="d")
    assert len(result.outputs[0].token_ids) == 4


@pytest.mark.parametrize(
    "content,expected,ok",
    [
        ("so the result is \\boxed{4}.", "4", True),
        ("first \\boxed{3}, no wait: \\boxed{ 42 }", "42", True),
        ("\\boxed{42}", "4", False),
        ("The answer is 42.", "42", True),
        ("The answer is 420", "42", False),
        ("It is Paris.", "paris", True),
    ],
)
def test_answer_check_reads_the_last_boxed_value_or_a_whole_word(content, expected, ok):
    assert answer_matches(content, expected) is ok


def test_filter_rules_and_reasoning_split():
    prompt = PromptRecord([{"role": "user", "content": "q"}], answer="7")
    rules = TraceFilter(max_chars=50, require_reasoning=True)
    assert rules.verdict(Trace(prompt, "think", "it is 7", "stop")) == "kept"
    assert rules.verdict(Trace(prompt, "think", "it is 7", "length")) == "truncated"
    assert rules.verdict(Trace(prompt, "", "it is 7", "stop")) == "no_reasoning"
    assert rules.verdict(Trace(prompt, "think", "it is 8", "stop")) == "wrong_answer"
    assert rules.verdict(Trace(prompt, "x" * 60, "it is 7", "stop")) == "too_long"
    assert rules.verdict(Trace(prompt, "think", " ", "stop")) == "empty_answer"
    assert rules.verdict(Trace(prompt, "think", "<think>7", "stop")) == "bad_format"
    assert split_reasoning("<think> a b </think>\n\nthe end", None) == ("a b", "the end")
    assert split_reasoning("the end", "served reasoning") == ("served reasoning", "the end")
