"""Image preprocessing of the vision-language models, as their transformers image processors do it
(Pillow resize, square padding, rescale and normalize), without torch: the API server runs it, in a
worker thread, and sends the engine float32 pixel arrays.

`image_processor_for(folder)` reads config.json (architecture, encoder sizes, image token) and
preprocessor_config.json (means, stds, sizes) when the folder has one."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass
class ProcessedImage:
    """One image as its model's encoder takes it: named float32 arrays [3, H, W] and the number of
    placeholder tokens it fills in the prompt."""

    arrays: dict[str, np.ndarray]
    num_tokens: int

    def content_hash(self) -> bytes:
        """Names the pixels the encoder sees: equal hashes mean equal image features, so prefix-cache
        blocks holding this image's tokens can be shared."""
        h = hashlib.sha256()
        for name in sorted(self.arrays):
            a = np.ascontiguousarray(self.arrays[name], dtype=np.float32)
            h.update(name.encode() + repr(a.shape).encode())
            h.update(a.tobytes())
        return h.digest()


def to_rgb(image: Image.Image) -> Image.Image:
    """RGB, with transparent areas on white (as transformers' convert_to_rgb): a scanned page with
    an alpha channel must not turn black where it is transparent."""
    if image.mode == "RGB":
        return image
    if "A" in image.getbands() or "transparency" in image.info:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def resize_longest_side(image: Image.Image, target: int, min_size: int) -> Image.Image:
    """Longest side to `target`, aspect kept, neither side below `min_size` (bicubic)."""
    width, height = image.size
    scale = target / max(width, height)
    size = (max(round(width * scale), min_size), max(round(height * scale), min_size))
    return image.resize(size, Image.Resampling.BICUBIC)


def pad_to_square(image: Image.Image, color: tuple[int, int, int]) -> Image.Image:
    """Centered on a square of the longest side, filled with `color`."""
    width, height = image.size
    if width == height:
        return image
    side = max(width, height)
    canvas = Image.new("RGB", (side, side), color)
    canvas.paste(image, ((side - width) // 2, (side - height) // 2))
    return canvas


def normalize(image: Image.Image, mean: tuple[float, ...], std: tuple[float, ...]) -> np.ndarray:
    """uint8 HWC -> float32 CHW of (x / 255 - mean) / std."""
    pixels = np.asarray(image, dtype=np.float32).transpose(2, 0, 1) * np.float32(1 / 255)
    mean_a = np.asarray(mean, dtype=np.float32)[:, None, None]
    std_a = np.asarray(std, dtype=np.float32)[:, None, None]
    return (pixels - mean_a) / std_a


@dataclass
class SquareView:
    """One resolution the model sees an image at: resized to `size` on its longest side, padded square
    with the mean colour, normalized."""

    name: str
    size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    min_size: int = 14

    @property
    def background(self) -> tuple[int, int, int]:
        return tuple(int(m * 255) for m in self.mean)

    def apply(self, image: Image.Image) -> Image.Image:
        return pad_to_square(resize_longest_side(image, self.size, self.min_size), self.background)


class DeepseekVLImageProcessor:
    """DeepSeek-VL (plain and hybrid): one fixed-size token grid per image. The hybrid model's
    low-resolution view is resized from its padded high-resolution one, as transformers does."""

    def __init__(self, image_token_id: int, num_tokens: int, views: list[SquareView]) -> None:
        self.image_token_id = image_token_id
        self.num_tokens = num_tokens
        self.views = views  # highest resolution first: each later view starts from the one before

    def process(self, image: Image.Image) -> ProcessedImage:
        image = to_rgb(image)
        arrays = {}
        for view in self.views:
            image = view.apply(image)
            arrays[view.name] = normalize(image, view.mean, view.std)
        return ProcessedImage(arrays, self.num_tokens)


def _pair(value: Any, default: tuple[float, ...]) -> tuple[float, ...]:
    return tuple(float(v) for v in value) if value is not None else default


def _side(value: Any, default: int) -> int:
    if isinstance(value, dict):
        return int(value.get("height") or value.get("shortest_edge") or default)
    return int(value) if value is not None else default


ImageProcessor = DeepseekVLImageProcessor  # what `image_processor_for` returns (one family so far)


def image_processor_for(folder: str | Path) -> ImageProcessor | None:
    """The preprocessing of the model in `folder`, or None for a text-only model."""
    folder = Path(folder)
    config = json.loads((folder / "config.json").read_text())
    arch = (config.get("architectures") or [""])[0]
    if arch not in ("DeepseekVLForConditionalGeneration", "DeepseekVLHybridForConditionalGeneration"):
        return None
    pre_file = folder / "preprocessor_config.json"
    pre = json.loads(pre_file.read_text()) if pre_file.is_file() else {}
    vision = config["vision_config"]
    min_size = int(pre.get("min_size", 14))
    low = SquareView(
        "pixel_values",
        _side(pre.get("size"), int(vision["image_size"])),
        _pair(pre.get("image_mean"), OPENAI_CLIP_MEAN),
        _pair(pre.get("image_std"), OPENAI_CLIP_STD),
        min_size,
    )
    views = [low]
    if arch == "DeepseekVLHybridForConditionalGeneration":
        high = SquareView(
            "high_res_pixel_values",
            _side(pre.get("high_res_size"), int(config["high_res_vision_config"]["image_size"])),
            _pair(pre.get("high_res_image_mean"), OPENAI_CLIP_MEAN),
            _pair(pre.get("high_res_image_std"), OPENAI_CLIP_STD),
            min_size,
        )
        views = [high, low]
    num_tokens = (int(vision["image_size"]) // int(vision["patch_size"])) ** 2
    return DeepseekVLImageProcessor(int(config.get("image_token_id", 100015)), num_tokens, views)
