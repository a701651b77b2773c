"""Image preprocessing of the vision-language models, as their transformers image processors do it
(Pillow resize, square padding, rescale and normalize), without torch: the API server runs it, in a
worker thread, and sends the engine float32 pixel arrays.

`image_processor_for(folder)` reads config.json (architecture, encoder sizes, image token) and
preprocessor_config.json (means, stds, sizes) when the folder has one."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from seekd.intmath import cdiv

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

    def process(self, image: Image.Image, detail: str = "auto") -> ProcessedImage:
        """`detail` (OpenAI's auto, low, high) changes nothing: one fixed-size grid per image."""
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


def tile_grid(width: int, height: int, tile: int, min_tiles: int, max_tiles: int) -> tuple[int, int]:
    """(columns, rows) of the tiling whose aspect ratio is closest to the image's, among those of
    min..max tiles; on a tie the one with more tiles, while the image has more than half their
    area (transformers' get_optimal_tiled_canvas)."""
    grids = sorted(
        ((c, r) for c in range(1, max_tiles + 1) for r in range(1, max_tiles + 1) if min_tiles <= c * r <= max_tiles),
        key=lambda g: g[0] * g[1],
    )
    aspect = width / height
    best, best_diff = (1, 1), float("inf")
    for columns, rows in grids:
        diff = abs(aspect - columns / rows)
        if diff < best_diff:
            best, best_diff = (columns, rows), diff
        elif diff == best_diff and width * height > 0.5 * tile * tile * columns * rows:
            best = (columns, rows)
    return best


class DeepseekOcr2ImageProcessor:
    """DeepSeek-OCR 2: a global view (longest side to `size`, padded square with grey) and, for an
    image larger than a tile, `tile`-sized crops of the image resized onto the best tiling grid.
    Each view becomes `queries(side)` image tokens; one more separates the image from the text."""

    def __init__(
        self,
        image_token_id: int,
        size: int,
        tile: int,
        tiles: tuple[int, int],
        mean: tuple[float, ...],
        std: tuple[float, ...],
        background: tuple[int, int, int],
        queries: Callable[[int], int],
    ) -> None:
        self.image_token_id = image_token_id
        self.size, self.tile, self.tiles = size, tile, tiles
        self.mean, self.std, self.background = mean, std, background
        self.queries = queries

    def process(self, image: Image.Image, detail: str = "auto") -> ProcessedImage:
        """`detail` low: the global view alone (no tiles), as for an image that fits in one tile."""
        image = to_rgb(image)
        width, height = image.size
        tiles = np.zeros((0, 3, self.tile, self.tile), dtype=np.float32)
        if max(width, height) > self.tile and detail != "low":
            columns, rows = tile_grid(width, height, self.tile, *self.tiles)
            canvas = image.resize((columns * self.tile, rows * self.tile), Image.Resampling.BICUBIC)
            crops = [
                canvas.crop((c * self.tile, r * self.tile, (c + 1) * self.tile, (r + 1) * self.tile))
                for r in range(rows)
                for c in range(columns)
            ]
            tiles = np.stack([normalize(crop, self.mean, self.std) for crop in crops])
        view = pad_to_square(resize_longest_side(image, self.size, 1), self.background)
        arrays = {"pixel_values": normalize(view, self.mean, self.std), "pixel_values_local": tiles}
        num_tokens = self.queries(self.size) + len(tiles) * self.queries(self.tile) + 1
        return ProcessedImage(arrays, num_tokens)


ImageProcessor = DeepseekVLImageProcessor | DeepseekOcr2ImageProcessor  # what `image_processor_for` returns
VL_ARCHITECTURES = ("DeepseekVLForConditionalGeneration", "DeepseekVLHybridForConditionalGeneration")


def image_processor_for(folder: str | Path) -> ImageProcessor | None:
    """The preprocessing of the model in `folder`, or None for a text-only model."""
    folder = Path(folder)
    config = json.loads((folder / "config.json").read_text())
    arch = (config.get("architectures") or [""])[0]
    pre_file = folder / "preprocessor_config.json"
    pre = json.loads(pre_file.read_text()) if pre_file.is_file() else {}
    if arch == "DeepseekOcr2ForConditionalGeneration":
        return _ocr2_processor(config, pre)
    if arch not in VL_ARCHITECTURES:
        return None
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


def _ocr2_processor(config: dict[str, Any], pre: dict[str, Any]) -> DeepseekOcr2ImageProcessor:
    """Sizes from preprocessor_config.json (transformers' defaults: 1024 px global view, 768 px tiles,
    2-6 of them); each view's token count is its query encoder's query count for its patch grid
    (SAM patches, then two stride-2 convolutions)."""
    sam = (config.get("vision_config") or {}).get("sam_config") or {}
    patch = int(sam.get("patch_size") or 16)

    def queries(side: int) -> int:
        grid = cdiv(cdiv(side // patch, 2), 2)  # two stride-2, padded convolutions
        return 144 if grid * grid <= 144 else 256

    return DeepseekOcr2ImageProcessor(
        int(config.get("image_token_id", 128815)),
        _side(pre.get("size"), 1024),
        int(pre.get("tile_size", 768)),
        (int(pre.get("min_patches", 2)), int(pre.get("max_patches", 6))),
        _pair(pre.get("image_mean"), (0.5, 0.5, 0.5)),
        _pair(pre.get("image_std"), (0.5, 0.5, 0.5)),
        tuple(int(c) for c in pre.get("background_color", (127, 127, 127))),
        queries,
    )
