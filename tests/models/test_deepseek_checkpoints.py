"""Loading DeepSeek checkpoints as they ship: 128x128 block FP8 with `weight_scale_inv`, an MTP layer
after the last decoder layer, and either expert layout (per-expert or transformers' packed)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import transformers
from safetensors.torch import load_file, save_file

from seekd import LLM
from seekd.layers.quantization import dequantize_block_fp8

PROMPT = [5, 17, 99, 3, 200, 45, 7, 8, 9, 10, 11, 300, 301, 22, 23, 24, 25, 26, 27, 28]
FP8_MAX = torch.finfo(torch.float8_e4m3fn).max
FP8_CONFIG = {"quant_method": "fp8", "fmt": "e4m3", "activation_scheme": "dynamic", "weight_block_size": [128, 128]}


def quantize_block_fp8(w: torch.Tensor, block: int = 128) -> tuple[torch.Tensor, torch.Tensor]:
    """DeepSeek's scheme: per 128x128 block, scale = amax / 448, stored as `weight_scale_inv`."""
    rows, cols = w.shape
    nr, nc = -(-rows // block), -(-cols // block)
    padded = F.pad(w.float(), (0, nc * block - cols, 0, nr * block - rows)).view(nr, block, nc, block)
    scale = (padded.abs().amax(dim=(1, 3)) / FP8_MAX).clamp(min=1e-12)
    q = (padded / scale[:, None, :, None]).to(torch.float8_e4m3fn).view(nr * block, nc * block)
    return q[:rows, :cols].contiguous(), scale


def test_block_fp8_dequantizes_to_the_original_within_e4m3_precision():
    torch.manual_seed(0)
    w = torch.randn(300, 260) * torch.linspace(0.01, 3.0, 260)  # blocks with very different ranges
    q, scale_inv = quantize_block_fp8(w)
    assert q.dtype == torch.float8_e4m3fn and scale_inv.shape == (3, 3)
    back = dequantize_block_fp8(q, scale_inv, (128, 128), torch.float32)
    assert back.shape == w.shape
    assert ((back - w).abs() <= w.abs() * 2**-4 + 1e-3).all()  # 3 mantissa bits: <= 1/16 relative
    with pytest.raises(ValueError, match="block scales of shape"):
        dequantize_block_fp8(q, scale_inv[:2], (128, 128), torch.float32)


def write_fp8_checkpoint(src: Path, dst: Path, num_hidden_layers: int) -> dict[str, torch.Tensor]:
    """Rewrite a saved model as DeepSeek ships V3: linear weights in float8 + block scales, split
    over two shards with every scale in the other shard than its weight, plus an MTP layer. Returns
    the dequantised weights, which the loaded model must hold."""
    tensors = load_file(str(src / "model.safetensors"))
    shards: list[dict[str, torch.Tensor]] = [{}, {}]
    expected = {}
    for i, (name, t) in enumerate(sorted(tensors.items())):
        quantize = t.dim() == 2 and "embed" not in name and "lm_head" not in name and not name.endswith("gate.weight")
        if quantize:
            q, scale_inv = quantize_block_fp8(t)
            shards[i % 2][name] = q
            shards[1 - i % 2][name + "_scale_inv"] = scale_inv
            expected[name] = dequantize_block_fp8(q, scale_inv, (128, 128), torch.float32)
        else:
            shards[i % 2][name] = t
            expected[name] = t
        if name.startswith("model.layers.1."):  # the MTP layer: a copy of a MoE layer, plus its own parts
            mtp = name.replace("model.layers.1.", f"model.layers.{num_hidden_layers}.")
            shards[0][mtp] = t.clone()
    shards[0][f"model.layers.{num_hidden_layers}.eh_proj.weight"] = torch.randn(64, 128)
    shards[0][f"model.layers.{num_hidden_layers}.enorm.weight"] = torch.ones(64)
    dst.mkdir()
    weight_map = {}
    for k, shard in enumerate(shards):
        file = f"model-{k + 1:05d}-of-00002.safetensors"
        save_file(shard, str(dst / file))
        weight_map.update(dict.fromkeys(shard, file))
    (dst / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    config = json.loads((src / "config.json").read_text())
    config.update(quantization_config=FP8_CONFIG, num_nextn_predict_layers=1)
    (dst / "config.json").write_text(json.dumps(config))
    return expected


@pytest.mark.parametrize("quantization", ["none", "auto"])
def test_fp8_block_checkpoint_loads_and_skips_the_mtp_layer(tmp_path, tiny_deepseek, quantization):
    """none: dequantized on load (the reference); auto: kept FP8 with its scales, and on the CPU
    multiplied by dequantizing per call, so the logits are the same to float32 rounding."""
    src = tmp_path / "bf16"
    hf_model = tiny_deepseek("v3", src)
    expected = write_fp8_checkpoint(src, tmp_path / "fp8", hf_model.config.num_hidden_layers)
    llm = LLM(
        str(tmp_path / "fp8"),
        data_dir=str(tmp_path / "data"),
        num_kv_blocks=32,
        block_size=8,
        show_progress=False,
        quantization=quantization,
    )
    params = dict(llm.engine.runner.model.named_parameters())
    q_a = "model.layers.1.self_attn.q_a_proj.weight"
    if quantization == "auto":
        assert params[q_a].dtype == torch.float8_e4m3fn
        scale = params[q_a.replace(".weight", ".weight_scale_inv")]
        assert torch.equal(dequantize_block_fp8(params[q_a], scale, (128, 128), torch.float32), expected[q_a])
        assert params["model.layers.1.self_attn.kv_b_proj.weight"].dtype == torch.float32  # absorbed by MLA
    else:
        assert torch.equal(params[q_a], expected[q_a])
    original = load_file(str(src / "model.safetensors"))[q_a]
    assert (expected[q_a] - original).abs().max() <= original.abs().max() * 2**-4
    expert_gate = expected["model.layers.1.mlp.experts.3.gate_proj.weight"]
    assert torch.equal(params["model.layers.1.mlp.experts.w13_weight"][3, :32], expert_gate)

    rounded = tmp_path / "rounded"  # the reference: transformers with the same FP8-rounded weights
    rounded.mkdir()
    shutil.copy(src / "config.json", rounded / "config.json")
    save_file(expected, str(rounded / "model.safetensors"))
    reference = transformers.AutoModelForCausalLM.from_pretrained(str(rounded), dtype=torch.float32).eval()
    with torch.no_grad():
        ref = reference(torch.tensor([PROMPT])).logits[0]
        unrounded = hf_model(torch.tensor([PROMPT])).logits[0]
    assert (ref - unrounded).abs().max().item() > 1e-3  # FP8 rounding is visible, so the check means something
    assert (llm.engine.runner.prefill_logits(PROMPT) - ref).abs().max().item() < 1e-4


def test_unsupported_quantization_is_refused_with_a_clear_error(tmp_path, tiny_deepseek):
    tiny_deepseek("v2_lite", tmp_path / "m")
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    for quant, message in (
        ({"quant_method": "bitsandbytes", "load_in_4bit": True}, r"bitsandbytes.*cannot load yet"),
        ({"quant_method": "gptq", "bits": 8}, r"8-bit weights; seekd loads 4-bit AWQ and GPTQ"),
        ({"quant_method": "gptq", "bits": 4}, r"input features cannot hold INT4 weights in groups of 128"),
    ):
        config["quantization_config"] = quant
        (tmp_path / "m" / "config.json").write_text(json.dumps(config))
        with pytest.raises(ValueError, match=message):
            LLM(str(tmp_path / "m"), data_dir=str(tmp_path / "data"), num_kv_blocks=8, show_progress=False)


def test_packed_expert_layout_loads_like_per_expert(tmp_path, tiny_deepseek):
    """transformers holds experts as packed 3D `experts.gate_up_proj` / `experts.down_proj`; a
    checkpoint written from that state dict must load to the same model."""
    hf_model = tiny_deepseek("v2_group_limited", tmp_path / "per_expert")
    packed = tmp_path / "packed"
    packed.mkdir()
    shutil.copy(tmp_path / "per_expert" / "config.json", packed / "config.json")
    state = {k: v.contiguous() for k, v in hf_model.state_dict().items()}
    assert "model.layers.1.mlp.experts.gate_up_proj" in state
    save_file(state, str(packed / "model.safetensors"))
    llm = LLM(str(packed), data_dir=str(tmp_path / "data"), num_kv_blocks=32, block_size=8, show_progress=False)
    with torch.no_grad():
        ref = hf_model(torch.tensor([PROMPT])).logits[0]
    assert (llm.engine.runner.prefill_logits(PROMPT) - ref).abs().max().item() < 1e-4
