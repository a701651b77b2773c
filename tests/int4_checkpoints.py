"""AWQ and GPTQ checkpoints written from a float safetensors checkpoint, packed as the formats' own
tools pack them (written here from the formats' descriptions, independently of seekd's unpacking):

- AWQ (AutoAWQ, GEMM version): qweight int32 [K, N/8] and qzeros int32 [K/G, N/8] with the eight
  columns of a word in nibble order 0, 2, 4, 6, 1, 3, 5, 7; scales float16 [K/G, N]; asymmetric.
- GPTQ (AutoGPTQ, format v1): qweight int32 [K/8, N], eight input rows per word, row 8i+j in bits
  4j..; qzeros int32 [K/G, N/8] holding zero - 1; scales float16 [K/G, N]; g_idx int32 [K]. With
  act-order the input channels are quantized in a permuted order (one order per input: the projections
  that read the same activations share it, as GPTQ's Hessian is the same for them).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

LINEAR_SUFFIXES = ("_proj.weight", "_proj_with_mqa.weight")
AWQ_NIBBLE_COLUMNS = (0, 2, 4, 6, 1, 3, 5, 7)


def quantize_groups(w: torch.Tensor, columns: torch.Tensor, group_size: int, sym: bool):
    """w [N, K] quantized in groups of `group_size` input columns taken in the order `columns`:
    (codes [K, N] in original column order, scales [K/G, N] float16, zeros [K/G, N], g_idx [K])."""
    n, k = w.shape
    ordered = w.float()[:, columns].reshape(n, k // group_size, group_size)
    if sym:
        scale = ordered.abs().amax(-1).clamp(min=1e-8) * 2 / 15
        zero = torch.full_like(scale, 8.0)
    else:
        wmax, wmin = ordered.amax(-1).clamp(min=0), ordered.amin(-1).clamp(max=0)
        scale = ((wmax - wmin) / 15).clamp(min=1e-8)
        zero = (-wmin / scale.half().float()).round().clamp(0, 15)
    scale = scale.half()
    codes = (ordered / scale.float()[..., None] + zero[..., None]).round().clamp(0, 15).reshape(n, k)
    original = torch.empty_like(codes)
    original[:, columns] = codes
    g_idx = torch.empty(k, dtype=torch.int32)
    g_idx[columns] = (torch.arange(k) // group_size).to(torch.int32)
    return original.t().to(torch.int64), scale.t().contiguous(), zero.t().to(torch.int64), g_idx


def _words(nibbles: torch.Tensor) -> torch.Tensor:
    """[..., 8] values 0..15 -> int32 words, value j in bits 4j..4j+3 (two's complement for the top bit)."""
    word = sum((nibbles[..., j] & 0xF) << (4 * j) for j in range(8))
    return torch.where(word >= 2**31, word - 2**32, word).to(torch.int32).contiguous()


def pack_awq(values: torch.Tensor) -> torch.Tensor:
    """[rows, N] -> [rows, N/8], column 8c + AWQ_NIBBLE_COLUMNS[i] in nibble i of word c."""
    rows, n = values.shape
    grouped = values.view(rows, n // 8, 8)[..., list(AWQ_NIBBLE_COLUMNS)]
    return _words(grouped)


def pack_gptq_rows(codes: torch.Tensor) -> torch.Tensor:
    """[K, N] -> [K/8, N], row 8i+j in nibble j of word i."""
    k, n = codes.shape
    return _words(codes.view(k // 8, 8, n).permute(0, 2, 1))


def pack_gptq_zeros(zeros: torch.Tensor) -> torch.Tensor:
    """[K/G, N] zero points -> [K/G, N/8] words holding zero - 1 (GPTQ v1), column 8c+j in nibble j."""
    rows, n = zeros.shape
    return _words((zeros - 1).view(rows, n // 8, 8))


def input_key(name: str) -> str:
    """Projections that read the same activations: q/k/v, gate/up, and each other projection alone."""
    for part in ("q_proj", "k_proj", "v_proj"):
        name = name.replace(f".self_attn.{part}.", ".self_attn.qkv.")
    return name.replace(".gate_proj.", ".gate_up.").replace(".up_proj.", ".gate_up.")


def write_int4_checkpoint(
    src: Path, dst: Path, method: str, group_size: int, *, act_order: bool = False, sym: bool = False
) -> None:
    """`src`'s float checkpoint as an AWQ or GPTQ one in `dst`: every decoder-layer projection quantized
    (lm_head, embeddings, norms and MoE routers stay float, as the tools leave them)."""
    dst.mkdir(parents=True, exist_ok=True)
    for f in src.iterdir():
        if f.is_file() and f.suffix != ".safetensors" and f.name != "model.safetensors.index.json":
            shutil.copy(f, dst / f.name)
    tensors = {}
    for path in sorted(src.glob("*.safetensors")):
        tensors.update(load_file(path))
    gen = torch.Generator().manual_seed(11)
    orders: dict[str, torch.Tensor] = {}
    out = {}
    for name, w in tensors.items():
        if not (name.startswith("model.layers.") and name.endswith(LINEAR_SUFFIXES)):
            out[name] = w
            continue
        prefix, k = name.removesuffix(".weight"), w.shape[1]
        columns = torch.arange(k)
        if act_order:
            columns = orders.setdefault(input_key(name), torch.randperm(k, generator=gen))
        codes, scales, zeros, g_idx = quantize_groups(w, columns, group_size, sym)
        out[f"{prefix}.scales"] = scales
        if method == "awq":
            out[f"{prefix}.qweight"] = pack_awq(codes)
            out[f"{prefix}.qzeros"] = pack_awq(zeros)
        else:
            out[f"{prefix}.qweight"] = pack_gptq_rows(codes)
            out[f"{prefix}.qzeros"] = pack_gptq_zeros(zeros)
            out[f"{prefix}.g_idx"] = g_idx
    save_file(out, dst / "model.safetensors")
    config = json.loads((src / "config.json").read_text())
    if method == "awq":
        config["quantization_config"] = {
            "quant_method": "awq",
            "bits": 4,
            "group_size": group_size,
            "zero_point": True,
            "version": "gemm",
        }
    else:
        config["quantization_config"] = {
            "quant_method": "gptq",
            "bits": 4,
            "group_size": group_size,
            "desc_act": act_order,
            "sym": sym,
            "checkpoint_format": "gptq",
        }
    (dst / "config.json").write_text(json.dumps(config, indent=2))
