"""Images end to end: the openai client sends base64 image parts to a real `seekd serve` of a tiny
random DeepSeek-VL (hybrid) with DeepSeek's tokenizer, gets answers, sees a repeated image served from
the prefix cache, gets 400s naming the part for bad images, and a fuzz over image bytes never gets
anything but an answer or a 400 (and leaves the server answering)."""

from __future__ import annotations

import base64
import io
import json
import random

import httpx
import openai
import pytest
from live_server import running_server
from PIL import Image
from vision_models import OCR2_ENCODER, OCR2_PREPROCESSOR, OCR2_SAM, OCR2_TEXT, random_image

from seekd.models.demo import DEEPSEEK_CHAT_TEMPLATE, write_deepseek_tokenizer
from seekd.models.demo_vl import VL_DEMO_IMAGE_TOKEN_ID, write_vl_demo_files

IMAGE_TOKENS = 64  # the folder's SigLIP view: 128 px in 16 px patches
BLOCK_SIZE = 16  # seekd serve's default KV block


@pytest.fixture(scope="module")
def vl_server(data_dir, tmp_path_factory):
    folder = tmp_path_factory.mktemp("e2e") / "tiny-deepseek-vl"
    folder.mkdir()
    write_vl_demo_files(folder)
    log_path = folder.parent / "server.log"
    limits = ["--max-images-per-request", "3", "--max-image-bytes", "30000", "--max-image-pixels", str(600 * 600)]
    with running_server(data_dir, log_path, "--model", str(folder), "--load-format", "dummy", *limits) as handle:
        yield handle


@pytest.fixture(scope="module")
def client(vl_server) -> openai.OpenAI:
    return openai.OpenAI(base_url=vl_server.api_url, api_key="unused", max_retries=0, timeout=60)


def encoded(image: Image.Image, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt)
    return buf.getvalue()


def image_part(data: bytes, media: str = "image/png") -> dict:
    return {"type": "image_url", "image_url": {"url": f"data:{media};base64,{base64.b64encode(data).decode()}"}}


def ask(client: openai.OpenAI, *parts: dict, **kwargs):
    return client.chat.completions.create(
        model="tiny-deepseek-vl",
        messages=[{"role": "user", "content": list(parts)}],
        max_tokens=kwargs.pop("max_tokens", 4),
        temperature=0.0,
        **kwargs,
    )


def text(value: str) -> dict:
    return {"type": "text", "text": value}


PHOTO = encoded(random_image(90, 60, 1))
OTHER = encoded(random_image(60, 90, 2))


def test_image_gets_an_answer_and_a_repeated_image_hits_the_prefix_cache(client):
    first = ask(client, image_part(PHOTO), text("What is in this picture?"))
    assert first.choices[0].finish_reason == "length"
    assert first.usage.completion_tokens == 4 and isinstance(first.choices[0].message.content, str)
    # BOS, <｜User｜>, the image's placeholders, the question, <｜Assistant｜>
    assert first.usage.prompt_tokens > 2 + IMAGE_TOKENS
    again = ask(client, image_part(PHOTO), text("Which colours does it have, and how many shapes?"))
    cached = again.usage.prompt_tokens_details.cached_tokens
    # every whole block up to the image's end (offset 2) comes from the cache
    assert cached >= (2 + IMAGE_TOKENS) // BLOCK_SIZE * BLOCK_SIZE
    # another picture behind the same tokens shares no block: the first already holds image tokens
    other = ask(client, image_part(OTHER), text("Which colours does it have, and how many shapes?"))
    assert other.usage.prompt_tokens == again.usage.prompt_tokens
    assert (other.usage.prompt_tokens_details.cached_tokens or 0) == 0


def test_several_images_stream_and_n(client):
    stream = ask(client, text("Compare"), image_part(PHOTO), text("with"), image_part(OTHER), stream=True, n=2)
    finished = {c.choices[0].index for c in stream if c.choices and c.choices[0].finish_reason == "length"}
    assert finished == {0, 1}


def refused(client: openai.OpenAI, parts: list[dict], match: str, param: str) -> None:
    with pytest.raises(openai.BadRequestError, match=match) as info:
        ask(client, *parts)
    assert info.value.status_code == 400
    assert info.value.param == param


def test_bad_images_are_400s_naming_the_part(client):
    small = image_part(encoded(random_image(20, 20, 3)))
    q = text("what is this?")
    noise = encoded(random_image(200, 200, 4))  # random pixels do not compress: ~120 kB
    assert len(noise) > 30000
    cases = [
        ([q, {"type": "image_url", "image_url": {"url": "data:image/png;base64,@@@not-base64@@@"}}], "base64", 1),
        ([q, image_part(encoded(random_image(16, 16, 5), "TIFF"), "image/tiff")], "supported format", 1),
        ([q, image_part(noise)], "larger than 30000 bytes", 1),
        ([q, image_part(encoded(Image.new("RGB", (700, 700), (9, 9, 9))))], "700x700 pixels", 1),
        ([q, small, small, small, small], "more than 3 images", 4),
        ([q, image_part(PHOTO[:100])], "cannot be decoded", 1),
        ([q, {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}], "does not fetch", 1),
    ]
    for parts, match, j in cases:
        refused(client, parts, match, f"messages.0.content.{j}")


def test_a_text_only_model_refuses_image_parts(server):
    demo = openai.OpenAI(base_url=server.api_url, api_key="unused", max_retries=0, timeout=60)
    with pytest.raises(openai.BadRequestError, match="text only") as info:
        demo.chat.completions.create(
            model="seekd-demo-random",
            messages=[{"role": "user", "content": [text("what is this?"), image_part(PHOTO)]}],
            max_tokens=2,
        )
    assert info.value.param == "messages.0.content.1"


BMP = encoded(random_image(24, 20, 6), "BMP")  # no checksums: overwritten bytes often still decode


def fuzzed_images(n: int, seed: int) -> list[bytes]:
    """Random bytes, truncated PNGs, and PNGs and BMPs with a few bytes overwritten (headers, sizes,
    chunk lengths, pixel data)."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        kind = i % 4
        if kind == 0:
            out.append(rng.randbytes(rng.randint(0, 400)))
        elif kind == 1:
            out.append(PHOTO[: rng.randint(1, len(PHOTO) - 1)])
        else:
            data = bytearray(PHOTO if kind == 2 else BMP)
            for _ in range(rng.randint(1, 6)):
                data[rng.randrange(min(len(data), 200))] = rng.randrange(256)
            out.append(bytes(data))
    return out


def test_fuzzed_image_bytes_get_an_answer_or_a_400_and_the_server_lives(vl_server, client):
    statuses = []
    with httpx.Client(base_url=vl_server.api_url, timeout=60) as http:
        for data in fuzzed_images(40, seed=7):
            body = {
                "model": "tiny-deepseek-vl",
                "messages": [{"role": "user", "content": [image_part(data), text("describe")]}],
                "max_tokens": 1,
            }
            response = http.post("/chat/completions", json=body)
            statuses.append(response.status_code)
            if response.status_code == 400:
                assert response.json()["error"]["param"] == "messages.0.content.0"
    assert set(statuses) == {200, 400}
    assert vl_server.process.poll() is None
    assert ask(client, image_part(PHOTO), text("still there?")).usage.completion_tokens == 4
    assert "Traceback" not in vl_server.log()


def test_the_built_in_vision_demo_serves_images(tmp_path):
    with running_server(tmp_path / "data", tmp_path / "server.log", "--model", "seekd-demo-vl-random") as handle:
        demo = openai.OpenAI(base_url=handle.api_url, api_key="unused", max_retries=0, timeout=60)
        assert [m.id for m in demo.models.list()] == ["seekd-demo-vl-random"]
        answer = demo.chat.completions.create(
            model="seekd-demo-vl-random",
            messages=[{"role": "user", "content": [image_part(PHOTO), text("What is in this picture?")]}],
            max_tokens=3,
        )
        assert answer.usage.completion_tokens == 3 and answer.usage.prompt_tokens > 2 + IMAGE_TOKENS


def test_deepseek_ocr2_serves_tiled_images_and_detail_low(tmp_path):
    """A miniature DeepSeek-OCR 2 (dummy weights, DeepSeek's tokenizer): a 100x60 image is a global
    view plus six tiles of 144 tokens each; with detail low, the global view alone."""
    folder = tmp_path / "tiny-ocr2"
    folder.mkdir()
    vocab_size = write_deepseek_tokenizer(folder, DEEPSEEK_CHAT_TEMPLATE, 4096)
    config = {
        "architectures": ["DeepseekOcr2ForConditionalGeneration"],
        "model_type": "deepseek_ocr2",
        "image_token_id": VL_DEMO_IMAGE_TOKEN_ID,
        "text_config": {**OCR2_TEXT, "vocab_size": vocab_size},
        "vision_config": {"sam_config": OCR2_SAM, "encoder_config": OCR2_ENCODER},
    }
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "preprocessor_config.json").write_text(json.dumps(OCR2_PREPROCESSOR))
    wide = encoded(random_image(100, 60, 5))
    with running_server(
        tmp_path / "data", tmp_path / "server.log", "--model", str(folder), "--load-format", "dummy"
    ) as h:
        ocr = openai.OpenAI(base_url=h.api_url, api_key="unused", max_retries=0, timeout=60)
        usage = {}
        for detail in ("auto", "low"):
            part = image_part(wide)
            part["image_url"]["detail"] = detail
            answer = ocr.chat.completions.create(
                model="tiny-ocr2", messages=[{"role": "user", "content": [part, text("Read it.")]}], max_tokens=2
            )
            assert answer.usage.completion_tokens == 2
            usage[detail] = answer.usage.prompt_tokens
        assert usage["auto"] - usage["low"] == 6 * 144
