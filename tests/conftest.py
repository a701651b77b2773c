"""Shared fixtures: tiny random Hugging Face models saved to disk, loaded by seekd like real ones."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

GPU_AVAILABLE = torch.cuda.is_available()
if not GPU_AVAILABLE:
    # Without a GPU the Triton kernels run through Triton's interpreter, so their comparisons with the
    # reference code run in CI too. It must be on before any kernel module is imported.
    os.environ.setdefault("TRITON_INTERPRET", "1")
KERNEL_DEVICE = "cuda" if GPU_AVAILABLE else "cpu"

# Tiny test tensors gain nothing from intra-op threads, and on a loaded 2-core machine the threads
# fight the server subprocesses: one thread keeps a tiny matmul at microseconds, not milliseconds.
torch.set_num_threads(1)


def pytest_collection_modifyitems(config, items):
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords and not GPU_AVAILABLE:
            item.add_marker(skip_gpu)


@pytest.fixture
def kernel_device() -> str:
    """Where a `triton`-marked test runs its kernels: the GPU, or the CPU through the interpreter."""
    pytest.importorskip("triton")
    return KERNEL_DEVICE


def save_tiny_hf_model(kind: str, folder: Path, **overrides) -> torch.nn.Module:
    """Build a tiny random `transformers` model of the given kind, save it as safetensors in
    `folder`, and return it (float32, eval) as the reference."""
    import transformers

    common = dict(
        vocab_size=384,
        hidden_size=64,
        intermediate_size=160,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        initializer_range=0.15,
        rms_norm_eps=1e-6,
        tie_word_embeddings=False,
        eos_token_id=1,
        bos_token_id=0,
    )
    common.update(overrides)
    if kind == "qwen2":
        config, cls = transformers.Qwen2Config(**common), transformers.Qwen2ForCausalLM
    elif kind == "llama":
        config, cls = transformers.LlamaConfig(**common), transformers.LlamaForCausalLM
    else:
        raise ValueError(kind)
    torch.manual_seed(1234)
    model = cls(config).float().eval()
    with torch.no_grad():  # make biases non-zero so that a missing bias would show
        for name, p in model.named_parameters():
            if name.endswith(".bias"):
                p.normal_(0.0, 0.1)
    model.save_pretrained(folder)
    return model


@pytest.fixture(scope="session")
def qwen2_model(tmp_path_factory) -> tuple[Path, torch.nn.Module]:
    folder = tmp_path_factory.mktemp("tiny-qwen2")
    return folder, save_tiny_hf_model("qwen2", folder)


@pytest.fixture(scope="session")
def llama_model(tmp_path_factory) -> tuple[Path, torch.nn.Module]:
    folder = tmp_path_factory.mktemp("tiny-llama")
    scaling = {
        "rope_type": "llama3",
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 128,
        "rope_theta": 500000.0,
    }
    model = save_tiny_hf_model("llama", folder, rope_parameters=scaling, tie_word_embeddings=True)
    return folder, model


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("seekd-data")
