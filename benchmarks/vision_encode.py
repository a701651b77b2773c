"""Vision encoding of DeepSeek-VL and DeepSeek-OCR 2 at their real shapes (random weights): images/s
of the encoder and projector alone, batched, and the time to first token of a one-image chat prompt
through the engine (prefill including the encoder; each request a new image, so nothing is served
from a cache). Also the server-side preprocessing time of one photo (Pillow, CPU). The photo is
1024x768: DeepSeek-OCR 2 sees it as a 1024 px global view plus six 768 px tiles (1,121 image tokens).

    python benchmarks/vision_encode.py --out benchmarks/results/vision_encode_h100.json
    python benchmarks/vision_encode.py --models tiny tiny-ocr-2 --device cpu   # a smoke run without a GPU
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from seekd import LLM, SamplingParams
from seekd.bench.report import result_header
from seekd.engine.multimodal import image_input
from seekd.models.vision_processing import image_processor_for

SIGLIP_L_384 = dict(  # deepseek-vl-1.3b-chat / 7b-chat low-resolution encoder
    model_type="siglip_vision_model",
    hidden_size=1024,
    intermediate_size=4096,
    num_hidden_layers=24,
    num_attention_heads=16,
    image_size=384,
    patch_size=16,
    hidden_act="gelu_pytorch_tanh",
)
SAM_B_1024 = dict(  # deepseek-vl-7b-chat high-resolution encoder
    model_type="sam_vision_model",
    hidden_size=768,
    mlp_dim=3072,
    num_hidden_layers=12,
    num_attention_heads=12,
    image_size=1024,
    patch_size=16,
    window_size=14,
    global_attn_indexes=[2, 5, 8, 11],
    output_channels=256,
)
LLAMA = dict(model_type="llama", vocab_size=102400, rms_norm_eps=1e-6, max_position_embeddings=4096, rope_theta=10000.0)
MODELS = {
    "deepseek-vl-1.3b": dict(
        architectures=["DeepseekVLForConditionalGeneration"],
        text_config={
            **LLAMA,
            "hidden_size": 2048,
            "intermediate_size": 5632,
            "num_hidden_layers": 24,
            "num_attention_heads": 16,
            "num_key_value_heads": 16,
        },
        vision_config=SIGLIP_L_384,
    ),
    "deepseek-vl-7b": dict(
        architectures=["DeepseekVLHybridForConditionalGeneration"],
        text_config={
            **LLAMA,
            "hidden_size": 4096,
            "intermediate_size": 11008,
            "num_hidden_layers": 30,
            "num_attention_heads": 32,
            "num_key_value_heads": 32,
        },
        vision_config=SIGLIP_L_384,
        high_res_vision_config=SAM_B_1024,
    ),
    "tiny": dict(
        architectures=["DeepseekVLHybridForConditionalGeneration"],
        text_config={
            **LLAMA,
            "vocab_size": 512,
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 4,
        },
        vision_config={
            **SIGLIP_L_384,
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "image_size": 64,
        },
        high_res_vision_config={
            **SAM_B_1024,
            "hidden_size": 32,
            "mlp_dim": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "image_size": 128,
            "window_size": 4,
            "global_attn_indexes": [1],
            "output_channels": 16,
        },
    ),
}
OCR2_SAM = {**SAM_B_1024, "model_type": "deepseek_ocr2_sam_vision_model", "downsample_channels": [512, 896]}
QWEN2_0_5B_ENCODER = dict(  # DeepSeek-OCR 2's query encoder: Qwen2-0.5B's decoder
    model_type="deepseek_ocr2_encoder",
    hidden_size=896,
    intermediate_size=4864,
    num_hidden_layers=24,
    num_attention_heads=14,
    num_key_value_heads=2,
    rope_theta=1000000.0,
    rms_norm_eps=1e-6,
)
DEEPSEEK_3B_MOE = dict(  # DeepSeek-OCR 2's language model (DeepSeek-V2 MoE, multi-head attention)
    model_type="deepseek_ocr2_text",
    vocab_size=129280,
    hidden_size=1280,
    intermediate_size=6848,
    num_hidden_layers=12,
    num_attention_heads=10,
    num_key_value_heads=10,
    n_routed_experts=64,
    num_experts_per_tok=6,
    n_shared_experts=2,
    moe_intermediate_size=896,
    mlp_layer_types=["dense"] + ["sparse"] * 11,
    topk_method="greedy",
    max_position_embeddings=8192,
    rms_norm_eps=1e-6,
    rope_theta=10000.0,
)
MODELS["deepseek-ocr-2"] = dict(
    architectures=["DeepseekOcr2ForConditionalGeneration"],
    text_config=DEEPSEEK_3B_MOE,
    vision_config={"sam_config": OCR2_SAM, "encoder_config": QWEN2_0_5B_ENCODER},
)
MODELS["tiny-ocr-2"] = dict(
    architectures=["DeepseekOcr2ForConditionalGeneration"],
    text_config={
        **DEEPSEEK_3B_MOE,
        "vocab_size": 512,
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 4,
        "n_routed_experts": 4,
        "num_experts_per_tok": 2,
        "moe_intermediate_size": 32,
        "mlp_layer_types": ["dense", "sparse"],
    },
    vision_config={
        "sam_config": {**MODELS["tiny"]["high_res_vision_config"], "downsample_channels": [24, 32]},
        "encoder_config": {
            **QWEN2_0_5B_ENCODER,
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
        },
    },
)
# DeepSeek-OCR 2 encodes seven views of the photo per image: larger batches only add memory
MAX_BATCH = {"deepseek-ocr-2": 8, "tiny-ocr-2": 8}
IMAGE_TOKEN_ID = 100015


def model_folder(name: str, root: Path) -> Path:
    folder = root / name
    folder.mkdir()
    config = {**MODELS[name], "image_token_id": IMAGE_TOKEN_ID, "dtype": "bfloat16", "tie_word_embeddings": False}
    if name.startswith("tiny"):
        config["image_token_id"] = 511
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def timed(fn, device: str, repeats: int) -> float:
    """Median seconds of `fn()` after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def photo(seed: int, size: tuple[int, int] = (1024, 768)) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8))


def bench_model(name: str, root: Path, device: str, batches: list[int], repeats: int) -> dict:
    folder = model_folder(name, root)
    llm = LLM(str(folder), load_format="dummy", device=device, show_progress=False)
    model, processor = llm.engine.runner.model, image_processor_for(folder)
    dtype = next(model.parameters()).dtype
    processed = processor.process(photo(0))
    preprocess_ms = 1000 * timed(lambda: processor.process(photo(0)), "cpu", repeats)
    encode = {}
    for batch in [b for b in batches if b <= MAX_BATCH.get(name, b)]:
        pixels = [
            torch.from_numpy(np.stack([processed.arrays[n]] * batch)).to(device, dtype) for n in model.image_input_names
        ]
        with torch.inference_mode():
            seconds = timed(lambda pixels=pixels: model.encode_images(*pixels), device, repeats)
        encode[batch] = {"ms": 1000 * seconds, "images_per_s": batch / seconds}
    token = model.image_token_id
    text = list(range(100, 132))
    ids = text + [token] * processed.num_tokens + text
    params = SamplingParams(temperature=0.0, max_tokens=1, ignore_eos=True)
    ttfts = []
    for i in range(repeats + 1):
        image = processor.process(photo(i + 1))  # a new image each time: no prefix or encoder cache hit
        spec = image_input(len(text), image.num_tokens, image.content_hash(), image.arrays)
        start = time.perf_counter()
        llm.generate(ids, params, images=[[spec]])
        ttfts.append(time.perf_counter() - start)
    llm.shutdown()
    return {
        "model": name,
        "image_tokens": processed.num_tokens,
        "prompt_tokens": len(ids),
        "preprocess_ms": preprocess_ms,
        "encode": encode,
        "ttft_ms_1_image": 1000 * statistics.median(ttfts[1:]),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--models", nargs="+", default=["deepseek-vl-1.3b", "deepseek-vl-7b", "deepseek-ocr-2"], choices=sorted(MODELS)
    )
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "vision_encode.json"))
    args = parser.parse_args()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            results.append(bench_model(name, Path(tmp), args.device, args.batches, args.repeats))
            gc.collect()  # the model's engine and KV cache go before the next model loads
            if args.device.startswith("cuda"):
                torch.cuda.empty_cache()
    print(
        f"{'model':<18} {'batch':>5} {'encode ms':>10} {'images/s':>10} {'TTFT 1 image ms':>16} {'preprocess ms':>14}"
    )
    for r in results:
        for batch, e in r["encode"].items():
            print(
                f"{r['model']:<18} {batch:>5} {e['ms']:>10.2f} {e['images_per_s']:>10.1f} "
                f"{r['ttft_ms_1_image']:>16.1f} {r['preprocess_ms']:>14.1f}"
            )
    device = torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"
    record = {**result_header("vision_encode", device), "results": results}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
