"""DeepSeek-VL in the engine: chunked prefill splits images across steps and encodes each once,
the prefix cache serves a repeated image (and only the same image), and malformed image spans are
refused before they reach the model."""

from __future__ import annotations

import pytest
from parity import assert_all_blocks_free
from vision_models import IMAGE_TOKEN_ID, image_prompt, random_image, save_tiny_vl

from seekd import LLM, SamplingParams
from seekd.engine.multimodal import image_input
from seekd.engine.request import EngineCoreRequest

GREEDY = SamplingParams(temperature=0.0, max_tokens=6, ignore_eos=True)
PHOTO, OTHER, THIRD = random_image(50, 30, 11), random_image(30, 50, 12), random_image(33, 33, 13)
TEXTS = [list(range(10, 30)), [40, 41, 42, 43, 44, 45, 46]]  # 20 text tokens, the image, 7 more


@pytest.fixture(scope="module")
def vl_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny-deepseek-vl-engine")
    save_tiny_vl("plain", folder)
    return folder


def make_llm(folder, data_dir, **overrides) -> LLM:
    return LLM(str(folder), data_dir=str(data_dir), num_kv_blocks=128, block_size=8, show_progress=False, **overrides)


def test_chunked_prefill_encodes_each_image_once_and_matches_one_step(vl_folder, data_dir):
    prompts = [image_prompt(vl_folder, TEXTS, [PHOTO]), image_prompt(vl_folder, [[7, 8], [9], [5]], [OTHER, THIRD])]
    whole = make_llm(vl_folder, data_dir, enable_prefix_caching=False)
    expected = [
        o.outputs[0].token_ids for o in whole.generate([p[0] for p in prompts], GREEDY, images=[p[1] for p in prompts])
    ]
    chunked = make_llm(vl_folder, data_dir, enable_prefix_caching=False, max_num_batched_tokens=6)
    outs = chunked.generate([p[0] for p in prompts], GREEDY, images=[p[1] for p in prompts])
    assert [o.outputs[0].token_ids for o in outs] == expected
    # 16 image tokens in chunks of at most 6: each image still ran through the encoder once
    assert chunked.engine.runner.images.num_encoded == 3
    assert len(chunked.engine.runner.images.cache) == 0  # features dropped once their tokens were prefilled
    assert_all_blocks_free(chunked)


def test_repeated_image_hits_prefix_cache_and_another_image_does_not(vl_folder, data_dir):
    llm = make_llm(vl_folder, data_dir)
    ids, inputs, _ = image_prompt(vl_folder, TEXTS, [PHOTO])
    first = llm.generate(ids, GREEDY, images=[inputs])[0]
    assert first.num_cached_tokens == 0
    again = llm.generate(ids, GREEDY, images=[inputs])[0]
    # 43 tokens: every full block of 8 but the last token's block is served from the cache
    assert again.num_cached_tokens == 40
    assert again.outputs[0].token_ids == first.outputs[0].token_ids
    other_ids, other_inputs, _ = image_prompt(vl_folder, TEXTS, [OTHER])
    assert other_ids == ids  # the same tokens, another picture
    other = llm.generate(other_ids, GREEDY, images=[other_inputs])[0]
    assert other.num_cached_tokens == 16  # only the blocks before the image
    assert other.outputs[0].token_ids != first.outputs[0].token_ids
    assert_all_blocks_free(llm)


def test_image_spans_that_do_not_match_image_tokens_are_refused(vl_folder, data_dir):
    llm = make_llm(vl_folder, data_dir)
    ids, (image,), _ = image_prompt(vl_folder, TEXTS, [PHOTO])
    arrays = {name: p.to_numpy() for name, p in image.pixels.items()}
    bad = {
        "shifted": image_input(image.offset - 1, image.length, image.content_hash, arrays),
        "past the end": image_input(len(ids) - 3, image.length, image.content_hash, arrays),
        "short": image_input(image.offset, image.length - 1, image.content_hash, arrays),
    }
    for name, spec in bad.items():
        request = EngineCoreRequest(request_id=name, prompt_token_ids=ids, sampling_params=GREEDY, images=[spec])
        with pytest.raises(ValueError, match="image"):
            llm.engine.add_request(request)
    stray = EngineCoreRequest(request_id="stray", prompt_token_ids=[5, IMAGE_TOKEN_ID], sampling_params=GREEDY)
    llm.engine.add_request(stray)  # text-only: a stray image token is embedded as a token
    llm.engine.abort_requests(["stray"])
