"""Parity of DeepSeek-OCR 2 with transformers: preprocessing (global view and tiles), prefill
logits with 0, 1 and 3 images of different sizes (with and without tiles), greedy tokens batched
and alone, and the checkpoint read under DeepSeek's names."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from parity import hf_greedy
from vision_models import IMAGE_TOKEN_ID, OCR2_PREPROCESSOR, random_image, save_tiny_ocr2

from seekd import LLM, SamplingParams
from seekd.engine.multimodal import ImageInput, image_input
from seekd.models.vision_processing import image_processor_for, tile_grid

# 100x60, 150x50 and 20x90 are tiled (6, 3 and 5 tiles), 30x40 fits in one tile: only its global view
IMAGES = [random_image(100, 60, 1), random_image(30, 40, 2), random_image(150, 50, 3), random_image(20, 90, 4)]
CASES = {
    "no_image": ([[5, 17, 99, 3, 200]], []),
    "one_image": ([[5, 17, 99], [3, 200, 45, 7]], IMAGES[:1]),
    "three_images": ([[41, 42], [7, 100], [250, 13, 9], [77, 81]], IMAGES[1:4]),
}


@pytest.fixture(scope="module")
def ocr2(tmp_path_factory, data_dir):
    folder = tmp_path_factory.mktemp("tiny-deepseek-ocr2")
    hf_model = save_tiny_ocr2(folder)
    llm = LLM(str(folder), data_dir=str(data_dir), num_kv_blocks=512, block_size=16, show_progress=False)
    return folder, llm, hf_model


def ocr2_prompt(folder, texts: list[list[int]], images) -> tuple[list[int], list[ImageInput], dict]:
    """texts[0] image[0] texts[1] ...: token ids with each image's placeholders, its engine inputs,
    and transformers' inputs (global views stacked, tiles concatenated, tiles per image)."""
    processor = image_processor_for(folder)
    ids: list[int] = []
    inputs, views, tiles, counts = [], [], [], []
    for i, text in enumerate(texts):
        ids += text
        if i < len(images):
            processed = processor.process(images[i])
            inputs.append(image_input(len(ids), processed.num_tokens, processed.content_hash(), processed.arrays))
            views.append(processed.arrays["pixel_values"])
            tiles.append(processed.arrays["pixel_values_local"])
            counts.append(len(processed.arrays["pixel_values_local"]))
            ids += [IMAGE_TOKEN_ID] * processed.num_tokens
    hf_inputs = {}
    if images:
        hf_inputs = {"pixel_values": torch.from_numpy(np.stack(views)), "num_local_patches": counts}
        if sum(counts):
            hf_inputs["pixel_values_local"] = torch.from_numpy(np.concatenate(tiles))
    return ids, inputs, hf_inputs


def test_tiling_and_preprocessing_match_transformers(ocr2):
    import transformers
    from transformers.models.deepseek_ocr2.image_processing_pil_deepseek_ocr2 import get_optimal_tiled_canvas

    folder, _, _ = ocr2
    for width, height in [(100, 60), (150, 50), (49, 200), (300, 300), (97, 96), (1000, 10)]:
        expected = get_optimal_tiled_canvas((height, width), (48, 48), 2, 6)
        assert tile_grid(width, height, 48, 2, 6) == expected
    ours = image_processor_for(folder)
    ref = transformers.DeepseekOcr2ImageProcessorPil(**OCR2_PREPROCESSOR)
    for image in IMAGES:
        expected = ref(image, return_tensors="np")
        got = ours.process(image)
        np.testing.assert_allclose(got.arrays["pixel_values"], expected["pixel_values"][0], atol=1e-5)
        n = int(expected["num_local_patches"][0])
        assert got.arrays["pixel_values_local"].shape == (n, 3, 48, 48)
        if n:
            np.testing.assert_allclose(got.arrays["pixel_values_local"], expected["pixel_values_local"], atol=1e-5)
        assert got.num_tokens == 144 * (1 + n) + 1
    assert [len(ours.process(im).arrays["pixel_values_local"]) for im in IMAGES] == [6, 0, 3, 5]
    low = ours.process(IMAGES[0], detail="low")  # OpenAI's detail: low keeps the global view alone
    assert low.arrays["pixel_values_local"].shape[0] == 0 and low.num_tokens == 145
    np.testing.assert_array_equal(low.arrays["pixel_values"], ours.process(IMAGES[0]).arrays["pixel_values"])


@pytest.mark.parametrize("case", sorted(CASES))
def test_prefill_logits_match_transformers(ocr2, case):
    folder, llm, hf_model = ocr2
    ids, inputs, hf_inputs = ocr2_prompt(folder, *CASES[case])
    ours = llm.engine.runner.prefill_logits(ids, images=inputs)
    with torch.no_grad():
        ref = hf_model(torch.tensor([ids]), **hf_inputs).logits[0]
    assert ours.shape == ref.shape
    assert (ours - ref).abs().max().item() < 1e-4


def test_greedy_batched_and_alone_match_transformers(ocr2):
    folder, llm, hf_model = ocr2
    prompts = [ocr2_prompt(folder, *CASES[case]) for case in sorted(CASES)]
    params = SamplingParams(temperature=0.0, max_tokens=6, ignore_eos=True)
    expected = [hf_greedy(hf_model, ids, 6, **hf_inputs) for ids, _, hf_inputs in prompts]
    assert len({tuple(e) for e in expected}) > 1  # the model is not degenerate
    batched = llm.generate([p[0] for p in prompts], params, images=[p[1] for p in prompts])
    assert [o.outputs[0].token_ids for o in batched] == expected
    alone = [llm.generate(ids, params, images=[inputs])[0].outputs[0].token_ids for ids, inputs, _ in prompts]
    assert alone == expected
    assert not llm.engine.has_unfinished_requests()


def test_chunked_prefill_and_prefix_cache_serve_tiled_images(ocr2, data_dir):
    """An image of 1,009 tokens (six tiles) prefilled in chunks of 96 gives the tokens of one whole
    prefill, encoding the image once; the same image again comes from the prefix cache."""
    folder, llm, _ = ocr2
    ids, inputs, _ = ocr2_prompt(folder, *CASES["one_image"])
    params = SamplingParams(temperature=0.0, max_tokens=4, ignore_eos=True)
    expected = llm.generate(ids, params, images=[inputs])[0].outputs[0].token_ids
    chunked = LLM(
        str(folder),
        data_dir=str(data_dir),
        num_kv_blocks=256,
        block_size=16,
        max_num_batched_tokens=96,
        show_progress=False,
    )
    first = chunked.generate(ids, params, images=[inputs])[0]
    assert first.outputs[0].token_ids == expected
    assert chunked.engine.runner.images.num_encoded == 1
    again = chunked.generate(ids, params, images=[inputs])[0]
    assert again.num_cached_tokens == (len(ids) - 1) // 16 * 16
    assert again.outputs[0].token_ids == expected
