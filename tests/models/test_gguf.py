"""GGUF files written with gguf's own GGUFWriter (and quantized by its quants module) from tiny random
Qwen2 and Llama models, laid out as llama.cpp's converter lays them out (Llama's q/k rows permuted
for interleaved rotary): F32 files serve the same model as the safetensors folder; Q4_0 files stay INT4
and agree with the same file dequantized; K-quant blocks load as gguf dequantizes them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import save_tiny_hf_model
from decode_agreement import agreement, decode_logits, greedy_sequences
from safetensors.torch import load_file

from seekd import LLM
from seekd.models.gguf_checkpoint import gguf_config, iter_gguf
from seekd.models.hf_config import HFConfig
from seekd.models.loader import precision_label

gguf = pytest.importorskip("gguf")
T = gguf.GGMLQuantizationType
NUM_PROMPTS, NUM_DECODE = 4, 40
LAYER = {
    "input_layernorm": "attn_norm",
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "post_attention_layernorm": "ffn_norm",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}


def gguf_name(name: str) -> str:
    top = {"model.embed_tokens": "token_embd", "model.norm": "output_norm", "lm_head": "output"}
    base, _, suffix = name.rpartition(".")
    if base in top:
        return f"{top[base]}.{suffix}"
    _, _, layer, rest = base.split(".", 3)
    return f"blk.{layer}.{LAYER[rest]}.{suffix}"


def permute_rotary(w: np.ndarray, heads: int) -> np.ndarray:
    """llama.cpp's converter: each head's rows (i, i + d/2) become (2i, 2i + 1)."""
    return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_gguf(src: Path, dst: Path, arch: str, projection_type, vocab: int = 384) -> Path:
    """The float safetensors model in `src` as one GGUF file in `dst`: projections in
    `projection_type`, everything else F32; a tiny byte-level vocabulary as llama.cpp writes it."""
    import json

    config = json.loads((src / "config.json").read_text())
    dst.mkdir(parents=True, exist_ok=True)
    path = dst / "model.gguf"
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_context_length(config["max_position_embeddings"])
    writer.add_embedding_length(config["hidden_size"])
    writer.add_block_count(config["num_hidden_layers"])
    writer.add_feed_forward_length(config["intermediate_size"])
    writer.add_head_count(config["num_attention_heads"])
    writer.add_head_count_kv(config["num_key_value_heads"])
    writer.add_layer_norm_rms_eps(config["rms_norm_eps"])
    writer.add_rope_freq_base(config.get("rope_theta") or config.get("rope_parameters", {}).get("rope_theta", 1e4))
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list([f"t{i}" for i in range(vocab)])
    writer.add_bos_token_id(config["bos_token_id"])
    writer.add_eos_token_id(config["eos_token_id"])
    for name, tensor in load_file(src / "model.safetensors").items():
        w = tensor.float().numpy()
        if arch == "llama" and (".q_proj." in name or ".k_proj." in name):
            heads = config["num_attention_heads" if ".q_proj." in name else "num_key_value_heads"]
            w = permute_rotary(w, heads)
        if name.endswith("_proj.weight") and projection_type != T.F32:
            writer.add_tensor(gguf_name(name), gguf.quants.quantize(w, projection_type), raw_dtype=projection_type)
        else:
            writer.add_tensor(gguf_name(name), np.ascontiguousarray(w))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def engine(folder: Path, data: Path, quantization: str = "auto") -> LLM:
    return LLM(
        str(folder),
        data_dir=str(data),
        quantization=quantization,
        num_kv_blocks=100,
        block_size=8,
        max_model_len=96,
        enforce_eager=True,
        show_progress=False,
    )


def compare(reference: LLM, candidate: LLM, vocab: int = 384):
    gen = torch.Generator().manual_seed(3)
    prompts = [torch.randint(2, vocab, (n,), generator=gen).tolist() for n in range(10, 10 + 2 * NUM_PROMPTS, 2)]
    sequences = greedy_sequences(reference, prompts, NUM_DECODE)
    lens = [len(p) for p in prompts]
    return agreement(decode_logits(reference, sequences, lens), decode_logits(candidate, sequences, lens))


@pytest.mark.parametrize("arch", ["qwen2", "llama"])
def test_f32_gguf_serves_the_same_model_as_its_safetensors(tmp_path, arch):
    save_tiny_hf_model(arch, tmp_path / "hf", tie_word_embeddings=arch == "llama")
    write_gguf(tmp_path / "hf", tmp_path / "gguf", arch, T.F32)
    config = gguf_config(tmp_path / "gguf" / "model.gguf")
    assert config["architectures"] == [{"qwen2": "Qwen2ForCausalLM", "llama": "LlamaForCausalLM"}[arch]]
    assert config["tie_word_embeddings"] == (arch == "llama")
    result = compare(engine(tmp_path / "hf", tmp_path / "d1"), engine(tmp_path / "gguf", tmp_path / "d2"))
    assert result.top1 == 1.0 and result.mean_kl < 1e-9, result


@pytest.mark.parametrize("arch", ["qwen2", "llama"])
def test_q4_0_gguf_stays_int4_and_agrees_with_the_file_dequantized(tmp_path, arch):
    save_tiny_hf_model(arch, tmp_path / "hf")
    write_gguf(tmp_path / "hf", tmp_path / "gguf", arch, T.Q4_0)
    assert precision_label(HFConfig.from_folder(tmp_path / "gguf"), "auto") == "gguf Q4_0 int4 (groups of 32)"
    int4 = engine(tmp_path / "gguf", tmp_path / "d2")
    model = int4.engine.runner.model
    assert {getattr(p, "low_bit_format", None) for n, p in model.named_parameters() if "proj.weight" in n} == {"int4"}
    result = compare(engine(tmp_path / "gguf", tmp_path / "d1", "none"), int4)
    assert result.top1 >= 0.99 and result.mean_kl <= 1e-2, result


def test_q8_0_gguf_loads_dequantized_close_to_the_float_model(tmp_path):
    save_tiny_hf_model("qwen2", tmp_path / "hf")
    write_gguf(tmp_path / "hf", tmp_path / "gguf", "qwen2", T.Q8_0)
    q8 = engine(tmp_path / "gguf", tmp_path / "d2")
    assert not any(getattr(p, "low_bit_format", None) for p in q8.engine.runner.model.parameters())
    result = compare(engine(tmp_path / "hf", tmp_path / "d1"), q8)
    # against the float model, not a dequantized reference: Q8_0's own error flips a few of these flat
    # tiny models' near-tied top-1 choices (measured: top-1 0.956, KL 3.9e-4)
    assert result.top1 >= 0.9 and result.mean_kl <= 1e-3, result


@pytest.mark.parametrize("qtype", ["Q4_K", "Q5_K", "Q6_K", "Q8_0", "Q4_0"])
def test_k_quant_blocks_load_as_gguf_dequantizes_them(tmp_path, qtype):
    """gguf cannot quantize to K-quants, so the blocks are random codes with valid float16 scales."""
    qtype = T[qtype]
    block, nbytes = gguf.GGML_QUANT_SIZES[qtype]
    rows, cols = 8, 512
    gen = np.random.default_rng(0)
    raw = gen.integers(0, 256, (rows, cols // block, nbytes), dtype=np.uint8)
    scale_offsets = {T.Q4_K: (0, 2), T.Q5_K: (0, 2), T.Q6_K: (nbytes - 2,), T.Q8_0: (0,), T.Q4_0: (0,)}[qtype]
    for offset in scale_offsets:  # d (and dmin): small positive float16
        raw[..., offset : offset + 2] = np.full(raw.shape[:2], 0.01, np.float16)[..., None].view(np.uint8)
    path = tmp_path / "m.gguf"
    writer = gguf.GGUFWriter(str(path), "qwen2")
    writer.add_head_count(1)
    writer.add_tensor("blk.0.ffn_down.weight", raw.reshape(rows, -1), raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    ((name, loaded),) = list(iter_gguf(path, keep_q4_0=False))
    assert name == "model.layers.0.mlp.down_proj.weight" and loaded.shape == (rows, cols)
    expected = gguf.quants.dequantize(raw.reshape(rows, -1), qtype)
    assert np.isfinite(expected).all()
    np.testing.assert_array_equal(loaded.numpy(), expected)


def test_tokenizer_is_rebuilt_from_gguf_metadata_when_no_tokenizer_json(tmp_path):
    import json

    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

    from seekd.text.gguf_tokenizer import SPLITS
    from seekd.text.tokenizer import Tokenizer as SeekdTokenizer

    original = Tokenizer(models.BPE())
    original.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(SPLITS["qwen2"]), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    original.decoder = decoders.ByteLevel()
    corpus = ["The quick brown fox jumps over 1234 lazy dogs.", "深度求索 serves models", "don't stop\n\n  now"] * 50
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<|endoftext|>", "<|im_start|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    original.train_from_iterator(corpus, trainer)
    spec = json.loads(original.to_str())
    vocab = spec["model"]["vocab"]
    tokens = [t for t, _ in sorted(vocab.items(), key=lambda kv: kv[1])]
    merges = [m if isinstance(m, str) else " ".join(m) for m in spec["model"]["merges"]]
    template = "{% for m in messages %}<|im_start|>{{ m['content'] }}{% endfor %}"
    writer = gguf.GGUFWriter(str(tmp_path / "model.gguf"), "qwen2")
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("qwen2")
    writer.add_token_list(tokens)
    writer.add_token_merges(merges)
    writer.add_token_types([3 if t.startswith("<|") else 1 for t in tokens])
    writer.add_bos_token_id(vocab["<|im_start|>"])
    writer.add_eos_token_id(vocab["<|endoftext|>"])
    writer.add_chat_template(template)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    rebuilt = SeekdTokenizer(tmp_path)
    for text in ["The lazy fox 56789!", "深度求索 don't\n\n stop", "<|im_start|>hello<|endoftext|>"]:
        assert rebuilt.encode(text) == original.encode(text).ids, text
        assert rebuilt.backend.decode(rebuilt.encode(text), skip_special_tokens=False) == text
    assert rebuilt.eos_token == "<|endoftext|>" and rebuilt.eos_token_id == vocab["<|endoftext|>"]
    assert rebuilt.chat_template == template
    assert vocab["<|endoftext|>"] in rebuilt.all_special_ids
