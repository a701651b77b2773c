"""llama.cpp's GGUF files (what Ollama users already have) for Qwen2 and Llama, parsed by the
maintained `gguf` package: a config.json equivalent from the file's metadata, and the tensors under
Hugging Face names.

Precision kept: Q4_0 blocks (32 codes, one float16 scale, zero point 8) are exactly seekd's INT4
layout with groups of 32, so a file whose projections are all Q4_0 loads INT4 (the W4A16 kernels).
Everything else (Q8_0, the K-quants Q4_K/Q5_K/Q6_K, float) is dequantized by `gguf.quants` at load
into the model dtype, which is exact up to that dtype's rounding: Q4_K's zero points are
`dmin * m / (d * sc)`, not integers, and Q8_0/Q6_K blocks of 32/16 have no lossless home in seekd's
INT4 or per-row int8 formats, so converting them would add a second quantization error.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from seekd.layers.quantization.int4 import int4_weight

ARCHITECTURES = {"qwen2": "Qwen2ForCausalLM", "llama": "LlamaForCausalLM"}
_LAYER_NAMES = {
    "attn_norm": "input_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_norm": "post_attention_layernorm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
_TOP_NAMES = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}
Q4_0_GROUP = 32


def gguf_file(folder: str | Path) -> Path | None:
    """The one *.gguf file in a model folder (None when there is none)."""
    files = sorted(Path(folder).glob("*.gguf"))
    if len(files) > 1:
        raise ValueError(f"model folder {folder} has several GGUF files ({[f.name for f in files]}); keep one")
    return files[0] if files else None


def _reader(path: Path) -> Any:
    try:
        import gguf
    except ImportError as e:
        raise ImportError("loading GGUF files needs the `gguf` package: pip install gguf") from e
    return gguf.GGUFReader(str(path))


def _field(reader: Any, key: str, default: Any = None) -> Any:
    field = reader.fields.get(key)
    return default if field is None else field.contents()


def gguf_config(path: Path) -> dict[str, Any]:
    """config.json's fields for the model in a GGUF file, with a `quantization_config` naming the file's
    projection types (quant_method gguf)."""
    reader = _reader(path)
    arch = _field(reader, "general.architecture")
    if arch not in ARCHITECTURES:
        raise ValueError(f"GGUF file {path.name} holds a {arch!r} model; seekd loads {', '.join(ARCHITECTURES)} GGUF")
    tokens = _field(reader, "tokenizer.ggml.tokens") or []
    names = {t.name for t in reader.tensors}
    heads = int(_field(reader, f"{arch}.attention.head_count"))
    config = {
        "architectures": [ARCHITECTURES[arch]],
        "model_type": arch,
        "hidden_size": int(_field(reader, f"{arch}.embedding_length")),
        "intermediate_size": int(_field(reader, f"{arch}.feed_forward_length")),
        "num_hidden_layers": int(_field(reader, f"{arch}.block_count")),
        "num_attention_heads": heads,
        "num_key_value_heads": int(_field(reader, f"{arch}.attention.head_count_kv", heads)),
        "rms_norm_eps": float(_field(reader, f"{arch}.attention.layer_norm_rms_epsilon", 1e-6)),
        "rope_theta": float(_field(reader, f"{arch}.rope.freq_base", 10000.0)),
        "max_position_embeddings": int(_field(reader, f"{arch}.context_length", 4096)),
        "vocab_size": len(tokens) or int(reader.tensors[0].shape[-1]),
        "tie_word_embeddings": "output.weight" not in names,
        "bos_token_id": _field(reader, "tokenizer.ggml.bos_token_id"),
        "eos_token_id": _field(reader, "tokenizer.ggml.eos_token_id"),
        "torch_dtype": "bfloat16",
    }
    kinds = sorted({t.tensor_type.name for t in reader.tensors if t.name.startswith("blk.") and len(t.shape) == 2})
    config["quantization_config"] = {"quant_method": "gguf", "tensor_types": kinds}
    return config


def gguf_int4_projections(hf_config: Any) -> bool:
    """Whether every projection of the file is Q4_0, which loads INT4 (groups of 32) as it is."""
    quant = hf_config.get("quantization_config") or {}
    return quant.get("quant_method") == "gguf" and quant.get("tensor_types") == ["Q4_0"]


def _unpermute_rotary(w: torch.Tensor, heads: int) -> torch.Tensor:
    """Undo llama.cpp's converter, which reorders each Llama q/k head's rows from rotate-half pairs
    (i, i + d/2) to interleaved pairs (2i, 2i + 1)."""
    return w.reshape(heads, w.shape[0] // heads // 2, 2, *w.shape[1:]).transpose(1, 2).reshape(w.shape)


def hf_name(name: str) -> str:
    base, _, suffix = name.rpartition(".")
    parts = base.split(".")
    if parts[0] == "blk" and len(parts) == 3 and parts[2] in _LAYER_NAMES:
        return f"model.layers.{parts[1]}.{_LAYER_NAMES[parts[2]]}.{suffix}"
    if base in _TOP_NAMES:
        return f"{_TOP_NAMES[base]}.{suffix}"
    raise ValueError(f"GGUF tensor {name} has no place in a Qwen2/Llama model")


def _q4_0_int4(data: np.ndarray, rows: int, cols: int) -> Any:
    """Q4_0 blocks (float16 d, then 16 bytes: code j in the low nibble of byte j, code j + 16 in its
    high nibble; value d * (code - 8)) as an Int4Weight of groups of 32."""
    blocks = np.ascontiguousarray(data).reshape(rows, cols // Q4_0_GROUP, 18)
    scale = torch.from_numpy(blocks[..., :2].copy().view(np.float16)[..., 0])  # [rows, groups]
    qs = torch.from_numpy(blocks[..., 2:].copy())
    codes = torch.cat((qs & 0xF, qs >> 4), dim=-1).reshape(rows, cols)
    zeros = torch.full(scale.shape, 8, dtype=torch.uint8)
    return int4_weight(codes.t().contiguous(), scale.t().contiguous(), zeros.t().contiguous(), Q4_0_GROUP)


def iter_gguf(path: Path, keep_q4_0: bool) -> Iterator[tuple[str, Any]]:
    """(Hugging Face name, tensor) for every tensor of the file: dequantized to float32 by gguf, or
    Q4_0 projections as Int4Weights when `keep_q4_0`."""
    from gguf import GGMLQuantizationType, quants

    reader = _reader(path)
    arch = _field(reader, "general.architecture")
    heads = int(_field(reader, f"{arch}.attention.head_count"))
    kv_heads = int(_field(reader, f"{arch}.attention.head_count_kv", heads))
    for tensor in reader.tensors:
        name = hf_name(tensor.name)
        rows, cols = (int(tensor.shape[1]), int(tensor.shape[0])) if len(tensor.shape) == 2 else (0, 0)
        rotary_heads = None
        if arch == "llama" and (".q_proj." in name or ".k_proj." in name):
            rotary_heads = heads if ".q_proj." in name else kv_heads
        if keep_q4_0 and tensor.tensor_type == GGMLQuantizationType.Q4_0:
            weight = _q4_0_int4(tensor.data, rows, cols)
            if rotary_heads:  # output rows are the Int4Weight's columns
                order = _unpermute_rotary(torch.arange(rows)[:, None], rotary_heads).view(-1)
                weight = replace(
                    weight, data=weight.data[:, order], scale=weight.scale[:, order], zeros=weight.zeros[:, order]
                )
            yield name, weight
            continue
        values = torch.from_numpy(np.array(quants.dequantize(tensor.data, tensor.tensor_type), dtype=np.float32))
        if len(tensor.shape) == 2:
            values = values.reshape(rows, cols)
        if rotary_heads:
            values = _unpermute_rotary(values, rotary_heads)
        yield name, values
