"""DeepSeek-V4 checkpoints as released: routed experts in FP4 (two e2m1 codes per byte, one power-of-two
scale per 32 inputs), other linear layers in 128x128 block FP8 with power-of-two (ue8m0) scales named
`X.scale`, DeepSeek's tensor names, an `mtp.*` module; dequantised on load."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from lowbit_weights import quantize_fp4, quantize_fp8_pow2
from models.test_deepseek_v4 import PROMPTS, save_tiny_v4
from safetensors.torch import load_file, save_file

from seekd import LLM
from seekd.layers.quantization import dequantize_block_fp8, dequantize_fp4

V4_QUANT_CONFIG = {
    "activation_scheme": "dynamic",
    "fmt": "e4m3",
    "quant_method": "fp8",
    "scale_fmt": "ue8m0",
    "weight_block_size": [128, 128],
}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_fp4_codes_decode_low_nibble_first_times_the_block_scale():
    packed = torch.tensor([[0x21, 0xF9] * 16], dtype=torch.uint8).view(torch.int8)  # codes 1,2,9,15 repeated
    scale = torch.tensor([[0.25, 4.0]]).to(torch.float8_e8m0fnu)
    out = dequantize_fp4(packed, scale, torch.float32)
    assert out.shape == (1, 64)
    assert out[0, :4].tolist() == [0.5 * 0.25, 1.0 * 0.25, -0.5 * 0.25, -6.0 * 0.25]
    assert out[0, 32:36].tolist() == [2.0, 4.0, -2.0, -24.0]
    with pytest.raises(ValueError, match="FP4 scales of shape"):
        dequantize_fp4(packed, scale[:, :1], torch.float32)


def test_fp4_round_trip_error_is_within_one_scale_step():
    torch.manual_seed(0)
    w = torch.randn(48, 256) * torch.linspace(0.01, 5.0, 256)
    packed, scale = quantize_fp4(w)
    back = dequantize_fp4(packed, scale, torch.float32)
    step = scale.float().repeat_interleave(32, dim=1)  # the largest gap between e2m1 values is 2 units
    assert ((back - w).abs() <= step * (1 + 1e-6)).all()
    assert (back - w).abs().mean() < 0.15 * w.abs().mean()  # e2m1 has 3 magnitudes per octave


def write_v4_checkpoint(src: Path, dst: Path, swap_nibbles: bool = False) -> dict[str, torch.Tensor]:
    """Rewrite a transformers-saved V4 the way DeepSeek ships it (their names, no `model.` prefix), split
    over two shards with every scale in the other shard than its weight, plus an `mtp.0` expert.
    Returns the dequantised weights the loaded model must hold."""
    tensors = {k.removeprefix("model."): v for k, v in load_file(str(src / "model.safetensors")).items()}
    tensors["mtp.0.ffn.experts.0.w1.weight"] = tensors["layers.0.ffn.experts.0.w1.weight"].clone()
    shards: list[dict[str, torch.Tensor]] = [{}, {}]
    expected = {}
    for i, (name, t) in enumerate(sorted(tensors.items())):
        base = name.removesuffix(".weight")
        linear = name.endswith(".weight") and t.dim() == 2 and not name.startswith(("embed", "head", "lm_head"))
        if ".experts." in name and ".shared_experts." not in name:
            q, scale = quantize_fp4(t, swap_nibbles)
            expected[name] = dequantize_fp4(quantize_fp4(t)[0], scale, torch.float32)
        elif linear and not name.endswith("gate.weight"):
            q, scale = quantize_fp8_pow2(t)
            full = scale.float().repeat_interleave(128, 0)[: t.shape[0]].repeat_interleave(128, 1)[:, : t.shape[1]]
            expected[name] = q.float() * full
        else:
            shards[i % 2][name] = t
            expected[name] = t
            continue
        shards[i % 2][name] = q
        shards[1 - i % 2][base + ".scale"] = scale
    dst.mkdir()
    weight_map = {}
    for k, shard in enumerate(shards):
        file = f"model-{k + 1:05d}-of-00002.safetensors"
        save_file(shard, str(dst / file))
        weight_map.update(dict.fromkeys(shard, file))
    (dst / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    config = json.loads((src / "config.json").read_text())
    config.update(quantization_config=V4_QUANT_CONFIG, expert_dtype="fp4", num_nextn_predict_layers=1)
    (dst / "config.json").write_text(json.dumps(config))
    return expected


def prefill_logits(folder: Path, data_dir: Path) -> list[torch.Tensor]:
    llm = LLM(str(folder), data_dir=str(data_dir), num_kv_blocks=64, block_size=8, show_progress=False)
    return [llm.engine.runner.prefill_logits(p) for p in PROMPTS]


def relative_error(logits: list[torch.Tensor], reference: list[torch.Tensor]) -> float:
    return max(((a - b).norm() / b.norm()).item() for a, b in zip(logits, reference))


def test_fp4_fp8_checkpoint_loads_within_quantization_tolerance_of_the_full_precision_model(tmp_path):
    save_tiny_v4(tmp_path / "full")
    expected = write_v4_checkpoint(tmp_path / "full", tmp_path / "fp4")
    full = prefill_logits(tmp_path / "full", tmp_path / "d1")
    llm = LLM(str(tmp_path / "fp4"), data_dir=str(tmp_path / "d2"), num_kv_blocks=64, block_size=8, show_progress=False)
    quantized = [llm.engine.runner.prefill_logits(p) for p in PROMPTS]

    model = llm.engine.runner.model
    params = dict(model.named_parameters())
    wq_a = "layers.1.attn.wq_a.weight"
    assert params[wq_a].dtype == torch.float8_e4m3fn  # kept as shipped: block FP8 ...
    held = dequantize_block_fp8(
        params[wq_a], params[wq_a.replace(".weight", ".weight_scale_inv")], (128, 128), torch.float32
    )
    assert torch.equal(held, expected[wq_a])  # ... encoding exactly what the checkpoint does
    assert not torch.equal(held, load_file(str(tmp_path / "full" / "model.safetensors"))["model." + wq_a])
    experts = model.layers[1].ffn.experts
    assert experts.format == "fp4" and experts.w13_weight.dtype == torch.uint8  # two FP4 codes a byte
    w13, w2 = experts.dense_expert(2, torch.float32)
    assert torch.equal(w2, expected["layers.1.ffn.experts.2.w2.weight"])
    assert torch.equal(w13[: w13.shape[0] // 2], expected["layers.1.ffn.experts.2.w1.weight"])
    low_bit = {n for n, p in params.items() if getattr(p, "low_bit_format", None)}
    assert all(p.dtype == torch.float32 for n, p in params.items() if p.is_floating_point() and n not in low_bit)

    # exact: the same numbers as the full-precision model given the dequantised weights directly
    rounded = tmp_path / "rounded"
    rounded.mkdir()
    shutil.copy(tmp_path / "full" / "config.json", rounded / "config.json")
    save_file({k: v for k, v in expected.items() if not k.startswith("mtp.")}, str(rounded / "model.safetensors"))
    for a, b in zip(quantized, prefill_logits(rounded, tmp_path / "d3")):
        assert (a - b).abs().max().item() < 1e-4

    # tolerance: FP4 rounding of every expert weight moves this tiny random model's logits by about a
    # third; the same bytes read with the nibbles of each byte swapped are a different model
    error = relative_error(quantized, full)
    assert 1e-3 < error < 0.5
    write_v4_checkpoint(tmp_path / "full", tmp_path / "swapped", swap_nibbles=True)
    assert relative_error(prefill_logits(tmp_path / "swapped", tmp_path / "d4"), full) > 2 * error


def test_unknown_expert_dtype_is_refused_before_loading(tmp_path):
    save_tiny_v4(tmp_path / "full")
    write_v4_checkpoint(tmp_path / "full", tmp_path / "bad")
    config = json.loads((tmp_path / "bad" / "config.json").read_text())
    config["expert_dtype"] = "int2"
    (tmp_path / "bad" / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="expert_dtype 'int2'"):
        LLM(str(tmp_path / "bad"), data_dir=str(tmp_path / "data"), num_kv_blocks=8, show_progress=False)
