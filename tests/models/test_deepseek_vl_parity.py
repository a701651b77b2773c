"""Parity of DeepSeek-VL (plain and hybrid) with transformers: preprocessing, prefill logits with
0, 1 and 3 images of different sizes, and greedy tokens batched and alone."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from parity import hf_greedy
from vision_models import image_prompt, random_image, save_tiny_vl

from seekd import LLM, SamplingParams
from seekd.models.vision_processing import image_processor_for

IMAGES = [random_image(50, 30, 1), random_image(20, 64, 2), random_image(40, 40, 3), random_image(7, 90, 4)]
CASES = {
    "no_image": ([[5, 17, 99, 3, 200]], []),
    "one_image": ([[5, 17, 99], [3, 200, 45, 7]], IMAGES[:1]),
    "three_images": ([[41, 42], [7, 100], [250, 13, 9], [77, 81]], IMAGES[1:4]),
}


@pytest.fixture(scope="module", params=["plain", "hybrid"])
def vl_pair(request, tmp_path_factory, data_dir):
    folder = tmp_path_factory.mktemp(f"tiny-deepseek-vl-{request.param}")
    hf_model = save_tiny_vl(request.param, folder)
    llm = LLM(str(folder), data_dir=str(data_dir), num_kv_blocks=256, block_size=8, show_progress=False)
    return folder, llm, hf_model


def hf_logits(hf_model, ids: list[int], arrays: dict[str, np.ndarray]) -> torch.Tensor:
    pixels = {name: torch.from_numpy(a) for name, a in arrays.items()}
    with torch.no_grad():
        return hf_model(torch.tensor([ids]), **pixels).logits[0]


def test_preprocessing_matches_transformers_image_processor(vl_pair):
    import transformers

    folder, llm, _ = vl_pair
    ours = image_processor_for(folder)
    if "high_res_pixel_values" in llm.engine.runner.model.image_input_names:
        ref = transformers.DeepseekVLHybridImageProcessorPil(
            size={"height": 32, "width": 32}, high_res_size={"height": 64, "width": 64}
        )
    else:
        ref = transformers.DeepseekVLImageProcessorPil(size={"height": 32, "width": 32})
    for image in IMAGES:
        expected = ref(image, return_tensors="np")
        got = ours.process(image)
        assert sorted(got.arrays) == sorted(k for k in expected if "pixel" in k)
        for name, array in got.arrays.items():
            np.testing.assert_allclose(array, expected[name][0], atol=1e-5)


@pytest.mark.parametrize("case", sorted(CASES))
def test_prefill_logits_match_transformers(vl_pair, case):
    folder, llm, hf_model = vl_pair
    texts, images = CASES[case]
    ids, inputs, arrays = image_prompt(folder, texts, images)
    ours = llm.engine.runner.prefill_logits(ids, images=inputs)
    ref = hf_logits(hf_model, ids, arrays) if images else hf_model(torch.tensor([ids])).logits[0].detach()
    assert ours.shape == ref.shape
    assert (ours - ref).abs().max().item() < 1e-4


def test_greedy_batched_and_alone_match_transformers(vl_pair):
    folder, llm, hf_model = vl_pair
    prompts = [image_prompt(folder, *CASES[case]) for case in sorted(CASES)]
    params = SamplingParams(temperature=0.0, max_tokens=8, ignore_eos=True)
    expected = [
        hf_greedy(hf_model, ids, 8, **{name: torch.from_numpy(a) for name, a in arrays.items()})
        for ids, _, arrays in prompts
    ]
    assert len({tuple(e) for e in expected}) > 1  # the model is not degenerate
    batched = llm.generate([p[0] for p in prompts], params, images=[p[1] for p in prompts])
    assert [o.outputs[0].token_ids for o in batched] == expected
    alone = [llm.generate(ids, params, images=[inputs])[0].outputs[0].token_ids for ids, inputs, _ in prompts]
    assert alone == expected
    assert not llm.engine.has_unfinished_requests()
