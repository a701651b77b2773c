"""Image content parts: data and file URLs, limits and malformed images become 400s naming the
part, accepted images come out preprocessed with their placeholder tokens expanded; a fuzz test
over image bytes shows that nothing but a 400 ever comes out of bad input."""

from __future__ import annotations

import asyncio
import base64
import io
import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from vision_models import IMAGE_TOKEN_ID, random_image, save_tiny_vl

from seekd.errors import APIError
from seekd.models.vision_processing import image_processor_for
from seekd.server.images import ChatImages, ImageFrontend, ImageLimits
from seekd.server.protocol import ChatMessage

TOKEN = "<image_placeholder>"


@pytest.fixture(scope="module")
def processor(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny-vl-images")
    save_tiny_vl("plain", folder)
    return image_processor_for(folder)


def encoded(image: Image.Image, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt)
    return buf.getvalue()


def data_url(data: bytes, media: str = "image/png") -> str:
    return f"data:{media};base64,{base64.b64encode(data).decode()}"


def user(*parts) -> ChatMessage:
    return ChatMessage(role="user", content=list(parts))


def image_part(url: str, **extra) -> dict:
    return {"type": "image_url", "image_url": {"url": url, **extra}}


def prepare(frontend: ImageFrontend, messages: list[ChatMessage]) -> ChatImages:
    return asyncio.run(frontend.prepare(messages))


def refused(frontend: ImageFrontend, messages: list[ChatMessage], match: str, param: str) -> None:
    with pytest.raises(APIError, match=match) as info:
        prepare(frontend, messages)
    assert info.value.status == 400
    assert info.value.param == param


def test_data_url_image_becomes_placeholder_tokens_and_engine_input(processor):
    frontend = ImageFrontend(processor, TOKEN, ImageLimits())
    photo = random_image(50, 30, 1)
    messages = [user({"type": "text", "text": "what is this?"}, image_part(data_url(encoded(photo)), detail="low"))]
    images = prepare(frontend, messages)
    assert [p.text for p in images.messages[0].content] == ["what is this?", TOKEN]
    prompt, inputs = images.bind([7, 8, IMAGE_TOKEN_ID, 9])
    n = processor.num_tokens
    assert prompt == [7, 8, *[IMAGE_TOKEN_ID] * n, 9]
    assert [(i.offset, i.length) for i in inputs] == [(2, n)]
    assert inputs[0].content_hash == processor.process(photo).content_hash()
    # the same picture sent as JPEG is another image (other pixels), and gets another hash
    again = prepare(frontend, [user(image_part(data_url(encoded(photo, "JPEG"), "image/jpeg")))])
    assert again.bind([IMAGE_TOKEN_ID])[1][0].content_hash != inputs[0].content_hash


def test_local_files_only_inside_the_allowed_directory(processor, tmp_path):
    allowed = tmp_path / "images"
    allowed.mkdir()
    (allowed / "a.png").write_bytes(encoded(random_image(20, 20, 2)))
    (tmp_path / "secret.png").write_bytes(encoded(random_image(20, 20, 3)))
    os.symlink(tmp_path / "secret.png", allowed / "link.png")
    closed = ImageFrontend(processor, TOKEN, ImageLimits())
    refused(closed, [user(image_part(f"file://{allowed}/a.png"))], "local-image-dir", "messages.0.content.0")
    frontend = ImageFrontend(processor, TOKEN, ImageLimits(local_dir=allowed))
    assert len(prepare(frontend, [user(image_part(f"file://{allowed}/a.png"))]).images) == 1
    for url in (f"file://{allowed}/../secret.png", f"file://{allowed}/link.png", f"file://{allowed}/missing.png"):
        refused(frontend, [user(image_part(url))], "allowed image directory", "messages.0.content.0")


def test_limits_and_malformed_parts_are_400s_naming_the_part(processor):
    limits = ImageLimits(max_images=2, max_bytes=4000, max_pixels=64 * 64)
    frontend = ImageFrontend(processor, TOKEN, limits)
    small = data_url(encoded(random_image(10, 10, 4)))
    text = {"type": "text", "text": "hi"}
    cases = [
        ([user(text, image_part(small), image_part(small), image_part(small))], "more than 2 images", 3),
        ([user(text, image_part(data_url(os.urandom(6000))))], "larger than 4000 bytes", 1),
        ([user(text, image_part(data_url(encoded(Image.new("RGB", (80, 60))))))], "80x60 pixels", 1),
        ([user(text, image_part(data_url(encoded(random_image(8, 8, 5), "TIFF"), "image/tiff")))], "format", 1),
        (
            [user(text, image_part(data_url(b"<svg xmlns='http://www.w3.org/2000/svg'/>", "image/svg+xml")))],
            "format",
            1,
        ),
        ([user(text, image_part("data:image/png;base64,@@not base64@@"))], "not valid base64", 1),
        ([user(text, image_part("data:image/png,rawbytes"))], "data:image/png;base64", 1),
        ([user(text, image_part("data:text/plain;base64,aGk="))], "not an image", 1),
        ([user(text, image_part("https://example.com/cat.png"))], "does not fetch", 1),
        ([user(text, image_part(small, detail="ultra"))], "detail", 1),
        ([user(text, {"type": "image_url"})], "needs", 1),
        ([user(text, image_part(data_url(encoded(random_image(30, 30, 6))[:60])))], "cannot be decoded", 1),
    ]
    for messages, match, j in cases:
        refused(frontend, messages, match, f"messages.0.content.{j}")
    assistant = ChatMessage(role="assistant", content=[image_part(small)])
    refused(frontend, [user(text), assistant], "user messages", "messages.1.content.0")
    text_only = ImageFrontend(None, None, ImageLimits())
    refused(text_only, [user(text, image_part(small))], "reads text only", "messages.0.content.1")
    assert prepare(text_only, [user(text)]).bind([1, 2]) == ([1, 2], [])


def test_image_tokens_typed_as_text_are_refused(processor):
    frontend = ImageFrontend(processor, TOKEN, ImageLimits())
    images = prepare(frontend, [user(image_part(data_url(encoded(random_image(12, 12, 7)))))])
    with pytest.raises(APIError, match="2 image tokens for 1 images"):
        images.bind([IMAGE_TOKEN_ID, 5, IMAGE_TOKEN_ID])


def test_transparent_areas_are_white(processor):
    clear = Image.new("RGBA", (16, 16), (0, 0, 0, 0))
    white = Image.new("RGB", (16, 16), (255, 255, 255))
    assert processor.process(clear).content_hash() == processor.process(white).content_hash()


PNG = encoded(random_image(24, 16, 8))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    data=st.one_of(
        st.binary(max_size=300),
        st.tuples(st.integers(0, len(PNG) - 1), st.binary(min_size=1, max_size=8)).map(
            lambda cut: PNG[: cut[0]] + cut[1] + PNG[cut[0] + len(cut[1]) :]
        ),
        st.integers(1, len(PNG) - 1).map(lambda n: PNG[:n]),
    )
)
def test_fuzzed_image_bytes_give_an_image_or_a_400(processor, data):
    frontend = ImageFrontend(processor, TOKEN, ImageLimits(max_pixels=512 * 512))
    try:
        images = prepare(frontend, [user(image_part(data_url(data)))])
    except APIError as e:
        assert e.status == 400 and e.param == "messages.0.content.0"
    else:
        assert images.images[0].arrays["pixel_values"].shape == (3, 32, 32)
