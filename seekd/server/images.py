"""Image content parts of chat requests: validation, decoding and preprocessing for vision models.

A chat message may carry `{"type": "image_url", "image_url": {"url": ..., "detail": ...}}` parts.
URLs are `data:image/<format>;base64,...` or, where the operator named a directory
(`--local-image-dir`), `file://` paths inside it; seekd never fetches from the network. Every
refusal is a 400 naming the part (`messages.<i>.content.<j>`). Decoding and preprocessing run in a
worker thread, off the event loop.

The chat path makes one call before its chat template, `ImageFrontend.prepare(messages)`, and uses
the `ChatImages` it returns twice: its `messages` (each image part now the model's image token as a
text part) go to the template, and `bind(prompt_ids)` after tokenization gives the prompt with each
image token expanded to the image's placeholder tokens, plus the `ImageInput`s for
`EngineCoreRequest.images`.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import io
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlparse

from PIL import Image

from seekd.config import ServerConfig
from seekd.engine.multimodal import ImageInput, image_input
from seekd.models.vision_processing import ImageProcessor, ProcessedImage, image_processor_for
from seekd.server.errors import invalid_request
from seekd.server.protocol import ChatMessage, TextPart
from seekd.text.tokenizer import Tokenizer

FORMATS = frozenset({"PNG", "JPEG", "WEBP", "GIF", "BMP"})
DETAILS = frozenset({"auto", "low", "high"})
_DATA_URL = re.compile(r"data:(?P<media>[\w.+-]+/[\w.+-]+)?(?P<params>(?:;[\w.+-]+=[^;,]*)*)(?P<b64>;base64)?,", re.I)


@dataclass(frozen=True)
class ImageLimits:
    max_images: int = 8
    max_bytes: int = 10 * 2**20
    max_pixels: int = 4096 * 4096
    local_dir: Path | None = None  # file:// URLs may name files under it; None: none


@dataclass
class ImagePart:
    """One image part: where it sits in the request (for error messages) and its encoded bytes."""

    param: str
    data: bytes
    detail: str


@dataclass
class ChatImages:
    """A chat request's messages with each image part replaced by the image token, and the
    preprocessed images in message order."""

    messages: list[ChatMessage]
    images: list[ProcessedImage] = field(default_factory=list)
    image_token_id: int | None = None

    def bind(self, prompt_ids: list[int]) -> tuple[list[int], list[ImageInput]]:
        """The prompt with the i-th image token expanded to image i's placeholder tokens, and the
        images' engine inputs. A prompt whose image tokens do not match the images (the user typed
        the image token as text) is refused."""
        if not self.images:
            return prompt_ids, []
        count = prompt_ids.count(self.image_token_id)
        if count != len(self.images):
            raise invalid_request(
                f"the prompt holds {count} image tokens for {len(self.images)} images; "
                "remove the image token from the message text",
                param="messages",
            )
        out: list[int] = []
        inputs: list[ImageInput] = []
        images = iter(self.images)
        for token in prompt_ids:
            if token != self.image_token_id:
                out.append(token)
                continue
            image = next(images)
            inputs.append(image_input(len(out), image.num_tokens, image.content_hash(), image.arrays))
            out.extend([token] * image.num_tokens)
        return out, inputs


class ImageFrontend:
    """The server's image side for one model: its preprocessing (None for a text-only model), the
    text of its image token, and the operator's limits."""

    def __init__(self, processor: ImageProcessor | None, image_token_text: str | None, limits: ImageLimits) -> None:
        self.processor = processor
        self.image_token_text = image_token_text
        self.limits = limits

    @classmethod
    def for_model(cls, folder: str | Path, tokenizer: Tokenizer, server: ServerConfig) -> ImageFrontend:
        """Built once at server start from the model folder and the `server` config's image limits."""
        processor = image_processor_for(folder)
        token_text = None if processor is None else tokenizer.id_to_token(processor.image_token_id)
        if processor is not None and token_text is None:
            raise ValueError(f"the tokenizer has no token {processor.image_token_id}, this model's image token")
        limits = ImageLimits(
            max_images=server.max_images_per_request,
            max_bytes=server.max_image_bytes,
            max_pixels=server.max_image_pixels,
            local_dir=Path(server.local_image_dir).expanduser() if server.local_image_dir else None,
        )
        return cls(processor, token_text, limits)

    async def prepare(self, messages: list[ChatMessage]) -> ChatImages:
        """Validate every image part, then decode and preprocess them in a worker thread."""
        parts, rewritten = self._collect(messages)
        if not parts:
            return ChatImages(messages)
        processed = await asyncio.to_thread(lambda: [self._process(p) for p in parts])
        return ChatImages(rewritten, processed, self.processor.image_token_id)

    def _collect(self, messages: list[ChatMessage]) -> tuple[list[ImagePart], list[ChatMessage]]:
        parts: list[ImagePart] = []
        rewritten = []
        for i, message in enumerate(messages):
            if not isinstance(message.content, list):
                rewritten.append(message)
                continue
            content = []
            for j, part in enumerate(message.content):
                if part.type != "image_url":
                    content.append(part)
                    continue
                param = f"messages.{i}.content.{j}"
                if self.processor is None:
                    raise invalid_request("this model reads text only; remove the image_url parts", param=param)
                if message.role != "user":
                    raise invalid_request(f"images go in user messages, not {message.role!r} ones", param=param)
                parts.append(self._read_part(part, param))
                if len(parts) > self.limits.max_images:
                    raise invalid_request(f"more than {self.limits.max_images} images in one request", param=param)
                content.append(TextPart(type="text", text=self.image_token_text))
            rewritten.append(message.model_copy(update={"content": content}))
        return parts, rewritten

    def _read_part(self, part: TextPart, param: str) -> ImagePart:
        spec = (part.model_extra or {}).get("image_url")
        if isinstance(spec, str):  # some clients send the URL itself
            spec = {"url": spec}
        if not isinstance(spec, dict) or not isinstance(spec.get("url"), str):
            raise invalid_request("an image_url part needs {'image_url': {'url': '...'}}", param=param)
        detail = spec.get("detail") or "auto"
        if detail not in DETAILS:
            raise invalid_request(f"image detail must be one of auto, low, high, not {detail!r}", param=param)
        url = spec["url"]
        if url[:5].lower() == "data:":
            data = self._data_url(url, param)
        elif url[:7].lower() == "file://":
            data = self._local_file(url, param)
        else:
            raise invalid_request(
                "seekd does not fetch images from the network; send the image as a data:image/...;base64 URL",
                param=param,
            )
        return ImagePart(param, data, detail)

    def _data_url(self, url: str, param: str) -> bytes:
        m = _DATA_URL.match(url)
        if m is None or not m["b64"]:
            raise invalid_request("an image data URL must look like data:image/png;base64,<data>", param=param)
        if m["media"] and not m["media"].lower().startswith("image/"):
            raise invalid_request(f"a data URL of type {m['media']} is not an image", param=param)
        payload = url[m.end() :]
        if len(payload) * 3 // 4 > self.limits.max_bytes + 3:
            raise invalid_request(f"the image is larger than {self.limits.max_bytes} bytes", param=param)
        try:
            return base64.b64decode(payload, validate=True)
        except (binascii.Error, ValueError):
            raise invalid_request("the image data URL is not valid base64", param=param) from None

    def _local_file(self, url: str, param: str) -> bytes:
        root = self.limits.local_dir
        if root is None:
            raise invalid_request(
                "file:// image URLs are off on this server (the operator sets --local-image-dir to allow a directory)",
                param=param,
            )
        parsed = urlparse(url)
        if parsed.netloc not in ("", "localhost"):
            raise invalid_request("a file:// image URL names a local path (file:///...)", param=param)
        root = root.resolve()
        path = Path(unquote(parsed.path)).resolve()
        if not path.is_relative_to(root) or not path.is_file():
            raise invalid_request("the image file is not a file inside the allowed image directory", param=param)
        if path.stat().st_size > self.limits.max_bytes:
            raise invalid_request(f"the image is larger than {self.limits.max_bytes} bytes", param=param)
        return path.read_bytes()

    def _process(self, part: ImagePart) -> ProcessedImage:
        """Decode (after checking format and pixel count from the header) and preprocess."""
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            try:
                image = Image.open(io.BytesIO(part.data), formats=list(FORMATS))
            except Image.UnidentifiedImageError:
                raise invalid_request(
                    f"the image is not in a supported format ({', '.join(sorted(FORMATS))})", param=part.param
                ) from None
            except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombWarning) as e:
                raise invalid_request(f"the image cannot be decoded: {e}", param=part.param) from None
            width, height = image.size
            if width < 1 or height < 1 or width * height > self.limits.max_pixels:
                raise invalid_request(
                    f"the image is {width}x{height} pixels; at most {self.limits.max_pixels} are accepted",
                    param=part.param,
                )
            try:
                image.load()
                return self.processor.process(image, part.detail)
            except Exception as e:  # a truncated or corrupt stream fails in any of Pillow's decoders
                raise invalid_request(f"the image cannot be decoded: {e}", param=part.param) from None
