"""Images of a request as the engine sees them: preprocessed pixel arrays, where their placeholder
tokens sit in the prompt, and a content hash that names them for the prefix cache. Plain data
(msgpack on the wire), without torch: the API server builds them with `image_input`."""

from __future__ import annotations

import msgspec
import numpy as np


class PixelArray(msgspec.Struct, frozen=True):
    """A float32 array, C order, little endian."""

    shape: list[int]
    data: bytes

    def to_numpy(self) -> np.ndarray:
        return np.frombuffer(self.data, dtype="<f4").reshape(self.shape)


class ImageInput(msgspec.Struct, frozen=True, kw_only=True):
    """One image of a prompt: it fills prompt positions [offset, offset + length), all of them the
    model's image token, with the features its encoder computes from `pixels` (by input name)."""

    offset: int
    length: int
    content_hash: bytes
    pixels: dict[str, PixelArray]

    @property
    def end(self) -> int:
        return self.offset + self.length


def image_input(offset: int, length: int, content_hash: bytes, arrays: dict[str, np.ndarray]) -> ImageInput:
    pixels = {
        name: PixelArray(list(a.shape), np.ascontiguousarray(a, dtype="<f4").tobytes()) for name, a in arrays.items()
    }
    return ImageInput(offset=offset, length=length, content_hash=content_hash, pixels=pixels)


def check_images(images: list[ImageInput], prompt_token_ids: list[int], image_token_id: int | None) -> None:
    """Each image covers only image tokens, the images do not overlap, and every image token of the
    prompt belongs to an image: a mismatch would feed the model features of the wrong rows."""
    if not images:
        return
    if image_token_id is None:
        raise ValueError("this model does not read images")
    covered = 0
    previous_end = 0
    for i, image in enumerate(sorted(images, key=lambda im: im.offset)):
        if image.length <= 0 or image.offset < previous_end or image.end > len(prompt_token_ids):
            raise ValueError(f"image {i}: placeholder span [{image.offset}, {image.end}) is not inside the prompt")
        if any(t != image_token_id for t in prompt_token_ids[image.offset : image.end]):
            raise ValueError(f"image {i}: its placeholder span holds tokens other than the image token")
        covered += image.length
        previous_end = image.end
    if covered != prompt_token_ids.count(image_token_id):
        raise ValueError("the prompt has image tokens that no image fills")


def block_image_key(images: list[ImageInput], start: int, end: int) -> bytes:
    """What the images add to the hash of the block of tokens [start, end): the content hash and
    placement of every image overlapping it. Two prompts whose tokens match but whose images differ
    must not share the block's KV."""
    key = b""
    for image in images:
        if image.offset < end and image.end > start:
            key += image.content_hash + (image.offset - start).to_bytes(8, "little", signed=True)
    return key
